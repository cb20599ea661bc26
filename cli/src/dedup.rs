//! Content-derived insert ids (`enqueue --dedup-key`), so that replaying a log is harmless: the
//! same reading gets the same `__insertId` every time, and the server stores it once (SPEC §5).

use backfill_core::Event;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Which parts of a reading make its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupKey {
    /// `content`: the name, the device id, the timestamp and every property.
    Content,
    /// A comma-separated list of `name`, `device_id`, `timestamp` and property names.
    Fields(Vec<String>),
}

impl std::str::FromStr for DedupKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "content" {
            return Ok(Self::Content);
        }
        let fields: Vec<String> = s
            .split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect();
        if fields.is_empty() {
            return Err("give `content` or a comma-separated list of fields".to_owned());
        }
        Ok(Self::Fields(fields))
    }
}

/// The canonical JSON text of `value`: object keys sorted at every level, so that the id does
/// not depend on the input's key order.
fn canonical_text(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical_text(&map[*k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_text)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// The insert id of `event` under `key`: the first 16 bytes of
/// `SHA-256("backfill-dedup:v1\n" + canonical JSON of the chosen parts)`, in hex (32
/// characters). Fails, naming what is missing, when a chosen part is absent: a reading without
/// a timestamp would get a new time, and so a new identity, on every replay.
pub fn insert_id(event: &Event, key: &DedupKey) -> Result<String, String> {
    let timestamp = event
        .timestamp_ms
        .ok_or("--dedup-key needs a timestamp on every reading (this one has none)")?;
    let parts = match key {
        DedupKey::Content => json!({
            "name": event.name,
            "device_id": event.device_id,
            "timestamp": timestamp,
            "properties": Value::Object(event.properties.clone()),
        }),
        DedupKey::Fields(fields) => {
            let mut parts = Map::new();
            for field in fields {
                let value = match field.as_str() {
                    "name" => Value::from(event.name.as_str()),
                    "timestamp" => Value::from(timestamp),
                    "device_id" => match &event.device_id {
                        Some(d) => Value::from(d.as_str()),
                        None => return Err("--dedup-key field device_id is missing".to_owned()),
                    },
                    property => match event.properties.get(property) {
                        Some(v) => v.clone(),
                        None => {
                            return Err(format!("--dedup-key field {property:?} is missing"));
                        }
                    },
                };
                parts.insert(field.clone(), value);
            }
            Value::Object(parts)
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(b"backfill-dedup:v1\n");
    hasher.update(canonical_text(&parts).as_bytes());
    let digest = hasher.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(props: Value) -> Event {
        Event {
            name: "reading".to_owned(),
            properties: props.as_object().cloned().unwrap_or_default(),
            timestamp_ms: Some(1_795_946_400_000),
            device_id: Some("s1".to_owned()),
            insert_id: None,
        }
    }

    #[test]
    fn the_same_reading_gets_the_same_id_whatever_its_key_order() {
        let a = reading(json!({"temp": 21.5, "hum": {"a": 1, "b": 2}}));
        let b = reading(json!({"hum": {"b": 2, "a": 1}, "temp": 21.5}));
        let id = insert_id(&a, &DedupKey::Content).expect("id");
        assert_eq!(id.len(), 32);
        assert_eq!(insert_id(&b, &DedupKey::Content), Ok(id.clone()));
        let other = reading(json!({"temp": 21.6, "hum": {"a": 1, "b": 2}}));
        assert_ne!(insert_id(&other, &DedupKey::Content), Ok(id));
        let fields: DedupKey = "device_id,timestamp".parse().expect("fields");
        assert_eq!(insert_id(&a, &fields), insert_id(&other, &fields));
        let missing: DedupKey = "seq".parse().expect("fields");
        assert!(insert_id(&a, &missing).is_err());
        let mut untimed = a.clone();
        untimed.timestamp_ms = None;
        assert!(insert_id(&untimed, &DedupKey::Content).is_err());
    }
}
