//! The numbers fixed by the contract (SPEC §2, §4, §6).

/// Most events in one `POST /track/batch` request.
pub const MAX_BATCH_EVENTS: usize = 2000;
/// Most bytes of a request body after decoding (10 MiB).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Most bytes one event may serialise to (256 KiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Deepest nesting of an event's `properties`; the properties object itself is level 1.
pub const MAX_PROPERTY_DEPTH: usize = 16;
/// Longest event name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 80;
/// Longest `__deviceId`, `__sessionId` and `__insertId`, in characters.
pub const MAX_ID_CHARS: usize = 64;

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// Default age window: events older than this (by event time) are rejected (5 days).
pub const DEFAULT_MAX_EVENT_AGE_DAYS: u32 = 5;
/// Smallest age window a server may be configured with, in days.
pub const MIN_MAX_EVENT_AGE_DAYS: u32 = 1;
/// Largest age window a server may be configured with, in days.
pub const MAX_MAX_EVENT_AGE_DAYS: u32 = 90;
/// Events up to this far after the receive time keep their time; later ones are clamped.
pub const FUTURE_TOLERANCE_MS: i64 = 60_000;
/// A batch whose `sentAt` differs from the receive time by more than this is skew-corrected.
pub const SKEW_THRESHOLD_MS: i64 = 60_000;

/// Length of one deterministic server session bucket (30 minutes).
pub const SESSION_WINDOW_MS: i64 = 1_800_000;
/// Events this soon after a bucket boundary still belong to the previous bucket.
pub const SESSION_GRACE_MS: i64 = 5_000;
/// A `session_start` event is placed this long before the earliest event of its session.
pub const SESSION_START_LEAD_MS: i64 = 100;

/// Response header carrying the server's age window in seconds.
pub const MAX_EVENT_AGE_HEADER: &str = "backfill-max-event-age";
/// Request header carrying the project's client id.
pub const CLIENT_ID_HEADER: &str = "openpanel-client-id";
/// Request header carrying the project's client secret.
pub const CLIENT_SECRET_HEADER: &str = "openpanel-client-secret";
/// Request header naming the SDK that sent the events.
pub const SDK_NAME_HEADER: &str = "openpanel-sdk-name";
/// Request header carrying the SDK's version.
pub const SDK_VERSION_HEADER: &str = "openpanel-sdk-version";

/// The age window in milliseconds for a window of `days` days.
pub fn max_event_age_ms(days: u32) -> i64 {
    i64::from(days) * DAY_MS
}
