//! A row's properties with every value exactly as it was sent (SPEC §7): a number keeps its JSON
//! text (`1.10`, `1e3`, a 20-digit id), whichever way the row was read.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// Properties kept as JSON text, e.g. a profile's or a group's, keyed by unescaped property name.
pub type RawMap = BTreeMap<String, Box<RawValue>>;

/// The properties of one row: keys unescaped, sorted and unique; each value the JSON text it
/// arrived as, borrowed from the request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties<'a> {
    pairs: Vec<(Cow<'a, str>, &'a str)>,
}

impl<'a> Properties<'a> {
    /// From `(key, value as JSON text)` pairs in any order. A repeated key keeps its last value,
    /// as JSON parsers do.
    pub fn new(mut pairs: Vec<(Cow<'a, str>, &'a str)>) -> Self {
        // A stable sort keeps a repeated key's values in the order sent; each later one then
        // replaces the value kept.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, kept| {
            let repeated = later.0 == kept.0;
            if repeated {
                kept.1 = later.1;
            }
            repeated
        });
        Properties { pairs }
    }

    /// The JSON text of `key`'s value.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.find(key).map(|i| self.pairs[i].1)
    }

    /// Takes `key` out, returning its value's JSON text.
    pub fn remove(&mut self, key: &str) -> Option<&'a str> {
        self.find(key).map(|i| self.pairs.remove(i).1)
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.pairs.binary_search_by(|(k, _)| (**k).cmp(key)).ok()
    }

    /// `(key, value as JSON text)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a str)> {
        self.pairs.iter().map(|(k, v)| (&**k, *v))
    }

    /// Number of properties.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The stored JSON object: keys in order, each value's text as sent, with `extra` (a key and
    /// a value's JSON text) set in its place, replacing a property of the same name.
    pub fn to_json(&self, extra: Option<(&str, &str)>) -> String {
        let size: usize = self.pairs.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut out = String::with_capacity(size + 48);
        out.push('{');
        let mut extra = extra;
        let mut first = true;
        let mut put = |out: &mut String, key: &str, value: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            write_key(out, key);
            out.push(':');
            out.push_str(value);
        };
        for (key, value) in &self.pairs {
            if let Some((extra_key, extra_value)) = extra
                && extra_key <= &**key
            {
                put(&mut out, extra_key, extra_value);
                extra = None;
                if extra_key == &**key {
                    continue;
                }
            }
            put(&mut out, key, value);
        }
        if let Some((extra_key, extra_value)) = extra {
            put(&mut out, extra_key, extra_value);
        }
        out.push('}');
        out
    }

    /// The properties `keep` selects, owned, for a profile or a group.
    pub fn to_raw_map(&self, keep: impl Fn(&str) -> bool) -> RawMap {
        self.pairs
            .iter()
            .filter(|(k, _)| keep(k))
            .filter_map(|(k, v)| {
                Some((k.to_string(), RawValue::from_string((*v).to_owned()).ok()?))
            })
            .collect()
    }
}

/// Writes a JSON object key: as it is when it needs no escape (every key the quick reader
/// takes), else as serde_json escapes it.
fn write_key(out: &mut String, key: &str) {
    if key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&serde_json::Value::from(key).to_string());
    } else {
        out.push('"');
        out.push_str(key);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props<'a>(pairs: &[(&'a str, &'a str)]) -> Properties<'a> {
        Properties::new(pairs.iter().map(|(k, v)| (Cow::Borrowed(*k), *v)).collect())
    }

    #[test]
    fn keeps_each_value_as_sent_sorted_by_key() {
        let p = props(&[("z", "1e3"), ("a", "1.10"), ("id", "89014103211118510720")]);
        assert_eq!(
            p.to_json(None),
            r#"{"a":1.10,"id":89014103211118510720,"z":1e3}"#
        );
        assert_eq!(
            p.to_json(Some(("b", "\"x\""))),
            r#"{"a":1.10,"b":"x","id":89014103211118510720,"z":1e3}"#
        );
        assert_eq!(
            p.to_json(Some(("z", "2"))),
            r#"{"a":1.10,"id":89014103211118510720,"z":2}"#
        );
        assert_eq!(props(&[]).to_json(Some(("k", "1"))), r#"{"k":1}"#);
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let p = props(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(p.to_json(None), r#"{"a":3,"b":2}"#);
        assert_eq!(p.get("a"), Some("3"));
    }

    #[test]
    fn keys_that_need_escapes_are_escaped() {
        let p = props(&[("k\"q", "1"), ("tab\t", "2")]);
        assert_eq!(p.to_json(None), r#"{"k\"q":1,"tab\t":2}"#);
    }

    #[test]
    fn raw_maps_keep_number_text() {
        let p = props(&[("n", "1.10"), ("__insertId", "\"i\"")]);
        let map = p.to_raw_map(|k| !k.starts_with("__"));
        assert_eq!(serde_json::to_string(&map).expect("json"), r#"{"n":1.10}"#);
    }
}
