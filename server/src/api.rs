//! The HTTP surface: routes, handlers and the middleware around them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backfill_protocol::limits::{
    MAX_BODY_BYTES, MAX_EVENT_AGE_HEADER, SDK_NAME_HEADER, SDK_VERSION_HEADER, max_event_age_ms,
};
use backfill_protocol::time::{format_iso_ms, parse_timestamp_str};
use backfill_protocol::validate::SYNCED_AT;
use backfill_protocol::wire::{
    EventRecord, EventsPage, ProfileRecord, RejectReason, SessionRecord, SessionsPage,
    TrackResponse,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use serde_json::value::RawValue;
use tower_http::cors::CorsLayer;

use crate::auth::Project;
use crate::body::{Encoding, decode, read_raw};
use crate::error::ApiError;
use crate::ingest::{self, Prepared, RequestMeta};
use crate::state::AppState;
use crate::store::{EventQuery, IngestJob, SessionQuery};

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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Open CORS, as upstream: browsers send events straight from pages.
        .layer(CorsLayer::permissive())
        // Outside CORS, so that preflight answers are observed and stamped too.
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Logs failures, records latency and stamps the age window on every successful answer.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let mut response = next.run(request).await;
    if let Some(failure) = response
        .extensions_mut()
        .remove::<crate::error::StoreFailure>()
    {
        tracing::error!(%method, %path, cause = %failure.0, "store failure");
    } else if response.status().is_server_error() {
        tracing::warn!(%method, %path, status = %response.status(), "server error");
    }
    if response.status().is_success() {
        let secs = max_event_age_ms(state.max_event_age_days()) / 1000;
        response
            .headers_mut()
            .insert(MAX_EVENT_AGE_HEADER, HeaderValue::from(secs));
    }
    state
        .metrics()
        .route_histogram(&path)
        .observe(started.elapsed().as_secs_f64());
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
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    body: Body,
    parse: fn(&[u8], &RequestMeta) -> Result<Prepared, ApiError>,
) -> Result<(Project, Prepared), ApiError> {
    let project = state.projects().authenticate(headers).await?;
    let encoding = Encoding::from_headers(headers)?;
    let raw = read_raw(headers, body, MAX_BODY_BYTES).await?;
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
    Ok(state.store().ingest(job).await?)
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

fn split(request: Request) -> (HeaderMap, Option<SocketAddr>, Body) {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    (parts.headers, peer, body)
}

async fn track_batch(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (headers, peer, body) = split(request);
    let (project, mut prepared) =
        receive(&state, &headers, peer, body, ingest::prepare_batch).await?;
    let total = prepared.rows.len() + prepared.rejected.len();
    let outcomes = store_rows(&state, &headers, &project, &mut prepared).await?;
    let response = ingest::summarize(total, prepared, outcomes);
    count(&state, &response);
    Ok((StatusCode::ACCEPTED, Json(response)).into_response())
}

async fn track(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (headers, peer, body) = split(request);
    let (project, mut prepared) =
        receive(&state, &headers, peer, body, ingest::prepare_single).await?;
    let attribution = prepared.attribution.take();
    let outcomes = store_rows(&state, &headers, &project, &mut prepared).await?;
    let response = ingest::summarize(1, prepared, outcomes);
    count(&state, &response);
    if let Some(rejection) = response.rejected.into_iter().next() {
        return Err(match rejection.reason {
            RejectReason::Validation => ApiError::BadRequest(rejection.error),
            RejectReason::Internal => ApiError::Unavailable,
        });
    }
    let attribution = attribution.ok_or(ApiError::Unavailable)?;
    Ok(Json(TrackResponse {
        device_id: attribution.device_id,
        session_id: attribution.session_id,
    })
    .into_response())
}

/// Paging and filter parameters shared by the list routes.
struct ListParams {
    limit: usize,
    after: Option<(i64, String)>,
    from: Option<i64>,
    to: Option<i64>,
}

fn list_params(q: &HashMap<String, String>) -> Result<ListParams, ApiError> {
    let limit = match q.get("limit") {
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
    let time = |key: &str| -> Result<Option<i64>, ApiError> {
        match q.get(key) {
            None => Ok(None),
            Some(v) => parse_timestamp_str(v).map(Some).ok_or_else(|| {
                ApiError::BadRequest(format!("{key} must be ISO-8601 or epoch milliseconds"))
            }),
        }
    };
    let after = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| ApiError::BadRequest("cursor is not valid".to_owned()))?,
        ),
    };
    Ok(ListParams {
        limit,
        after,
        from: time("from")?,
        to: time("to")?,
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

async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<EventsPage>, ApiError> {
    let project = state.projects().authenticate(&headers).await?;
    let p = list_params(&q)?;
    let query = EventQuery {
        project: project.key,
        limit: p.limit + 1,
        after: p.after,
        device_id: q.get("device_id").cloned(),
        session_id: q.get("session_id").cloned(),
        name: q.get("name").cloned(),
        from: p.from,
        to: p.to,
    };
    let rows = state.store().events(query).await?;
    let (rows, next_cursor) = page(rows, p.limit, |e| (e.created_at, e.id.clone()));
    let events = rows
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
    Ok(Json(EventsPage {
        events,
        next_cursor,
    }))
}

async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<SessionsPage>, ApiError> {
    let project = state.projects().authenticate(&headers).await?;
    let p = list_params(&q)?;
    let query = SessionQuery {
        project: project.key,
        limit: p.limit + 1,
        after: p.after,
        device_id: q.get("device_id").cloned(),
        from: p.from,
        to: p.to,
    };
    let rows = state.store().sessions(query).await?;
    let (rows, next_cursor) = page(rows, p.limit, |s| (s.started_at, s.id.clone()));
    let sessions = rows
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
    Ok(Json(SessionsPage {
        sessions,
        next_cursor,
    }))
}

async fn get_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(profile_id): Path<String>,
) -> Result<Json<ProfileRecord>, ApiError> {
    let project = state.projects().authenticate(&headers).await?;
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

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store().health().await?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics().render(),
    )
        .into_response()
}
