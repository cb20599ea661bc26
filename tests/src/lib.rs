//! Helpers for the end-to-end tests: the real server on `127.0.0.1:0` in its own runtime, the
//! read API, and SDK configs pointing at it.
//!
//! # Layout
//! - this file: [`TestServer`] starts and stops a server; its methods read back what it stored.
//! - [`proxy`]: a fault-injecting proxy between SDK and server.
//! - `src/bin/sdk_child.rs`: a process that records events, for the SIGKILL test.
//!
//! The tests themselves are in `tests/`.

pub mod proxy;

use std::sync::Arc;

use backfill_core::Config;
use backfill_server::clock::SystemClock;
use backfill_server::config::ProjectCredential;
use backfill_server::read_client::ReadClient;
use backfill_server::store::Store;
use backfill_server::{RunningServer, start};
use serde_json::Value;

/// The project every test uses.
pub const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
/// Its secret.
pub const SECRET: &str = "e2e-secret";
/// One minute in ms.
pub const MINUTE: i64 = 60_000;
/// One day in ms.
pub const DAY: i64 = 86_400_000;

/// Now, epoch ms.
pub fn now_ms() -> i64 {
    use backfill_server::clock::Clock;
    SystemClock.now_ms()
}

/// A real server with its own runtime and data directory.
pub struct TestServer {
    /// The runtime serving it (also used for read-API calls).
    pub runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    /// Its data directory.
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with an age window of `days`, on the embedded store or on `store`.
    pub fn start(days: u32, store: Option<Arc<dyn Store>>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = backfill_server::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_owned(),
            max_event_age_days: days,
            projects: vec![
                format!("{PROJECT}:{SECRET}")
                    .parse::<ProjectCredential>()
                    .expect("project"),
            ],
            ..Default::default()
        };
        let server = runtime
            .block_on(start(&config, Arc::new(SystemClock), store))
            .expect("server starts");
        Self {
            runtime,
            server: Some(server),
            dir,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server
            .as_ref()
            .map(|s| s.addr)
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.server
            .as_ref()
            .map(RunningServer::url)
            .unwrap_or_default()
    }

    /// An SDK config for this server with a buffer at `db`, background uploads off.
    pub fn sdk_config(&self, db: &std::path::Path) -> backfill_core::ConfigBuilder {
        Config::builder(self.url(), PROJECT, SECRET, db).background_upload(false)
    }

    /// A read-API client for the test project.
    pub fn reader(&self) -> ReadClient {
        ReadClient::new(&self.url(), PROJECT, SECRET)
    }

    /// `GET` a read-API path with the test project's credentials.
    pub fn get(&self, path: &str) -> Value {
        self.runtime
            .block_on(self.reader().get(path))
            .expect("read API")
    }

    /// Every row of a list route, across pages.
    pub fn all(&self, route: &str, key: &str, query: &str) -> Vec<Value> {
        self.runtime
            .block_on(self.reader().all(route, key, query))
            .expect("read API")
    }

    /// Every stored event matching `query`.
    pub fn events(&self, query: &str) -> Vec<Value> {
        self.all("/api/events", "events", query)
    }

    /// Every stored session matching `query`.
    pub fn sessions(&self, query: &str) -> Vec<Value> {
        self.all("/api/sessions", "sessions", query)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.stop());
        }
    }
}
