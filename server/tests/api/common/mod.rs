//! Shared set-up for the server's tests: a store of each [`StoreKind`], a manual clock,
//! known projects. Each test is an `async fn(StoreKind)` listed in [`store_tests!`], which runs
//! it once on every store.
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
use backfill_server::store::postgres::{PostgresOptions, PostgresStore};
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

/// The stores every test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded SQLite file.
    Sqlite,
    /// A database of the test binary's PostgreSQL cluster.
    Postgres,
}

/// Where a test's data lives, so that it can be opened again.
#[derive(Debug, Clone)]
pub enum Place {
    /// A SQLite file.
    File(std::path::PathBuf),
    /// A PostgreSQL database.
    Database(String),
}

impl Place {
    /// A new, empty place of `kind`; SQLite's file goes into `dir`.
    pub fn new(kind: StoreKind, dir: &std::path::Path) -> Place {
        match kind {
            StoreKind::Sqlite => Place::File(dir.join("backfill.db")),
            StoreKind::Postgres => Place::Database(crate::cluster::shared().create_schema()),
        }
    }

    /// Opens the store at this place.
    pub async fn open(&self, clock: &ManualClock) -> Arc<dyn Store> {
        match self {
            Place::File(path) => {
                let options = SqliteOptions {
                    clock: Arc::new(clock.clone()),
                    commit_latency: None,
                };
                Arc::new(SqliteStore::open(path, options).expect("open store"))
            }
            Place::Database(url) => {
                let options = PostgresOptions {
                    url: url.clone(),
                    pool_size: 8,
                    acquire_timeout: std::time::Duration::from_secs(2),
                    clock: Arc::new(clock.clone()),
                    commit_latency: None,
                };
                Arc::new(PostgresStore::connect(options).await.expect("open store"))
            }
        }
    }
}

/// Runs each listed `async fn(StoreKind)` as one test per store: `name::sqlite` and
/// `name::postgres`. The PostgreSQL run needs PostgreSQL installed (see `cluster`).
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::StoreKind::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::cluster::available() {
                    super::$name($crate::common::StoreKind::Postgres).await;
                }
            }
        }
    )*};
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub place: Place,
    pub clock: ManualClock,
    pub store: Arc<dyn Store>,
    pub router: Router,
}

impl Harness {
    pub async fn new(kind: StoreKind) -> Self {
        Self::with_window(kind, 5).await
    }

    pub async fn with_window(kind: StoreKind, days: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(NOW);
        let place = Place::new(kind, dir.path());
        let store = place.open(&clock).await;
        Self::over(dir, place, clock, store, days).await
    }

    pub async fn over(
        dir: tempfile::TempDir,
        place: Place,
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
            place,
            clock,
            store,
            router: app(state),
        }
    }

    /// The one text value `sql` selects, read straight from the store's database, as an
    /// operator would.
    pub async fn select_text(&self, sql: &str) -> String {
        match &self.place {
            Place::File(path) => rusqlite::Connection::open(path)
                .expect("open")
                .query_row(sql, [], |r| r.get(0))
                .expect("one row"),
            Place::Database(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(connection);
                client.query_one(sql, &[]).await.expect("one row").get(0)
            }
        }
    }

    /// Reopens the same store, as a restarted server would.
    pub async fn restart(self) -> Self {
        let Harness {
            dir,
            place,
            clock,
            store,
            router,
        } = self;
        drop(router);
        store.close().await.expect("close");
        drop(store);
        let store = place.open(&clock).await;
        Self::over(dir, place, clock, store, 5).await
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
