//! Applying ingest jobs inside the writer's transaction.

use std::collections::HashMap;

use backfill_protocol::limits::SESSION_START_LEAD_MS;
use backfill_protocol::number::{Decimal, add_exact};
use backfill_protocol::properties::RawMap;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::store::{IngestJob, NewEvent, PreparedRow, RowAction, RowOutcome};

/// Applies one job inside the open transaction, with no savepoint of its own: if it fails, the
/// transaction holds part of it and must be rolled back, and the group written again with
/// [`apply_job_apart`].
pub(super) fn apply_job(
    conn: &Connection,
    job: &IngestJob,
    synced_at: i64,
) -> rusqlite::Result<Vec<RowOutcome>> {
    let all: Vec<&PreparedRow> = job.rows.iter().collect();
    apply_rows(conn, job, &all, synced_at)
}

/// Applies one job inside the open transaction, in a savepoint. Rows are first written
/// together; if the store fails part-way, the job is rolled back and replayed row by row so that
/// one failing row is reported `Failed` without costing the others.
pub(super) fn apply_job_apart(
    conn: &Connection,
    job: &IngestJob,
    synced_at: i64,
) -> rusqlite::Result<Vec<RowOutcome>> {
    let all: Vec<&PreparedRow> = job.rows.iter().collect();
    conn.execute_batch("SAVEPOINT job")?;
    match apply_rows(conn, job, &all, synced_at) {
        Ok(outcomes) => {
            conn.execute_batch("RELEASE job")?;
            Ok(outcomes)
        }
        Err(e) => {
            tracing::warn!(error = %e, "job failed as a whole; retrying row by row");
            conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
            let mut outcomes = Vec::with_capacity(all.len());
            for row in all {
                conn.execute_batch("SAVEPOINT row")?;
                match apply_rows(conn, job, &[row], synced_at) {
                    Ok(mut one) => {
                        conn.execute_batch("RELEASE row")?;
                        outcomes.push(one.pop().unwrap_or(RowOutcome::Stored));
                    }
                    Err(e) => {
                        conn.execute_batch("ROLLBACK TO row; RELEASE row")?;
                        outcomes.push(RowOutcome::Failed(format!("store failed on this row: {e}")));
                    }
                }
            }
            Ok(outcomes)
        }
    }
}

/// Running totals of one session's new events within a job.
struct SessionDelta<'a> {
    device_id: &'a str,
    profile_id: Option<&'a str>,
    first: i64,
    last: i64,
    count: i64,
}

fn apply_rows(
    conn: &Connection,
    job: &IngestJob,
    rows: &[&PreparedRow],
    synced_at: i64,
) -> rusqlite::Result<Vec<RowOutcome>> {
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut sessions: HashMap<&str, SessionDelta<'_>> = HashMap::new();
    // What is the same for every row of the job is bound once; SQLite keeps a statement's
    // bindings until they are replaced.
    let mut claim = conn.prepare_cached(
        "INSERT OR IGNORE INTO insert_ids (project, insert_id, seen_at) VALUES (?1, ?2, ?3)",
    )?;
    claim.raw_bind_parameter(1, job.project)?;
    claim.raw_bind_parameter(3, synced_at)?;
    // The idempotency key stays in `properties` (`__insertId`), where reads find it.
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (id, project, type, name, device_id, session_id, profile_id,
            created_at, properties, groups, sdk_name, sdk_version, synced_at)
         VALUES (?1, ?2, 'track', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    insert.raw_bind_parameter(2, job.project)?;
    insert.raw_bind_parameter(10, &job.sdk_name)?;
    insert.raw_bind_parameter(11, &job.sdk_version)?;
    insert.raw_bind_parameter(12, synced_at)?;
    // Consecutive events often share a name, a device and a session: a value already bound
    // stays bound (each bind copies its text).
    let mut bound: Option<&NewEvent> = None;
    for (i, row) in rows.iter().enumerate() {
        if let Some(ahead) = rows.get(i + WARM_AHEAD) {
            warm(ahead);
        }
        if let Some(key) = &row.insert_id {
            claim.raw_bind_parameter(2, key)?;
            if claim.raw_execute()? == 0 {
                outcomes.push(RowOutcome::Duplicate);
                continue;
            }
        }
        let outcome = match &row.action {
            RowAction::Event(event) => {
                let last = bound.replace(event);
                insert.raw_bind_parameter(1, &event.id.as_bytes()[..])?;
                if last.is_none_or(|l| l.name != event.name) {
                    insert.raw_bind_parameter(3, &event.name)?;
                }
                if last.is_none_or(|l| l.device_id != event.device_id) {
                    insert.raw_bind_parameter(4, &event.device_id)?;
                }
                if last.is_none_or(|l| l.session_id != event.session_id) {
                    insert.raw_bind_parameter(5, &event.session_id)?;
                }
                if last.is_none_or(|l| l.profile_id != event.profile_id) {
                    insert.raw_bind_parameter(6, &event.profile_id)?;
                }
                insert.raw_bind_parameter(7, row.time_ms)?;
                insert.raw_bind_parameter(8, &event.properties)?;
                if last.is_none_or(|l| l.groups != event.groups) {
                    insert.raw_bind_parameter(9, &event.groups)?;
                }
                insert.raw_execute()?;
                if !event.session_id.is_empty() {
                    let delta = sessions.entry(&event.session_id).or_insert(SessionDelta {
                        device_id: &event.device_id,
                        profile_id: None,
                        first: row.time_ms,
                        last: row.time_ms,
                        count: 0,
                    });
                    delta.first = delta.first.min(row.time_ms);
                    delta.last = delta.last.max(row.time_ms);
                    delta.count += 1;
                    if delta.profile_id.is_none() {
                        delta.profile_id = event.profile_id.as_deref();
                    }
                }
                RowOutcome::Stored
            }
            RowAction::Identify {
                profile_id,
                fields,
                properties,
            } => {
                identify(
                    conn,
                    job.project,
                    profile_id,
                    fields,
                    properties,
                    row.time_ms,
                    synced_at,
                )?;
                RowOutcome::Stored
            }
            RowAction::Increment {
                profile_id,
                property,
                delta,
            } => increment(conn, job.project, profile_id, property, *delta, synced_at)?,
            RowAction::Group {
                id,
                group_type,
                name,
                properties,
            } => {
                conn.prepare_cached(
                    "INSERT INTO groups (project, id, type, name, properties, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (project, id) DO UPDATE SET type = excluded.type,
                        name = excluded.name, properties = excluded.properties,
                        updated_at = excluded.updated_at",
                )?
                .execute(params![
                    job.project,
                    id,
                    group_type,
                    name,
                    raw_json(properties),
                    synced_at
                ])?;
                RowOutcome::Stored
            }
            RowAction::AssignGroup {
                profile_id,
                group_ids,
            } => {
                ensure_profile(conn, job.project, profile_id, synced_at)?;
                let mut assign = conn.prepare_cached(
                    "INSERT OR IGNORE INTO profile_groups (project, profile_id, group_id) VALUES (?1, ?2, ?3)",
                )?;
                for group in group_ids {
                    assign.execute(params![job.project, profile_id, group])?;
                }
                RowOutcome::Stored
            }
        };
        if let (RowOutcome::Invalid(_), Some(key)) = (&outcome, &row.insert_id) {
            // A refused row leaves no trace, not even its key: a corrected resend must be stored.
            conn.prepare_cached("DELETE FROM insert_ids WHERE project = ?1 AND insert_id = ?2")?
                .execute(params![job.project, key])?;
        }
        outcomes.push(outcome);
    }
    for (session_id, delta) in sessions {
        upsert_session(conn, job, session_id, &delta, synced_at)?;
    }
    Ok(outcomes)
}

/// How far ahead of the row being written [`warm`] reads.
const WARM_AHEAD: usize = 4;

/// Reads one byte of every cache line of a row's strings. They were written moments ago by a
/// parse thread, usually on the other core; read here together, their cache misses overlap,
/// where the statements that copy them one at a time would wait for each in turn.
fn warm(row: &PreparedRow) {
    fn lines(text: &str) -> u8 {
        let bytes = text.as_bytes();
        let last = bytes.last().copied().unwrap_or(0);
        bytes.iter().step_by(64).fold(last, |a, b| a ^ b)
    }
    let mut seen = row.insert_id.as_deref().map_or(0, lines);
    if let RowAction::Event(event) = &row.action {
        seen ^= lines(&event.name)
            ^ lines(&event.device_id)
            ^ lines(&event.session_id)
            ^ lines(&event.properties)
            ^ event.profile_id.as_deref().map_or(0, lines);
    }
    std::hint::black_box(seen);
}

/// Creates the session with its one `session_start`, or widens it; the `session_start` moves
/// earlier when an earlier event arrives. The single writer serialises these updates.
fn upsert_session(
    conn: &Connection,
    job: &IngestJob,
    session_id: &str,
    delta: &SessionDelta<'_>,
    synced_at: i64,
) -> rusqlite::Result<()> {
    let existing: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT started_at, start_event FROM sessions WHERE project = ?1 AND id = ?2",
        )?
        .query_row(params![job.project, session_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match existing {
        None => {
            conn.prepare_cached(
                "INSERT INTO events (id, project, type, name, device_id, session_id, profile_id,
                    created_at, properties, sdk_name, sdk_version, synced_at)
                 VALUES (?1, ?2, 'track', 'session_start', ?3, ?4, ?5, ?6, '{}', ?7, ?8, ?9)",
            )?
            .execute(params![
                &crate::ingest::new_event_id(synced_at).as_bytes()[..],
                job.project,
                delta.device_id,
                session_id,
                delta.profile_id,
                delta.first - SESSION_START_LEAD_MS,
                job.sdk_name,
                job.sdk_version,
                synced_at,
            ])?;
            let start_event = conn.last_insert_rowid();
            conn.prepare_cached(
                "INSERT INTO sessions (project, id, device_id, profile_id, started_at, ended_at,
                    event_count, start_event)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                job.project,
                session_id,
                delta.device_id,
                delta.profile_id,
                delta.first,
                delta.last,
                delta.count,
                start_event,
            ])?;
        }
        Some((started_at, start_event)) => {
            conn.prepare_cached(
                "UPDATE sessions SET started_at = min(started_at, ?3), ended_at = max(ended_at, ?4),
                    event_count = event_count + ?5, profile_id = coalesce(profile_id, ?6)
                 WHERE project = ?1 AND id = ?2",
            )?
            .execute(params![job.project, session_id, delta.first, delta.last, delta.count, delta.profile_id])?;
            if delta.first < started_at {
                conn.prepare_cached(
                    "UPDATE events SET created_at = ?2, synced_at = ?3 WHERE seq = ?1",
                )?
                .execute(params![
                    start_event,
                    delta.first - SESSION_START_LEAD_MS,
                    synced_at
                ])?;
            }
        }
    }
    Ok(())
}

struct Profile {
    fields: Map<String, Value>,
    properties: RawMap,
    field_times: Map<String, Value>,
    created_at: i64,
}

fn load_profile(conn: &Connection, project: i64, id: &str) -> rusqlite::Result<Option<Profile>> {
    conn.prepare_cached(
        "SELECT fields, properties, field_times, created_at FROM profiles WHERE project = ?1 AND id = ?2",
    )?
    .query_row(params![project, id], |r| {
        Ok(Profile {
            fields: json_map(&r.get::<_, String>(0)?),
            properties: raw_map(&r.get::<_, String>(1)?),
            field_times: json_map(&r.get::<_, String>(2)?),
            created_at: r.get(3)?,
        })
    })
    .optional()
}

fn save_profile(
    conn: &Connection,
    project: i64,
    id: &str,
    p: &Profile,
    now: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO profiles (project, id, fields, properties, field_times, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (project, id) DO UPDATE SET fields = excluded.fields,
            properties = excluded.properties, field_times = excluded.field_times,
            updated_at = excluded.updated_at",
    )?
    .execute(params![
        project,
        id,
        Value::Object(p.fields.clone()).to_string(),
        raw_json(&p.properties),
        Value::Object(p.field_times.clone()).to_string(),
        p.created_at,
        now,
    ])?;
    Ok(())
}

fn empty_profile(now: i64) -> Profile {
    Profile {
        fields: Map::new(),
        properties: RawMap::new(),
        field_times: Map::new(),
        created_at: now,
    }
}

fn ensure_profile(conn: &Connection, project: i64, id: &str, now: i64) -> rusqlite::Result<()> {
    if load_profile(conn, project, id)?.is_none() {
        save_profile(conn, project, id, &empty_profile(now), now)?;
    }
    Ok(())
}

/// Merges fields and properties; for each one the value with the later event time wins, so
/// backfilled history never overwrites what the user set since.
fn identify(
    conn: &Connection,
    project: i64,
    id: &str,
    fields: &[(&'static str, String)],
    properties: &RawMap,
    time_ms: i64,
    now: i64,
) -> rusqlite::Result<()> {
    let mut profile = load_profile(conn, project, id)?.unwrap_or_else(|| empty_profile(now));
    let newer = |key: String, times: &mut Map<String, Value>| -> bool {
        let wins = times
            .get(&key)
            .and_then(Value::as_i64)
            .is_none_or(|t| time_ms >= t);
        if wins {
            times.insert(key, Value::from(time_ms));
        }
        wins
    };
    for (name, value) in fields {
        if newer((*name).to_owned(), &mut profile.field_times) {
            profile
                .fields
                .insert((*name).to_owned(), Value::String(value.clone()));
        }
    }
    for (key, value) in properties {
        if newer(format!("properties.{key}"), &mut profile.field_times) {
            profile.properties.insert(key.clone(), value.clone());
        }
    }
    save_profile(conn, project, id, &profile, now)
}

/// Adds `delta` exactly; a sum that cannot be exact, or a property that is not a number,
/// refuses the row (SPEC §6b) and changes nothing.
fn increment(
    conn: &Connection,
    project: i64,
    id: &str,
    property: &str,
    delta: Decimal,
    now: i64,
) -> rusqlite::Result<RowOutcome> {
    let mut profile = load_profile(conn, project, id)?.unwrap_or_else(|| empty_profile(now));
    let current = profile.properties.get(property).map(|v| v.get());
    let sum = match add_exact(property, current, delta).map(RawValue::from_string) {
        Ok(Ok(sum)) => sum,
        Ok(Err(e)) => return Ok(RowOutcome::Invalid(e.to_string())),
        Err(e) => return Ok(RowOutcome::Invalid(e)),
    };
    profile.properties.insert(property.to_owned(), sum);
    save_profile(conn, project, id, &profile, now)?;
    Ok(RowOutcome::Stored)
}

/// Reads a properties column, keeping each value's JSON text; anything else reads as empty.
pub(super) fn raw_map(text: &str) -> RawMap {
    serde_json::from_str(text).unwrap_or_default()
}

/// Writes properties kept as JSON text.
fn raw_json(properties: &RawMap) -> String {
    serde_json::to_string(properties).unwrap_or_else(|_| "{}".to_owned())
}

/// Reads a JSON object column; anything else reads as empty.
pub(super) fn json_map(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}
