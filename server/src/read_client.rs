//! A small client for the read API (SPEC §8), for dashboards, tools, examples and tests.

use serde_json::Value;

use backfill_protocol::limits::{CLIENT_ID_HEADER, CLIENT_SECRET_HEADER};

/// Reads a project's data from a server.
#[derive(Debug, Clone)]
pub struct ReadClient {
    http: reqwest::Client,
    base: String,
    client_id: String,
    client_secret: String,
}

impl ReadClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`) and one project.
    pub fn new(base: &str, client_id: &str, client_secret: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
        }
    }

    /// `GET` a path (with its query) and parse the JSON answer, whatever its status.
    pub async fn get(&self, path_and_query: &str) -> reqwest::Result<Value> {
        self.http
            .get(format!("{}{path_and_query}", self.base))
            .header(CLIENT_ID_HEADER, &self.client_id)
            .header(CLIENT_SECRET_HEADER, &self.client_secret)
            .send()
            .await?
            .json()
            .await
    }

    /// Every item of a list route (`/api/events` with key `events`, `/api/sessions` with key
    /// `sessions`) matching `query`, following `next_cursor` across pages.
    pub async fn all(&self, route: &str, key: &str, query: &str) -> reqwest::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .get(&format!("{route}?limit=1000&{query}&cursor={cursor}"))
                .await?;
            out.extend(page[key].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => return Ok(out),
            }
        }
    }

    /// Every stored event matching `query` (e.g. `name=reading&device_id=s1`).
    pub async fn events(&self, query: &str) -> reqwest::Result<Vec<Value>> {
        self.all("/api/events", "events", query).await
    }

    /// Every stored session matching `query`.
    pub async fn sessions(&self, query: &str) -> reqwest::Result<Vec<Value>> {
        self.all("/api/sessions", "sessions", query).await
    }
}
