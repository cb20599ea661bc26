//! Exact arithmetic on JSON numbers, for `increment` and `decrement` (SPEC §6b).
//!
//! Upstream adds in JavaScript doubles, where `0.1 + 0.2` is `0.30000000000000004` and a
//! 20-digit counter silently loses its last digits. Here a sum is exact or the row is refused
//! with reason `validation`: both operands are read as decimals of at most 28 significant digits
//! (at most 28 after the point), and the sum keeps the larger number of decimals (`1.10 + 1` is
//! `2.10`).

pub use rust_decimal::Decimal;

/// Reads a JSON number's text as an exact decimal; `None` when it has more significant digits or
/// decimals than a [`Decimal`] holds (28), so that no digit is ever rounded away.
pub fn exact_decimal(text: &str) -> Option<Decimal> {
    if text.contains(['e', 'E']) {
        // `from_scientific` rounds nothing away: it fails where the value does not fit.
        let d = Decimal::from_scientific(text).ok()?;
        // It accepts mantissas longer than 28 digits by truncating; refuse those.
        let digits = text
            .split(['e', 'E'])
            .next()
            .unwrap_or("")
            .bytes()
            .filter(u8::is_ascii_digit)
            .count();
        (digits <= 28).then_some(d)
    } else {
        Decimal::from_str_exact(text).ok()
    }
}

/// The JSON text of `current + delta`, where `current` is the stored property's JSON text (none
/// or `null` counts as 0). Errors name what makes the sum impossible to store exactly.
pub fn add_exact(property: &str, current: Option<&str>, delta: Decimal) -> Result<String, String> {
    let current = match current.map(str::trim) {
        None | Some("null") => Decimal::ZERO,
        Some(text) if text.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) => {
            exact_decimal(text).ok_or_else(|| {
                format!(
                    "profile property {property} holds {text}, more digits than an exact sum keeps (28)"
                )
            })?
        }
        Some(_) => return Err(format!("profile property {property} is not a number")),
    };
    current
        .checked_add(delta)
        .map(|sum| sum.to_string())
        .ok_or_else(|| format!("profile property {property} would overflow"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Decimal {
        exact_decimal(text).expect("exact")
    }

    #[test]
    fn sums_are_exact() {
        assert_eq!(
            add_exact("p", Some("0.1"), dec("0.2")),
            Ok("0.3".to_owned())
        );
        assert_eq!(
            add_exact("p", Some("1.10"), dec("1")),
            Ok("2.10".to_owned())
        );
        assert_eq!(add_exact("p", None, dec("1e3")), Ok("1000".to_owned()));
        assert_eq!(add_exact("p", Some("null"), dec("2")), Ok("2".to_owned()));
        assert_eq!(
            add_exact("iccid", Some("89014103211118510720"), dec("1")),
            Ok("89014103211118510721".to_owned())
        );
        assert_eq!(add_exact("p", Some("5"), -dec("7")), Ok("-2".to_owned()));
    }

    #[test]
    fn what_cannot_be_exact_is_refused() {
        assert_eq!(exact_decimal("1234567890123456789012345678901"), None);
        assert_eq!(exact_decimal("1e40"), None);
        assert_eq!(exact_decimal("1.0000000000000000000000000000001"), None);
        assert_eq!(exact_decimal("1.00000000000000000000000000001e2"), None);
        assert!(
            add_exact("big", Some("1234567890123456789012345678901"), dec("1"))
                .unwrap_err()
                .contains("more digits")
        );
        assert!(
            add_exact("p", Some("79228162514264337593543950335"), dec("1"))
                .unwrap_err()
                .contains("overflow")
        );
        assert!(
            add_exact("p", Some("\"7\""), dec("1"))
                .unwrap_err()
                .contains("not a number")
        );
    }
}
