//! The PostgreSQL store's SQL for writing one request in one transaction: one statement per
//! table, each taking the request's rows as arrays (`unnest`), each sorted by its conflict key.
//! What each row changes is decided by [`crate::store::rules`].

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::store::rules::{Plan, Profile, session_start_time};
use crate::store::{IngestJob, PreparedRow, RowOutcome};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// Claims insert ids; a key another transaction holds is waited for, so that of two nodes
/// writing one key at once exactly one stores it.
const CLAIM: &str = "
INSERT INTO insert_ids (project, insert_id, seen_at)
SELECT $1, k, $3 FROM unnest($2::text[]) AS k ORDER BY k COLLATE \"C\"
ON CONFLICT DO NOTHING
RETURNING insert_id";

/// Creates or widens sessions. The row lock it takes serialises every node's changes to one
/// session; `previous_started_at` tells a created row (NULL) from a widened one.
const UPSERT_SESSIONS: &str = "
INSERT INTO sessions AS s (project, id, device_id, profile_id, started_at, ended_at,
    event_count, start_event, previous_started_at)
SELECT $1, u.id, u.device_id, u.profile_id, u.first, u.last, u.count, u.start_event, NULL
FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::uuid[])
    AS u (id, device_id, profile_id, first, last, count, start_event)
ORDER BY u.id COLLATE \"C\"
ON CONFLICT (project, id) DO UPDATE SET
    started_at = least(s.started_at, excluded.started_at),
    ended_at = greatest(s.ended_at, excluded.ended_at),
    event_count = s.event_count + excluded.event_count,
    profile_id = coalesce(s.profile_id, excluded.profile_id),
    previous_started_at = s.started_at
RETURNING id, start_event, started_at, previous_started_at";

const INSERT_EVENTS: &str = "
INSERT INTO events (project, created_at, id, type, name, device_id, session_id, profile_id,
    properties, groups, sdk_name, sdk_version, synced_at, insert_id)
SELECT $1, u.created_at, u.id, 'track', u.name, u.device_id, u.session_id, u.profile_id,
    u.properties, u.groups, $11, $12, $13, u.insert_id
FROM unnest($2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::text[], $10::text[])
    AS u (created_at, id, name, device_id, session_id, profile_id, properties, groups, insert_id)";

/// Moves `session_start` events earlier; each is found by its old place in the primary key.
const MOVE_STARTS: &str = "
UPDATE events AS e SET created_at = u.new_at, synced_at = $2
FROM unnest($3::uuid[], $4::int8[], $5::int8[]) AS u (id, old_at, new_at)
WHERE e.project = $1 AND e.created_at = u.old_at AND e.id = u.id";

const CREATE_PROFILES: &str = "
INSERT INTO profiles (project, id, fields, properties, field_times, created_at, updated_at)
SELECT $1, i, '{}', '{}', '{}', $3, $3 FROM unnest($2::text[]) AS i ORDER BY i COLLATE \"C\"
ON CONFLICT DO NOTHING";

/// Locks the request's profiles in id order, so that two nodes changing one profile take turns
/// and neither loses the other's update.
const LOCK_PROFILES: &str = "
SELECT id, fields, properties, field_times, created_at FROM profiles
WHERE project = $1 AND id = ANY($2::text[]) ORDER BY id COLLATE \"C\" FOR UPDATE";

const SAVE_PROFILES: &str = "
UPDATE profiles AS p SET fields = u.fields, properties = u.properties,
    field_times = u.field_times, updated_at = $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[])
    AS u (id, fields, properties, field_times)
WHERE p.project = $1 AND p.id = u.id";

const UPSERT_GROUPS: &str = "
INSERT INTO groups AS g (project, id, type, name, properties, updated_at)
SELECT $1, u.id, u.type, u.name, u.properties, $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS u (id, type, name, properties)
ORDER BY u.id COLLATE \"C\"
ON CONFLICT (project, id) DO UPDATE SET type = excluded.type, name = excluded.name,
    properties = excluded.properties, updated_at = excluded.updated_at";

const ASSIGN_GROUPS: &str = "
INSERT INTO profile_groups (project, profile_id, group_id)
SELECT $1, u.profile_id, u.group_id FROM unnest($2::text[], $3::text[]) AS u (profile_id, group_id)
ORDER BY u.profile_id COLLATE \"C\", u.group_id COLLATE \"C\"
ON CONFLICT DO NOTHING";

const RELEASE_KEYS: &str =
    "DELETE FROM insert_ids WHERE project = $1 AND insert_id = ANY($2::text[])";

/// The columns of the events to insert, one array each.
#[derive(Default)]
struct EventColumns<'a> {
    created_at: Vec<i64>,
    id: Vec<Uuid>,
    name: Vec<&'a str>,
    device_id: Vec<&'a str>,
    session_id: Vec<&'a str>,
    profile_id: Vec<Option<&'a str>>,
    properties: Vec<&'a str>,
    groups: Vec<Option<&'a str>>,
    insert_id: Vec<Option<&'a str>>,
}

/// Writes `rows` of `job` inside `tx` and returns their outcomes; the caller commits.
pub(super) async fn write_rows(
    tx: &Transaction<'_>,
    job: &IngestJob,
    rows: &[&PreparedRow],
    synced_at: i64,
) -> Result<Vec<RowOutcome>> {
    let project = job.project;
    let mut plan = Plan::new(rows.to_vec());
    if !plan.keys().is_empty() {
        let claim = tx.prepare_cached(CLAIM).await?;
        let fresh: HashSet<String> = tx
            .query(&claim, &[&project, &plan.keys(), &synced_at])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        plan.claimed(|key| fresh.contains(key));
    }

    let mut events = EventColumns::default();
    for (row, event) in plan.events() {
        events.created_at.push(row.time_ms);
        events.id.push(event.id);
        events.name.push(&event.name);
        events.device_id.push(&event.device_id);
        events.session_id.push(&event.session_id);
        events.profile_id.push(event.profile_id.as_deref());
        events.properties.push(&event.properties);
        events.groups.push(event.groups.as_deref());
        events.insert_id.push(row.insert_id.as_deref());
    }

    let sessions = plan.sessions();
    let mut moved = (Vec::new(), Vec::new(), Vec::new());
    if !sessions.is_empty() {
        let start_events: Vec<Uuid> = sessions
            .iter()
            .map(|_| crate::ingest::new_event_id(synced_at))
            .collect();
        let upsert = tx.prepare_cached(UPSERT_SESSIONS).await?;
        let params: [&(dyn ToSql + Sync); 8] = [
            &project,
            &sessions.iter().map(|d| d.session_id).collect::<Vec<_>>(),
            &sessions.iter().map(|d| d.device_id).collect::<Vec<_>>(),
            &sessions.iter().map(|d| d.profile_id).collect::<Vec<_>>(),
            &sessions.iter().map(|d| d.first).collect::<Vec<_>>(),
            &sessions.iter().map(|d| d.last).collect::<Vec<_>>(),
            &sessions.iter().map(|d| d.count).collect::<Vec<_>>(),
            &start_events,
        ];
        let by_id: HashMap<&str, usize> = sessions
            .iter()
            .enumerate()
            .map(|(i, d)| (d.session_id, i))
            .collect();
        for row in tx.query(&upsert, &params).await? {
            let id: &str = row.get(0);
            let start_event: Uuid = row.get(1);
            let started_at: i64 = row.get(2);
            let previous: Option<i64> = row.get(3);
            let Some(delta) = by_id.get(id).map(|&i| &sessions[i]) else {
                continue;
            };
            match previous {
                // This request created the session: its session_start is written with its
                // events.
                None => {
                    events.created_at.push(session_start_time(started_at));
                    events.id.push(start_event);
                    events.name.push("session_start");
                    events.device_id.push(delta.device_id);
                    events.session_id.push(delta.session_id);
                    events.profile_id.push(delta.profile_id);
                    events.properties.push("{}");
                    events.groups.push(None);
                    events.insert_id.push(None);
                }
                Some(before) if started_at < before => {
                    moved.0.push(start_event);
                    moved.1.push(session_start_time(before));
                    moved.2.push(session_start_time(started_at));
                }
                Some(_) => {}
            }
        }
    }

    if !events.id.is_empty() {
        let insert = tx.prepare_cached(INSERT_EVENTS).await?;
        tx.execute(
            &insert,
            &[
                &project,
                &events.created_at,
                &events.id,
                &events.name,
                &events.device_id,
                &events.session_id,
                &events.profile_id,
                &events.properties,
                &events.groups,
                &events.insert_id,
                &job.sdk_name,
                &job.sdk_version,
                &synced_at,
            ],
        )
        .await?;
    }
    if !moved.0.is_empty() {
        let update = tx.prepare_cached(MOVE_STARTS).await?;
        tx.execute(
            &update,
            &[&project, &synced_at, &moved.0, &moved.1, &moved.2],
        )
        .await?;
    }

    let ids = plan.profile_ids();
    if !ids.is_empty() {
        let create = tx.prepare_cached(CREATE_PROFILES).await?;
        tx.execute(&create, &[&project, &ids, &synced_at]).await?;
        let lock = tx.prepare_cached(LOCK_PROFILES).await?;
        let stored: HashMap<String, Profile> = tx
            .query(&lock, &[&project, &ids])
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    Profile::from_columns(r.get(1), r.get(2), r.get(3), r.get(4)),
                )
            })
            .collect();
        let changed = plan.apply_profiles(stored, synced_at);
        let text = |m: &serde_json::Map<String, serde_json::Value>| {
            serde_json::Value::Object(m.clone()).to_string()
        };
        let save = tx.prepare_cached(SAVE_PROFILES).await?;
        tx.execute(
            &save,
            &[
                &project,
                &synced_at,
                &changed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|(_, p)| text(&p.fields))
                    .collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|(_, p)| text(&p.properties))
                    .collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|(_, p)| text(&p.field_times))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    let groups = plan.groups();
    if !groups.is_empty() {
        let upsert = tx.prepare_cached(UPSERT_GROUPS).await?;
        tx.execute(
            &upsert,
            &[
                &project,
                &synced_at,
                &groups.iter().map(|g| g.id).collect::<Vec<_>>(),
                &groups.iter().map(|g| g.group_type).collect::<Vec<_>>(),
                &groups.iter().map(|g| g.name).collect::<Vec<_>>(),
                &groups
                    .iter()
                    .map(|g| g.properties.as_str())
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    let pairs = plan.assignments();
    if !pairs.is_empty() {
        let assign = tx.prepare_cached(ASSIGN_GROUPS).await?;
        tx.execute(
            &assign,
            &[
                &project,
                &pairs.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                &pairs.iter().map(|(_, g)| *g).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    let refused = plan.refused_keys();
    if !refused.is_empty() {
        let release = tx.prepare_cached(RELEASE_KEYS).await?;
        tx.execute(&release, &[&project, &refused]).await?;
    }
    Ok(plan.outcomes())
}
