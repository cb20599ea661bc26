//! Event times: parsing what clients send and formatting what the server answers.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Reads a `__timestamp` (or `sentAt`) value as milliseconds since the Unix epoch (SPEC §4).
///
/// Accepts an integer number of milliseconds (a JSON number, or a string of digits) or a date-time
/// string in one of the forms of [`parse_timestamp_str`]. A JSON number with a fraction or an
/// exponent is accepted when it is a whole number of milliseconds (`1.7958600e12`).
/// Returns `None` for anything else, including times outside years 1970..=9999.
pub fn parse_timestamp(value: &Value) -> Option<i64> {
    let ms = match value {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => ms,
            None => n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15)? as i64,
        },
        Value::String(s) => parse_timestamp_str(s)?,
        _ => return None,
    };
    in_range(ms)
}

/// Reads a timestamp string as epoch milliseconds: the forms of the README's table.
///
/// - digits only: epoch milliseconds;
/// - `YYYY-MM-DD`, a separator (`T`, `t` or a space), `hh:mm:ss`, an optional fraction of 1
///   to 9 digits (SPEC §4; below the millisecond is dropped), then an optional offset: `Z`,
///   `z`, `+hh:mm`, `+hhmm` or `+hh` (or `-`); without one, UTC;
/// - `YYYY-MM-DDThh:mm` (UTC) and `YYYY-MM-DD` (midnight UTC).
///
/// Surrounding whitespace is ignored. Returns `None` for anything else: an impossible date or
/// time (`2026-02-30`, `24:00:00`), an offset beyond ±23:59, text before or after the time, a
/// signed year (`+2026-...`), a fraction of 10 digits or more.
pub fn parse_timestamp_str(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    // chrono skips spaces before an offset (`41.123 Z`); the contract's forms have none but
    // the one between date and time.
    if s.bytes()
        .enumerate()
        .any(|(i, b)| b.is_ascii_whitespace() && i != 10)
    {
        return None;
    }
    // chrono reads a fraction of any length; the contract's is 1 to 9 digits.
    if s.as_bytes().get(19) == Some(&b'.') {
        let digits = s.bytes().skip(20).take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok().and_then(in_range);
    }
    // chrono's formats match the literal `T` only; the other separators RFC 3339 allows and
    // ISO-8601 writers emit are read as it.
    let normalized;
    let s = match s.as_bytes().get(10) {
        Some(b't' | b' ') if s.is_char_boundary(10) && s.is_char_boundary(11) => {
            normalized = format!("{}T{}", &s[..10], &s[11..]);
            normalized.as_str()
        }
        _ => s,
    };
    let ms = if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%#z") {
        t.timestamp_millis()
    } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
    {
        t.and_utc().timestamp_millis()
    } else {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp_millis()
    };
    in_range(ms)
}

/// Epoch milliseconds of years 1970 to 9999, the range the store and the read API format.
fn in_range(ms: i64) -> Option<i64> {
    (0..=253_402_300_799_999).contains(&ms).then_some(ms)
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

    /// One test per accepted form (the README's table), each with the UTC time it reads as.
    macro_rules! reads_as {
        ($($test:ident: $sent:expr => $utc:expr;)*) => {$(
            #[test]
            fn $test() {
                let expected = DateTime::parse_from_rfc3339($utc).expect("expected time");
                assert_eq!(
                    parse_timestamp(&$sent).map(format_iso_ms),
                    Some(format_iso_ms(expected.timestamp_millis())),
                    "{}", $sent
                );
            }
        )*};
    }

    reads_as! {
        utc_with_z: json!("2026-11-29T15:52:41.139Z") => "2026-11-29T15:52:41.139Z";
        lower_case_z_and_t: json!("2026-11-29t15:52:41.139z") => "2026-11-29T15:52:41.139Z";
        offset_with_colon: json!("2026-11-29T16:52:41.139+01:00") => "2026-11-29T15:52:41.139Z";
        offset_without_colon_java_simple_date_format: json!("2026-11-29T16:52:41.139+0100") => "2026-11-29T15:52:41.139Z";
        offset_in_hours_only: json!("2026-11-29T16:52:41.139+01") => "2026-11-29T15:52:41.139Z";
        negative_offset: json!("2026-11-29T10:22:41.139-05:30") => "2026-11-29T15:52:41.139Z";
        space_separator_with_offset: json!("2026-11-29 16:52:41+01:00") => "2026-11-29T15:52:41Z";
        space_separator_without_offset_is_utc: json!("2026-11-29 15:52:41.139") => "2026-11-29T15:52:41.139Z";
        no_offset_is_utc: json!("2026-11-29T15:52:41") => "2026-11-29T15:52:41Z";
        no_fraction_with_z: json!("2026-11-29T15:52:41Z") => "2026-11-29T15:52:41Z";
        one_fractional_digit: json!("2026-11-29T15:52:41.1Z") => "2026-11-29T15:52:41.100Z";
        six_fractional_digits_python_isoformat: json!("2026-11-29T16:52:41.139512+01:00") => "2026-11-29T15:52:41.139Z";
        seven_fractional_digits_dotnet_round_trip: json!("2026-11-29T15:52:41.1395127Z") => "2026-11-29T15:52:41.139Z";
        nine_fractional_digits_java_instant: json!("2026-11-29T15:52:41.139512734Z") => "2026-11-29T15:52:41.139Z";
        fraction_without_offset: json!("2026-11-29T15:52:41.139512734") => "2026-11-29T15:52:41.139Z";
        minutes_only_is_utc: json!("2026-11-29T15:52") => "2026-11-29T15:52:00Z";
        date_only_is_utc_midnight: json!("2026-11-29") => "2026-11-29T00:00:00Z";
        surrounding_whitespace: json!(" 2026-11-29T15:52:41Z ") => "2026-11-29T15:52:41Z";
        epoch_milliseconds: json!(1_795_967_561_139_i64) => "2026-11-29T15:52:41.139Z";
        epoch_milliseconds_as_digits: json!("1795967561139") => "2026-11-29T15:52:41.139Z";
        epoch_milliseconds_as_whole_float: json!(1_795_967_561_139.0) => "2026-11-29T15:52:41.139Z";
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            json!("yesterday"),
            json!(""),
            json!("2025-13-01T00:00:00Z"),
            json!("2026-02-30T00:00:00Z"),
            json!("2026-11-29T24:00:00Z"),
            json!("2026-11-29T16:52:41+24:00"),
            json!("2026-11-29T16:52:41+1"),
            json!("2026-11-29T16:52:41.139+0100 later"),
            json!("2026-11-29X16:52:41Z"),
            json!("2026-11-2916:52:41Z"),
            json!("29/11/2026 16:52"),
            json!("16:52:41"),
            json!("1969-12-31T23:59:59Z"),
            json!("10000-01-01T00:00:00Z"),
            json!("2026-11-29T15:52:41.1395127341Z"),
            json!("2026-11-29T15:52:41.Z"),
            json!("+2026-11-29T15:52:41Z"),
            json!("2026-11-29T15:52:41.123 Z"),
            json!("2026-11-29T15:52:41 +01:00"),
            json!("2026-11-29  15:52:41Z"),
            json!("-2026-11-29T15:52:41Z"),
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
