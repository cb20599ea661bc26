//! Building wire events from the API's arguments, checked by the contract's own rules.

use backfill_protocol::validate::{DEVICE_ID, INSERT_ID, SESSION_ID, TIMESTAMP, validate_event};
use serde_json::{Map, Value, json};

use crate::error::Error;

/// One event to record, for [`crate::Backfill::track_many`].
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// Event name.
    pub name: String,
    /// Properties.
    pub properties: Map<String, Value>,
    /// Event time (ms); now when `None`.
    pub timestamp_ms: Option<i64>,
    /// Another device's id (a gateway recording for its sensors); this device when `None`.
    pub device_id: Option<String>,
    /// The event's `__insertId` (1 to 64 characters, SPEC §5): a given one makes a replay of
    /// the same event a duplicate the server stores once; a fresh UUIDv7 when `None`.
    pub insert_id: Option<String>,
}

/// The SDK-controlled parts of an event.
pub(crate) struct Stamp<'a> {
    pub time_ms: i64,
    pub insert_id: &'a str,
    pub device_id: &'a str,
    pub session_id: Option<&'a str>,
    pub profile_id: Option<&'a str>,
}

/// The wire JSON of a `track` event, after checking it as the server will.
pub(crate) fn track_json(
    name: &str,
    globals: &Map<String, Value>,
    properties: Map<String, Value>,
    stamp: &Stamp<'_>,
) -> Result<String, Error> {
    let mut merged = globals.clone();
    merged.extend(properties);
    let mut payload = json!({"name": name});
    if let Some(profile) = stamp.profile_id {
        payload["profileId"] = Value::from(profile);
    }
    finish("track", payload, merged, stamp)
}

/// The wire JSON of an `identify` event.
pub(crate) fn identify_json(
    profile_id: &str,
    mut traits: Map<String, Value>,
    stamp: &Stamp<'_>,
) -> Result<String, Error> {
    let mut payload = json!({"profileId": profile_id});
    for key in ["firstName", "lastName", "email", "avatar"] {
        if let Some(v) = traits.remove(key) {
            payload[key] = v;
        }
    }
    finish("identify", payload, traits, stamp)
}

fn finish(
    kind: &str,
    mut payload: Value,
    mut properties: Map<String, Value>,
    stamp: &Stamp<'_>,
) -> Result<String, Error> {
    properties.insert(TIMESTAMP.to_owned(), Value::from(stamp.time_ms));
    properties.insert(INSERT_ID.to_owned(), Value::from(stamp.insert_id));
    properties.insert(DEVICE_ID.to_owned(), Value::from(stamp.device_id));
    match stamp.session_id {
        Some(session) => properties.insert(SESSION_ID.to_owned(), Value::from(session)),
        None => properties.remove(SESSION_ID),
    };
    payload["properties"] = Value::Object(properties);
    let event = json!({"type": kind, "payload": payload});
    let text = event.to_string();
    validate_event(&text).map_err(Error::InvalidEvent)?;
    Ok(text)
}
