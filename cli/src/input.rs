//! Reading gateway readings from NDJSON or CSV as a stream, a line (a record) at a time.

mod csv;

use std::io::{BufRead, Read};

use backfill_core::Event;
use backfill_protocol::time::parse_timestamp_str;
use serde_json::{Map, Value};

use self::csv::Csv;

/// A bad line, named by its number (1-based).
#[derive(Debug)]
pub struct InputError {
    /// The line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for InputError {}

fn bad(line: usize, message: impl Into<String>) -> InputError {
    InputError {
        line,
        message: message.into(),
    }
}

/// Reads every reading, as [`readings`] yields them, into memory: for tests.
#[cfg(test)]
pub fn read_events(input: impl BufRead) -> Result<Vec<(usize, Event)>, InputError> {
    readings(input)?.collect()
}

/// The readings of `input`, NDJSON or CSV, as an iterator that reads one line (one CSV record)
/// at a time: memory is bounded by the longest line, not by the input. Each item is a reading
/// with the physical line where it starts (also in CSV whose quoted fields may span lines);
/// the first bad one is an error naming its line, after which the iterator ends. NDJSON is
/// told from CSV by the first non-blank character (`{`), after a UTF-8 byte-order mark if
/// there is one. Empty input (or a CSV header alone) gives no readings. Fails at once when
/// the input cannot be read or the CSV header is wrong.
pub fn readings<R: BufRead>(mut input: R) -> Result<Readings<R>, InputError> {
    let cannot_read = |e: std::io::Error| bad(1, format!("cannot read the input: {e}"));
    let (prefix, first) = peek_first(&mut input).map_err(cannot_read)?;
    let input = std::io::Cursor::new(prefix).chain(input);
    Ok(match first {
        None => Readings::Empty,
        Some(b'{') => Readings::Ndjson(Ndjson {
            input,
            line: 0,
            bytes: Vec::new(),
            done: false,
        }),
        Some(_) => Readings::Csv(Box::new(Csv::new(input)?)),
    })
}

/// Skips a UTF-8 byte-order mark and reads on over blanks to the first other byte, which it
/// leaves unread. Returns the bytes read after the mark (blanks, or the start of a mark that
/// was none), to be read again, and the first byte that is not blank (`None`: blanks only).
fn peek_first(input: &mut impl BufRead) -> std::io::Result<(Vec<u8>, Option<u8>)> {
    const BOM: &[u8] = b"\xef\xbb\xbf";
    let mut read = Vec::new();
    while read.len() < BOM.len() {
        match input.fill_buf()?.first() {
            Some(&b) if b == BOM[read.len()] => {
                read.push(b);
                input.consume(1);
            }
            _ => break,
        }
    }
    if read == BOM {
        read.clear();
    } else if let Some(&b) = read.first() {
        return Ok((read, Some(b)));
    }
    loop {
        let Some(&b) = input.fill_buf()?.first() else {
            return Ok((read, None));
        };
        if !b.is_ascii_whitespace() {
            return Ok((read, Some(b)));
        }
        read.push(b);
        input.consume(1);
    }
}

/// The readings of an input: see [`readings`].
pub enum Readings<R> {
    /// Blanks only.
    Empty,
    /// One JSON object a line.
    Ndjson(Ndjson<Chained<R>>),
    /// A header, then one reading a record.
    Csv(Box<Csv<Chained<R>>>),
}

/// The input with the bytes read to tell its format put back in front.
type Chained<R> = std::io::Chain<std::io::Cursor<Vec<u8>>, R>;

impl<R: BufRead> Iterator for Readings<R> {
    type Item = Result<(usize, Event), InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Readings::Empty => None,
            Readings::Ndjson(r) => r.next(),
            Readings::Csv(r) => r.next(),
        }
    }
}

/// NDJSON readings, a line at a time.
pub struct Ndjson<R> {
    input: R,
    /// The number of the last line read.
    line: usize,
    /// The last line read (reused).
    bytes: Vec<u8>,
    /// An error was given: nothing follows.
    done: bool,
}

impl<R: BufRead> Iterator for Ndjson<R> {
    type Item = Result<(usize, Event), InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.bytes.clear();
            let n = self.line + 1;
            match self.input.read_until(b'\n', &mut self.bytes) {
                Ok(0) => return None,
                Ok(_) => self.line = n,
                Err(e) => {
                    self.done = true;
                    return Some(Err(bad(n, format!("cannot read the input: {e}"))));
                }
            }
            // As `str::lines`: a line ends at LF or CRLF.
            let mut bytes = self.bytes.as_slice();
            if let Some(rest) = bytes.strip_suffix(b"\n") {
                bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            let item = match std::str::from_utf8(bytes) {
                Err(e) => Err(not_utf8(n, e.valid_up_to())),
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => ndjson_reading(n, line).map(|event| (n, event)),
            };
            self.done = item.is_err();
            return Some(item);
        }
        None
    }
}

/// Says that the byte at `column` (0-based) of line `line` is not UTF-8.
fn not_utf8(line: usize, column: usize) -> InputError {
    bad(
        line,
        format!(
            "byte {} is not UTF-8 (is the file in another encoding, such as Latin-1 or UTF-16? \
             convert it, e.g. with iconv -t UTF-8)",
            column + 1
        ),
    )
}

/// One NDJSON line (not blank) as a reading.
fn ndjson_reading(n: usize, line: &str) -> Result<Event, InputError> {
    let value: Value = serde_json::from_str(line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
    backfill_core::event::exact_integers(line).map_err(|e| bad(n, e))?;
    let Value::Object(mut obj) = value else {
        return Err(bad(n, "a reading must be a JSON object"));
    };
    let name = match obj.remove("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => return Err(bad(n, "\"name\" must be a non-empty string")),
    };
    let properties = match obj.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(bad(n, "\"properties\" must be an object")),
    };
    if let Some(why) = properties.keys().find_map(|key| reserved(key)) {
        return Err(bad(n, why));
    }
    let timestamp_ms = match obj.remove("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => {
            Some(epoch_number(&number.to_string()).map_err(|e| bad(n, e))?)
        }
        Some(Value::String(text)) => Some(timestamp(&text).map_err(|e| bad(n, e))?),
        Some(v) => return Err(bad(n, format!("\"timestamp\" {v} is not a time"))),
    };
    let device_id = match obj.remove("device_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad(n, "\"device_id\" must be a string")),
    };
    let insert_id = match obj.remove("insert_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad(n, "\"insert_id\" must be a string")),
    };
    if let Some(key) = obj.keys().next() {
        return Err(bad(
            n,
            format!(
                "unknown field {key:?} (expected name, properties, timestamp, device_id, \
                 insert_id)"
            ),
        ));
    }
    Ok(Event {
        name,
        properties,
        timestamp_ms,
        device_id,
        insert_id,
    })
}

/// Why a property may not have this name, if it may not: the SDK sets these itself from the
/// reading's fields (SPEC §9), so a value given as a property would be dropped without a word.
fn reserved(key: &str) -> Option<String> {
    use backfill_protocol::validate::{DEVICE_ID, INSERT_ID, SESSION_ID, TIMESTAMP};
    let field = match key {
        TIMESTAMP => "give it as the \"timestamp\" field (CSV: column)",
        INSERT_ID => "give it as the \"insert_id\" field (CSV: column)",
        DEVICE_ID => "give it as the \"device_id\" field (CSV: column)",
        SESSION_ID => "the server makes sessions of a device's readings",
        _ => return None,
    };
    Some(format!(
        "the property {key:?} is set by Backfill itself; {field}"
    ))
}

/// A buffered or dead-lettered event's wire JSON back in enqueue's format (`name`,
/// `properties`, `timestamp` as ISO-8601, `device_id`, `insert_id`), so that what is exported
/// can be enqueued again. `None` for an event that is not a `track` (enqueue makes only those).
pub fn to_reading(wire: &str) -> Option<Value> {
    use backfill_protocol::validate::{DEVICE_ID, INSERT_ID, SESSION_ID, TIMESTAMP};
    let event: Value = serde_json::from_str(wire).ok()?;
    if event["type"] != "track" {
        return None;
    }
    let payload = &event["payload"];
    let mut properties = payload["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut reading = Map::new();
    reading.insert("name".to_owned(), payload["name"].clone());
    let timestamp = properties.remove(TIMESTAMP);
    let device_id = properties.remove(DEVICE_ID);
    let insert_id = properties.remove(INSERT_ID);
    properties.remove(SESSION_ID);
    reading.insert("properties".to_owned(), Value::Object(properties));
    if let Some(ms) = timestamp.as_ref().and_then(Value::as_i64) {
        reading.insert(
            "timestamp".to_owned(),
            Value::from(backfill_protocol::time::format_iso_ms(ms)),
        );
    }
    if let Some(d) = device_id {
        reading.insert("device_id".to_owned(), d);
    }
    if let Some(id) = insert_id {
        reading.insert("insert_id".to_owned(), id);
    }
    Some(Value::Object(reading))
}

/// The epoch numbers read, by their integer part's number of digits: each unit's range is
/// 2001-09-09T01:46:40Z to 2286-11-20T17:46:40Z, and the ranges do not overlap.
const EPOCH_UNITS: [(f64, f64, &str); 4] = [
    (1e9, 1e3, "seconds"),
    (1e12, 1.0, "milliseconds"),
    (1e15, 1e-3, "microseconds"),
    (1e18, 1e-6, "nanoseconds"),
];

/// Reads an epoch number by its magnitude: 10 integer digits are seconds, 13 milliseconds,
/// 16 microseconds, 19 nanoseconds (a fraction is kept to the millisecond). Anything else is
/// refused: a number of another size is no time in 2001..2286 in any of these units, and
/// guessing would put readings decades away (seconds read as milliseconds fall in 1970).
pub fn epoch_number(text: &str) -> Result<i64, String> {
    let refuse = || {
        format!(
            "timestamp {text} is not an epoch time: give 10 digits for seconds, 13 for \
             milliseconds, 16 for microseconds or 19 for nanoseconds (2001 to 2286), or an \
             ISO-8601 time"
        )
    };
    let value: f64 = text.trim().parse().map_err(|_| refuse())?;
    if !value.is_finite() || value < 0.0 {
        return Err(refuse());
    }
    EPOCH_UNITS
        .iter()
        .find(|(start, _, _)| (*start..start * 10.0).contains(&value))
        .map(|(_, to_ms, _)| (value * to_ms).round() as i64)
        .ok_or_else(refuse)
}

/// Reads a timestamp given as text: an epoch number (see [`epoch_number`]) or an RFC 3339 /
/// ISO-8601 time (UTC when it has no offset).
fn timestamp(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    let numeric = !trimmed.is_empty()
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    if numeric && trimmed.parse::<f64>().is_ok() {
        return epoch_number(trimmed);
    }
    parse_timestamp_str(trimmed).ok_or_else(|| format!("timestamp {text:?} is not a time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ndjson_and_names_the_bad_line() {
        let ok = "{\"name\":\"reading\",\"properties\":{\"t\":1},\"timestamp\":\"2026-11-27T10:00:00Z\",\"device_id\":\"s1\"}\n\n{\"name\":\"reading\"}\n";
        let events = read_events(ok.as_bytes()).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].1.timestamp_ms, Some(1_795_773_600_000));
        assert_eq!(events[0].1.device_id.as_deref(), Some("s1"));
        let bad_input = "{\"name\":\"a\"}\n{\"name\":\"b\",\"timestamp\":\"soon\"}\n";
        assert_eq!(read_events(bad_input.as_bytes()).unwrap_err().line, 2);
        assert_eq!(
            read_events("{\"name\":\"a\"}\n{oops\n".as_bytes())
                .unwrap_err()
                .line,
            2
        );
    }

    #[test]
    fn epoch_numbers_are_read_by_their_size() {
        let ms = 1_795_946_400_000;
        for (text, expected) in [
            ("1795946400", ms),
            ("1795946400.25", ms + 250),
            ("1795946400000", ms),
            ("1795946400000000", ms),
            ("1795946400000000000", ms),
            ("1000000000", 1_000_000_000_000),
            ("9999999999", 9_999_999_999_000),
        ] {
            assert_eq!(epoch_number(text), Ok(expected), "{text}");
        }
        for text in [
            "0",
            "12345",
            "999999999",
            "10000000000",
            "179594640000",
            "17959464000000",
            "-1795946400",
            "99999999999999999999",
        ] {
            assert!(epoch_number(text).is_err(), "{text} is no time");
        }
        let line = "{\"name\":\"r\",\"timestamp\":1795946400}\n";
        assert_eq!(
            read_events(line.as_bytes()).expect("seconds")[0]
                .1
                .timestamp_ms,
            Some(ms)
        );
        let line = "{\"name\":\"r\",\"timestamp\":\"1795946400000000\"}\n";
        assert_eq!(
            read_events(line.as_bytes()).expect("microseconds as text")[0]
                .1
                .timestamp_ms,
            Some(ms)
        );
        let csv = "name,timestamp\nr,1795946400\nr,2026-11-29T10:00:00Z\n";
        let events = read_events(csv.as_bytes()).expect("csv");
        assert_eq!(events[0].1.timestamp_ms, Some(ms));
        let err = read_events("{\"name\":\"r\",\"timestamp\":12345}\n".as_bytes()).unwrap_err();
        assert!(err.message.contains("10 digits for seconds"), "{err}");
    }

    #[test]
    fn quirks_of_real_files() {
        // A byte-order mark before NDJSON.
        let bom = "\u{feff}{\"name\":\"reading\"}\n";
        assert_eq!(read_events(bom.as_bytes()).expect("NDJSON").len(), 1);
        let bom_csv = "\u{feff}name,temp\nreading,1\n";
        assert_eq!(read_events(bom_csv.as_bytes()).expect("CSV").len(), 1);
        // A fault on physical line 4, after a quoted field spanning lines 2 and 3.
        let csv = "name,note,timestamp\nreading,\"two\nlines\",\nreading,x,soon\n";
        let err = read_events(csv.as_bytes()).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        // Cells that are not exactly numbers stay text.
        let csv = "name,a,b,c,d,e,f\nr,007,89014103211118510720,1e3,21.5,-3,0.10\n";
        let p = &read_events(csv.as_bytes()).expect("csv")[0].1.properties;
        assert_eq!(p["a"], Value::from("007"));
        assert_eq!(p["b"], Value::from("89014103211118510720"));
        assert_eq!(p["c"], Value::from("1e3"));
        assert_eq!(p["d"], Value::from(21.5));
        assert_eq!(p["e"], Value::from(-3));
        assert_eq!(p["f"], Value::from("0.10"));
        // Empty input, and a header alone, hold no readings.
        for empty in ["", "\n\n", "\u{feff}", "name,temp\n"] {
            assert!(read_events(empty.as_bytes()).expect("empty").is_empty());
        }
    }

    /// The same input read whole and read a byte at a time, as a slow pipe gives it: UTF-8
    /// sequences and CRLFs are cut between reads.
    fn both_ways(input: &[u8]) -> [Result<Vec<(usize, Event)>, InputError>; 2] {
        [
            read_events(input),
            read_events(std::io::BufReader::with_capacity(1, input)),
        ]
    }

    #[test]
    fn a_stream_cut_anywhere_reads_the_same() {
        let csv = "\u{feff}name,note,temp\r\ncafé,\"温度\r\n🌡\",21.5\r\n\r\nb,x,1\r\n";
        for read in both_ways(csv.as_bytes()) {
            let events = read.expect("valid");
            assert_eq!(events.len(), 2);
            assert_eq!((events[0].0, events[1].0), (2, 5));
            assert_eq!(events[0].1.name, "café");
            assert_eq!(events[0].1.properties["note"], Value::from("温度\r\n🌡"));
        }
        let ndjson = "\u{feff}\n \n{\"name\":\"é\"}\r\n\n{\"name\":\"b\",\"timestamp\":\"soon\"}\n";
        for read in both_ways(ndjson.as_bytes()) {
            assert_eq!(read.expect_err("bad").line, 5);
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_named_by_line_and_byte_however_they_are_read() {
        for (input, line, byte) in [
            (&b"name,note\nr,ok\nr,caf\xe9\n"[..], 3, 6),
            (b"name,note\nr,\"a\nb\xe2\x82\"\n", 3, 2),
            (b"name\nr\xc3", 2, 2),
            (b"{\"name\":\"a\"}\n{\"name\":\"caf\xe9\"}\n", 2, 13),
            // The byte-order mark is no byte of the line.
            (b"\xef\xbb\xbf\xff", 1, 1),
        ] {
            for read in both_ways(input) {
                let err = read.expect_err("not UTF-8");
                assert_eq!(err.line, line, "{input:?}: {err}");
                assert!(
                    err.message
                        .starts_with(&format!("byte {byte} is not UTF-8")),
                    "{input:?}: {err}"
                );
            }
        }
    }

    #[test]
    fn reads_csv_with_typed_cells() {
        let text = "name,timestamp,device_id,temp,ok,label\nreading,1795773600000,s1,21.5,true,hall\nreading,,s2,7,,\n";
        let events = read_events(text.as_bytes()).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].1.properties["temp"], Value::from(21.5));
        assert_eq!(events[0].1.properties["ok"], Value::Bool(true));
        assert_eq!(events[0].1.properties["label"], Value::from("hall"));
        assert_eq!(events[1].1.properties["temp"], Value::from(7));
        assert_eq!(events[1].1.timestamp_ms, None);
        let err = read_events("name,timestamp\nreading,later\n".as_bytes()).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(read_events("temp\n1\n".as_bytes()).is_err());
    }
}
