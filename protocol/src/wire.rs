//! JSON bodies of the HTTP contract (SPEC §2, §3, §8).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::properties::RawMap;

/// The body of `POST /track/batch`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchRequest {
    /// 1 to 2000 event objects (`{"type": ..., "payload": ...}`).
    pub events: Vec<Value>,
    /// The client clock's time when the request was sent (ISO-8601 or epoch ms).
    #[serde(rename = "sentAt", default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Value>,
}

/// Why the server refused one row of a batch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RejectReason {
    /// The row will never be accepted: do not resend it.
    Validation,
    /// The server failed on this row: resending it later is safe.
    Internal,
}

impl RejectReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Validation => "validation",
            RejectReason::Internal => "internal",
        }
    }
}

/// One refused row of a batch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejection {
    /// Position of the row in the request's `events`.
    pub index: usize,
    /// Whether resending can ever succeed.
    pub reason: RejectReason,
    /// What was wrong, for people.
    pub error: String,
}

/// The `202` answer to `POST /track/batch`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchResponse {
    /// Rows stored, counting those already stored before (`duplicates`).
    pub accepted: usize,
    /// Accepted rows whose `__insertId` was already stored; safe to delete on the client.
    #[serde(default)]
    pub duplicates: usize,
    /// Refused rows, sorted by index.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

/// The `200` answer to `POST /track`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrackResponse {
    /// The device the event was attributed to (empty for a server event).
    #[serde(rename = "deviceId")]
    pub device_id: String,
    /// The session the event was attributed to (empty for a server event).
    #[serde(rename = "sessionId")]
    pub session_id: String,
}

/// The body of every non-2xx answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The HTTP status code.
    pub status: u16,
    /// The status's reason phrase.
    pub error: String,
    /// What to fix.
    pub message: String,
}

/// One stored event as `GET /api/events` lists it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    /// Server-generated id.
    pub id: String,
    /// Event name (`session_start` for the session markers the server creates).
    pub name: String,
    /// Event type (`track` for every listed event).
    #[serde(rename = "type")]
    pub kind: String,
    /// Device id; empty for server events.
    pub device_id: String,
    /// Session id; empty for server events.
    pub session_id: String,
    /// Profile id, if the event named one.
    pub profile_id: Option<String>,
    /// Event time, ISO-8601 UTC with milliseconds.
    pub created_at: String,
    /// Properties without `__timestamp`, plus `__syncedAt` and, where set, `__clientTimestamp`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub properties: RawMap,
    /// The event's `__insertId`, if it had one.
    pub insert_id: Option<String>,
}

/// A page of `GET /api/events`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    /// Events in (created_at, id) order.
    pub events: Vec<EventRecord>,
    /// Pass as `cursor` to read the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// One session as `GET /api/sessions` lists it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub id: String,
    /// The device the session belongs to.
    pub device_id: String,
    /// The first non-empty profile id among the session's events.
    pub profile_id: Option<String>,
    /// Time of the session's earliest event, ISO-8601 UTC with milliseconds.
    pub started_at: String,
    /// Time of the session's latest event, ISO-8601 UTC with milliseconds.
    pub ended_at: String,
    /// `ended_at - started_at` in milliseconds.
    pub duration_ms: i64,
    /// Number of the session's events, `session_start` not counted.
    pub event_count: i64,
}

/// A page of `GET /api/sessions`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionsPage {
    /// Sessions in (started_at, id) order.
    pub sessions: Vec<SessionRecord>,
    /// Pass as `cursor` to read the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A profile as `GET /api/profiles/{profileId}` returns it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// Profile id.
    pub id: String,
    /// From `identify`'s `firstName`.
    pub first_name: Option<String>,
    /// From `identify`'s `lastName`.
    pub last_name: Option<String>,
    /// From `identify`'s `email`.
    pub email: Option<String>,
    /// From `identify`'s `avatar`.
    pub avatar: Option<String>,
    /// Merged `identify` properties and `increment`/`decrement` counters.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub properties: RawMap,
    /// Ids of the groups the profile was assigned to.
    pub groups: Vec<String>,
    /// When the profile was first written, ISO-8601.
    pub created_at: String,
    /// When the profile was last written, ISO-8601.
    pub updated_at: String,
}
