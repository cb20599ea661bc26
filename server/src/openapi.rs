//! The OpenAPI 3.1 document of every route, generated from the handlers' annotations and the
//! wire types (`backfill-protocol` with its `openapi` feature), served at `/openapi.json`.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
