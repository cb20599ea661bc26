//! SDK configuration in plain types (numbers, text, milliseconds), so that a language binding
//! carries it as it is; a builder with the defaults a device app wants, for Rust users.

use std::path::PathBuf;
use std::time::Duration;

use backfill_protocol::limits::{
    DEFAULT_MAX_EVENT_AGE_DAYS, MAX_BATCH_EVENTS, MAX_BODY_BYTES, max_event_age_ms,
};

use crate::error::Error;

/// Everything the SDK needs. Build it with [`Config::builder`], or start from [`Config::new`]
/// (the defaults) and set fields; [`Backfill::open`](crate::Backfill::open) checks it either way.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the server, e.g. `https://ingest.example.com`.
    pub endpoint: String,
    /// The project's client id.
    pub client_id: String,
    /// The project's client secret.
    pub client_secret: String,
    /// Path of the SQLite buffer file (created with its folder when missing).
    pub database_path: String,
    /// Most events in one request: 1 to 2000 (SPEC §2). Default 2000.
    pub max_batch_events: u32,
    /// Most bytes of JSON in one request before compression: 1 KiB to 10 MiB (SPEC §2).
    /// Default 10 MiB.
    pub max_batch_bytes: u32,
    /// Most buffered events; past it the oldest are evicted and counted. Default 1,000,000.
    pub max_buffer_rows: u64,
    /// Most buffered bytes of event JSON; past it the oldest are evicted. Default 512 MiB.
    pub max_buffer_bytes: u64,
    /// The background uploader drains once this many events are buffered. Default 200.
    pub flush_threshold: u64,
    /// The background uploader drains this long (ms) after the last drain while events are
    /// buffered. Default 30,000.
    pub flush_interval_ms: u64,
    /// Gzip request bodies. Default on.
    pub compress: bool,
    /// A client session ends after this long (ms) without events, by event time. Default 30
    /// minutes (SPEC §9).
    pub session_timeout_ms: u64,
    /// A client session ends once it is this long (ms). Default 24 hours (SPEC §9).
    pub max_session_length_ms: u64,
    /// The age window (ms) assumed until the server has said its own. Default 5 days (SPEC §4).
    pub default_max_event_age_ms: u64,
    /// This device's id, 1 to 64 characters; generated once and persisted when `None`.
    pub device_id: Option<String>,
    /// First retry delay (ms); doubles per attempt, with full jitter. Default 1,000.
    pub retry_base_ms: u64,
    /// Longest retry delay (ms). Default 300,000.
    pub retry_cap_ms: u64,
    /// Per-request timeout (ms) of the built-in HTTP transport. Default 60,000.
    pub request_timeout_ms: u64,
    /// Start the background uploader (off for tools that drain by hand). Default on.
    pub background_upload: bool,
    /// Most rows kept in the dead-letter table; the oldest go first. Default 1,000.
    pub max_dead_letters: u64,
    /// Hard cap on the buffer file's size in bytes; recording fails with
    /// [`Error::StorageFull`] past it (as on a full disk) rather than growing the file.
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

/// Milliseconds of a duration, saturating.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// The defaults for a server, its credentials and a buffer file; not yet checked.
    pub fn new(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        database_path: impl Into<String>,
    ) -> Self {
        Config {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            database_path: database_path.into(),
            max_batch_events: MAX_BATCH_EVENTS as u32,
            max_batch_bytes: MAX_BODY_BYTES as u32,
            max_buffer_rows: 1_000_000,
            max_buffer_bytes: 512 * 1024 * 1024,
            flush_threshold: 200,
            flush_interval_ms: 30_000,
            compress: true,
            session_timeout_ms: 30 * 60_000,
            max_session_length_ms: 24 * 3_600_000,
            default_max_event_age_ms: max_event_age_ms(DEFAULT_MAX_EVENT_AGE_DAYS) as u64,
            device_id: None,
            retry_base_ms: 1_000,
            retry_cap_ms: 300_000,
            request_timeout_ms: 60_000,
            background_upload: true,
            max_dead_letters: 1000,
            max_database_bytes: None,
        }
    }

    /// A builder with the defaults.
    pub fn builder(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        database_path: impl Into<PathBuf>,
    ) -> ConfigBuilder {
        ConfigBuilder {
            config: Config::new(endpoint, client_id, client_secret, String::new()),
            database_path: database_path.into(),
        }
    }

    /// Checks every setting; the error names the one to fix.
    pub fn validate(&self) -> Result<(), Error> {
        let c = self;
        let invalid = |m: String| Err(Error::InvalidConfig(m));
        crate::upload::endpoint::check(&c.endpoint).map_err(Error::InvalidConfig)?;
        if c.client_id.trim().is_empty() || c.client_secret.is_empty() {
            return invalid("client id and secret are required".to_owned());
        }
        if c.database_path.trim().is_empty() {
            return invalid("database path is required".to_owned());
        }
        if !(1..=MAX_BATCH_EVENTS as u32).contains(&c.max_batch_events) {
            return invalid(format!("max_batch_events must be 1 to {MAX_BATCH_EVENTS}"));
        }
        if !(1024..=MAX_BODY_BYTES as u32).contains(&c.max_batch_bytes) {
            return invalid(format!("max_batch_bytes must be 1 KiB to {MAX_BODY_BYTES}"));
        }
        if c.max_buffer_rows == 0 || c.max_buffer_bytes == 0 {
            return invalid("buffer bounds must be positive".to_owned());
        }
        if c.flush_threshold == 0 {
            return invalid("flush_threshold must be at least 1".to_owned());
        }
        if c.session_timeout_ms == 0 || c.max_session_length_ms == 0 {
            return invalid("session_timeout_ms and max_session_length_ms must be positive".into());
        }
        if c.default_max_event_age_ms == 0 || c.request_timeout_ms == 0 {
            return invalid(
                "default_max_event_age_ms and request_timeout_ms must be positive".to_owned(),
            );
        }
        if let Some(id) = &c.device_id
            && !(1..=64).contains(&id.trim().chars().count())
        {
            return invalid("device id must be 1 to 64 characters".to_owned());
        }
        Ok(())
    }

    /// [`Config::session_timeout_ms`] as signed ms, the type of event times.
    pub(crate) fn session_timeout(&self) -> i64 {
        i64::try_from(self.session_timeout_ms).unwrap_or(i64::MAX)
    }

    /// [`Config::max_session_length_ms`] as signed ms.
    pub(crate) fn max_session_length(&self) -> i64 {
        i64::try_from(self.max_session_length_ms).unwrap_or(i64::MAX)
    }
}

/// Builds a [`Config`]; every setter is optional.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
    database_path: PathBuf,
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident: $ty:ty),* $(,)?) => {
        $(#[$doc] pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        })*
    };
}

macro_rules! duration_setter {
    ($(#[$doc:meta] $name:ident => $field:ident),* $(,)?) => {
        $(#[$doc] pub fn $name(mut self, value: Duration) -> Self {
            self.config.$field = ms(value);
            self
        })*
    };
}

impl ConfigBuilder {
    setter! {
        /// Most events in one request (1 to 2000).
        max_batch_events: u32,
        /// Most bytes of JSON in one request before compression (up to 10 MiB).
        max_batch_bytes: u32,
        /// Most buffered events.
        max_buffer_rows: u64,
        /// Most buffered bytes.
        max_buffer_bytes: u64,
        /// Buffered events that start a drain.
        flush_threshold: u64,
        /// Gzip request bodies.
        compress: bool,
        /// Start the background uploader.
        background_upload: bool,
        /// Most rows kept in the dead-letter table.
        max_dead_letters: u64,
    }

    duration_setter! {
        /// Time between drains while events are buffered.
        flush_interval => flush_interval_ms,
        /// Inactivity that ends a client session.
        session_timeout => session_timeout_ms,
        /// Longest client session.
        max_session_length => max_session_length_ms,
        /// Age window assumed until the server says its own.
        default_max_event_age => default_max_event_age_ms,
        /// First retry delay.
        retry_base => retry_base_ms,
        /// Longest retry delay.
        retry_cap => retry_cap_ms,
        /// Per-request timeout.
        request_timeout => request_timeout_ms,
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
        let mut c = self.config;
        c.database_path = self
            .database_path
            .to_str()
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "database path must be UTF-8: {}",
                    self.database_path.display()
                ))
            })?
            .to_owned();
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_and_the_plain_defaults_agree() {
        let built = Config::builder("https://x.example", "id", "secret", "/tmp/b.db")
            .build()
            .expect("valid");
        assert_eq!(
            built,
            Config::new("https://x.example", "id", "secret", "/tmp/b.db")
        );
        assert_eq!(built.flush_interval_ms, 30_000);
        assert_eq!(built.default_max_event_age_ms, 432_000_000);
    }

    #[test]
    fn each_bad_setting_is_named() {
        let base = || Config::new("https://x.example", "id", "secret", "b.db");
        type Change = fn(&mut Config);
        let cases: [(&str, Change); 5] = [
            ("endpoint", |c| c.endpoint = "ftp://x".into()),
            ("database path", |c| c.database_path = " ".into()),
            ("max_batch_events", |c| c.max_batch_events = 0),
            ("flush_threshold", |c| c.flush_threshold = 0),
            ("device id", |c| c.device_id = Some(String::new())),
        ];
        for (named, change) in cases {
            let mut c = base();
            change(&mut c);
            let e = c.validate().expect_err(named).to_string();
            assert!(e.contains(named), "{e} names {named}");
        }
        assert_eq!(base().validate(), Ok(()));
    }
}
