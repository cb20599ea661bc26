//! Reading gateway readings from NDJSON or CSV, all or nothing.

use std::io::BufRead;

use backfill_core::Event;
use backfill_protocol::time::parse_timestamp_str;
use serde_json::{Map, Value};

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

/// Reads every reading; the first bad line stops the read with its number. NDJSON is told from
/// CSV by the first non-blank character (`{`).
pub fn read_events(mut input: impl BufRead) -> Result<Vec<(usize, Event)>, InputError> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|e| bad(0, format!("cannot read the input: {e}")))?;
    if text.trim_start().starts_with('{') {
        read_ndjson(&text)
    } else {
        read_csv(&text)
    }
}

fn read_ndjson(text: &str) -> Result<Vec<(usize, Event)>, InputError> {
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| bad(n, format!("not JSON: {e}")))?;
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
        if let Some(key) = obj.keys().next() {
            return Err(bad(
                n,
                format!("unknown field {key:?} (expected name, properties, timestamp, device_id)"),
            ));
        }
        events.push((
            n,
            Event {
                name,
                properties,
                timestamp_ms,
                device_id,
            },
        ));
    }
    Ok(events)
}

/// CSV with a header: `name` is required, `timestamp` and `device_id` are optional, every other
/// column is a property (numbers and booleans are read as such).
fn read_csv(text: &str) -> Result<Vec<(usize, Event)>, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| bad(1, format!("bad CSV header: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let name_col = column("name").ok_or_else(|| bad(1, "the CSV header has no \"name\" column"))?;
    let (time_col, device_col) = (column("timestamp"), column("device_id"));
    let mut events = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let n = i + 2;
        let record = record.map_err(|e| bad(n, format!("bad CSV row: {e}")))?;
        let name = record
            .get(name_col)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(n, "empty name"))?
            .to_owned();
        let timestamp_ms = match time_col
            .and_then(|c| record.get(c))
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(t) => Some(timestamp(t).map_err(|e| bad(n, e))?),
        };
        let device_id = device_col
            .and_then(|c| record.get(c))
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let mut properties = Map::new();
        for (c, (header, field)) in headers.iter().zip(record.iter()).enumerate() {
            if Some(c) == Some(name_col)
                || Some(c) == time_col
                || Some(c) == device_col
                || field.is_empty()
            {
                continue;
            }
            properties.insert(header.to_owned(), cell(field));
        }
        events.push((
            n,
            Event {
                name,
                properties,
                timestamp_ms,
                device_id,
            },
        ));
    }
    Ok(events)
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

fn cell(field: &str) -> Value {
    if let Ok(i) = field.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = field.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match field {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(field.to_owned()),
    }
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
