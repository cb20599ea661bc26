//! Event times: parsing what clients send and formatting what the server answers.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Reads a `__timestamp` (or `sentAt`) value as milliseconds since the Unix epoch.
///
/// Accepts an integer number of milliseconds, a string of digits (milliseconds), an RFC 3339 /
/// ISO-8601 date-time (read as UTC when it has no offset), or a plain `YYYY-MM-DD` date.
/// Returns `None` for anything else, including times outside years 1970..=9999.
pub fn parse_timestamp(value: &Value) -> Option<i64> {
    let ms = match value {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => ms,
            // A float is accepted when it is a whole number of milliseconds.
            None => n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15)? as i64,
        },
        Value::String(s) => parse_timestamp_str(s)?,
        _ => return None,
    };
    (0..=253_402_300_799_999).contains(&ms).then_some(ms)
}

/// Reads a timestamp string: epoch milliseconds, RFC 3339, naive ISO-8601 (UTC), or a date.
pub fn parse_timestamp_str(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok();
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    // "2026-11-27 10:00:00+02:00" and similar: RFC 3339 with a space instead of the `T`.
    if s.len() > 10 && s.as_bytes()[10] == b' ' {
        let with_t = format!("{}T{}", &s[..10], &s[11..]);
        if let Ok(t) = DateTime::parse_from_rfc3339(&with_t) {
            return Some(t.timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// Formats epoch milliseconds as ISO-8601 UTC with milliseconds, e.g. `2026-11-27T10:00:00.000Z`.
pub fn format_iso_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// The UTC calendar day (`YYYY-MM-DD`) of epoch milliseconds; the key of the daily device salt.
pub fn utc_day(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "1970-01-01".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_accepted_form() {
        let t = 1_764_237_600_000; // 2025-11-27T10:00:00Z
        assert_eq!(parse_timestamp(&json!("2025-11-27T10:00:00.000Z")), Some(t));
        assert_eq!(
            parse_timestamp(&json!("2025-11-27T12:00:00+02:00")),
            Some(t)
        );
        assert_eq!(parse_timestamp(&json!("2025-11-27T10:00:00")), Some(t));
        assert_eq!(parse_timestamp(&json!("2025-11-27 10:00:00.000")), Some(t));
        assert_eq!(
            parse_timestamp(&json!("2025-11-27 12:00:00+02:00")),
            Some(t)
        );
        assert_eq!(parse_timestamp(&json!(t)), Some(t));
        assert_eq!(parse_timestamp(&json!(t.to_string())), Some(t));
        assert_eq!(parse_timestamp(&json!(t as f64)), Some(t));
        assert_eq!(
            parse_timestamp(&json!("2025-11-27")),
            Some(t - 10 * 3_600_000)
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            json!("yesterday"),
            json!(""),
            json!("2025-13-01T00:00:00Z"),
            json!(true),
            json!(null),
            json!({"ms": 1}),
            json!(-5),
            json!(1.5),
            json!(1e300),
        ] {
            assert_eq!(parse_timestamp(&bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_iso_ms(1_764_237_600_123), "2025-11-27T10:00:00.123Z");
        assert_eq!(utc_day(1_764_237_600_123), "2025-11-27");
    }
}
