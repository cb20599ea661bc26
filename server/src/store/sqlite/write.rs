//! The embedded store's SQL for writing ingest jobs inside the writer's transaction; what
//! each row changes is decided by [`crate::store::rules`].

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::store::rules::{
    Plan, Profile, SessionDelta, SessionProfile, raw_json, session_start_time,
};
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

fn apply_rows(
    conn: &Connection,
    job: &IngestJob,
    rows: &[&PreparedRow],
    synced_at: i64,
) -> rusqlite::Result<Vec<RowOutcome>> {
    let mut plan = Plan::new(rows.to_vec());
    claim(conn, job.project, &mut plan, synced_at)?;
    insert_events(conn, job, &plan, synced_at)?;
    let ids = plan.profile_ids();
    if !ids.is_empty() {
        let mut stored = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(profile) = load_profile(conn, job.project, id)? {
                stored.insert(id.to_owned(), profile);
            }
        }
        for (id, profile) in plan.apply_profiles(stored, synced_at) {
            save_profile(conn, job.project, id, &profile, synced_at)?;
        }
    }
    for group in plan.groups() {
        conn.prepare_cached(
            "INSERT INTO groups (project, id, type, name, properties, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (project, id) DO UPDATE SET type = excluded.type,
                name = excluded.name, properties = excluded.properties,
                updated_at = excluded.updated_at",
        )?
        .execute(params![
            job.project,
            group.id,
            group.group_type,
            group.name,
            group.properties,
            synced_at
        ])?;
    }
    for (profile_id, group_id) in plan.assignments() {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO profile_groups (project, profile_id, group_id) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![job.project, profile_id, group_id])?;
    }
    for key in plan.refused_keys() {
        conn.prepare_cached("DELETE FROM insert_ids WHERE project = ?1 AND insert_id = ?2")?
            .execute(params![job.project, key])?;
    }
    for delta in plan.sessions() {
        upsert_session(conn, job, &delta, synced_at)?;
    }
    Ok(plan.outcomes())
}

/// Claims the plan's keys; a key already stored is left as it is.
fn claim(
    conn: &Connection,
    project: i64,
    plan: &mut Plan<'_>,
    synced_at: i64,
) -> rusqlite::Result<()> {
    if plan.keys().is_empty() {
        return Ok(());
    }
    // What is the same for every key is bound once; SQLite keeps a statement's bindings until
    // they are replaced.
    let mut claim = conn.prepare_cached(
        "INSERT OR IGNORE INTO insert_ids (project, insert_id, seen_at) VALUES (?1, ?2, ?3)",
    )?;
    claim.raw_bind_parameter(1, project)?;
    claim.raw_bind_parameter(3, synced_at)?;
    let mut taken = HashSet::new();
    for key in plan.keys() {
        claim.raw_bind_parameter(2, *key)?;
        if claim.raw_execute()? == 0 {
            taken.insert(*key);
        }
    }
    plan.claimed(|key| !taken.contains(key));
    Ok(())
}

fn insert_events(
    conn: &Connection,
    job: &IngestJob,
    plan: &Plan<'_>,
    synced_at: i64,
) -> rusqlite::Result<()> {
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
    let events = plan.events();
    let mut ahead = plan.events().skip(WARM_AHEAD);
    for (row, event) in events {
        if let Some((next, _)) = ahead.next() {
            warm(next);
        }
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
    }
    Ok(())
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

/// Creates the session with its one `session_start`, or widens it; the session keeps the
/// [`SessionProfile::first`] of its stored and its new profile ids, and its `session_start`
/// follows it, moving earlier when an earlier event arrives and taking the session's profile
/// id. The single writer serialises these updates.
fn upsert_session(
    conn: &Connection,
    job: &IngestJob,
    delta: &SessionDelta<'_>,
    synced_at: i64,
) -> rusqlite::Result<()> {
    let session_id = delta.session_id;
    let existing: Option<(i64, i64, Option<String>, Option<i64>)> = conn
        .prepare_cached(
            "SELECT started_at, start_event, profile_id, profile_at FROM sessions
             WHERE project = ?1 AND id = ?2",
        )?
        .query_row(params![job.project, session_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    match existing {
        None => {
            let profile_id = delta.profile.map(|p| p.id);
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
                profile_id,
                session_start_time(delta.first),
                job.sdk_name,
                job.sdk_version,
                synced_at,
            ])?;
            let start_event = conn.last_insert_rowid();
            conn.prepare_cached(
                "INSERT INTO sessions (project, id, device_id, profile_id, started_at, ended_at,
                    event_count, start_event, profile_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                job.project,
                session_id,
                delta.device_id,
                profile_id,
                delta.first,
                delta.last,
                delta.count,
                start_event,
                delta.profile.map(|p| p.at),
            ])?;
        }
        Some((started_at, start_event, profile_id, profile_at)) => {
            // A profile id stored without its time (never written so) counts from the start.
            let stored = profile_id.as_deref().map(|id| SessionProfile {
                at: profile_at.unwrap_or(started_at),
                id,
            });
            let profile = SessionProfile::first(stored, delta.profile);
            conn.prepare_cached(
                "UPDATE sessions SET started_at = min(started_at, ?3), ended_at = max(ended_at, ?4),
                    event_count = event_count + ?5, profile_id = ?6, profile_at = ?7
                 WHERE project = ?1 AND id = ?2",
            )?
            .execute(params![
                job.project,
                session_id,
                delta.first,
                delta.last,
                delta.count,
                profile.map(|p| p.id),
                profile.map(|p| p.at),
            ])?;
            if delta.first < started_at || profile != stored {
                conn.prepare_cached(
                    "UPDATE events SET created_at = ?2, synced_at = ?3, profile_id = ?4
                     WHERE seq = ?1",
                )?
                .execute(params![
                    start_event,
                    session_start_time(delta.first.min(started_at)),
                    synced_at,
                    profile.map(|p| p.id),
                ])?;
            }
        }
    }
    Ok(())
}

fn load_profile(conn: &Connection, project: i64, id: &str) -> rusqlite::Result<Option<Profile>> {
    conn.prepare_cached(
        "SELECT fields, properties, field_times, created_at FROM profiles WHERE project = ?1 AND id = ?2",
    )?
    .query_row(params![project, id], |r| {
        Ok(Profile::from_columns(
            &r.get::<_, String>(0)?,
            &r.get::<_, String>(1)?,
            &r.get::<_, String>(2)?,
            r.get(3)?,
        ))
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
