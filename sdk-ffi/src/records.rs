//! Plain records crossing the boundary: the config, the stats and a drain's report.

use backfill_core::{Config, Stats};

/// How to reach the server and where to buffer. Only the first four fields are required;
/// every other one is `null`/`None` for the default, given in its doc.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct BackfillConfig {
    /// Base URL of the server, e.g. `https://ingest.example.com`.
    pub endpoint: String,
    /// The project's client id.
    pub client_id: String,
    /// The project's client secret.
    pub client_secret: String,
    /// Path of the SQLite buffer file (created with its folder when missing). On a phone, a
    /// file in the app's private files or Application Support folder.
    pub database_path: String,
    /// This device's id (1 to 64 characters); default: a random id generated once and kept.
    #[uniffi(default)]
    pub device_id: Option<String>,
    /// Buffered events that start a background drain. Default 200.
    #[uniffi(default)]
    pub flush_threshold: Option<u64>,
    /// Milliseconds between background drains while events wait. Default 30,000.
    #[uniffi(default)]
    pub flush_interval_ms: Option<u64>,
    /// Most events per request, 1 to 2000. Default 2000.
    #[uniffi(default)]
    pub max_batch_events: Option<u32>,
    /// Most JSON bytes per request before compression, 1 KiB to 10 MiB. Default 10 MiB.
    #[uniffi(default)]
    pub max_batch_bytes: Option<u32>,
    /// Most buffered events; past it the oldest are evicted and counted. Default 1,000,000.
    #[uniffi(default)]
    pub max_buffer_events: Option<u64>,
    /// Most buffered bytes; past it the oldest are evicted and counted. Default 512 MiB.
    #[uniffi(default)]
    pub max_buffer_bytes: Option<u64>,
    /// Hard cap on the buffer file's size; recording fails with a storage error past it.
    /// Default: none.
    #[uniffi(default)]
    pub max_database_bytes: Option<u64>,
    /// Gzip request bodies. Default true.
    #[uniffi(default)]
    pub compress: Option<bool>,
    /// A client session ends after this many ms without events. Default 30 minutes.
    #[uniffi(default)]
    pub session_timeout_ms: Option<u64>,
    /// First retry delay in ms (doubles per attempt, full jitter). Default 1,000.
    #[uniffi(default)]
    pub retry_base_ms: Option<u64>,
    /// Longest retry delay in ms. Default 300,000.
    #[uniffi(default)]
    pub retry_cap_ms: Option<u64>,
    /// Per-request timeout of the built-in HTTP transport, in ms. Default 60,000.
    #[uniffi(default)]
    pub request_timeout_ms: Option<u64>,
    /// Drain in the background (threshold, interval, back online). Default true; false for
    /// tools that drain by hand with `flush()`.
    #[uniffi(default)]
    pub background_upload: Option<bool>,
}

impl From<BackfillConfig> for Config {
    fn from(c: BackfillConfig) -> Self {
        let d = Config::new(c.endpoint, c.client_id, c.client_secret, c.database_path);
        Config {
            device_id: c.device_id,
            flush_threshold: c.flush_threshold.unwrap_or(d.flush_threshold),
            flush_interval_ms: c.flush_interval_ms.unwrap_or(d.flush_interval_ms),
            max_batch_events: c.max_batch_events.unwrap_or(d.max_batch_events),
            max_batch_bytes: c.max_batch_bytes.unwrap_or(d.max_batch_bytes),
            max_buffer_rows: c.max_buffer_events.unwrap_or(d.max_buffer_rows),
            max_buffer_bytes: c.max_buffer_bytes.unwrap_or(d.max_buffer_bytes),
            max_database_bytes: c.max_database_bytes.or(d.max_database_bytes),
            compress: c.compress.unwrap_or(d.compress),
            session_timeout_ms: c.session_timeout_ms.unwrap_or(d.session_timeout_ms),
            retry_base_ms: c.retry_base_ms.unwrap_or(d.retry_base_ms),
            retry_cap_ms: c.retry_cap_ms.unwrap_or(d.retry_cap_ms),
            request_timeout_ms: c.request_timeout_ms.unwrap_or(d.request_timeout_ms),
            background_upload: c.background_upload.unwrap_or(d.background_upload),
            ..d
        }
    }
}

/// A snapshot of the buffer and the uploads.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct BackfillStats {
    /// Events waiting in the buffer.
    pub buffered: u64,
    /// Bytes of event JSON waiting in the buffer.
    pub buffered_bytes: u64,
    /// Time of the oldest buffered event (epoch ms), if any.
    pub oldest_event_ms: Option<i64>,
    /// Time of the newest buffered event (epoch ms), if any.
    pub newest_event_ms: Option<i64>,
    /// Events the server accepted since the buffer was created (duplicates included).
    pub sent: u64,
    /// Of those, events the server already had.
    pub duplicates: u64,
    /// Events the server refused for good (kept in a bounded dead-letter table).
    pub dead_lettered: u64,
    /// Dead letters dropped to keep the dead-letter table within its bound (counted, never
    /// silently).
    pub dead_letters_evicted: u64,
    /// Events dropped for falling out of the server's age window.
    pub expired: u64,
    /// Events dropped to keep the buffer within its bounds.
    pub evicted: u64,
    /// Requests sent.
    pub requests: u64,
    /// Request body bytes sent on the wire.
    pub bytes_sent: u64,
    /// Uploads are paused: the server refused the credentials.
    pub unauthorized: bool,
    /// Uploads are paused: the answers say the endpoint is wrong (`last_error` says why).
    pub misconfigured: bool,
    /// The user has opted out: nothing is recorded.
    pub opted_out: bool,
    /// Recording calls that recorded nothing because the user had opted out (since open).
    pub opted_out_calls: u64,
    /// The last error (uploads or storage), if any.
    pub last_error: Option<String>,
}

impl From<Stats> for BackfillStats {
    fn from(s: Stats) -> Self {
        Self {
            buffered: s.buffered_events,
            buffered_bytes: s.buffered_bytes,
            oldest_event_ms: s.oldest_event_ms,
            newest_event_ms: s.newest_event_ms,
            sent: s.sent,
            duplicates: s.duplicates,
            dead_lettered: s.dead_lettered,
            dead_letters_evicted: s.dead_letters_evicted,
            expired: s.expired,
            evicted: s.evicted,
            requests: s.requests,
            bytes_sent: s.bytes_sent,
            unauthorized: s.unauthorized,
            misconfigured: s.misconfigured,
            opted_out: s.opted_out,
            opted_out_calls: s.opted_out_calls,
            last_error: s.last_error,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum DrainEnd {
    /// Nothing left to send.
    Empty,
    /// The server or the network asked to wait; the rest stays buffered and the background
    /// uploader retries after `wait_ms`.
    RetryLater {
        /// The wait, in ms.
        wait_ms: u64,
    },
    /// The server refused the configuration (`status`: 401/403 credentials); uploads are
    /// paused and the data is kept.
    Stopped {
        /// The HTTP status.
        status: u16,
    },
    /// The answers say the endpoint is wrong (`404`, `405`, `410`, an answer that is not the
    /// contract's: SPEC §9); uploads are paused and the data is kept.
    Misconfigured {
        /// What the server answered.
        reason: String,
    },
}

impl From<backfill_core::DrainEnd> for DrainEnd {
    fn from(end: backfill_core::DrainEnd) -> Self {
        match end {
            backfill_core::DrainEnd::Empty => Self::Empty,
            backfill_core::DrainEnd::RetryIn(wait) => Self::RetryLater {
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            },
            backfill_core::DrainEnd::Unauthorized(status) => Self::Stopped { status },
            backfill_core::DrainEnd::Misconfigured(reason) => Self::Misconfigured { reason },
        }
    }
}

/// What one drain did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DrainReport {
    /// Events the server accepted (duplicates included).
    pub sent: u64,
    /// Of those, events it already had.
    pub duplicates: u64,
    /// Events refused for good and dead-lettered.
    pub dead_lettered: u64,
    /// Events dropped for being older than the server's age window.
    pub expired: u64,
    /// Requests made.
    pub requests: u64,
    /// Request body bytes on the wire.
    pub bytes_sent: u64,
    /// How it ended.
    pub end: DrainEnd,
}

impl From<backfill_core::DrainReport> for DrainReport {
    fn from(r: backfill_core::DrainReport) -> Self {
        Self {
            sent: r.sent,
            duplicates: r.duplicates,
            dead_lettered: r.dead_lettered,
            expired: r.expired,
            requests: r.requests,
            bytes_sent: r.bytes_sent,
            end: r.end.into(),
        }
    }
}
