//! The PostgreSQL store's SQL for writing one request in one transaction: one statement per
//! table, each taking the request's rows as arrays (`unnest`), each sorted by its conflict key.
//! What each row changes is decided by [`crate::store::rules`].
//!
//! Insert ids are claimed by the `events` table's own unique index on (project, insert id):
//! every row with a key, of whatever type, is a row of `events` (a profile or group change as
//! a marker row of its type, which the read API does not list), so one statement both claims
//! the keys and stores the events, and one constraint keeps every key once. A separate key
//! table would cost a second index and a second speculative insert per event.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::store::rules::{Plan, Profile, raw_json, session_start_time};
use crate::store::{IngestJob, PreparedRow, RowAction, RowOutcome};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// Stores the request's rows (events, and marker rows of the other types) and claims their
/// insert ids: a row whose key is stored is skipped, and a key another transaction holds is
/// waited for, so that of two nodes writing one key at once exactly one stores it.
const CLAIM_AND_INSERT: &str = "
INSERT INTO events (project, created_at, id, type, name, device_id, session_id, profile_id,
    properties, groups, sdk_name, sdk_version, synced_at, insert_id)
SELECT $1, u.created_at, u.id, u.type, u.name, u.device_id, u.session_id, u.profile_id,
    u.properties, u.groups, $12, $13, $14, u.insert_id
FROM unnest($2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::text[], $10::text[], $11::text[])
    AS u (created_at, id, type, name, device_id, session_id, profile_id, properties, groups,
        insert_id)
ON CONFLICT (project, insert_id) DO NOTHING
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

/// Inserts rows that have no insert id (`session_start` events).
const INSERT_EVENTS: &str = "
INSERT INTO events (project, created_at, id, type, name, device_id, session_id, profile_id,
    properties, groups, sdk_name, sdk_version, synced_at, insert_id)
SELECT $1, u.created_at, u.id, u.type, u.name, u.device_id, u.session_id, u.profile_id,
    u.properties, u.groups, $12, $13, $14, u.insert_id
FROM unnest($2::int8[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::text[], $10::text[], $11::text[])
    AS u (created_at, id, type, name, device_id, session_id, profile_id, properties, groups,
        insert_id)";

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

/// Removes the marker rows of refused rows, and with them their keys.
const RELEASE_KEYS: &str = "DELETE FROM events WHERE project = $1 AND insert_id = ANY($2::text[])";

/// The columns of the rows of `events` to insert, one array each.
#[derive(Default)]
struct EventColumns<'a> {
    created_at: Vec<i64>,
    id: Vec<Uuid>,
    kind: Vec<&'a str>,
    name: Vec<&'a str>,
    device_id: Vec<&'a str>,
    session_id: Vec<&'a str>,
    profile_id: Vec<Option<&'a str>>,
    properties: Vec<&'a str>,
    groups: Vec<Option<&'a str>>,
    insert_id: Vec<Option<&'a str>>,
}

/// The text columns of one row of `events`.
#[derive(Default)]
struct Fields<'a> {
    name: &'a str,
    device_id: &'a str,
    session_id: &'a str,
    profile_id: Option<&'a str>,
    properties: &'a str,
    groups: Option<&'a str>,
    insert_id: Option<&'a str>,
}

impl<'a> EventColumns<'a> {
    fn push(&mut self, created_at: i64, id: Uuid, kind: &'a str, f: Fields<'a>) {
        self.created_at.push(created_at);
        self.id.push(id);
        self.kind.push(kind);
        self.name.push(f.name);
        self.device_id.push(f.device_id);
        self.session_id.push(f.session_id);
        self.profile_id.push(f.profile_id);
        self.properties.push(if f.properties.is_empty() {
            "{}"
        } else {
            f.properties
        });
        self.groups.push(f.groups);
        self.insert_id.push(f.insert_id);
    }

    /// The parameters of [`CLAIM_AND_INSERT`] and [`INSERT_EVENTS`].
    fn params<'p>(
        &'p self,
        job: &'p IngestJob,
        synced_at: &'p i64,
    ) -> [&'p (dyn ToSql + Sync); 14] {
        [
            &job.project,
            &self.created_at,
            &self.id,
            &self.kind,
            &self.name,
            &self.device_id,
            &self.session_id,
            &self.profile_id,
            &self.properties,
            &self.groups,
            &self.insert_id,
            &job.sdk_name,
            &job.sdk_version,
            synced_at,
        ]
    }
}

/// The `type` of the marker row that holds a change's insert id.
fn marker_type(action: &RowAction) -> &'static str {
    match action {
        RowAction::Event(_) => "track",
        RowAction::Identify { .. } => "identify",
        RowAction::Increment { .. } => "increment",
        RowAction::Group { .. } => "group",
        RowAction::AssignGroup { .. } => "assign_group",
    }
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
    let mut stored = EventColumns::default();
    // In key order, so that overlapping requests on several nodes claim keys in one order; the
    // sort is done here, where it is cheap, and unnest hands the rows on in array order.
    let mut claims: Vec<&PreparedRow> = plan.rows().collect();
    claims.sort_by_key(|row| (row.insert_id.is_none(), row.insert_id.as_deref()));
    for row in claims {
        match &row.action {
            RowAction::Event(event) => stored.push(
                row.time_ms,
                event.id,
                "track",
                Fields {
                    name: &event.name,
                    device_id: &event.device_id,
                    session_id: &event.session_id,
                    profile_id: event.profile_id.as_deref(),
                    properties: &event.properties,
                    groups: event.groups.as_deref(),
                    insert_id: row.insert_id.as_deref(),
                },
            ),
            // A change without a key leaves no row: nothing would ever look for it.
            other => {
                if let Some(key) = row.insert_id.as_deref() {
                    stored.push(
                        row.time_ms,
                        crate::ingest::new_event_id(synced_at),
                        marker_type(other),
                        Fields {
                            insert_id: Some(key),
                            ..Fields::default()
                        },
                    );
                }
            }
        }
    }
    if !stored.id.is_empty() {
        let claim = tx.prepare_cached(CLAIM_AND_INSERT).await?;
        let mut fresh = HashSet::new();
        for row in tx.query(&claim, &stored.params(job, &synced_at)).await? {
            // Rows without a key come back too, with a NULL key.
            if let Some(key) = row.try_get::<_, Option<String>>(0)? {
                fresh.insert(key);
            }
        }
        plan.claimed(|key| fresh.contains(key));
    }

    let sessions = plan.sessions();
    let mut starts = EventColumns::default();
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
            let id: &str = row.try_get(0)?;
            let start_event: Uuid = row.try_get(1)?;
            let started_at: i64 = row.try_get(2)?;
            let previous: Option<i64> = row.try_get(3)?;
            let Some(delta) = by_id.get(id).map(|&i| &sessions[i]) else {
                continue;
            };
            match previous {
                // This request created the session, and writes its session_start.
                None => starts.push(
                    session_start_time(started_at),
                    start_event,
                    "track",
                    Fields {
                        name: "session_start",
                        device_id: delta.device_id,
                        session_id: delta.session_id,
                        profile_id: delta.profile_id,
                        ..Fields::default()
                    },
                ),
                Some(before) if started_at < before => {
                    moved.0.push(start_event);
                    moved.1.push(session_start_time(before));
                    moved.2.push(session_start_time(started_at));
                }
                Some(_) => {}
            }
        }
    }
    if !starts.id.is_empty() {
        let insert = tx.prepare_cached(INSERT_EVENTS).await?;
        tx.execute(&insert, &starts.params(job, &synced_at)).await?;
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
        let mut stored = HashMap::with_capacity(ids.len());
        for r in tx.query(&lock, &[&project, &ids]).await? {
            let profile =
                Profile::from_columns(r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
            stored.insert(r.try_get::<_, String>(0)?, profile);
        }
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
                    .map(|(_, p)| raw_json(&p.properties))
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
