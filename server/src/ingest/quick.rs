//! The common batch row read without building a JSON tree.
//!
//! Most rows a device drains are plain `track` events: a name, flat properties, the special
//! ids as plain strings. For those, [`read`] walks the row's text once, borrows the keys and
//! values straight from the request body and keeps each property value as the raw JSON text it
//! arrived as, which spares the allocations of a full `serde_json::Value` per row. It applies
//! the rules of [`backfill_protocol::validate`] itself and returns the full check's own
//! [`ValidEvent`]; whatever it cannot read with certainty (escaped keys, ids or strings with `\u`
//! escapes, repeated members, a number past a double, a row that breaks a rule) returns `None`
//! and the caller takes the full check
//! ([`validate_event`](backfill_protocol::validate::validate_event)), which also writes every
//! error text.

use std::borrow::Cow;

use backfill_protocol::properties::Properties;
use backfill_protocol::validate::{
    self, Action, DEVICE_ID, EventType, INSERT_ID, IP, Member, SESSION_ID, TIMESTAMP, ValidEvent,
};
use serde_json::value::RawValue;

/// The parts of a row's payload the quick path reads.
#[derive(Default)]
struct Payload<'a> {
    name: Option<&'a str>,
    /// `Some(None)` for `"properties": null`.
    properties: Option<Option<Props<'a>>>,
    profile_id: Option<Option<&'a str>>,
    groups: Option<Option<Vec<&'a str>>>,
}

/// A properties object as read: its members with each value's text, `__timestamp` set aside,
/// and the special ids as they were read on the way (absent, `null` or an unescaped string),
/// so the rules need no second lookup. A repeated key keeps its last value, as in
/// [`Properties::new`].
#[derive(Default)]
struct Props<'a> {
    pairs: Vec<(&'a str, &'a str)>,
    timestamp: Option<&'a str>,
    device_id: Option<Option<&'a str>>,
    session_id: Option<Option<&'a str>>,
    insert_id: Option<Option<&'a str>>,
    ip: Option<Option<&'a str>>,
}

/// Stores the value of a key seen for the first time; a repeated key defers to the full check.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.replace(value).is_none().then_some(())
}

/// A cursor over the text of one JSON value that has already been parsed as valid JSON (the
/// envelope's parse checks every row). It still never trusts that: whatever it does not expect
/// ends the walk with `None`.
///
/// Every number it skips must pass [`validate::number_fits`], the full check's number rule; it
/// does not decode `\u` escapes (whose surrogate pairs the full check verifies), so a row with
/// one goes to the full check. It records the deepest nesting, which `read` holds to the
/// nesting rule.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
    deepest: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            at: 0,
            depth: 0,
            deepest: 0,
        }
    }

    /// The next byte after any whitespace, which it skips.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn eat(&mut self, expected: u8) -> Option<()> {
        (self.peek()? == expected).then(|| self.at += 1)
    }

    fn open(&mut self) {
        self.depth += 1;
        self.deepest = self.deepest.max(self.depth);
    }

    /// A string without escapes, as it stands in the text.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let end = start + memchr::memchr2(b'"', b'\\', self.text.as_bytes().get(start..)?)?;
        if self.text.as_bytes()[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        self.text.get(start..end)
    }

    /// Skips a string that may hold escapes, other than `\u` (whose surrogate pairs only the
    /// full check verifies), jumping from quote or backslash to the next one.
    fn skip_string(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        self.eat(b'"')?;
        loop {
            let found = self.at + memchr::memchr2(b'"', b'\\', bytes.get(self.at..)?)?;
            if bytes[found] == b'"' {
                self.at = found + 1;
                return Some(());
            }
            if bytes.get(found + 1) == Some(&b'u') {
                return None;
            }
            self.at = found + 2;
        }
    }

    /// Skips a number the full check can read ([`validate::number_fits`]).
    fn skip_number(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        while bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.at += 1;
        }
        validate::number_fits(self.text.get(start..self.at)?).then_some(())
    }

    /// Skips an array or object to its closing bracket.
    fn skip_nested(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        let outside = self.depth;
        loop {
            match *bytes.get(self.at)? {
                b'"' => {
                    self.skip_string()?;
                    continue;
                }
                b'-' | b'0'..=b'9' => {
                    self.skip_number()?;
                    continue;
                }
                b'{' | b'[' => self.open(),
                b'}' | b']' => {
                    self.depth = self.depth.checked_sub(1)?;
                    if self.depth == outside {
                        self.at += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.at += 1;
        }
    }

    /// Skips any value and returns its text.
    fn value(&mut self) -> Option<&'a str> {
        let first = self.peek()?;
        let start = self.at;
        match first {
            b'"' => self.skip_string()?,
            b'{' | b'[' => self.skip_nested()?,
            b'-' | b'0'..=b'9' => self.skip_number()?,
            _ => {
                // `true`, `false` or `null`.
                let bytes = self.text.as_bytes();
                while bytes.get(self.at).is_some_and(u8::is_ascii_lowercase) {
                    self.at += 1;
                }
                if self.at == start {
                    return None;
                }
            }
        }
        self.text.get(start..self.at)
    }

    /// `null` as `None`, or what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            return (self.value()? == "null").then_some(None);
        }
        read(self).map(Some)
    }

    /// Walks the items of an array or object, from its opening bracket past its closing one.
    fn walk(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.open();
        if self.peek()? == close {
            self.at += 1;
        } else {
            loop {
                item(self)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b if b == close => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// Walks an object's members, whose keys must be unescaped.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.walk(b'{', b'}', |s| {
            let key = s.plain_string()?;
            s.eat(b':')?;
            member(s, key)
        })
    }

    /// An array of unescaped strings.
    fn plain_strings(&mut self) -> Option<Vec<&'a str>> {
        let mut items = Vec::new();
        self.walk(b'[', b']', |s| {
            items.push(s.plain_string()?);
            Some(())
        })?;
        Some(items)
    }

    /// One property: its value's text kept in `props`; a special id read as `null` or an
    /// unescaped string on the way (anything else defers the row), `__timestamp` set aside.
    fn property(&mut self, key: &'a str, props: &mut Props<'a>) -> Option<()> {
        let id = match key {
            TIMESTAMP => {
                props.timestamp = Some(self.value()?);
                return Some(());
            }
            DEVICE_ID => &mut props.device_id,
            SESSION_ID => &mut props.session_id,
            INSERT_ID => &mut props.insert_id,
            IP => &mut props.ip,
            _ => {
                props.pairs.push((key, self.value()?));
                return Some(());
            }
        };
        self.peek()?;
        let start = self.at;
        *id = Some(self.nullable(Self::plain_string)?);
        props.pairs.push((key, self.text.get(start..self.at)?));
        Some(())
    }

    fn payload(&mut self) -> Option<Payload<'a>> {
        let mut payload = Payload::default();
        self.object(|s, key| match key {
            "name" => once(&mut payload.name, s.plain_string()?),
            "properties" => {
                let value = s.nullable(|s| {
                    let mut props = Props {
                        pairs: Vec::with_capacity(8),
                        ..Props::default()
                    };
                    s.object(|s, key| s.property(key, &mut props))?;
                    Some(props)
                })?;
                once(&mut payload.properties, value)
            }
            "profileId" => once(&mut payload.profile_id, s.nullable(Self::plain_string)?),
            "groups" => once(&mut payload.groups, s.nullable(Self::plain_strings)?),
            _ => s.value().map(drop),
        })?;
        Some(payload)
    }

    /// A row: `type` and `payload`, other members skipped.
    fn row(&mut self) -> Option<(&'a str, Payload<'a>)> {
        let (mut kind, mut payload) = (None, None);
        self.object(|s, key| match key {
            "type" => once(&mut kind, s.plain_string()?),
            "payload" => once(&mut payload, s.payload()?),
            _ => s.value().map(drop),
        })?;
        Some((kind?, payload?))
    }
}

/// Reads `raw` as a valid `track` row, or `None` when the full check must decide.
pub fn read(raw: &RawValue) -> Option<ValidEvent<'_>> {
    let json = raw.get();
    if !validate::within_event_size(json.len()) {
        return None;
    }
    let mut scanner = Scanner::new(json);
    let (kind, payload) = scanner.row()?;
    if validate::event_type(&Member::Str(Cow::Borrowed(kind))).ok()? != EventType::Track {
        return None;
    }
    // The properties object sits at level 3 of the row: a row no deeper than 2 + 16 levels has
    // properties no deeper than 16 (deeper members elsewhere defer the row, which is safe).
    validate::property_depth(scanner.deepest.saturating_sub(2)).ok()?;
    let name = validate::event_name(&payload.name.map_or(Member::Absent, plain)).ok()?;
    let profile_id = validate::profile_id(&nullable(payload.profile_id, plain)).ok()?;
    let groups = validate::track_groups(&nullable(payload.groups, |ids| {
        Member::Array(ids.into_iter().map(plain).collect())
    }))
    .ok()?;
    let props = payload.properties.flatten().unwrap_or_default();
    let timestamp = validate::timestamp(props.timestamp).ok()?;
    let device_id =
        validate::special_id(&nullable(props.device_id, plain), DEVICE_ID, true).ok()?;
    let session_id =
        validate::special_id(&nullable(props.session_id, plain), SESSION_ID, false).ok()?;
    let insert_id =
        validate::special_id(&nullable(props.insert_id, plain), INSERT_ID, false).ok()?;
    let ip = validate::ip(&nullable(props.ip, plain)).ok()?;
    let properties = Properties::new(
        props
            .pairs
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect(),
    );
    Some(ValidEvent {
        action: Action::Track { name, groups },
        profile_id,
        properties,
        timestamp,
        device_id,
        session_id,
        insert_id,
        ip,
    })
}

/// An unescaped string as the rules see it.
fn plain(s: &str) -> Member<'_> {
    Member::Str(Cow::Borrowed(s))
}

/// A payload member read by [`Scanner::nullable`]: absent, `null`, or what `read` made of it.
fn nullable<'a, T>(member: Option<Option<T>>, read: impl FnOnce(T) -> Member<'a>) -> Member<'a> {
    match member {
        None => Member::Absent,
        Some(None) => Member::Null,
        Some(Some(value)) => read(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_protocol::limits::MAX_EVENT_BYTES;
    use backfill_protocol::validate::validate_event;

    /// How deep objects and arrays nest in one valid JSON value (0 for a scalar), or `None` when
    /// it holds a number the full check cannot read or a `\u` escape.
    fn shape(json: &str) -> Option<usize> {
        let mut scanner = Scanner::new(json);
        scanner.value()?;
        Some(scanner.deepest)
    }

    /// Rows the quick path must take, each with what makes it ordinary.
    const ORDINARY: &[&str] = &[
        r#"{"type":"track","payload":{"name":"reading","properties":{"temp":18.5,"humidity":41,"__deviceId":"gw-1-sensor-03","__timestamp":1795860000000,"__insertId":"a-1"}}}"#,
        r#"{"type":"track","payload":{"name":"tap"}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":null,"profileId":"u1","groups":null}}"#,
        r#"{"type":"track","payload":{"name":"tap","groups":["g1","g2"],"properties":{"__timestamp":"2026-11-27T10:00:00+02:00"}}}"#,
        r#"{ "payload" : { "properties" : { "z" : [1, {"a": "}]"}], "a" : {"b": null} }, "name" : "näme" }, "type" : "track", "extra": "x\"y" }"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"__deviceId":"  padded  ","__sessionId":"s-1","__ip":" 203.0.113.9 ","__insertId":null}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"__timestamp":"1795860000000","__clientTimestamp":5}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"a":1,"a":2}}}"#,
        r#"{"type":"track","payload":{"name":"sim","properties":{"iccid":89014103211118510720,"price":1.10,"n":1e3}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"__timestamp":"2026-11-29T16:52:41.139+0100"}}}"#,
    ];

    /// Rows the quick path must leave to the full check (most of them are errors there).
    const UNUSUAL: &[&str] = &[
        r#"["track",{"name":"tap"}]"#,
        r#"{"type":"track","payload":["tap"]}"#,
        r#"{"type":"identify","payload":{"profileId":"u1"}}"#,
        r#"{"type":"track","type":"track","payload":{"name":"tap"}}"#,
        r#"{"type":"track","payload":{"name":"t\u0061p"}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"k\"ey":1}}}"#,
        r#"{"type":"track","payload":{"name":""}}"#,
        r#"{"type":"track","payload":{"name":"session_start"}}"#,
        r#"{"type":"track","payload":{"name":"tap","profileId":42}}"#,
        r#"{"type":"track","payload":{"name":"tap","profileId":"  "}}"#,
        r#"{"type":"track","payload":{"name":"tap","groups":["ok",""]}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":[1]}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"__timestamp":"yesterday"}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"__deviceId":"   "}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"__sessionId":7}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"__ip":"not-an-ip"}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"d":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"t":1e400}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"t":"\uDC00"}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"c":"caf\u00e9"}}}"#,
        r#"{"type":"track","payload":{"name":"tap"},"extra":1e400}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"t":{"u":[-2e308]}}}}"#,
    ];

    fn raw(json: &str) -> &RawValue {
        serde_json::from_str(json).expect("rows are JSON")
    }

    #[test]
    fn ordinary_rows_read_exactly_as_the_full_check_reads_them() {
        for json in ORDINARY {
            let quick = read(raw(json)).unwrap_or_else(|| panic!("quick path refused {json}"));
            let full =
                validate_event(json).unwrap_or_else(|e| panic!("full check refused {json}: {e}"));
            assert_eq!(quick, full, "{json}");
            assert_eq!(
                quick.properties.to_json(None),
                full.properties.to_json(None)
            );
        }
    }

    #[test]
    fn unusual_rows_are_left_to_the_full_check() {
        for json in UNUSUAL {
            assert!(read(raw(json)).is_none(), "quick path took {json}");
        }
    }

    #[test]
    fn nesting_is_measured_like_the_full_check() {
        let sixteen = format!("{}1{}", "[".repeat(15), "]".repeat(15));
        let row = format!(
            r#"{{"type":"track","payload":{{"name":"t","properties":{{"d":{sixteen},"s":"[[[["}}}}}}"#
        );
        assert!(read(raw(&row)).is_some(), "16 levels pass");
        assert!(validate_event(&row).is_ok());
        assert_eq!(shape(r#"{"a":"\"{{","b":[{}]}"#), Some(3));
        assert_eq!(shape("12"), Some(0));
        assert_eq!(shape(r#"{"e":[true,1e-7,"1e999"]}"#), Some(2));
        assert_eq!(shape("1e400"), None);
        assert_eq!(shape(r#"{"a":"\u00e9"}"#), None);
        assert_eq!(
            shape(r#"{"a":"\\u"}"#),
            Some(1),
            "an escaped backslash before a u"
        );
        assert_eq!(shape(r#"[1,{"x":-2.5E+308}]"#), None);
    }

    #[test]
    fn large_rows_are_left_to_the_full_check() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        let row =
            format!(r#"{{"type":"track","payload":{{"name":"t","properties":{{"b":"{big}"}}}}}}"#);
        assert!(read(raw(&row)).is_none());
    }
}
