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

impl Event {
    /// An event whose properties are JSON object text (what a language binding passes, so
    /// that no binding parses JSON); checked by [`properties_from_json`].
    pub fn from_json(
        name: impl Into<String>,
        properties_json: &str,
        timestamp_ms: Option<i64>,
        device_id: Option<String>,
    ) -> Result<Self, Error> {
        Ok(Self {
            name: name.into(),
            properties: properties_from_json(properties_json)?,
            timestamp_ms,
            device_id,
            insert_id: None,
        })
    }

    /// An event recorded now for this device, from UTF-8 bytes: its `name`, and its
    /// properties as JSON object text read by [`properties_from_json`] (empty for none). What a
    /// binding passes when it encodes the properties itself into a buffer the FFI borrows.
    /// Bytes that are not UTF-8 are [`Error::InvalidEvent`] naming the argument.
    pub fn from_utf8(name: &[u8], properties_json: &[u8]) -> Result<Self, Error> {
        let text = |bytes, what| {
            std::str::from_utf8(bytes)
                .map_err(|e| Error::InvalidEvent(format!("the {what} is not UTF-8: {e}")))
        };
        Self::from_json(
            text(name, "event name")?,
            text(properties_json, "properties' JSON text")?,
            None,
            None,
        )
    }
}

/// Reads properties given as JSON text: a JSON object (`{}` for none). An empty or blank text
/// is read as no properties, so that a binding may leave the argument out. Anything else
/// (an array, a number, bad JSON) is [`Error::InvalidEvent`] naming what was found.
pub fn properties_from_json(text: &str) -> Result<Map<String, Value>, Error> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let parsed = serde_json::from_str::<Value>(text);
    if parsed.is_ok() {
        exact_integers(text).map_err(Error::InvalidEvent)?;
    }
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::InvalidEvent(format!(
            "properties must be a JSON object, not {}",
            kind(&other)
        ))),
        Err(e) => Err(Error::InvalidEvent(format!(
            "properties are not valid JSON: {e}"
        ))),
    }
}

/// Reads one property value given as JSON text (for global properties).
pub fn value_from_json(text: &str) -> Result<Value, Error> {
    let value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidEvent(format!("the value is not valid JSON: {e}")))?;
    exact_integers(text).map_err(Error::InvalidEvent)?;
    Ok(value)
}

/// Refuses a JSON integer that a 64-bit integer cannot hold (a 20-digit ICCID, say): read as
/// a floating-point number it would lose its last digits without a word, so the caller is told
/// to send it as a string instead. `line` is valid JSON text; the error names the number.
pub fn exact_integers(line: &str) -> Result<(), String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len()
                && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                i += 1;
            }
            let token = &line[start..i];
            let integer = !token.contains(['.', 'e', 'E']);
            if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                return Err(format!(
                    "the number {token} has too many digits to be kept exactly; give it as a \
                     string (\"{token}\")"
                ));
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The SDK-controlled parts of an event.
pub(crate) struct Stamp<'a> {
    pub time_ms: i64,
    pub insert_id: &'a str,
    pub device_id: &'a str,
    pub session_id: Option<&'a str>,
    pub profile_id: Option<&'a str>,
}

/// The wire JSON of a `track` event, after checking it as the server will, and refusing a
/// blank name (see [`check_name`]).
pub(crate) fn track_json(
    name: &str,
    globals: &Map<String, Value>,
    properties: Map<String, Value>,
    stamp: &Stamp<'_>,
) -> Result<String, Error> {
    check_name(name)?;
    // The globals' keys were checked by `register`; only the event's own are checked here.
    check_property_keys(&properties)?;
    let mut merged = globals.clone();
    merged.extend(properties);
    let mut payload = json!({"name": name});
    if let Some(profile) = stamp.profile_id {
        payload["profileId"] = Value::from(profile);
    }
    finish("track", payload, merged, stamp)
}

/// Stands for an id the SDK stamps (a UUID) when an event is checked before it is stamped, so
/// that the event's size is checked as it will be sent.
const UNSTAMPED_ID: &str = "00000000-0000-7000-8000-000000000000";

/// Checks `event` as a `track` recorded with `globals` by a device `own_device` would be
/// (see [`Event::check`]).
pub(crate) fn check_track(
    event: &Event,
    globals: &Map<String, Value>,
    own_device: &str,
    now_ms: i64,
) -> Result<(), Error> {
    let stamp = Stamp {
        time_ms: event.timestamp_ms.unwrap_or(now_ms),
        insert_id: event.insert_id.as_deref().unwrap_or(UNSTAMPED_ID),
        device_id: event.device_id.as_deref().unwrap_or(own_device),
        session_id: None,
        profile_id: None,
    };
    track_json(&event.name, globals, event.properties.clone(), &stamp).map(|_| ())
}

impl Event {
    /// Checks the event as [`crate::Backfill::track_many`] would record it, without a buffer
    /// (for a tool that checks its input before opening one): a name that is not blank and the
    /// contract's per-event rules (SPEC §4: name, reserved properties such as `__ip`, sizes,
    /// nesting). A missing time is read as `now_ms`; missing ids are stood for by ones of the
    /// length the SDK stamps. Properties registered on a [`crate::Backfill`] are not known
    /// here: [`crate::Backfill::check`] checks with them.
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] saying what to fix.
    pub fn check(&self, now_ms: i64) -> Result<(), Error> {
        check_track(self, &Map::new(), UNSTAMPED_ID, now_ms)
    }
}

/// The wire JSON of an `identify` event.
pub(crate) fn identify_json(
    profile_id: &str,
    mut traits: Map<String, Value>,
    stamp: &Stamp<'_>,
) -> Result<String, Error> {
    check_property_keys(&traits)?;
    let mut payload = json!({"profileId": profile_id});
    for key in ["firstName", "lastName", "email", "avatar"] {
        if let Some(v) = traits.remove(key) {
            payload[key] = v;
        }
    }
    finish("identify", payload, traits, stamp)
}

/// Refuses an event name that is empty or only whitespace. SPEC §4 asks 1 to 80 characters,
/// so a server stores `" "`; but such a name is nearly always a variable left blank, and an
/// event no dashboard can tell apart is lost in practice, so the SDK refuses it where the call
/// is made (as PostHog, Segment and Amplitude require a real event name).
fn check_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::InvalidEvent(if name.is_empty() {
            "name must be 1 to 80 characters, not empty".to_owned()
        } else {
            format!("name {name:?} is only whitespace: give the event a name")
        }));
    }
    Ok(())
}

/// Event times before 10^11 ms (1973-03-03) are refused: such a `timestamp_ms` is nearly always
/// seconds since the epoch given where milliseconds are expected, and would otherwise be
/// buffered and later expired unsent (SPEC §9) instead of failing where the mistake is made.
pub const EARLIEST_EVENT_MS: i64 = 100_000_000_000;

/// Why a property may not be given under `key`, if it may not: the SDK sets `__timestamp`,
/// `__insertId`, `__deviceId` and `__sessionId` itself from the call (SPEC §4), so a value
/// given as a property would be replaced without a word (an insert id meant to make a retry a
/// duplicate, say). [`Error::InvalidEvent`] naming the argument to use instead.
pub fn check_property_key(key: &str) -> Result<(), Error> {
    let instead = match key {
        TIMESTAMP => "give the event time as the call's timestamp argument (epoch ms)",
        INSERT_ID => {
            "every event gets its own insert id; give your own as the event's insert id \
             where the call takes one (Event.insert_id in Rust)"
        }
        DEVICE_ID => "give another device's id as the call's device id argument",
        SESSION_ID => "the SDK keeps the session itself",
        _ => return Ok(()),
    };
    Err(Error::InvalidEvent(format!(
        "the property {key:?} is set by Backfill itself; {instead}"
    )))
}

/// [`check_property_key`] for every key of `properties`.
fn check_property_keys(properties: &Map<String, Value>) -> Result<(), Error> {
    properties
        .keys()
        .try_for_each(|key| check_property_key(key))
}

fn finish(
    kind: &str,
    mut payload: Value,
    mut properties: Map<String, Value>,
    stamp: &Stamp<'_>,
) -> Result<String, Error> {
    if stamp.time_ms < EARLIEST_EVENT_MS {
        return Err(Error::InvalidEvent(format!(
            "the event time {} is before 1973: it looks like seconds since the epoch; give \
             milliseconds (seconds × 1000)",
            stamp.time_ms
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_utf8_bytes_read_as_their_text_or_name_the_bad_argument() {
        let e = Event::from_utf8("température".as_bytes(), br#"{"t": 21.5}"#).expect("utf-8");
        assert_eq!(e.name, "température");
        assert_eq!(e.properties["t"], serde_json::json!(21.5));
        assert_eq!((e.timestamp_ms, e.device_id), (None, None));
        assert!(
            Event::from_utf8(b"r", b"")
                .expect("none")
                .properties
                .is_empty()
        );
        let err = Event::from_utf8(b"r\xff", b"{}")
            .expect_err("name")
            .to_string();
        assert!(err.contains("event name is not UTF-8"), "{err}");
        let err = Event::from_utf8(b"r", b"{\"a\": \"\xc3\"}").expect_err("json");
        assert!(err.to_string().contains("properties' JSON"), "{err}");
    }

    #[test]
    fn an_event_is_checked_without_a_buffer_as_it_will_be_sent() {
        let now = 1_795_946_400_000;
        let event = |properties: Value| Event {
            name: "reading".to_owned(),
            properties: properties.as_object().cloned().unwrap_or_default(),
            ..Event::default()
        };
        assert_eq!(event(json!({"__ip": "203.0.113.7"})).check(now), Ok(()));
        let err = event(json!({"__ip": "not-an-ip"}))
            .check(now)
            .expect_err("__ip");
        assert!(
            matches!(&err, Error::InvalidEvent(why) if why.contains("__ip")),
            "{err}"
        );
        // Sized with the ids the SDK stamps: a value that fits without them does not.
        let bare = event(json!({"v": ""})).check(now);
        assert_eq!(bare, Ok(()));
        let stamp = Stamp {
            time_ms: now,
            insert_id: UNSTAMPED_ID,
            device_id: UNSTAMPED_ID,
            session_id: None,
            profile_id: None,
        };
        let stamped = track_json("reading", &Map::new(), Map::new(), &stamp)
            .expect("empty")
            .len();
        let room = backfill_protocol::limits::MAX_EVENT_BYTES - stamped - r#","v":"""#.len();
        assert_eq!(event(json!({"v": "x".repeat(room)})).check(now), Ok(()));
        assert!(
            event(json!({"v": "x".repeat(room + 1)}))
                .check(now)
                .is_err()
        );
    }

    #[test]
    fn keys_the_sdk_sets_are_refused_naming_what_to_use() {
        for (key, hint) in [
            (TIMESTAMP, "timestamp argument"),
            (INSERT_ID, "insert id"),
            (DEVICE_ID, "device id argument"),
            (SESSION_ID, "session"),
        ] {
            let err = check_property_key(key).expect_err(key).to_string();
            assert!(err.contains(key) && err.contains(hint), "{err}");
        }
        assert!(check_property_key("__ip").is_ok() && check_property_key("temp").is_ok());
        let stamp = Stamp {
            time_ms: EARLIEST_EVENT_MS,
            insert_id: "k",
            device_id: "d",
            session_id: None,
            profile_id: None,
        };
        let mine = serde_json::json!({"__insertId": "mine"});
        let properties = mine.as_object().cloned().unwrap_or_default();
        let err = track_json("r", &Map::new(), properties.clone(), &stamp).expect_err("key");
        assert!(err.to_string().contains("__insertId"), "{err}");
        let err = identify_json("u", properties, &stamp).expect_err("identify");
        assert!(err.to_string().contains("__insertId"), "{err}");
    }

    #[test]
    fn a_blank_name_is_refused_naming_it() {
        let stamp = Stamp {
            time_ms: 1_795_946_400_000,
            insert_id: "i1",
            device_id: "d1",
            session_id: None,
            profile_id: None,
        };
        let globals = Map::new();
        for blank in ["", " ", "\t", " \u{3000} "] {
            let err = track_json(blank, &globals, Map::new(), &stamp)
                .expect_err(blank)
                .to_string();
            assert!(err.contains("name"), "{blank:?}: {err}");
        }
        // Spaces around a real name are the caller's choice, as on the server.
        assert!(track_json(" reading ", &globals, Map::new(), &stamp).is_ok());
    }

    #[test]
    fn an_event_time_in_seconds_is_refused_where_it_is_given() {
        let stamp = |time_ms| Stamp {
            time_ms,
            insert_id: "i1",
            device_id: "d1",
            session_id: None,
            profile_id: None,
        };
        let globals = Map::new();
        for seconds in [1_795_946_400, 0, -5] {
            let err = track_json("r", &globals, Map::new(), &stamp(seconds))
                .expect_err("seconds")
                .to_string();
            assert!(err.contains("looks like seconds"), "{err}");
        }
        assert!(track_json("r", &globals, Map::new(), &stamp(1_795_946_400_000)).is_ok());
    }

    #[test]
    fn numbers_given_as_json_text_are_kept_or_refused_never_changed() {
        // Doubles that the default parser reads one step off in the last bit.
        let text = r#"{"f": 123456789.12345679, "g": 2.7715077941825975e-163, "n": -9223372036854775808, "u": 18446744073709551615}"#;
        let map = properties_from_json(text).expect("object");
        assert_eq!(map["f"].as_f64(), Some(123456789.12345679));
        assert_eq!(map["g"].as_f64(), Some(2.7715077941825975e-163));
        assert_eq!(
            serde_json::to_string(&map["f"]).expect("f"),
            "123456789.12345679"
        );
        assert_eq!(map["n"].as_i64(), Some(i64::MIN));
        assert_eq!(map["u"].as_u64(), Some(u64::MAX));
        // Past 64 bits an integer would become a double and lose digits: refused, named.
        for text in [
            r#"{"iccid": 89014103211118510720}"#,
            r#"{"a": {"b": [18446744073709551616]}}"#,
        ] {
            let err = properties_from_json(text).expect_err(text).to_string();
            assert!(err.contains("give it as a string"), "{text}: {err}");
        }
        assert!(value_from_json("89014103211118510720").is_err());
        assert!(properties_from_json(r#"{"iccid": "89014103211118510720", "e": 1e30}"#).is_ok());
    }

    #[test]
    fn properties_as_json_text_must_be_an_object() {
        let map = properties_from_json(r#"{"temp": 21.5, "tags": ["a"]}"#).expect("object");
        assert_eq!(map["temp"], serde_json::json!(21.5));
        assert!(properties_from_json("  ").expect("blank").is_empty());
        for (text, says) in [
            ("[1, 2]", "not an array"),
            ("21.5", "not a number"),
            ("\"x\"", "not a string"),
            ("null", "not null"),
            ("{\"a\": ", "not valid JSON"),
        ] {
            let e = properties_from_json(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
