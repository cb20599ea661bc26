//! Shared set-up for the server's tests: a store in a temp dir, a manual clock, known projects.
#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use backfill_server::auth;
use backfill_server::clock::{Clock, ManualClock};
use backfill_server::config::ProjectCredential;
use backfill_server::metrics::Metrics;
use backfill_server::store::Store;
use backfill_server::store::sqlite::{SqliteOptions, SqliteStore};
use backfill_server::{AppState, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
pub const SECRET: &str = "s3cret-for-tests";
pub const OTHER_PROJECT: &str = "6a1f0c7e-2d3b-4e5f-8a9b-0c1d2e3f4a5b";
pub const OTHER_SECRET: &str = "other-secret";
/// 2026-11-28T10:00:00Z
pub const NOW: i64 = 1_795_860_000_000;
pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

pub fn credentials() -> Vec<ProjectCredential> {
    vec![
        format!("{PROJECT}:{SECRET}").parse().expect("credential"),
        format!("{OTHER_PROJECT}:{OTHER_SECRET}")
            .parse()
            .expect("credential"),
    ]
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub store: Arc<dyn Store>,
    pub router: Router,
}

pub fn open_store(dir: &std::path::Path, clock: &ManualClock) -> Arc<dyn Store> {
    let options = SqliteOptions {
        clock: Arc::new(clock.clone()),
        commit_latency: None,
    };
    Arc::new(SqliteStore::open(&dir.join("backfill.db"), options).expect("open store"))
}

impl Harness {
    pub async fn new() -> Self {
        Self::with_window(5).await
    }

    pub async fn with_window(days: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(NOW);
        let store = open_store(dir.path(), &clock);
        Self::over(dir, clock, store, days).await
    }

    pub async fn over(
        dir: tempfile::TempDir,
        clock: ManualClock,
        store: Arc<dyn Store>,
        days: u32,
    ) -> Self {
        auth::bootstrap(store.as_ref(), &credentials(), clock.now_ms())
            .await
            .expect("bootstrap");
        let state = AppState::new(
            Arc::clone(&store),
            Arc::new(clock.clone()),
            Arc::new(Metrics::default()),
            days,
            None,
        )
        .await
        .expect("state");
        Self {
            dir,
            clock,
            store,
            router: app(state),
        }
    }

    /// Reopens the same data directory, as a restarted server would.
    pub async fn restart(self) -> Self {
        let Harness {
            dir,
            clock,
            store,
            router,
        } = self;
        drop(router);
        drop(store);
        let store = open_store(dir.path(), &clock);
        Self::over(dir, clock, store, 5).await
    }

    pub async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, headers, body)
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::post(path)
            .header("content-type", "application/json")
            .header("openpanel-client-id", PROJECT)
            .header("openpanel-client-secret", SECRET);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(body)).expect("request"))
            .await
    }

    pub async fn batch_body(&self, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .post_raw("/track/batch", body.to_string().into_bytes(), &[])
            .await;
        (status, body)
    }

    pub async fn batch(&self, events: Vec<Value>) -> (StatusCode, Value) {
        self.batch_body(json!({ "events": events })).await
    }

    /// A batch that must be accepted whole.
    pub async fn accept(&self, events: Vec<Value>) -> Value {
        let n = events.len();
        let (status, body) = self.batch(events).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["accepted"], json!(n), "{body}");
        body
    }

    pub async fn get(&self, path_and_query: &str) -> (StatusCode, Value) {
        self.get_as(path_and_query, PROJECT, SECRET).await
    }

    pub async fn get_as(
        &self,
        path_and_query: &str,
        id: &str,
        secret: &str,
    ) -> (StatusCode, Value) {
        let req = Request::get(path_and_query)
            .header("openpanel-client-id", id)
            .header("openpanel-client-secret", secret)
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = self.send(req).await;
        (status, body)
    }

    /// A `GET` answer's status and body text, for what `Value` would alter (number text).
    pub async fn get_text(&self, path_and_query: &str) -> (StatusCode, String) {
        let req = Request::get(path_and_query)
            .header("openpanel-client-id", PROJECT)
            .header("openpanel-client-secret", SECRET)
            .body(Body::empty())
            .expect("request");
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Every event of the project matching `query`, across pages.
    pub async fn all_events(&self, query: &str) -> Vec<Value> {
        self.all("/api/events", "events", query).await
    }

    /// Every session of the project matching `query`, across pages.
    pub async fn all_sessions(&self, query: &str) -> Vec<Value> {
        self.all("/api/sessions", "sessions", query).await
    }

    async fn all(&self, path: &str, key: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{path}?limit=1000&{query}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(&url).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            out.extend(body[key].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

/// A `track` event with `properties`.
pub fn track(name: &str, properties: Value) -> Value {
    json!({"type": "track", "payload": {"name": name, "properties": properties}})
}

/// A reading of `device` at `t` (ms) with an insert id.
pub fn reading(device: &str, t: i64, insert_id: &str) -> Value {
    track(
        "reading",
        json!({"temp": 21.5, "__deviceId": device, "__timestamp": t, "__insertId": insert_id}),
    )
}

pub fn rejected_indices(body: &Value) -> Vec<u64> {
    body["rejected"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["index"].as_u64()).collect())
        .unwrap_or_default()
}
