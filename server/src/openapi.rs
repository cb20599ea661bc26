//! The OpenAPI 3.1 document of every route, generated from the handlers' annotations and the
//! wire types (`backfill-protocol` with its `openapi` feature), served at `/openapi.json`.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use backfill_protocol::limits::{CLIENT_ID_HEADER, CLIENT_SECRET_HEADER};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Backfill",
        description = "Offline-first event ingestion, compatible with OpenPanel's `POST /track`. \
                       The contract is docs/SPEC.md in the repository.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        crate::api::track_batch,
        crate::api::track,
        crate::api::list_events,
        crate::api::list_sessions,
        crate::api::get_profile,
        crate::api::healthz,
        crate::api::metrics,
        crate::api::openapi,
    ),
    modifiers(&Credentials),
    tags(
        (name = "ingest", description = "Sending events: `write` and `root` keys"),
        (name = "read", description = "The read API: `read` and `root` keys"),
        (name = "operations", description = "Health, metrics and this document; no credentials"),
    )
)]
struct ApiDoc;

/// One event of a request (SPEC §3, §4). Bodies are read by the server's own reader, not
/// through this type: it only documents their shape.
#[derive(Serialize, ToSchema)]
pub(crate) struct Event {
    /// The row's kind; `alias` and others are refused with reason `validation`.
    #[serde(rename = "type")]
    kind: EventType,
    /// `name`, `properties`, `profileId` and the fields of the type (SPEC §4); special
    /// properties (`__timestamp`, `__deviceId`, `__sessionId`, `__insertId`, `__ip`) go in
    /// `properties`.
    payload: Map<String, Value>,
}

/// The event types the server stores (SPEC §4).
#[derive(Serialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the wire shape; requests are never read into it"
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventType {
    /// An event.
    Track,
    /// Merges fields into a profile.
    Identify,
    /// Adds to a numeric profile property.
    Increment,
    /// Subtracts from a numeric profile property.
    Decrement,
    /// Creates or updates a group.
    Group,
    /// Adds a profile to groups.
    AssignGroup,
}

/// The body of `POST /track/batch` (SPEC §2).
#[derive(Serialize, ToSchema)]
pub(crate) struct Batch {
    /// 1 to 2000 events; each row is accepted or rejected on its own.
    #[schema(min_items = 1, max_items = 2000)]
    events: Vec<Event>,
    /// The client clock's time when the request was sent: ISO-8601 text or epoch ms.
    #[serde(rename = "sentAt")]
    #[schema(value_type = Option<String>)]
    sent_at: Option<Value>,
}

/// The two credential headers, as API-key security schemes (SPEC §1).
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_id",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                CLIENT_ID_HEADER,
                "The client id, a UUID",
            ))),
        );
        components.add_security_scheme(
            "client_secret",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                CLIENT_SECRET_HEADER,
                "The client's secret",
            ))),
        );
    }
}

/// The document as JSON text, built once.
pub fn json() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| serde_json::to_string(&document()).unwrap_or_else(|_| "{}".to_owned()))
}

/// The document, with the crate's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_route_with_its_statuses() {
        let doc = serde_json::to_value(document()).expect("json");
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, method) in [
            ("/track/batch", "post"),
            ("/track", "post"),
            ("/api/events", "get"),
            ("/api/sessions", "get"),
            ("/api/profiles/{profile_id}", "get"),
            ("/healthz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{path} {method}");
        }
        let batch = &doc["paths"]["/track/batch"]["post"]["responses"];
        for status in ["202", "400", "401", "403", "413", "415", "503"] {
            assert!(batch[status].is_object(), "/track/batch {status}");
        }
        let params: Vec<&str> = doc["paths"]["/api/events"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            params,
            [
                "limit",
                "cursor",
                "device_id",
                "session_id",
                "name",
                "from",
                "to"
            ]
        );
    }
}
