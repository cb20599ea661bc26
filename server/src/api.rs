//! The HTTP surface: routes, handlers and the middleware around them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backfill_protocol::limits::{
    CLIENT_ID_HEADER, MAX_BODY_BYTES, MAX_EVENT_AGE_HEADER, SDK_NAME_HEADER, SDK_VERSION_HEADER,
    max_event_age_ms,
};
use backfill_protocol::time::{format_iso_ms, parse_timestamp_str};
use backfill_protocol::validate::SYNCED_AT;
use backfill_protocol::wire::{
    BatchResponse, ErrorBody, EventRecord, EventsPage, ProfileRecord, RejectReason, SessionRecord,
    SessionsPage, TrackResponse,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tower_http::cors::CorsLayer;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Access, Project};
use crate::body::{Encoding, decode, read_raw};
use crate::connections::{BodyIdleTimeout, Timeouts};
use crate::error::{ApiError, FailureReason, StoreFailure};
use crate::ingest::{self, Prepared, RequestMeta};
use crate::state::AppState;
use crate::store::{EventQuery, IngestJob, SessionQuery, StoreError};

/// The service's router over `state`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/track/batch", post(track_batch))
        .route("/track", post(track))
        .route("/api/events", get(list_events))
        .route("/api/sessions", get(list_sessions))
        .route("/api/profiles/{profile_id}", get(get_profile))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn(tag_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Open CORS, as upstream: browsers send events straight from pages.
        .layer(CorsLayer::permissive())
        // Outside CORS, so that preflight answers are observed and stamped too.
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The route pattern that answered, carried from the router to [`observe`].
#[derive(Debug, Clone)]
struct RouteLabel(String);

/// What a request did, attached by its handler for [`observe`]'s log line.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Rows accepted (duplicates included).
    accepted: Option<usize>,
    /// Accepted rows already stored.
    duplicates: Option<usize>,
    /// Rows rejected.
    rejected: Option<usize>,
    /// Items a read returned.
    returned: Option<usize>,
}

async fn tag_route(path: MatchedPath, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .extensions_mut()
        .insert(RouteLabel(path.as_str().to_owned()));
    response
}

/// Logs every request (method, route, status, duration, client and its project, counts, and the
/// reason of a failure; never a secret), counts it in the metrics and stamps the age window on every
/// successful answer.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // Answered by the CORS layer before routing, for whatever path it names.
    let preflight = method == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    // The claimed client id, logged only when it is a UUID: it names the client, never
    // authenticates it, and an arbitrary header is not copied into logs.
    let client = request
        .headers()
        .get(CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok());
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let extensions = response.extensions_mut();
    let route = extensions.remove::<RouteLabel>().map_or_else(
        || if preflight { "preflight" } else { "unmatched" }.to_owned(),
        |r| r.0,
    );
    let counts = extensions.remove::<Counts>().unwrap_or_default();
    let reason = extensions.remove::<FailureReason>().map(|r| r.0);
    let cause = extensions.remove::<StoreFailure>().map(|f| f.0);
    let status = response.status();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let project = client.and_then(|c| state.projects().project_of(&c));
    // Displayed, not debugged: ids read the same in text and JSON lines, without quotes.
    let project = project.as_ref().map(tracing::field::display);
    let client = client.map(tracing::field::display);
    if status.is_server_error() {
        tracing::error!(
            %method, %route, status = status.as_u16(), duration_ms, client, project, reason, cause,
            "request failed"
        );
    } else {
        tracing::info!(
            %method, %route, status = status.as_u16(), duration_ms, client, project,
            accepted = counts.accepted, duplicates = counts.duplicates,
            rejected = counts.rejected, returned = counts.returned, reason,
            "request"
        );
    }
    if cause.is_some() {
        state.metrics().store_errors.fetch_add(1, Ordering::Relaxed);
    }
    state
        .metrics()
        .observe_request(&route, status.as_u16(), elapsed.as_secs_f64());
    if status.is_success() {
        let secs = max_event_age_ms(state.max_event_age_days()) / 1000;
        response
            .headers_mut()
            .insert(MAX_EVENT_AGE_HEADER, HeaderValue::from(secs));
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The client IP: the proxy headers upstream honours, else the peer address.
fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    for name in ["x-client-ip", "cf-connecting-ip", "x-real-ip"] {
        if let Some(ip) = header_text(headers, name) {
            return ip;
        }
    }
    if let Some(first) = header_text(headers, "x-forwarded-for")
        .and_then(|v| v.split(',').next().map(|s| s.trim().to_owned()))
    {
        return first;
    }
    peer.map(|p| p.ip().to_string()).unwrap_or_default()
}

/// Authenticates, reads the body and prepares its rows; shared by both ingestion routes.
async fn receive(
    state: &AppState,
    request: Received,
    parse: fn(&[u8], &RequestMeta) -> Result<Prepared, ApiError>,
) -> Result<(Project, Prepared), ApiError> {
    let Received {
        headers,
        peer,
        body,
        idle,
    } = request;
    let headers = &headers;
    // Refused before the body is read to its end: the connection closes after the answer, or a
    // keep-alive client's next request would meet a connection the server has given up on.
    let unread = |e: ApiError| ApiError::BodyUnread(Box::new(e));
    let project = state
        .projects()
        .authenticate(headers, Access::Write)
        .await
        .map_err(unread)?;
    let encoding = Encoding::from_headers(headers).map_err(unread)?;
    let raw = read_raw(headers, body, MAX_BODY_BYTES, idle)
        .await
        .map_err(unread)?;
    let receive_ms = state.now_ms();
    let user_agent = header_text(headers, header::USER_AGENT);
    let salt = match user_agent {
        Some(_) => Some(state.salt_for(receive_ms).await?),
        None => None,
    };
    let meta = RequestMeta {
        client_id: project.client_id.clone(),
        receive_ms,
        user_agent,
        ip: client_ip(headers, peer),
        salt,
        max_event_age_days: state.max_event_age_days(),
    };
    let slot = state
        .parse_slots()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let prepared = tokio::task::spawn_blocking(move || {
        let bytes = decode(raw, encoding, MAX_BODY_BYTES)?;
        let prepared = parse(&bytes, &meta);
        drop(slot);
        prepared
    })
    .await
    .map_err(|_| ApiError::Unavailable)??;
    Ok((project, prepared))
}

async fn store_rows(
    state: &AppState,
    headers: &HeaderMap,
    project: &Project,
    prepared: &mut Prepared,
) -> Result<Vec<crate::store::RowOutcome>, ApiError> {
    if prepared.rows.is_empty() {
        return Ok(Vec::new());
    }
    let job = IngestJob {
        project: project.key,
        sdk_name: header_text(headers, SDK_NAME_HEADER),
        sdk_version: header_text(headers, SDK_VERSION_HEADER),
        rows: std::mem::take(&mut prepared.rows),
    };
    Ok(bounded(INGEST_TIMEOUT, state.store().ingest(job)).await?)
}

/// The longest a batch waits for the store before it is answered `503`: far beyond any
/// commit (milliseconds), so it only fires when the database hangs instead of refusing (a
/// frozen host, a partition that drops packets). A batch answered so may still commit; its
/// retry is then a duplicate the insert ids catch (SPEC §5).
const INGEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `/healthz` waits for the store: a load balancer's check must fail, not hang,
/// while the database does.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `work`, or [`StoreError::Unavailable`] (`503` with `Retry-After`) when the store has not
/// answered within `limit`.
async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!(
            "the store did not answer within {} s",
            limit.as_secs()
        )))
    })
}

fn count(state: &AppState, response: &backfill_protocol::wire::BatchResponse) {
    let m = state.metrics();
    m.accepted
        .fetch_add(response.accepted as u64, Ordering::Relaxed);
    m.duplicates
        .fetch_add(response.duplicates as u64, Ordering::Relaxed);
    for r in &response.rejected {
        match r.reason {
            RejectReason::Validation => m.rejected_validation.fetch_add(1, Ordering::Relaxed),
            RejectReason::Internal => m.rejected_internal.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn counts_of(response: &backfill_protocol::wire::BatchResponse) -> Counts {
    Counts {
        accepted: Some(response.accepted),
        duplicates: Some(response.duplicates),
        rejected: Some(response.rejected.len()),
        returned: None,
    }
}

/// What the ingestion routes read of a request.
struct Received {
    headers: HeaderMap,
    /// The peer's address, when served over a connection.
    peer: Option<SocketAddr>,
    body: Body,
    /// The longest pause allowed while the body arrives.
    idle: Duration,
}

fn split(request: Request) -> Received {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let idle = parts
        .extensions
        .get::<BodyIdleTimeout>()
        .map_or_else(|| Timeouts::default().body_idle, |t| t.0);
    Received {
        headers: parts.headers,
        peer,
        body,
        idle,
    }
}

/// Ingests a batch of events (SPEC §2): `202` once every accepted row is durably committed.
#[utoipa::path(
    post,
    path = "/track/batch",
    tag = "ingest",
    request_body(content = crate::openapi::Batch, description = "1 to 2000 events; at most 10 MiB decoded; may be sent with `Content-Encoding: gzip` or `zstd`"),
    security(("client_id" = [], "client_secret" = [])),
    responses(
        (status = 202, description = "Every row accepted or rejected, each index once", body = BatchResponse,
            headers(("backfill-max-event-age" = u64, description = "The server's age window in seconds"))),
        (status = 400, description = "Malformed envelope", body = ErrorBody),
        (status = 401, description = "Missing, unknown or wrong credentials", body = ErrorBody),
        (status = 403, description = "The client's mode cannot ingest (a `read` key)", body = ErrorBody),
        (status = 408, description = "The body stopped arriving for 30 s; resend", body = ErrorBody),
        (status = 413, description = "Body over 10 MiB after decoding", body = ErrorBody),
        (status = 415, description = "Unknown Content-Encoding", body = ErrorBody),
        (status = 503, description = "Storage unavailable; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn track_batch(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let request = split(request);
    let headers = request.headers.clone();
    let (project, mut prepared) = receive(&state, request, ingest::prepare_batch).await?;
    let total = prepared.rows.len() + prepared.rejected.len();
    let outcomes = store_rows(&state, &headers, &project, &mut prepared).await?;
    let response = ingest::summarize(total, prepared, outcomes);
    count(&state, &response);
    let counts = counts_of(&response);
    let mut answer = (StatusCode::ACCEPTED, Json(response)).into_response();
    answer.extensions_mut().insert(counts);
    Ok(answer)
}

/// Ingests one event (SPEC §3), as upstream's `POST /track`.
#[utoipa::path(
    post,
    path = "/track",
    tag = "ingest",
    request_body(content = crate::openapi::Event, description = "One event"),
    security(("client_id" = [], "client_secret" = [])),
    responses(
        (status = 200, description = "Stored (or already stored)", body = TrackResponse,
            headers(("backfill-max-event-age" = u64, description = "The server's age window in seconds"))),
        (status = 400, description = "Malformed body or an event the rules refuse", body = ErrorBody),
        (status = 401, description = "Missing, unknown or wrong credentials", body = ErrorBody),
        (status = 403, description = "The client's mode cannot ingest (a `read` key)", body = ErrorBody),
        (status = 408, description = "The body stopped arriving for 30 s; resend", body = ErrorBody),
        (status = 413, description = "Body over 10 MiB after decoding", body = ErrorBody),
        (status = 415, description = "Unknown Content-Encoding", body = ErrorBody),
        (status = 503, description = "Storage unavailable; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("retry-after" = u32, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn track(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let request = split(request);
    let headers = request.headers.clone();
    let (project, mut prepared) = receive(&state, request, ingest::prepare_single).await?;
    let attribution = prepared.attribution.take();
    let outcomes = store_rows(&state, &headers, &project, &mut prepared).await?;
    let response = ingest::summarize(1, prepared, outcomes);
    count(&state, &response);
    let counts = counts_of(&response);
    if let Some(rejection) = response.rejected.into_iter().next() {
        return Err(match rejection.reason {
            RejectReason::Validation => ApiError::BadRequest(rejection.error),
            RejectReason::Internal => ApiError::Unavailable,
        });
    }
    let attribution = attribution.ok_or(ApiError::Unavailable)?;
    let mut answer = Json(TrackResponse {
        device_id: attribution.device_id,
        session_id: attribution.session_id,
    })
    .into_response();
    answer.extensions_mut().insert(counts);
    Ok(answer)
}

/// Query parameters of `GET /api/events` (SPEC §8); any other parameter is refused.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsParams {
    /// Events per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only events of this device.
    device_id: Option<String>,
    /// Only events of this session.
    session_id: Option<String>,
    /// Only events with this name.
    name: Option<String>,
    /// Only events at or after this time (ISO-8601 or epoch milliseconds).
    from: Option<String>,
    /// Only events at or before this time (ISO-8601 or epoch milliseconds).
    to: Option<String>,
}

/// Query parameters of `GET /api/sessions` (SPEC §8); any other parameter is refused.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionsParams {
    /// Sessions per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only sessions of this device.
    device_id: Option<String>,
    /// Only sessions started at or after this time (ISO-8601 or epoch milliseconds).
    from: Option<String>,
    /// Only sessions started at or before this time (ISO-8601 or epoch milliseconds).
    to: Option<String>,
}

/// Query parameters of `GET /api/profiles/{profile_id}`: none, and any given is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileParams {}

/// A query string parsed into `T`, or a `400` naming what is wrong (an unknown parameter such
/// as a misspelt `devce_id`, a repeated one).
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|rejection| {
        let text = rejection.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        ApiError::BadRequest(format!("invalid query: {detail}"))
    })
}

/// Paging and filter parameters shared by the list routes.
struct ListParams {
    limit: usize,
    after: Option<(i64, String)>,
    from: Option<i64>,
    to: Option<i64>,
}

fn list_params(
    limit: Option<&str>,
    cursor: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<ListParams, ApiError> {
    let limit = match limit {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(
                    "limit must be a whole number from 1 to 1000".to_owned(),
                ));
            }
        },
    };
    let time = |key: &str, value: Option<&str>| -> Result<Option<i64>, ApiError> {
        match value {
            None => Ok(None),
            Some(v) => parse_timestamp_str(v).map(Some).ok_or_else(|| {
                // A `+` of an offset arrives as a space unless the client encoded it.
                let hint = if v.contains(' ') {
                    " (a '+' in a query string is read as a space: send it as %2B)"
                } else {
                    ""
                };
                ApiError::BadRequest(format!(
                    "{key} must be ISO-8601 or epoch milliseconds{hint}"
                ))
            }),
        }
    };
    let after = match cursor.filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| ApiError::BadRequest("cursor is not valid".to_owned()))?,
        ),
    };
    Ok(ListParams {
        limit,
        after,
        from: time("from", from)?,
        to: time("to", to)?,
    })
}

fn encode_cursor(t: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{t}:{id}"))
}

fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (t, id) = text.split_once(':')?;
    Some((t.parse().ok()?, id.to_owned()))
}

/// Reads one page more than asked to learn whether there is a next page.
fn page<T>(
    mut rows: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> (i64, String),
) -> (Vec<T>, Option<String>) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|r| {
            let (t, id) = key(r);
            encode_cursor(t, &id)
        });
        (rows, next)
    } else {
        (rows, None)
    }
}

/// Lists a project's stored events (SPEC §8) in (created_at, id) order, a page at a time.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "read",
    params(EventsParams),
    security(("client_id" = [], "client_secret" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "An unknown parameter or a bad value", body = ErrorBody),
        (status = 401, description = "Missing, unknown or wrong credentials", body = ErrorBody),
        (status = 403, description = "The client's mode cannot read (a `write` key)", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let project = state
        .projects()
        .authenticate(&headers, Access::Read)
        .await?;
    let q = query(q)?;
    let p = list_params(
        q.limit.as_deref(),
        q.cursor.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
    )?;
    let query = EventQuery {
        project: project.key,
        limit: p.limit + 1,
        after: p.after,
        device_id: q.device_id,
        session_id: q.session_id,
        name: q.name,
        from: p.from,
        to: p.to,
    };
    let rows = state.store().events(query).await?;
    let (rows, next_cursor) = page(rows, p.limit, |e| (e.created_at, e.id.clone()));
    let events: Vec<EventRecord> = rows
        .into_iter()
        .map(|e| {
            let mut properties = e.properties;
            let synced_at = Value::String(format_iso_ms(e.synced_at)).to_string();
            if let Ok(synced_at) = RawValue::from_string(synced_at) {
                properties.insert(SYNCED_AT.to_owned(), synced_at);
            }
            EventRecord {
                id: e.id,
                name: e.name,
                kind: e.kind,
                device_id: e.device_id,
                session_id: e.session_id,
                profile_id: e.profile_id,
                created_at: format_iso_ms(e.created_at),
                properties,
                insert_id: e.insert_id,
            }
        })
        .collect();
    let returned = events.len();
    Ok(with_returned(
        Json(EventsPage {
            events,
            next_cursor,
        }),
        returned,
    ))
}

/// Lists a project's sessions (SPEC §8) in (started_at, id) order, a page at a time.
#[utoipa::path(
    get,
    path = "/api/sessions",
    tag = "read",
    params(SessionsParams),
    security(("client_id" = [], "client_secret" = [])),
    responses(
        (status = 200, description = "A page of sessions", body = SessionsPage),
        (status = 400, description = "An unknown parameter or a bad value", body = ErrorBody),
        (status = 401, description = "Missing, unknown or wrong credentials", body = ErrorBody),
        (status = 403, description = "The client's mode cannot read (a `write` key)", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<SessionsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let project = state
        .projects()
        .authenticate(&headers, Access::Read)
        .await?;
    let q = query(q)?;
    let p = list_params(
        q.limit.as_deref(),
        q.cursor.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
    )?;
    let query = SessionQuery {
        project: project.key,
        limit: p.limit + 1,
        after: p.after,
        device_id: q.device_id,
        from: p.from,
        to: p.to,
    };
    let rows = state.store().sessions(query).await?;
    let (rows, next_cursor) = page(rows, p.limit, |s| (s.started_at, s.id.clone()));
    let sessions: Vec<SessionRecord> = rows
        .into_iter()
        .map(|s| SessionRecord {
            id: s.id,
            device_id: s.device_id,
            profile_id: s.profile_id,
            started_at: format_iso_ms(s.started_at),
            ended_at: format_iso_ms(s.ended_at),
            duration_ms: s.ended_at - s.started_at,
            event_count: s.event_count,
        })
        .collect();
    let returned = sessions.len();
    Ok(with_returned(
        Json(SessionsPage {
            sessions,
            next_cursor,
        }),
        returned,
    ))
}

/// Reads one profile (SPEC §6b).
#[utoipa::path(
    get,
    path = "/api/profiles/{profile_id}",
    tag = "read",
    params(("profile_id" = String, Path, description = "The profile id given by `identify`")),
    security(("client_id" = [], "client_secret" = [])),
    responses(
        (status = 200, description = "The profile", body = ProfileRecord),
        (status = 400, description = "A query parameter (this route takes none) or a profile id that is not UTF-8", body = ErrorBody),
        (status = 401, description = "Missing, unknown or wrong credentials", body = ErrorBody),
        (status = 403, description = "The client's mode cannot read (a `write` key)", body = ErrorBody),
        (status = 404, description = "No such profile in this project", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<ProfileParams>, QueryRejection>,
) -> Result<Json<ProfileRecord>, ApiError> {
    let project = state
        .projects()
        .authenticate(&headers, Access::Read)
        .await?;
    query(q)?;
    let Path(profile_id) = path.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "the profile id must be percent-encoded UTF-8 ({})",
            rejection.body_text()
        ))
    })?;
    let profile = state
        .store()
        .profile(project.key, profile_id.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no profile {profile_id}")))?;
    let field = |k: &str| {
        profile
            .fields
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(Json(ProfileRecord {
        id: profile.id.clone(),
        first_name: field("firstName"),
        last_name: field("lastName"),
        email: field("email"),
        avatar: field("avatar"),
        properties: profile.properties,
        groups: profile.groups,
        created_at: format_iso_ms(profile.created_at),
        updated_at: format_iso_ms(profile.updated_at),
    }))
}

/// The answer of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// Whether the server and its store answer; needs no credentials.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The store answers", body = Health),
        (status = 503, description = "The store does not answer", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    bounded(HEALTH_TIMEOUT, state.store().health()).await?;
    Ok(Json(Health { status: "ok" }))
}

/// Counters and histograms in the Prometheus text format; needs no credentials.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition 0.0.4", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics().render(),
    )
        .into_response()
}

/// This OpenAPI 3.1 document; needs no credentials.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route", body = Object))
)]
pub(crate) async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::json(),
    )
        .into_response()
}

fn with_returned(answer: impl IntoResponse, returned: usize) -> Response {
    let mut response = answer.into_response();
    response.extensions_mut().insert(Counts {
        returned: Some(returned),
        ..Counts::default()
    });
    response
}
