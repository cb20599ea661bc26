//! The common batch row read without building a JSON tree.
//!
//! Most rows a device drains are plain `track` events: a name, flat properties, the special
//! ids as plain strings. For those, [`read`] walks the row's text once, borrows the keys and
//! values straight from the request body and keeps each property value as the raw JSON text it
//! arrived as, which spares the allocations of a full `serde_json::Value` per row. It accepts a
//! row only when the full check ([`validate_event`](backfill_protocol::validate::validate_event))
//! would accept it with the same result; anything unusual (escaped keys or ids, duplicate keys, a
//! rule the row breaks) returns `None` and the caller takes the full path, which also writes
//! every error text.

use std::net::IpAddr;

use backfill_protocol::limits::{
    MAX_EVENT_BYTES, MAX_EVENT_NAME_CHARS, MAX_ID_CHARS, MAX_PROPERTY_DEPTH,
};
use backfill_protocol::time::parse_timestamp;
use backfill_protocol::validate::{
    ClientTime, DEVICE_ID, INSERT_ID, IP, RESERVED_NAMES, SESSION_ID, TIMESTAMP,
};
use serde_json::Value;
use serde_json::value::RawValue;

/// A `track` row that passed every rule, with its properties still as raw JSON.
#[derive(Debug)]
pub struct QuickTrack<'a> {
    pub name: &'a str,
    pub groups: Vec<&'a str>,
    pub profile_id: Option<&'a str>,
    /// Properties sorted by key, without `__timestamp`, each value as its JSON text.
    pub properties: Vec<(&'a str, &'a str)>,
    pub timestamp: Option<ClientTime>,
    pub device_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub insert_id: Option<&'a str>,
    pub ip: Option<&'a str>,
}

/// The parts of a row's payload the quick path reads.
#[derive(Default)]
struct Payload<'a> {
    name: Option<&'a str>,
    /// `Some(None)` for `"properties": null`.
    properties: Option<Option<Vec<(&'a str, &'a str)>>>,
    profile_id: Option<Option<&'a str>>,
    groups: Option<Option<Vec<&'a str>>>,
}

/// Stores the value of a key seen for the first time; a repeated key defers to the full check.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.replace(value).is_none().then_some(())
}

/// A cursor over the text of one JSON value that has already been parsed as valid JSON (the
/// envelope's parse checks every row). It still never trusts that: whatever it does not expect
/// ends the walk with `None`.
///
/// Reading raw JSON this way does not check that every number fits an `f64` nor that every `\u`
/// escape pairs its surrogates, as the full check does: rows with either go to it. The walk also
/// bounds the nesting: the properties object sits at level 3 of the row, so a row no deeper
/// than 2 + 16 levels has properties no deeper than 16.
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

    /// Skips a number the full check can read.
    fn skip_number(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        while bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.at += 1;
        }
        readable_number(self.text.get(start..self.at)?).then_some(())
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

    fn payload(&mut self) -> Option<Payload<'a>> {
        let mut payload = Payload::default();
        self.object(|s, key| match key {
            "name" => once(&mut payload.name, s.plain_string()?),
            "properties" => {
                let value = s.nullable(|s| {
                    let mut pairs = Vec::with_capacity(8);
                    s.object(|s, key| {
                        pairs.push((key, s.value()?));
                        Some(())
                    })?;
                    Some(pairs)
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
pub fn read(raw: &RawValue) -> Option<QuickTrack<'_>> {
    let json = raw.get();
    if json.len() > MAX_EVENT_BYTES {
        return None;
    }
    let mut scanner = Scanner::new(json);
    let (kind, payload) = scanner.row()?;
    if scanner.deepest > 2 + MAX_PROPERTY_DEPTH || kind != "track" {
        return None;
    }
    let name = payload.name?;
    let chars = name.chars().count();
    if chars == 0
        || chars > MAX_EVENT_NAME_CHARS
        || name.contains(['\r', '\n'])
        || RESERVED_NAMES.contains(&name)
    {
        return None;
    }
    let profile_id = payload.profile_id.flatten();
    if profile_id.is_some_and(|p| p.trim().is_empty()) {
        return None;
    }
    let groups = payload.groups.flatten().unwrap_or_default();
    if groups.iter().any(|g| g.trim().is_empty()) {
        return None;
    }

    let mut properties = payload.properties.flatten().unwrap_or_default();
    properties.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if properties.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let find = |key: &str| {
        properties
            .binary_search_by(|(k, _)| (*k).cmp(key))
            .ok()
            .map(|i| properties[i].1)
    };
    let device_id = special_id(find(DEVICE_ID), true)?;
    let session_id = special_id(find(SESSION_ID), false)?;
    let insert_id = special_id(find(INSERT_ID), false)?;
    let ip = match find(IP).map(plain_str) {
        None | Some(Some(None)) => None,
        Some(Some(Some(ip))) if ip.trim().parse::<IpAddr>().is_ok() => Some(ip.trim()),
        _ => return None,
    };
    let timestamp = match properties.binary_search_by(|(k, _)| (*k).cmp(TIMESTAMP)) {
        Err(_) => None,
        Ok(i) => {
            let (_, raw) = properties.remove(i);
            let value: Value = serde_json::from_str(raw).ok()?;
            let ms = parse_timestamp(&value)?;
            Some(ClientTime { ms, raw: value })
        }
    };
    Some(QuickTrack {
        name,
        groups,
        profile_id,
        properties,
        timestamp,
        device_id,
        session_id,
        insert_id,
        ip,
    })
}

/// A raw value as `None` (null), `Some(text)` (an unescaped string), or not this kind at all.
fn plain_str(raw: &str) -> Option<Option<&str>> {
    Scanner::new(raw).nullable(Scanner::plain_string)
}

/// `__deviceId`, `__sessionId` or `__insertId` under the full check's rule, or `None` to defer.
fn special_id(raw: Option<&str>, trim: bool) -> Option<Option<&str>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    match plain_str(raw)? {
        None => Some(None),
        Some(s) => {
            let s = if trim { s.trim() } else { s };
            let chars = s.chars().count();
            (1..=MAX_ID_CHARS).contains(&chars).then_some(Some(s))
        }
    }
}

/// Whether a JSON number reads as a finite `f64`. Without an exponent, 300 digits stay far below
/// `f64::MAX`; anything else is parsed.
fn readable_number(token: &str) -> bool {
    (token.len() <= 300 && !token.contains(['e', 'E']))
        || token.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Writes properties (sorted, unescaped keys) as a JSON object, with `extra` set in its place.
pub fn write_object(pairs: &[(&str, &str)], extra: Option<(&str, &Value)>) -> String {
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = String::with_capacity(size + 48);
    out.push('{');
    let mut extra = extra;
    let mut first = true;
    let mut put = |out: &mut String, key: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
        out.push_str(value);
    };
    for (key, value) in pairs {
        if let Some((extra_key, extra_value)) = extra {
            if extra_key <= *key {
                put(&mut out, extra_key, &extra_value.to_string());
                extra = None;
                if extra_key == *key {
                    continue;
                }
            }
        }
        put(&mut out, key, value);
    }
    if let Some((extra_key, extra_value)) = extra {
        put(&mut out, extra_key, &extra_value.to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_protocol::validate::{Action, ValidEvent, validate_event};
    use serde_json::{Map, json};

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
    ];

    /// Rows the quick path must leave to the full check (most of them are errors there).
    const UNUSUAL: &[&str] = &[
        r#"["track",{"name":"tap"}]"#,
        r#"{"type":"track","payload":["tap"]}"#,
        r#"{"type":"identify","payload":{"profileId":"u1"}}"#,
        r#"{"type":"track","type":"track","payload":{"name":"tap"}}"#,
        r#"{"type":"track","payload":{"name":"t\u0061p"}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"k\"ey":1}}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"a":1,"a":2}}}"#,
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
        r#"{"type":"track","payload":{"name":"tap"},"extra":1e400}"#,
        r#"{"type":"track","payload":{"name":"tap","note":"\uD800"}}"#,
        r#"{"type":"track","payload":{"name":"tap","properties":{"t":{"u":[-2e308]}}}}"#,
    ];

    fn tree(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::from_str(v).expect("raw json")))
            .collect()
    }

    fn full(json: &str) -> Result<backfill_protocol::validate::ValidEvent, String> {
        let value: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        validate_event(value, json.len())
    }

    /// Asserts that the quick path read `json` as the full check read it.
    fn assert_same(json: &str, quick: &QuickTrack<'_>, full: &ValidEvent) {
        let Action::Track { name, groups } = &full.action else {
            panic!("quick took a non-track row {json}");
        };
        let owned = |s: Option<&str>| s.map(str::to_owned);
        assert_eq!(quick.name, name, "{json}");
        assert_eq!(quick.groups, *groups, "{json}");
        assert_eq!(owned(quick.profile_id), full.profile_id, "{json}");
        assert_eq!(quick.timestamp, full.timestamp, "{json}");
        assert_eq!(owned(quick.device_id), full.device_id, "{json}");
        assert_eq!(owned(quick.session_id), full.session_id, "{json}");
        assert_eq!(owned(quick.insert_id), full.insert_id, "{json}");
        assert_eq!(owned(quick.ip), full.ip, "{json}");
        assert_eq!(tree(&quick.properties), full.properties, "{json}");
    }

    #[test]
    fn ordinary_rows_read_exactly_as_the_full_check_reads_them() {
        for json in ORDINARY {
            let raw: &RawValue = serde_json::from_str(json).expect("raw");
            let quick = read(raw).unwrap_or_else(|| panic!("quick path refused {json}"));
            let full = full(json).unwrap_or_else(|e| panic!("full check refused {json}: {e}"));
            assert_same(json, &quick, &full);

            let written: Value =
                serde_json::from_str(&write_object(&quick.properties, None)).expect("json");
            assert_eq!(written, Value::Object(full.properties.clone()), "{json}");
            let extra = json!("2026-11-27T10:00:00Z");
            let written: Value = serde_json::from_str(&write_object(
                &quick.properties,
                Some(("__clientTimestamp", &extra)),
            ))
            .expect("json");
            let mut expected = full.properties.clone();
            expected.insert("__clientTimestamp".to_owned(), extra.clone());
            assert_eq!(written, Value::Object(expected), "{json}");
        }
    }

    /// Rows assembled at random from ordinary and awkward parts: whenever the quick path takes
    /// one, the full check must accept it and read the same event.
    #[test]
    fn random_rows_read_as_the_full_check_reads_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        let kinds = [r#""track""#, r#""identify""#, r#""alias""#, "3"];
        let names = [
            r#""tap""#,
            r#""""#,
            r#""session_start""#,
            r#""a\u0062""#,
            r#""two\nlines""#,
            r#""ünïcode""#,
            "7",
        ];
        let keys = [
            "__timestamp",
            "__deviceId",
            "__sessionId",
            "__insertId",
            "__ip",
            "__clientTimestamp",
            "temp",
            "nested",
            r#"k\"q"#,
        ];
        let values = [
            "1795860000000",
            r#""2026-11-27T10:00:00Z""#,
            r#""2026-11-27""#,
            r#""soon""#,
            "-5",
            "1.5e3",
            "null",
            "true",
            r#""""#,
            r#""  ""#,
            r#""dev-1""#,
            r#""203.0.113.7""#,
            r#"{"a":[1,{"b":null}]}"#,
            "[[[]]]",
            r#""esc\"aped""#,
            "1e400",
            "-2.5E+308",
            "1e-7",
            "123456789012345678901234567890",
            "[0.5,[1e999]]",
            r#""\uD800""#,
            r#"["\uD83D\uDE00"]"#,
        ];
        // Other members the quick path must skip, and repeated ones it must leave alone.
        let extras = [
            r#""extra":{"x":[1,"}]",{"y":null}],"z":"\"{"}"#,
            r#""note":"a\"b""#,
            r#""name":"again""#,
            r#""deep":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]"#,
            r#""big":1e999"#,
        ];
        let separators = [",", " , ", ",\n\t"];
        let colons = [":", " : ", ":\n"];
        let mut taken = 0;
        for _ in 0..20_000 {
            let comma = separators[rng.usize(..separators.len())];
            let colon = colons[rng.usize(..colons.len())];
            let mut props: Vec<String> = Vec::new();
            for _ in 0..rng.usize(0..6) {
                let key = keys[rng.usize(..keys.len())];
                let value = values[rng.usize(..values.len())];
                props.push(format!(r#""{key}"{colon}{value}"#));
            }
            let mut payload = vec![format!(
                r#""name"{colon}{}"#,
                names[rng.usize(..names.len())]
            )];
            match rng.usize(0..4) {
                0 => payload.push(format!(r#""properties"{colon}{{ {} }}"#, props.join(comma))),
                1 => payload.push(r#""properties":null"#.to_owned()),
                2 => payload.push(r#""properties":[]"#.to_owned()),
                _ => {}
            }
            match rng.usize(0..8) {
                0 => payload.push(r#""profileId":"u-1""#.to_owned()),
                1 => payload.push(r#""profileId":12"#.to_owned()),
                2 => payload.push(r#""groups":["g1"]"#.to_owned()),
                3 => payload.push(r#""groups":[""]"#.to_owned()),
                4 => payload.push(r#""groups":[ "g1" , "g2" ]"#.to_owned()),
                5 => payload.push(r#""groups":null"#.to_owned()),
                6 => payload.push(r#""profileId":null"#.to_owned()),
                _ => {}
            }
            if rng.bool() {
                payload.push(extras[rng.usize(..extras.len())].to_owned());
            }
            rng.shuffle(&mut payload);
            let mut members = vec![
                format!(r#""type"{colon}{}"#, kinds[rng.usize(..kinds.len())]),
                format!(r#""payload"{colon}{{{}}}"#, payload.join(comma)),
            ];
            if rng.usize(0..4) == 0 {
                members.push(extras[rng.usize(..extras.len())].to_owned());
            }
            rng.shuffle(&mut members);
            let json = format!("{{ {} }}", members.join(comma));
            let raw: &RawValue = serde_json::from_str(&json).expect("rows are JSON");
            let Some(quick) = read(raw) else { continue };
            taken += 1;
            let full = full(&json).unwrap_or_else(|e| panic!("quick took {json}, full says {e}"));
            assert_same(&json, &quick, &full);
        }
        assert!(taken > 300, "the quick path took only {taken} rows");
    }

    #[test]
    fn unusual_rows_are_left_to_the_full_check() {
        for json in UNUSUAL {
            let raw: &RawValue = serde_json::from_str(json).expect("raw");
            assert!(read(raw).is_none(), "quick path took {json}");
        }
    }

    #[test]
    fn nesting_is_measured_like_the_full_check() {
        let sixteen = format!("{}1{}", "[".repeat(15), "]".repeat(15));
        let row = format!(
            r#"{{"type":"track","payload":{{"name":"t","properties":{{"d":{sixteen},"s":"[[[["}}}}}}"#
        );
        let raw: &RawValue = serde_json::from_str(&row).expect("raw");
        assert!(read(raw).is_some(), "16 levels pass");
        assert!(full(&row).is_ok());
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
        let raw: &RawValue = serde_json::from_str(&row).expect("raw");
        assert!(read(raw).is_none());
    }
}
