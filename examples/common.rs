//! What the examples share: a local server with a known project, and its read API.
//!
//! # Layout
//! - this file: [`LocalServer`];
//! - `iot-gateway.rs`, `mobile-offline.rs`: the scenarios.

use std::collections::HashMap;
use std::sync::Arc;

use backfill_server::clock::SystemClock;
use backfill_server::read_client::ReadClient;
use serde_json::Value;

/// The examples' project.
pub const PROJECT: &str = "5b0e4c2a-8d71-4f3e-a9c6-1e2f3a4b5c6d";
/// Its secret.
pub const SECRET: &str = "example-secret";

/// A server on `127.0.0.1:0` with an embedded store in a temp dir.
pub struct LocalServer {
    runtime: tokio::runtime::Runtime,
    server: Option<backfill_server::RunningServer>,
    _dir: tempfile::TempDir,
}

impl LocalServer {
    /// Starts a server whose age window is `days`.
    pub fn start(days: u32) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        let config = backfill_server::Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().to_owned(),
            max_event_age_days: days,
            projects: vec![
                format!("{PROJECT}:{SECRET}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            ],
            ..Default::default()
        };
        let server =
            runtime.block_on(backfill_server::start(&config, Arc::new(SystemClock), None))?;
        Ok(Self {
            runtime,
            server: Some(server),
            _dir: dir,
        })
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.server.as_ref().map(|s| s.url()).unwrap_or_default()
    }

    fn reader(&self) -> ReadClient {
        ReadClient::new(&self.url(), PROJECT, SECRET)
    }

    /// Every stored event of `name`, across pages.
    pub fn events(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .runtime
            .block_on(self.reader().events(&format!("name={name}")))?)
    }

    /// Whether any event of `name` is stored (one cheap request).
    pub fn any(&self, name: &str) -> anyhow::Result<bool> {
        let page = self.runtime.block_on(
            self.reader()
                .get(&format!("/api/events?name={name}&limit=1")),
        )?;
        Ok(page["events"].as_array().is_some_and(|e| !e.is_empty()))
    }

    /// How many times each insert id is stored among events of `name`.
    pub fn insert_id_counts(&self, name: &str) -> anyhow::Result<HashMap<String, usize>> {
        let mut counts = HashMap::new();
        for e in self.events(name)? {
            *counts
                .entry(e["insert_id"].as_str().unwrap_or_default().to_owned())
                .or_insert(0) += 1;
        }
        Ok(counts)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.stop());
        }
    }
}
