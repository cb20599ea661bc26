//! What the SDK reports about itself.

use serde::Serialize;

/// A snapshot of the buffer and the uploads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Events waiting in the buffer.
    pub buffered_events: u64,
    /// Bytes of event JSON waiting in the buffer.
    pub buffered_bytes: u64,
    /// Age of the oldest buffered event (ms), if any.
    pub oldest_event_age_ms: Option<i64>,
    /// Time of the oldest buffered event (epoch ms), if any.
    pub oldest_event_ms: Option<i64>,
    /// Time of the newest buffered event (epoch ms), if any.
    pub newest_event_ms: Option<i64>,
    /// Events the server accepted, since the buffer was created.
    pub sent: u64,
    /// Of those, events it already had.
    pub duplicates: u64,
    /// Events the server refused for good (kept in the dead-letter table, bounded).
    pub dead_lettered: u64,
    /// Dead letters deleted because the dead-letter table was past its bound (the oldest go
    /// first); counted here, never dropped silently.
    pub dead_letters_evicted: u64,
    /// Events dropped for falling out of the server's age window.
    pub expired: u64,
    /// Events dropped to keep the buffer within its bounds.
    pub evicted: u64,
    /// Requests sent.
    pub requests: u64,
    /// Request body bytes sent on the wire.
    pub bytes_sent: u64,
    /// Uploads are paused because the server refused the credentials.
    pub unauthorized: bool,
    /// The user has opted out: nothing is recorded.
    pub opted_out: bool,
    /// Recording calls (`track`, `identify`, ...) that recorded nothing because the user had
    /// opted out, since the buffer was opened.
    pub opted_out_calls: u64,
    /// Uploads are paused because the answers said the endpoint is wrong (SPEC §9); the data
    /// is kept and `last_error` says what the server answered.
    pub misconfigured: bool,
    /// The last error, if any (uploads or storage): this SDK's own, else the last one any SDK
    /// kept in this buffer, prefixed with its time. `None` again once a drain empties the
    /// buffer.
    pub last_error: Option<String>,
}
