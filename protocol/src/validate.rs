//! The per-event rules of SPEC §4. A row failing any of them is rejected with reason `validation`.

use serde_json::{Map, Value};

use crate::limits::{MAX_EVENT_BYTES, MAX_EVENT_NAME_CHARS, MAX_ID_CHARS, MAX_PROPERTY_DEPTH};
use crate::time::parse_timestamp;

/// Property holding the event's capture time.
pub const TIMESTAMP: &str = "__timestamp";
/// Property naming the device the event belongs to.
pub const DEVICE_ID: &str = "__deviceId";
/// Property naming a client-chosen session.
pub const SESSION_ID: &str = "__sessionId";
/// Property holding the event's idempotency key.
pub const INSERT_ID: &str = "__insertId";
/// Property overriding the request IP for the fingerprint device id.
pub const IP: &str = "__ip";
/// Stored property keeping a client time the server changed (skew correction or future clamp).
pub const CLIENT_TIMESTAMP: &str = "__clientTimestamp";
/// Stored property with the time the server committed the event.
pub const SYNCED_AT: &str = "__syncedAt";

/// Names the server reserves for the session markers it writes itself.
pub const RESERVED_NAMES: [&str; 2] = ["session_start", "session_end"];

/// What a valid row asks the server to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Store an event.
    Track {
        /// Event name.
        name: String,
        /// Group ids the event belongs to.
        groups: Vec<String>,
    },
    /// Merge fields into a profile.
    Identify {
        /// `firstName`.
        first_name: Option<String>,
        /// `lastName`.
        last_name: Option<String>,
        /// `email`.
        email: Option<String>,
        /// `avatar`.
        avatar: Option<String>,
    },
    /// Add `delta` to a numeric profile property (negative for `decrement`).
    Increment {
        /// The profile property.
        property: String,
        /// Signed amount to add.
        delta: f64,
    },
    /// Create or update a group.
    Group {
        /// Group id.
        id: String,
        /// Group type, e.g. `company`.
        group_type: String,
        /// Display name.
        name: String,
    },
    /// Add the profile to groups.
    AssignGroup {
        /// Group ids.
        group_ids: Vec<String>,
    },
}

/// The client's event time as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTime {
    /// Milliseconds since the epoch.
    pub ms: i64,
    /// The value exactly as sent, kept as `__clientTimestamp` if the server changes the time.
    pub raw: Value,
}

/// A row that passed every rule of SPEC §4 (the age window is applied by the server).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    /// What to do.
    pub action: Action,
    /// `profileId`, numbers turned into their decimal text.
    pub profile_id: Option<String>,
    /// `payload.properties` without `__timestamp`.
    pub properties: Map<String, Value>,
    /// `__timestamp`, if sent.
    pub timestamp: Option<ClientTime>,
    /// `__deviceId`, trimmed.
    pub device_id: Option<String>,
    /// `__sessionId`.
    pub session_id: Option<String>,
    /// `__insertId`.
    pub insert_id: Option<String>,
    /// `__ip`.
    pub ip: Option<String>,
}

/// Checks one row of a batch. `sent_len` is the length of the row's JSON as sent; when it exceeds
/// the limit the compact serialisation is measured, so insignificant whitespace is never held
/// against the client. Returns the error text for the `rejected` list on failure.
pub fn validate_event(row: Value, sent_len: usize) -> Result<ValidEvent, String> {
    if sent_len > MAX_EVENT_BYTES {
        let compact = serde_json::to_vec(&row)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if compact > MAX_EVENT_BYTES {
            return Err(format!("event larger than {} KiB", MAX_EVENT_BYTES / 1024));
        }
    }
    let Value::Object(mut row) = row else {
        return Err("event must be an object".to_owned());
    };
    let kind = match row.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err("unsupported type".to_owned()),
    };
    if kind == "alias" {
        return Err("Alias is not supported".to_owned());
    }
    if !matches!(
        kind.as_str(),
        "track" | "identify" | "increment" | "decrement" | "group" | "assign_group"
    ) {
        return Err("unsupported type".to_owned());
    }
    let mut payload = match row.remove("payload") {
        Some(Value::Object(payload)) => payload,
        _ => return Err("payload must be an object".to_owned()),
    };

    let mut properties = match payload.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err("properties must be an object".to_owned()),
    };
    if depth(&properties) > MAX_PROPERTY_DEPTH {
        return Err(format!(
            "properties nest deeper than {MAX_PROPERTY_DEPTH} levels"
        ));
    }
    let timestamp = match properties.remove(TIMESTAMP) {
        None => None,
        Some(raw) => match parse_timestamp(&raw) {
            Some(ms) => Some(ClientTime { ms, raw }),
            None => return Err("invalid __timestamp".to_owned()),
        },
    };
    let device_id = special_id(&properties, DEVICE_ID, true)?;
    let session_id = special_id(&properties, SESSION_ID, false)?;
    let insert_id = special_id(&properties, INSERT_ID, false)?;
    let ip = match properties.get(IP) {
        None | Some(Value::Null) => None,
        Some(Value::String(ip)) if ip.trim().parse::<std::net::IpAddr>().is_ok() => {
            Some(ip.trim().to_owned())
        }
        Some(_) => return Err("__ip must be an IP address".to_owned()),
    };

    let profile_id = match payload.get("profileId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err("profileId must be a non-empty string or a number".to_owned()),
    };

    let action = match kind.as_str() {
        "track" => track(&payload)?,
        "identify" => {
            if profile_id.is_none() {
                return Err("identify requires a profileId".to_owned());
            }
            identify(&payload)?
        }
        "increment" | "decrement" => {
            if profile_id.is_none() {
                return Err(format!("{kind} requires a profileId"));
            }
            let property = match payload.get("property") {
                Some(Value::String(p)) if !p.trim().is_empty() => p.clone(),
                _ => return Err(format!("{kind} requires a non-empty property")),
            };
            let value = match payload.get("value") {
                None | Some(Value::Null) => 1.0,
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(v) if v > 0.0 && v.is_finite() => v,
                    _ => return Err("value must be a positive number".to_owned()),
                },
                Some(_) => return Err("value must be a positive number".to_owned()),
            };
            let delta = if kind == "increment" { value } else { -value };
            Action::Increment { property, delta }
        }
        "group" => Action::Group {
            id: non_empty(&payload, "id", "group")?,
            group_type: non_empty(&payload, "type", "group")?,
            name: non_empty(&payload, "name", "group")?,
        },
        _ => {
            let group_ids = match payload.get("groupIds") {
                Some(Value::Array(ids)) if !ids.is_empty() => string_list(ids),
                _ => None,
            };
            match group_ids {
                Some(group_ids) => Action::AssignGroup { group_ids },
                None => {
                    return Err(
                        "groupIds must be a non-empty array of non-empty strings".to_owned()
                    );
                }
            }
        }
    };

    Ok(ValidEvent {
        action,
        profile_id,
        properties,
        timestamp,
        device_id,
        session_id,
        insert_id,
        ip,
    })
}

fn track(payload: &Map<String, Value>) -> Result<Action, String> {
    let name = match payload.get("name") {
        Some(Value::String(name)) => name,
        _ => return Err("name must be a string".to_owned()),
    };
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_EVENT_NAME_CHARS {
        return Err(format!(
            "name must be 1 to {MAX_EVENT_NAME_CHARS} characters"
        ));
    }
    if name.contains(['\r', '\n']) {
        return Err("name must not contain line breaks".to_owned());
    }
    if RESERVED_NAMES.contains(&name.as_str()) {
        return Err(format!("name {name} is reserved"));
    }
    let groups = match payload.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => match string_list(ids) {
            Some(ids) => ids,
            None => return Err("groups must be null or an array of non-empty strings".to_owned()),
        },
        Some(_) => return Err("groups must be null or an array of non-empty strings".to_owned()),
    };
    Ok(Action::Track {
        name: name.clone(),
        groups,
    })
}

fn identify(payload: &Map<String, Value>) -> Result<Action, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{key} must be a string")),
        }
    };
    let email = text("email")?;
    if let Some(email) = &email
        && !looks_like_email(email)
    {
        return Err("email must be a valid email address".to_owned());
    }
    let avatar = text("avatar")?;
    if let Some(avatar) = &avatar
        && !is_http_url(avatar)
    {
        return Err("avatar must be an http(s) URL".to_owned());
    }
    Ok(Action::Identify {
        first_name: text("firstName")?,
        last_name: text("lastName")?,
        email,
        avatar,
    })
}

fn special_id(
    properties: &Map<String, Value>,
    key: &str,
    trim: bool,
) -> Result<Option<String>, String> {
    match properties.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = if trim { s.trim() } else { s.as_str() };
            let chars = s.chars().count();
            if (1..=MAX_ID_CHARS).contains(&chars) {
                Ok(Some(s.to_owned()))
            } else {
                Err(format!("{key} must be 1 to {MAX_ID_CHARS} characters"))
            }
        }
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn non_empty(payload: &Map<String, Value>, key: &str, kind: &str) -> Result<String, String> {
    match payload.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(format!("{kind} requires a non-empty {key}")),
    }
}

fn string_list(values: &[Value]) -> Option<Vec<String>> {
    values
        .iter()
        .map(|v| match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// `local@domain.tld`, no spaces, one `@`.
pub fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !s.chars().any(char::is_whitespace)
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| !label.is_empty())
}

/// An absolute `http://` or `https://` URL with a host.
pub fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// Nesting depth of a properties object: the object itself is level 1.
pub fn depth(properties: &Map<String, Value>) -> usize {
    fn value_depth(v: &Value) -> usize {
        match v {
            Value::Object(m) => 1 + m.values().map(value_depth).max().unwrap_or(0),
            Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + properties.values().map(value_depth).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(row: Value) -> Result<ValidEvent, String> {
        let len = row.to_string().len();
        validate_event(row, len)
    }

    fn track_named(name: &str) -> Value {
        json!({"type": "track", "payload": {"name": name}})
    }

    #[test]
    fn accepts_a_track_event_and_reads_its_specials() {
        let ev = check(json!({"type": "track", "payload": {
            "name": "reading", "profileId": 42, "groups": ["g1"],
            "properties": {"temp": 21.5, "__timestamp": "2026-11-27T10:00:00.000Z",
                "__deviceId": "  dev-1 ", "__sessionId": "s1", "__insertId": "i1", "__ip": "203.0.113.7"}}}))
        .expect("valid");
        assert_eq!(
            ev.action,
            Action::Track {
                name: "reading".into(),
                groups: vec!["g1".into()]
            }
        );
        assert_eq!(ev.profile_id.as_deref(), Some("42"));
        assert_eq!(ev.timestamp.map(|t| t.ms), Some(1_795_773_600_000));
        assert_eq!(ev.device_id.as_deref(), Some("dev-1"));
        assert_eq!(ev.session_id.as_deref(), Some("s1"));
        assert_eq!(ev.insert_id.as_deref(), Some("i1"));
        assert_eq!(ev.ip.as_deref(), Some("203.0.113.7"));
        assert!(!ev.properties.contains_key(TIMESTAMP));
        assert_eq!(ev.properties["temp"], json!(21.5));
    }

    #[test]
    fn type_rules() {
        assert_eq!(
            check(json!({"type": "alias", "payload": {}})).unwrap_err(),
            "Alias is not supported"
        );
        assert_eq!(
            check(json!({"type": "page", "payload": {}})).unwrap_err(),
            "unsupported type"
        );
        assert_eq!(
            check(json!({"payload": {}})).unwrap_err(),
            "unsupported type"
        );
        assert!(check(json!({"type": "track"})).is_err());
        assert!(check(json!([1])).is_err());
    }

    #[test]
    fn track_name_rules() {
        assert!(check(track_named(&"x".repeat(80))).is_ok());
        assert!(check(track_named(&"é".repeat(80))).is_ok());
        for bad in ["", "a\nb", "a\rb", "session_start", "session_end"] {
            assert!(check(track_named(bad)).is_err(), "{bad:?}");
        }
        assert!(check(track_named(&"x".repeat(81))).is_err());
        assert!(check(json!({"type": "track", "payload": {"name": 5}})).is_err());
        assert!(
            check(json!({"type": "track", "payload": {"name": "a", "properties": [1]}})).is_err()
        );
        assert!(
            check(json!({"type": "track", "payload": {"name": "a", "profileId": ""}})).is_err()
        );
        assert!(
            check(json!({"type": "track", "payload": {"name": "a", "profileId": true}})).is_err()
        );
        assert!(check(json!({"type": "track", "payload": {"name": "a", "groups": null}})).is_ok());
        assert!(check(json!({"type": "track", "payload": {"name": "a", "groups": [""]}})).is_err());
        assert!(check(json!({"type": "track", "payload": {"name": "a", "groups": "g"}})).is_err());
    }

    #[test]
    fn profile_rules() {
        let identify = |payload: Value| check(json!({"type": "identify", "payload": payload}));
        assert!(
            identify(json!({"profileId": "u1", "email": "a@b.co", "avatar": "https://x.io/a.png"}))
                .is_ok()
        );
        assert!(identify(json!({"email": "a@b.co"})).is_err());
        assert!(identify(json!({"profileId": "u1", "email": "not-an-email"})).is_err());
        assert!(identify(json!({"profileId": "u1", "avatar": "ftp://x.io/a.png"})).is_err());
        let inc = |payload: Value| check(json!({"type": "increment", "payload": payload}));
        let ok = inc(json!({"profileId": "u1", "property": "visits"})).expect("valid");
        assert_eq!(
            ok.action,
            Action::Increment {
                property: "visits".into(),
                delta: 1.0
            }
        );
        assert!(inc(json!({"profileId": "u1", "property": "visits", "value": 0})).is_err());
        assert!(inc(json!({"profileId": "u1", "property": "visits", "value": -2})).is_err());
        assert!(inc(json!({"profileId": "u1", "property": ""})).is_err());
        assert!(inc(json!({"property": "visits"})).is_err());
        let dec = check(
            json!({"type": "decrement", "payload": {"profileId": "u1", "property": "p", "value": 2}}),
        );
        assert_eq!(
            dec.expect("valid").action,
            Action::Increment {
                property: "p".into(),
                delta: -2.0
            }
        );
        assert!(
            check(
                json!({"type": "group", "payload": {"id": "g", "type": "company", "name": "Acme"}})
            )
            .is_ok()
        );
        assert!(
            check(json!({"type": "group", "payload": {"id": "g", "type": "", "name": "Acme"}}))
                .is_err()
        );
        assert!(check(json!({"type": "assign_group", "payload": {"groupIds": ["g"]}})).is_ok());
        assert!(check(json!({"type": "assign_group", "payload": {"groupIds": []}})).is_err());
        assert!(
            check(json!({"type": "assign_group", "payload": {"groupIds": ["g", ""]}})).is_err()
        );
    }

    #[test]
    fn special_property_rules() {
        let with = |props: Value| {
            check(json!({"type": "track", "payload": {"name": "a", "properties": props}}))
        };
        assert_eq!(
            with(json!({"__timestamp": "soon"})).unwrap_err(),
            "invalid __timestamp"
        );
        assert!(with(json!({"__deviceId": "   "})).is_err());
        assert!(with(json!({"__deviceId": "d".repeat(65)})).is_err());
        assert!(with(json!({"__deviceId": "d".repeat(64)})).is_ok());
        assert!(with(json!({"__sessionId": ""})).is_err());
        assert!(with(json!({"__insertId": "i".repeat(65)})).is_err());
        assert!(with(json!({"__insertId": 7})).is_err());
        assert!(with(json!({"__ip": "not-an-ip"})).is_err());
    }

    #[test]
    fn size_and_depth_limits() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        assert!(
            check(json!({"type": "track", "payload": {"name": "a", "properties": {"b": big}}}))
                .is_err()
        );
        let mut nested = json!(1);
        for _ in 0..15 {
            nested = json!({"n": nested});
        }
        let ok =
            json!({"type": "track", "payload": {"name": "a", "properties": {"n": nested.clone()}}});
        assert!(check(ok).is_ok(), "16 levels are allowed");
        let too_deep =
            json!({"type": "track", "payload": {"name": "a", "properties": {"n": {"n": nested}}}});
        assert!(check(too_deep).is_err());
    }
}
