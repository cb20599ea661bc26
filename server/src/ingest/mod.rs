//! From a decoded request body to the rows a store writes, and from the store's outcomes to the
//! `202` answer. Pure and synchronous: the handlers run it on a blocking thread.

use backfill_protocol::ids;
use backfill_protocol::limits::{
    FUTURE_TOLERANCE_MS, MAX_BATCH_EVENTS, SKEW_THRESHOLD_MS, max_event_age_ms,
};
use backfill_protocol::time::parse_timestamp;
use backfill_protocol::validate::{Action, CLIENT_TIMESTAMP, ValidEvent, validate_event};
use backfill_protocol::wire::{BatchResponse, RejectReason, Rejection};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::store::{NewEvent, PreparedRow, RowAction, RowOutcome};

#[cfg(test)]
mod differential;
mod quick;

/// What the server knows about a request besides its body.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The project's client id (used in the id derivations).
    pub client_id: String,
    /// When the server read the request, epoch ms.
    pub receive_ms: i64,
    /// The `User-Agent`, if any; without one, events without `__deviceId` are server events.
    pub user_agent: Option<String>,
    /// The client's IP as the server sees it.
    pub ip: String,
    /// The device-id salt of the receive day (needed only with a user agent).
    pub salt: Option<String>,
    /// The server's age window in days.
    pub max_event_age_days: u32,
}

/// The rows of a request split into those to write and those refused.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Rows to write.
    pub rows: Vec<PreparedRow>,
    /// For each entry of `rows`, its index in the request's `events`.
    pub placed: Vec<usize>,
    /// Rows refused by validation.
    pub rejected: Vec<Rejection>,
    /// For `POST /track`, the device and session the event was attributed to.
    pub attribution: Option<Attribution>,
}

/// The ids a row was attributed to.
#[derive(Debug, Clone)]
pub struct Attribution {
    /// Device id ("" for server events).
    pub device_id: String,
    /// Session id ("" for server events and profile rows).
    pub session_id: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
}

/// Parses and checks a `POST /track/batch` body.
pub fn prepare_batch(body: &[u8], meta: &RequestMeta) -> Result<Prepared, ApiError> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::BadRequest("the body must be a JSON object with an events array".to_owned())
        }
        _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
    })?;
    let n = envelope.events.len();
    if n == 0 || n > MAX_BATCH_EVENTS {
        return Err(ApiError::BadRequest(format!(
            "events must hold 1 to {MAX_BATCH_EVENTS} items, not {n}"
        )));
    }
    let sent_at = match envelope.sent_at {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_timestamp(&v).ok_or_else(|| {
            ApiError::BadRequest("sentAt must be an ISO-8601 time or epoch milliseconds".to_owned())
        })?),
    };
    let shift = sent_at
        .map(|sent| meta.receive_ms - sent)
        .filter(|shift| shift.abs() > SKEW_THRESHOLD_MS);
    let mut prepared = Prepared {
        rows: Vec::with_capacity(n),
        placed: Vec::with_capacity(n),
        ..Default::default()
    };
    let mut sessions = SessionIds::default();
    for (index, raw) in envelope.events.into_iter().enumerate() {
        let row = check(raw).and_then(|ev| prepare_row(ev, meta, shift, &mut sessions));
        match row {
            Ok((row, _)) => {
                prepared.rows.push(row);
                prepared.placed.push(index);
            }
            Err(error) => prepared.rejected.push(Rejection {
                index,
                reason: RejectReason::Validation,
                error,
            }),
        }
    }
    Ok(prepared)
}

/// Parses and checks a `POST /track` body (one event object).
pub fn prepare_single(body: &[u8], meta: &RequestMeta) -> Result<Prepared, ApiError> {
    let raw: &RawValue = std::str::from_utf8(body)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(text).map_err(|e| e.to_string()))
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let mut prepared = Prepared::default();
    let mut sessions = SessionIds::default();
    let row = check(raw).and_then(|ev| prepare_row(ev, meta, None, &mut sessions));
    match row {
        Ok((row, device_id)) => {
            prepared.attribution = Some(match &row.action {
                RowAction::Event(event) => Attribution {
                    device_id: event.device_id.clone(),
                    session_id: event.session_id.clone(),
                },
                _ => Attribution {
                    device_id,
                    session_id: String::new(),
                },
            });
            prepared.rows.push(row);
            prepared.placed.push(0);
        }
        Err(error) => prepared.rejected.push(Rejection {
            index: 0,
            reason: RejectReason::Validation,
            error,
        }),
    }
    Ok(prepared)
}

/// Checks one row: the quick reader where it can decide, else the full check. Both apply the
/// same rules of [`backfill_protocol::validate`] and give the same [`ValidEvent`].
fn check(raw: &RawValue) -> Result<ValidEvent<'_>, String> {
    match quick::read(raw) {
        Some(event) => Ok(event),
        None => validate_event(raw.get()),
    }
}

/// Deterministic session ids already derived for one request: a batch holds many events of the
/// same few devices in the same 30-minute buckets, and each id costs a SHA-256.
#[derive(Default)]
struct SessionIds {
    /// `(device id, bucket, session id)`, oldest first.
    recent: Vec<(String, i64, String)>,
}

impl SessionIds {
    const KEEP: usize = 32;

    fn get(&mut self, client_id: &str, device_id: &str, time_ms: i64) -> String {
        let bucket = ids::session_bucket(time_ms);
        if let Some((_, _, id)) = self
            .recent
            .iter()
            .rev()
            .find(|(d, b, _)| *b == bucket && d == device_id)
        {
            return id.clone();
        }
        let id = ids::session_id(client_id, device_id, time_ms);
        if self.recent.len() == Self::KEEP {
            self.recent.remove(0);
        }
        self.recent.push((device_id.to_owned(), bucket, id.clone()));
        id
    }
}

/// Applies the time rules and id derivations to one valid row.
fn prepare_row(
    mut ev: ValidEvent<'_>,
    meta: &RequestMeta,
    shift: Option<i64>,
    sessions: &mut SessionIds,
) -> Result<(PreparedRow, String), String> {
    let receive = meta.receive_ms;
    let (mut time_ms, mut client_time) = match &ev.timestamp {
        Some(t) => match shift {
            Some(shift) => (t.ms.saturating_add(shift), Some(t.raw)),
            None => (t.ms, None),
        },
        None => (receive, None),
    };
    if time_ms > receive + FUTURE_TOLERANCE_MS {
        time_ms = receive;
        if let Some(t) = &ev.timestamp {
            client_time = Some(t.raw);
        }
    }
    if receive - time_ms > max_event_age_ms(meta.max_event_age_days) {
        return Err(format!(
            "event timestamp older than {} days",
            meta.max_event_age_days
        ));
    }

    let device_id = match (ev.device_id.take(), &meta.user_agent, &meta.salt) {
        (Some(id), _, _) => id,
        (None, Some(ua), Some(salt)) => ids::device_id(
            ua,
            ev.ip.as_deref().unwrap_or(&meta.ip),
            &meta.client_id,
            salt,
        ),
        _ => String::new(),
    };
    let derived_session = || {
        if device_id.is_empty() {
            String::new()
        } else {
            sessions.get(&meta.client_id, &device_id, time_ms)
        }
    };

    let ValidEvent {
        action,
        profile_id,
        properties,
        insert_id,
        session_id,
        ..
    } = ev;
    // The device id goes into the event; other rows hand it back for `POST /track`'s answer.
    let (action, device_id) = match action {
        Action::Track { name, groups } => {
            let session_id = session_id.unwrap_or_else(derived_session);
            let event = NewEvent {
                id: new_event_id(receive),
                name,
                device_id,
                session_id,
                profile_id,
                properties: properties.to_json(client_time.map(|raw| (CLIENT_TIMESTAMP, raw))),
                groups: (!groups.is_empty()).then(|| Value::from(groups).to_string()),
            };
            (RowAction::Event(event), String::new())
        }
        Action::Identify {
            first_name,
            last_name,
            email,
            avatar,
        } => {
            let fields = [
                ("firstName", first_name),
                ("lastName", last_name),
                ("email", email),
                ("avatar", avatar),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            let profile_id = profile_id.unwrap_or_default();
            (
                RowAction::Identify {
                    profile_id,
                    fields,
                    properties: properties.to_raw_map(not_special),
                },
                device_id,
            )
        }
        Action::Increment { property, delta } => {
            let profile_id = profile_id.unwrap_or_default();
            (
                RowAction::Increment {
                    profile_id,
                    property,
                    delta,
                },
                device_id,
            )
        }
        Action::Group {
            id,
            group_type,
            name,
        } => (
            RowAction::Group {
                id,
                group_type,
                name,
                properties: properties.to_raw_map(not_special),
            },
            device_id,
        ),
        Action::AssignGroup { group_ids } => {
            let profile_id = match profile_id {
                Some(p) => p,
                None if !device_id.is_empty() => device_id.clone(),
                None => return Err("assign_group requires a profileId".to_owned()),
            };
            (
                RowAction::AssignGroup {
                    profile_id,
                    group_ids,
                },
                device_id,
            )
        }
    };
    Ok((
        PreparedRow {
            insert_id,
            time_ms,
            action,
        },
        device_id,
    ))
}

/// A UUIDv7 for a stored event. The random bits come from a thread-local generator rather than
/// the OS: ingest makes one id per event and a system call each would cost more than the rest
/// of the id.
pub fn new_event_id(now_ms: i64) -> uuid::Uuid {
    let random = fastrand::u128(..).to_le_bytes();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random[..10]);
    uuid::Builder::from_unix_timestamp_millis(u64::try_from(now_ms).unwrap_or(0), &bytes)
        .into_uuid()
}

/// Whether a property reaches a profile or group: the `__`-prefixed control properties do not.
fn not_special(key: &str) -> bool {
    !key.starts_with("__")
}

/// Combines validation refusals with the store's outcomes into the `202` body.
pub fn summarize(total: usize, prepared: Prepared, outcomes: Vec<RowOutcome>) -> BatchResponse {
    let mut response = BatchResponse {
        rejected: prepared.rejected,
        ..Default::default()
    };
    for (&index, outcome) in prepared.placed.iter().zip(outcomes) {
        match outcome {
            RowOutcome::Stored => response.accepted += 1,
            RowOutcome::Duplicate => {
                response.accepted += 1;
                response.duplicates += 1;
            }
            RowOutcome::Invalid(error) => response.rejected.push(Rejection {
                index,
                reason: RejectReason::Validation,
                error,
            }),
            RowOutcome::Failed(error) => response.rejected.push(Rejection {
                index,
                reason: RejectReason::Internal,
                error,
            }),
        }
    }
    response.rejected.sort_by_key(|r| r.index);
    debug_assert_eq!(response.accepted + response.rejected.len(), total);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_795_860_000_000; // 2026-11-28T10:00:00Z

    fn meta() -> RequestMeta {
        RequestMeta {
            client_id: "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f".into(),
            receive_ms: NOW,
            user_agent: Some("test/1".into()),
            ip: "203.0.113.7".into(),
            salt: Some("salt".into()),
            max_event_age_days: 5,
        }
    }

    fn one(ts: Value, sent_at: Option<i64>) -> Result<PreparedRow, String> {
        let body = json!({"events": [{"type": "track", "payload": {"name": "a", "properties": {"__timestamp": ts}}}], "sentAt": sent_at});
        let mut p = prepare_batch(body.to_string().as_bytes(), &meta()).expect("envelope");
        match p.rejected.pop() {
            Some(r) => Err(r.error),
            None => Ok(p.rows.remove(0)),
        }
    }

    fn props(row: &PreparedRow) -> Value {
        match &row.action {
            RowAction::Event(e) => serde_json::from_str(&e.properties).expect("json"),
            _ => Value::Null,
        }
    }

    #[test]
    fn age_window_is_inclusive_of_exactly_five_days() {
        let five_days = 5 * 86_400_000;
        assert!(one(json!(NOW - five_days), None).is_ok());
        assert_eq!(
            one(json!(NOW - five_days - 1000), None).unwrap_err(),
            "event timestamp older than 5 days"
        );
    }

    #[test]
    fn future_times_are_clamped_and_kept() {
        let row = one(json!(NOW + 120_000), None).expect("accepted");
        assert_eq!(row.time_ms, NOW);
        assert_eq!(props(&row)["__clientTimestamp"], json!(NOW + 120_000));
        let row = one(json!(NOW + 59_000), None).expect("accepted");
        assert_eq!(row.time_ms, NOW + 59_000);
        assert!(props(&row).get("__clientTimestamp").is_none());
    }

    #[test]
    fn skew_is_corrected_only_past_the_threshold() {
        let two_hours = 7_200_000;
        let row = one(json!(NOW - two_hours - 5000), Some(NOW - two_hours)).expect("accepted");
        assert_eq!(row.time_ms, NOW - 5000);
        assert_eq!(
            props(&row)["__clientTimestamp"],
            json!(NOW - two_hours - 5000)
        );
        let row = one(json!(NOW - 5000), Some(NOW - 30_000)).expect("accepted");
        assert_eq!(row.time_ms, NOW - 5000, "30 s of skew is left alone");
    }

    #[test]
    fn remembered_session_ids_are_the_derived_ones() {
        let mut sessions = SessionIds::default();
        let client = meta().client_id;
        for round in 0..3 {
            for i in 0..200_i64 {
                let device = format!("sensor-{}", i % 40);
                let time = NOW - 3_600_000 + i * 29_000 + round;
                assert_eq!(
                    sessions.get(&client, &device, time),
                    ids::session_id(&client, &device, time)
                );
            }
        }
    }

    #[test]
    fn a_number_out_of_range_is_refused_and_its_neighbours_stored() {
        let body = r#"{"events":[
            {"type":"track","payload":{"name":"a","properties":{"v":1.5}}},
            {"type":"track","payload":{"name":"b","properties":{"v":1e400}}},
            {"type":"track","payload":{"name":"c","properties":{"v":[2e-400]}}}]}"#;
        let p = prepare_batch(body.as_bytes(), &meta()).expect("envelope");
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].index, 1);
        assert!(p.rejected[0].error.contains("number out of range"));
    }

    #[test]
    fn envelope_errors() {
        let m = meta();
        assert!(prepare_batch(b"{", &m).is_err());
        assert!(prepare_batch(b"[]", &m).is_err());
        assert!(prepare_batch(br#"{"events": {}}"#, &m).is_err());
        assert!(prepare_batch(br#"{"events": []}"#, &m).is_err());
        assert!(prepare_batch(br#"{"events": [1], "sentAt": "later"}"#, &m).is_err());
    }
}
