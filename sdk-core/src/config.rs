//! SDK configuration: a builder with the defaults a device app wants.

use std::path::PathBuf;
use std::time::Duration;

use backfill_protocol::limits::{
    DEFAULT_MAX_EVENT_AGE_DAYS, MAX_BATCH_EVENTS, MAX_BODY_BYTES, max_event_age_ms,
};

use crate::error::Error;

/// Everything the SDK needs; build it with [`Config::builder`].
#[derive(Clone)]
pub struct Config {
    /// Base URL of the server, e.g. `https://ingest.example.com`.
    pub endpoint: String,
    /// The project's client id.
    pub client_id: String,
    /// The project's client secret.
    pub client_secret: String,
    /// Path of the SQLite buffer file.
    pub database_path: PathBuf,
    /// Most events in one request (at most 2000).
    pub max_batch_events: usize,
    /// Most bytes of JSON in one request before compression (at most 10 MiB).
    pub max_batch_bytes: usize,
    /// Most buffered events; past it the oldest are evicted.
    pub max_buffer_rows: u64,
    /// Most buffered bytes; past it the oldest are evicted.
    pub max_buffer_bytes: u64,
    /// A drain starts once this many events are buffered.
    pub flush_threshold: u64,
    /// A drain starts this long after the last one while events are buffered.
    pub flush_interval: Duration,
    /// Gzip request bodies.
    pub compress: bool,
    /// A client session ends after this long without events (by event time).
    pub session_timeout: Duration,
    /// A client session ends once it is this long.
    pub max_session_length: Duration,
    /// The age window assumed until the server has said its own.
    pub default_max_event_age: Duration,
    /// This device's id; generated once and persisted when `None`.
    pub device_id: Option<String>,
    /// First retry delay; doubles per attempt, with full jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Start the background uploader (off for tools that drain by hand).
    pub background_upload: bool,
    /// Most rows kept in the dead-letter table; the oldest go first.
    pub max_dead_letters: u64,
    /// Hard cap on the buffer file's size; recording fails with [`Error::StorageFull`] past it
    /// (as on a full disk) rather than growing the file.
    pub max_database_bytes: Option<u64>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("database_path", &self.database_path)
            .field("max_batch_events", &self.max_batch_events)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A builder with the defaults.
    pub fn builder(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        database_path: impl Into<PathBuf>,
    ) -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                endpoint: endpoint.into(),
                client_id: client_id.into(),
                client_secret: client_secret.into(),
                database_path: database_path.into(),
                max_batch_events: MAX_BATCH_EVENTS,
                max_batch_bytes: MAX_BODY_BYTES,
                max_buffer_rows: 1_000_000,
                max_buffer_bytes: 512 * 1024 * 1024,
                flush_threshold: 200,
                flush_interval: Duration::from_secs(30),
                compress: true,
                session_timeout: Duration::from_secs(30 * 60),
                max_session_length: Duration::from_secs(24 * 3600),
                default_max_event_age: Duration::from_millis(max_event_age_ms(
                    DEFAULT_MAX_EVENT_AGE_DAYS,
                ) as u64),
                device_id: None,
                retry_base: Duration::from_secs(1),
                retry_cap: Duration::from_secs(300),
                request_timeout: Duration::from_secs(60),
                background_upload: true,
                max_dead_letters: 1000,
                max_database_bytes: None,
            },
        }
    }
}

/// Builds a [`Config`]; every setter is optional.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident: $ty:ty),* $(,)?) => {
        $(#[$doc] pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        })*
    };
}

impl ConfigBuilder {
    setter! {
        /// Most events in one request (1 to 2000).
        max_batch_events: usize,
        /// Most bytes of JSON in one request before compression (up to 10 MiB).
        max_batch_bytes: usize,
        /// Most buffered events.
        max_buffer_rows: u64,
        /// Most buffered bytes.
        max_buffer_bytes: u64,
        /// Buffered events that start a drain.
        flush_threshold: u64,
        /// Time between drains while events are buffered.
        flush_interval: Duration,
        /// Gzip request bodies.
        compress: bool,
        /// Inactivity that ends a client session.
        session_timeout: Duration,
        /// Longest client session.
        max_session_length: Duration,
        /// Age window assumed until the server says its own.
        default_max_event_age: Duration,
        /// First retry delay.
        retry_base: Duration,
        /// Longest retry delay.
        retry_cap: Duration,
        /// Per-request timeout.
        request_timeout: Duration,
        /// Start the background uploader.
        background_upload: bool,
        /// Most rows kept in the dead-letter table.
        max_dead_letters: u64,
    }

    /// Hard cap on the buffer file's size.
    pub fn max_database_bytes(mut self, bytes: u64) -> Self {
        self.config.max_database_bytes = Some(bytes);
        self
    }

    /// A fixed device id instead of a generated one.
    pub fn device_id(mut self, id: impl Into<String>) -> Self {
        self.config.device_id = Some(id.into());
        self
    }

    /// Checks the settings and returns the config.
    pub fn build(self) -> Result<Config, Error> {
        let c = self.config;
        let invalid = |m: String| Err(Error::InvalidConfig(m));
        crate::upload::endpoint::check(&c.endpoint).map_err(Error::InvalidConfig)?;
        if c.client_id.trim().is_empty() || c.client_secret.is_empty() {
            return invalid("client id and secret are required".to_owned());
        }
        if !(1..=MAX_BATCH_EVENTS).contains(&c.max_batch_events) {
            return invalid(format!("max_batch_events must be 1 to {MAX_BATCH_EVENTS}"));
        }
        if !(1024..=MAX_BODY_BYTES).contains(&c.max_batch_bytes) {
            return invalid(format!("max_batch_bytes must be 1 KiB to {MAX_BODY_BYTES}"));
        }
        if c.max_buffer_rows == 0 || c.max_buffer_bytes == 0 {
            return invalid("buffer bounds must be positive".to_owned());
        }
        if let Some(id) = &c.device_id
            && !(1..=64).contains(&id.trim().chars().count())
        {
            return invalid("device id must be 1 to 64 characters".to_owned());
        }
        Ok(c)
    }
}
