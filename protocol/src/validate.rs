//! The per-event rules of SPEC §4. A row failing any of them is rejected with reason `validation`.
//!
//! Each rule is one small function here, called by the full check ([`validate_event`]) and by the
//! server's quick row reader alike, so the two cannot drift apart. The rules see the members of a
//! row as [`Member`]s; property values stay the JSON text they were sent as ([`Properties`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::limits::{MAX_EVENT_BYTES, MAX_EVENT_NAME_CHARS, MAX_ID_CHARS, MAX_PROPERTY_DEPTH};
use crate::number::{Decimal, exact_decimal};
use crate::properties::Properties;
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

/// The `type` of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `track`: an event.
    Track,
    /// `identify`: profile fields.
    Identify,
    /// `increment`: add to a profile property.
    Increment,
    /// `decrement`: subtract from a profile property.
    Decrement,
    /// `group`: a group.
    Group,
    /// `assign_group`: profile to groups.
    AssignGroup,
}

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
    /// Add `delta` to a numeric profile property, exactly (see [`crate::number`]).
    Increment {
        /// The profile property.
        property: String,
        /// Signed amount to add (negative for `decrement`).
        delta: Decimal,
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
pub struct ClientTime<'a> {
    /// Milliseconds since the epoch.
    pub ms: i64,
    /// The value's JSON text exactly as sent, kept as `__clientTimestamp` if the server changes
    /// the time.
    pub raw: &'a str,
}

/// A row that passed every rule of SPEC §4 (the age window is applied by the server). It
/// borrows the property values from the row's text.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent<'a> {
    /// What to do.
    pub action: Action,
    /// `profileId`; a number keeps its JSON text.
    pub profile_id: Option<String>,
    /// `payload.properties` without `__timestamp`, each value as sent.
    pub properties: Properties<'a>,
    /// `__timestamp`, if sent.
    pub timestamp: Option<ClientTime<'a>>,
    /// `__deviceId`, trimmed.
    pub device_id: Option<String>,
    /// `__sessionId`.
    pub session_id: Option<String>,
    /// `__insertId`.
    pub insert_id: Option<String>,
    /// `__ip`, trimmed.
    pub ip: Option<String>,
}

/// A member of a row (or of its payload or properties) as the rules see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Member<'v> {
    /// Not in the row.
    Absent,
    /// `null`.
    Null,
    /// A string, unescaped.
    Str(Cow<'v, str>),
    /// A number, as its JSON text.
    Number(&'v str),
    /// An array.
    Array(Vec<Member<'v>>),
    /// A string that is not valid Unicode: a `\u` escape of a lone surrogate.
    NotUnicode,
    /// An object or a boolean.
    Other,
}

/// The error of a member that must be a string and is not one, or is one that no Unicode
/// text can hold.
fn not_a_string(what: &str, member: &Member<'_>) -> String {
    match member {
        Member::NotUnicode => format!(
            "{what} is not valid Unicode: it holds a \\u escape of a lone surrogate \
             (\\ud800 to \\udfff without its pair)"
        ),
        _ => format!("{what} must be a string"),
    }
}

impl<'v> Member<'v> {
    /// Reads a member from its JSON text (`None`: absent).
    pub fn parse(raw: Option<&'v str>) -> Self {
        let Some(raw) = raw.map(str::trim) else {
            return Member::Absent;
        };
        match raw.as_bytes().first() {
            Some(b'n') if raw == "null" => Member::Null,
            Some(b'"') => match serde_json::from_str::<&str>(raw) {
                Ok(s) => Member::Str(Cow::Borrowed(s)),
                Err(_) => serde_json::from_str::<String>(raw)
                    .map_or(Member::NotUnicode, |s| Member::Str(Cow::Owned(s))),
            },
            Some(b'-' | b'0'..=b'9') => Member::Number(raw),
            Some(b'[') => match serde_json::from_str::<Vec<&RawValue>>(raw) {
                Ok(items) => Member::Array(
                    items
                        .into_iter()
                        .map(|item| Member::parse(Some(item.get())))
                        .collect(),
                ),
                Err(_) => Member::Other,
            },
            _ => Member::Other,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Member::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Whether a row whose JSON is `len` bytes is within the size limit (SPEC §4: 256 KiB).
pub fn within_event_size(len: usize) -> bool {
    len <= MAX_EVENT_BYTES
}

/// The `type` rule: one of the six types; `alias` and anything else are refused.
pub fn event_type(kind: &Member<'_>) -> Result<EventType, String> {
    Ok(match kind.as_str() {
        Some("track") => EventType::Track,
        Some("identify") => EventType::Identify,
        Some("increment") => EventType::Increment,
        Some("decrement") => EventType::Decrement,
        Some("group") => EventType::Group,
        Some("assign_group") => EventType::AssignGroup,
        Some("alias") => return Err("Alias is not supported".to_owned()),
        _ => return Err("unsupported type".to_owned()),
    })
}

/// The `track` name rule: 1 to 80 characters, no line break, not a session marker's name.
pub fn event_name(name: &Member<'_>) -> Result<String, String> {
    let Some(name) = name.as_str() else {
        return Err(not_a_string("name", name));
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
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("name {name} is reserved"));
    }
    Ok(name.to_owned())
}

/// The `profileId` rule: absent, null, a non-empty string, or a number (kept as its JSON text).
pub fn profile_id(id: &Member<'_>) -> Result<Option<String>, String> {
    match id {
        Member::Absent | Member::Null => Ok(None),
        Member::Str(s) if !s.trim().is_empty() => Ok(Some(s.to_string())),
        Member::Number(n) => Ok(Some((*n).to_owned())),
        _ => Err("profileId must be a non-empty string or a number".to_owned()),
    }
}

/// Whether an id in `groups` or `groupIds` is acceptable: not blank.
fn group_id(id: &Member<'_>) -> Option<String> {
    id.as_str()
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

/// The `track` `groups` rule: absent, null, or an array of non-empty strings.
pub fn track_groups(groups: &Member<'_>) -> Result<Vec<String>, String> {
    let ids = match groups {
        Member::Absent | Member::Null => Some(Vec::new()),
        Member::Array(items) => items.iter().map(group_id).collect(),
        _ => None,
    };
    ids.ok_or_else(|| "groups must be null or an array of non-empty strings".to_owned())
}

/// The `assign_group` `groupIds` rule: a non-empty array of non-empty strings.
pub fn assign_group_ids(ids: &Member<'_>) -> Result<Vec<String>, String> {
    match ids {
        Member::Array(items) if !items.is_empty() => items.iter().map(group_id).collect(),
        _ => None,
    }
    .ok_or_else(|| "groupIds must be a non-empty array of non-empty strings".to_owned())
}

/// The rule of `__deviceId` (trimmed), `__sessionId` and `__insertId`: absent, null, or a
/// string of 1 to 64 characters.
pub fn special_id(value: &Member<'_>, key: &str, trim: bool) -> Result<Option<String>, String> {
    match value {
        Member::Absent | Member::Null => Ok(None),
        Member::Str(s) => {
            let s = if trim { s.trim() } else { s };
            let chars = s.chars().count();
            if (1..=MAX_ID_CHARS).contains(&chars) {
                Ok(Some(s.to_owned()))
            } else {
                Err(format!("{key} must be 1 to {MAX_ID_CHARS} characters"))
            }
        }
        other => Err(not_a_string(key, other)),
    }
}

/// The `__ip` rule: absent, null, or an IPv4 or IPv6 address (trimmed).
pub fn ip(value: &Member<'_>) -> Result<Option<String>, String> {
    match value {
        Member::Absent | Member::Null => Ok(None),
        Member::Str(ip) if ip.trim().parse::<IpAddr>().is_ok() => Ok(Some(ip.trim().to_owned())),
        _ => Err("__ip must be an IP address".to_owned()),
    }
}

/// The `__timestamp` rule: absent, or a time [`parse_timestamp`] reads.
pub fn timestamp(raw: Option<&str>) -> Result<Option<ClientTime<'_>>, String> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    // The usual form, an integer, is read without building a JSON value.
    let value = match raw.parse::<i64>() {
        Ok(ms) if !raw.starts_with('+') => Some(Value::from(ms)),
        _ => serde_json::from_str::<Value>(raw).ok(),
    };
    value
        .and_then(|value| parse_timestamp(&value))
        .map(|ms| Some(ClientTime { ms, raw }))
        .ok_or_else(|| "invalid __timestamp".to_owned())
}

/// The nesting rule: properties nest at most 16 levels, the properties object being level 1.
pub fn property_depth(levels: usize) -> Result<(), String> {
    if levels > MAX_PROPERTY_DEPTH {
        return Err(format!(
            "properties nest deeper than {MAX_PROPERTY_DEPTH} levels"
        ));
    }
    Ok(())
}

/// The number rule for a property value's number: it must read as a finite double, as
/// serde_json reads it (a 20-digit integer does and keeps its text; `1e400` does not). Without
/// an exponent, 300 digits stay far below `f64::MAX`; anything else is parsed.
pub fn number_fits(token: &str) -> bool {
    (token.len() <= 300 && !token.contains(['e', 'E']))
        || token.parse::<f64>().is_ok_and(f64::is_finite)
}

/// The `increment`/`decrement` `value` rule: absent or null (1), or a positive number exact as
/// a decimal of at most 28 significant digits.
pub fn increment_value(value: &Member<'_>) -> Result<Decimal, String> {
    match value {
        Member::Absent | Member::Null => Ok(Decimal::ONE),
        Member::Number(text) => match exact_decimal(text) {
            Some(d) if d.is_sign_positive() && !d.is_zero() => Ok(d),
            None if text.parse::<f64>().is_ok_and(|f| f > 0.0) => Err(
                "value must have at most 28 significant digits and 28 decimals, to add exactly"
                    .to_owned(),
            ),
            _ => Err("value must be a positive number".to_owned()),
        },
        _ => Err("value must be a positive number".to_owned()),
    }
}

/// Members of a JSON object by unescaped key; a repeated key keeps its last value.
type Members<'a> = BTreeMap<String, &'a RawValue>;

fn member<'a>(members: &Members<'a>, key: &str) -> Member<'a> {
    Member::parse(members.get(key).map(|raw| raw.get()))
}

/// The depth of a property value (0 for a scalar), or why serde_json cannot read it (a number
/// beyond a double, a lone surrogate).
fn property_value(key: &str, raw: &str) -> Result<usize, String> {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    serde_json::from_str::<Value>(raw)
        .map(|v| depth(&v))
        .map_err(|e| format!("property {key}: {e}"))
}

/// Checks one row of a batch (or a `POST /track` body), given as its JSON text. When the text
/// exceeds the size limit the compact serialisation is measured, so insignificant whitespace is
/// never held against the client. Returns the error text for the `rejected` list on failure.
pub fn validate_event(row: &str) -> Result<ValidEvent<'_>, String> {
    if !within_event_size(row.len()) {
        let compact = serde_json::from_str::<Value>(row)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok())
            .map_or(usize::MAX, |v| v.len());
        if !within_event_size(compact) {
            return Err(format!("event larger than {} KiB", MAX_EVENT_BYTES / 1024));
        }
    }
    let row: Members<'_> =
        serde_json::from_str(row).map_err(|_| "event must be an object".to_owned())?;
    let kind = event_type(&member(&row, "type"))?;
    let payload: Members<'_> = row
        .get("payload")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or_else(|| "payload must be an object".to_owned())?;

    let properties: Members<'_> = match payload.get("properties").map(|raw| raw.get()) {
        None | Some("null") => Members::new(),
        Some(raw) => {
            serde_json::from_str(raw).map_err(|e| {
                if raw.trim_start().starts_with('{') {
                    // An object whose key or string no Unicode text can hold.
                    format!("properties are not valid: {e}")
                } else {
                    "properties must be an object".to_owned()
                }
            })?
        }
    };
    let mut deepest = 0;
    for (key, raw) in &properties {
        deepest = deepest.max(property_value(key, raw.get())?);
    }
    property_depth(1 + deepest)?;
    let mut properties = Properties::new(
        properties
            .into_iter()
            .map(|(k, v)| (Cow::Owned(k), v.get()))
            .collect(),
    );
    let timestamp = timestamp(properties.remove(TIMESTAMP))?;
    let special = |key: &str| Member::parse(properties.get(key));
    let device_id = special_id(&special(DEVICE_ID), DEVICE_ID, true)?;
    let session_id = special_id(&special(SESSION_ID), SESSION_ID, false)?;
    let insert_id = special_id(&special(INSERT_ID), INSERT_ID, false)?;
    let ip = ip(&special(IP))?;
    let profile_id = profile_id(&member(&payload, "profileId"))?;

    let action = match kind {
        EventType::Track => Action::Track {
            name: event_name(&member(&payload, "name"))?,
            groups: track_groups(&member(&payload, "groups"))?,
        },
        EventType::Identify => {
            if profile_id.is_none() {
                return Err("identify requires a profileId".to_owned());
            }
            identify(&payload)?
        }
        EventType::Increment | EventType::Decrement => {
            let kind = if kind == EventType::Increment {
                "increment"
            } else {
                "decrement"
            };
            if profile_id.is_none() {
                return Err(format!("{kind} requires a profileId"));
            }
            let property = match member(&payload, "property") {
                Member::Str(p) if !p.trim().is_empty() => p.into_owned(),
                _ => return Err(format!("{kind} requires a non-empty property")),
            };
            let value = increment_value(&member(&payload, "value"))?;
            let delta = if kind == "increment" { value } else { -value };
            Action::Increment { property, delta }
        }
        EventType::Group => Action::Group {
            id: non_empty(&payload, "id", "group")?,
            group_type: non_empty(&payload, "type", "group")?,
            name: non_empty(&payload, "name", "group")?,
        },
        EventType::AssignGroup => Action::AssignGroup {
            group_ids: assign_group_ids(&member(&payload, "groupIds"))?,
        },
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

fn identify(payload: &Members<'_>) -> Result<Action, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match member(payload, key) {
            Member::Absent | Member::Null => Ok(None),
            Member::Str(s) => Ok(Some(s.into_owned())),
            other => Err(not_a_string(key, &other)),
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

fn non_empty(payload: &Members<'_>, key: &str, kind: &str) -> Result<String, String> {
    match member(payload, key) {
        Member::Str(s) if !s.trim().is_empty() => Ok(s.into_owned()),
        _ => Err(format!("{kind} requires a non-empty {key}")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(row: Value) -> Result<ValidEvent<'static>, String> {
        validate_event(Box::leak(row.to_string().into_boxed_str()))
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
        assert_eq!(ev.properties.get(TIMESTAMP), None);
        assert_eq!(ev.properties.get("temp"), Some("21.5"));
    }

    #[test]
    fn a_lone_surrogate_is_named_as_such() {
        let lone = |row: &str| validate_event(Box::leak(row.to_owned().into_boxed_str()));
        let e = lone(r#"{"type":"track","payload":{"name":"r\ud800"}}"#).unwrap_err();
        assert!(e.starts_with("name is not valid Unicode"), "{e}");
        let e =
            lone(r#"{"type":"track","payload":{"name":"r","properties":{"__insertId":"\udc00"}}}"#)
                .unwrap_err();
        assert!(e.contains("__insertId") && e.contains("surrogate"), "{e}");
        let e = lone(r#"{"type":"track","payload":{"name":"r","properties":{"k\ud800":1}}}"#)
            .unwrap_err();
        assert!(e.starts_with("properties are not valid: "), "{e}");
        let e = lone(r#"{"type":"track","payload":{"name":5}}"#).unwrap_err();
        assert_eq!(e, "name must be a string");
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
                delta: Decimal::ONE
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
                delta: Decimal::from(-2)
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
    fn numbers_keep_their_text() {
        let ev = validate_event(
            r#"{"type":"track","payload":{"name":"a","profileId":89014103211118510720,
               "properties":{"iccid":89014103211118510720,"n":1e3,"p":1.10,"c":"caf\u00e9"}}}"#,
        )
        .expect("valid");
        assert_eq!(ev.profile_id.as_deref(), Some("89014103211118510720"));
        assert_eq!(
            ev.properties.to_json(None),
            r#"{"c":"caf\u00e9","iccid":89014103211118510720,"n":1e3,"p":1.10}"#
        );
        let out_of_range = r#"{"type":"track","payload":{"name":"a","properties":{"x":[1e400]}}}"#;
        assert!(
            validate_event(out_of_range)
                .unwrap_err()
                .contains("number out of range")
        );
        let inc = |value: &str| {
            validate_event(Box::leak(
                format!(r#"{{"type":"increment","payload":{{"profileId":"u","property":"n","value":{value}}}}}"#)
                    .into_boxed_str(),
            ))
        };
        assert!(inc("89014103211118510720").is_ok());
        assert!(
            inc("1234567890123456789012345678901")
                .unwrap_err()
                .contains("28 significant digits")
        );
        assert_eq!(inc("-0").unwrap_err(), "value must be a positive number");
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
