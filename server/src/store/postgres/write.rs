//! The PostgreSQL store's SQL for writing a group of requests in one transaction: one statement
//! per table and project, each taking the rows of every request of the group as arrays
//! (`unnest`), each sorted by its conflict key. What each row changes is decided by
//! [`crate::store::rules`], one [`Plan`] per request, applied in the group's order.
//!
//! Requests of one group never share an insert id (the writer keeps a request that would for
//! the next group), so a key's claim speaks for exactly one request, and a refused row's key
//! is free again for a later request, as when requests are written one after the other.
//!
//! Insert ids are claimed by the `events` table's own unique index on (project, insert id):
//! every row with a key, of whatever type, is a row of `events` (a profile or group change as
//! a marker row of its type, which the read API does not list), so one statement both claims
//! the keys and stores the events, and one constraint keeps every key once. A separate key
//! table would cost a second index and a second speculative insert per event.
//!
//! The events' arrays are unnested in the select list (`SELECT unnest($2), unnest($3), ...`),
//! which PostgreSQL zips row by row as the insert consumes them. The `FROM unnest($2, $3, ...)`
//! form first copies every array into a tuplestore of its own (each set-returning function in
//! `FROM` is materialised), and spills the properties to disk past `work_mem`: measured on
//! 100,000 events, 1.0 to 1.3 µs more PostgreSQL time per event.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::store::rules::{
    GroupWrite, Plan, Profile, SessionProfile, raw_json, session_start_time,
};
use crate::store::{IngestJob, PreparedRow, RowAction, RowOutcome};

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// The insert of a group's rows into `events`, one array per column; the parameters are
/// [`EventColumns::params`]. A macro, so that both statements below are one constant text.
macro_rules! insert_events {
    () => {
        "
INSERT INTO events (project, created_at, id, type, name, device_id, session_id, profile_id,
    properties, groups, sdk_name, sdk_version, synced_at, insert_id)
SELECT $1, unnest($2::int8[]), unnest($3::uuid[]), unnest($4::text[]), unnest($5::text[]),
    unnest($6::text[]), unnest($7::text[]), unnest($8::text[]), unnest($9::text[]),
    unnest($10::text[]), unnest($12::text[]), unnest($13::text[]), $14, unnest($11::text[])"
    };
}

/// Stores the group's rows (events, and marker rows of the other types) and claims their
/// insert ids: a row whose key is stored is skipped, and a key another transaction holds is
/// waited for, so that of two nodes writing one key at once exactly one stores it.
const CLAIM_AND_INSERT: &str = concat!(
    insert_events!(),
    "
ON CONFLICT (project, insert_id) DO NOTHING
RETURNING insert_id"
);

/// Stores rows whose keys are all expected to be new (see [`ClaimForm::Fresh`]), and rows
/// that have no insert id (`session_start` events). A key that is stored already fails the
/// statement with a unique violation of `events_by_insert_id`.
const INSERT_EVENTS: &str = insert_events!();

/// The unique index that keeps each insert id once per project (see `schema`).
pub(super) const KEY_INDEX: &str = "events_by_insert_id";

/// How a group claims its insert ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimForm {
    /// A plain insert, which fails with a unique violation of [`KEY_INDEX`] when a key is
    /// stored already (or by a transaction that then commits); the group is then written again
    /// [`ClaimForm::Deduplicating`]. Most groups carry no stored key, and for them this form
    /// spares PostgreSQL the speculative insertion of `ON CONFLICT`: an index probe before, and
    /// a WAL record after, each row.
    Fresh,
    /// `ON CONFLICT DO NOTHING RETURNING`: stored keys are skipped and reported.
    Deduplicating,
}

/// Creates or widens sessions. The row lock it takes serialises every node's changes to one
/// session; `previous_started_at` tells a created row (NULL) from a widened one. Of the stored
/// and the new profile id, the session keeps the one of the earlier event, and on equal times
/// the bytewise smaller id ([`SessionProfile::first`]); a stored id without its time (written
/// by a node from before `profile_at`) counts from the session's start.
const UPSERT_SESSIONS: &str = "
INSERT INTO sessions AS s (project, id, device_id, profile_id, started_at, ended_at,
    event_count, start_event, previous_started_at, profile_at)
SELECT $1, u.id, u.device_id, u.profile_id, u.first, u.last, u.count, u.start_event, NULL,
    u.profile_at
FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::uuid[],
        $9::int8[])
    AS u (id, device_id, profile_id, first, last, count, start_event, profile_at)
ORDER BY u.id COLLATE \"C\"
ON CONFLICT (project, id) DO UPDATE SET
    started_at = least(s.started_at, excluded.started_at),
    ended_at = greatest(s.ended_at, excluded.ended_at),
    event_count = s.event_count + excluded.event_count,
    profile_id = CASE WHEN s.profile_id IS NULL
            OR (excluded.profile_at, excluded.profile_id COLLATE \"C\")
                < (coalesce(s.profile_at, s.started_at), s.profile_id COLLATE \"C\")
        THEN excluded.profile_id ELSE s.profile_id END,
    profile_at = CASE WHEN s.profile_id IS NULL
            OR (excluded.profile_at, excluded.profile_id COLLATE \"C\")
                < (coalesce(s.profile_at, s.started_at), s.profile_id COLLATE \"C\")
        THEN excluded.profile_at ELSE coalesce(s.profile_at, s.started_at) END,
    previous_started_at = s.started_at
RETURNING id, start_event, started_at, previous_started_at, profile_id, profile_at";

/// Moves `session_start` events earlier and gives them their session's profile id; each is
/// found by its old place in the primary key.
const MOVE_STARTS: &str = "
UPDATE events AS e SET created_at = u.new_at, profile_id = u.profile_id, synced_at = $2
FROM unnest($3::uuid[], $4::int8[], $5::int8[], $6::text[])
    AS u (id, old_at, new_at, profile_id)
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
    sdk_name: Vec<Option<&'a str>>,
    sdk_version: Vec<Option<&'a str>>,
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
    fn push(
        &mut self,
        created_at: i64,
        id: Uuid,
        kind: &'a str,
        job: &'a IngestJob,
        f: Fields<'a>,
    ) {
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
        self.sdk_name.push(job.sdk_name.as_deref());
        self.sdk_version.push(job.sdk_version.as_deref());
    }

    /// The parameters of [`CLAIM_AND_INSERT`] and [`INSERT_EVENTS`].
    fn params<'p>(&'p self, project: &'p i64, synced_at: &'p i64) -> [&'p (dyn ToSql + Sync); 14] {
        [
            project,
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
            &self.sdk_name,
            &self.sdk_version,
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

/// Rows of one request to write as part of a group.
pub(super) struct Part<'a> {
    /// The request.
    pub job: &'a IngestJob,
    /// Its rows to write, in request order: all of them, or one when a request is written row
    /// by row.
    pub rows: Vec<&'a PreparedRow>,
}

/// What the group's new events change in one session of one project.
struct SessionChange<'a> {
    /// The first part whose events reach the session; its request writes a new
    /// `session_start`.
    part: usize,
    device_id: &'a str,
    profile: Option<SessionProfile<'a>>,
    first: i64,
    last: i64,
    count: i64,
}

/// Writes `parts` inside `tx` and returns the outcomes of each part's rows; the caller commits.
/// Every lock is taken in one order, whatever the group: insert ids, then sessions, then
/// profiles, then groups, each by (project, id).
pub(super) async fn write_group(
    tx: &Transaction<'_>,
    parts: &[Part<'_>],
    synced_at: i64,
    form: ClaimForm,
) -> Result<Vec<Vec<RowOutcome>>> {
    let mut plans: Vec<Plan<'_>> = parts.iter().map(|p| Plan::new(p.rows.clone())).collect();
    let mut projects: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, part) in parts.iter().enumerate() {
        projects.entry(part.job.project).or_default().push(i);
    }
    for (&project, members) in &projects {
        claim(tx, project, members, parts, &mut plans, synced_at, form).await?;
    }
    for (&project, members) in &projects {
        write_sessions(tx, project, members, parts, &plans, synced_at).await?;
    }
    for (&project, members) in &projects {
        write_profiles(tx, project, members, &mut plans, synced_at).await?;
    }
    for (&project, members) in &projects {
        write_groups(tx, project, members, &plans, synced_at).await?;
    }
    for (&project, members) in &projects {
        let refused: BTreeSet<&str> = members
            .iter()
            .flat_map(|&i| plans[i].refused_keys())
            .collect();
        if !refused.is_empty() {
            let release = tx.prepare_cached(RELEASE_KEYS).await?;
            let refused: Vec<&str> = refused.into_iter().collect();
            tx.execute(&release, &[&project, &refused]).await?;
        }
    }
    Ok(plans.into_iter().map(Plan::outcomes).collect())
}

/// Stores the rows of the parts of one project and records in each plan which of its insert
/// ids were fresh.
async fn claim<'a>(
    tx: &Transaction<'_>,
    project: i64,
    members: &[usize],
    parts: &[Part<'a>],
    plans: &mut [Plan<'a>],
    synced_at: i64,
    form: ClaimForm,
) -> Result<()> {
    // In key order, so that overlapping groups on several nodes claim keys in one order; the
    // sort is done here, where it is cheap, and unnest hands the rows on in array order.
    let mut claims: Vec<(&'a IngestJob, &'a PreparedRow)> = members
        .iter()
        .flat_map(|&i| plans[i].rows().map(move |row| (parts[i].job, row)))
        .collect();
    if claims.is_empty() {
        return Ok(());
    }
    claims.sort_by_key(|(_, row)| (row.insert_id.is_none(), row.insert_id.as_deref()));
    let mut stored = EventColumns::default();
    for (job, row) in claims {
        match &row.action {
            RowAction::Event(event) => stored.push(
                row.time_ms,
                event.id,
                "track",
                job,
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
                        job,
                        Fields {
                            insert_id: Some(key),
                            ..Fields::default()
                        },
                    );
                }
            }
        }
    }
    if stored.id.is_empty() {
        return Ok(());
    }
    if form == ClaimForm::Fresh {
        let statement = tx.prepare_cached(INSERT_EVENTS).await?;
        tx.execute(&statement, &stored.params(&project, &synced_at))
            .await?;
        for &i in members {
            plans[i].claimed(|_| true);
        }
        return Ok(());
    }
    let statement = tx.prepare_cached(CLAIM_AND_INSERT).await?;
    let mut fresh = HashSet::new();
    for row in tx
        .query(&statement, &stored.params(&project, &synced_at))
        .await?
    {
        // Rows without a key come back too, with a NULL key.
        if let Some(key) = row.try_get::<_, Option<String>>(0)? {
            fresh.insert(key);
        }
    }
    // The parts of a group share no key, so a fresh key is fresh for the one part that has it.
    for &i in members {
        plans[i].claimed(|key| fresh.contains(key));
    }
    Ok(())
}

/// Upserts the sessions the parts' new events reach, writes the `session_start` of each
/// session the group creates, and moves the `session_start` of each session it widens earlier
/// or gives another profile id (the session's row lock orders these updates as it orders the
/// upserts).
async fn write_sessions(
    tx: &Transaction<'_>,
    project: i64,
    members: &[usize],
    parts: &[Part<'_>],
    plans: &[Plan<'_>],
    synced_at: i64,
) -> Result<()> {
    let mut changes: BTreeMap<&str, SessionChange<'_>> = BTreeMap::new();
    for &i in members {
        for delta in plans[i].sessions() {
            let change = changes
                .entry(delta.session_id)
                .or_insert_with(|| SessionChange {
                    part: i,
                    device_id: delta.device_id,
                    profile: None,
                    first: delta.first,
                    last: delta.last,
                    count: 0,
                });
            change.first = change.first.min(delta.first);
            change.last = change.last.max(delta.last);
            change.count += delta.count;
            change.profile = SessionProfile::first(change.profile, delta.profile);
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = changes.keys().copied().collect();
    let start_events: Vec<Uuid> = ids
        .iter()
        .map(|_| crate::ingest::new_event_id(synced_at))
        .collect();
    let upsert = tx.prepare_cached(UPSERT_SESSIONS).await?;
    let params: [&(dyn ToSql + Sync); 9] = [
        &project,
        &ids,
        &changes.values().map(|c| c.device_id).collect::<Vec<_>>(),
        &changes
            .values()
            .map(|c| c.profile.map(|p| p.id))
            .collect::<Vec<_>>(),
        &changes.values().map(|c| c.first).collect::<Vec<_>>(),
        &changes.values().map(|c| c.last).collect::<Vec<_>>(),
        &changes.values().map(|c| c.count).collect::<Vec<_>>(),
        &start_events,
        &changes
            .values()
            .map(|c| c.profile.map(|p| p.at))
            .collect::<Vec<_>>(),
    ];
    let mut starts = EventColumns::default();
    let mut moved = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let rows = tx.query(&upsert, &params).await?;
    for row in &rows {
        let id: &str = row.try_get(0)?;
        let start_event: Uuid = row.try_get(1)?;
        let started_at: i64 = row.try_get(2)?;
        let previous: Option<i64> = row.try_get(3)?;
        let profile_id: Option<&str> = row.try_get(4)?;
        let profile_at: Option<i64> = row.try_get(5)?;
        let Some((&session_id, change)) = changes.get_key_value(id) else {
            continue;
        };
        match previous {
            // This group created the session, and writes its session_start.
            None => starts.push(
                session_start_time(started_at),
                start_event,
                "track",
                parts[change.part].job,
                Fields {
                    name: "session_start",
                    device_id: change.device_id,
                    session_id,
                    profile_id: change.profile.map(|p| p.id),
                    ..Fields::default()
                },
            ),
            Some(before) => {
                // The session's profile id is this group's: it changed, unless it was this
                // one already (an event of the same time and id before), which rewrites it.
                let profile_is_ours = change
                    .profile
                    .is_some_and(|p| profile_id == Some(p.id) && profile_at == Some(p.at));
                if started_at < before || profile_is_ours {
                    moved.0.push(start_event);
                    moved.1.push(session_start_time(before));
                    moved.2.push(session_start_time(started_at));
                    moved.3.push(profile_id);
                }
            }
        }
    }
    if !starts.id.is_empty() {
        let insert = tx.prepare_cached(INSERT_EVENTS).await?;
        tx.execute(&insert, &starts.params(&project, &synced_at))
            .await?;
    }
    if !moved.0.is_empty() {
        let update = tx.prepare_cached(MOVE_STARTS).await?;
        tx.execute(
            &update,
            &[&project, &synced_at, &moved.0, &moved.1, &moved.2, &moved.3],
        )
        .await?;
    }
    Ok(())
}

/// Locks the profiles the parts of one project change, applies each part's plan in group
/// order (each sees the profiles as the parts before it left them) and writes them back.
async fn write_profiles(
    tx: &Transaction<'_>,
    project: i64,
    members: &[usize],
    plans: &mut [Plan<'_>],
    synced_at: i64,
) -> Result<()> {
    let ids: BTreeSet<&str> = members
        .iter()
        .flat_map(|&i| plans[i].profile_ids())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = ids.into_iter().collect();
    let create = tx.prepare_cached(CREATE_PROFILES).await?;
    tx.execute(&create, &[&project, &ids, &synced_at]).await?;
    let lock = tx.prepare_cached(LOCK_PROFILES).await?;
    let mut current: HashMap<String, Profile> = HashMap::with_capacity(ids.len());
    for r in tx.query(&lock, &[&project, &ids]).await? {
        let profile =
            Profile::from_columns(r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
        current.insert(r.try_get::<_, String>(0)?, profile);
    }
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for &i in members {
        let mine: HashMap<String, Profile> = plans[i]
            .profile_ids()
            .into_iter()
            .filter_map(|id| current.remove_entry(id))
            .collect();
        for (id, profile) in plans[i].apply_profiles(mine, synced_at) {
            changed.insert(id.to_owned());
            current.insert(id.to_owned(), profile);
        }
    }
    let changed: Vec<(&String, &Profile)> = changed
        .iter()
        .filter_map(|id| current.get(id).map(|p| (id, p)))
        .collect();
    let text = |m: &serde_json::Map<String, serde_json::Value>| {
        serde_json::Value::Object(m.clone()).to_string()
    };
    let save = tx.prepare_cached(SAVE_PROFILES).await?;
    tx.execute(
        &save,
        &[
            &project,
            &synced_at,
            &changed
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
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
    Ok(())
}

/// Upserts the groups of the parts of one project (of several rows for one group, the last in
/// group order wins) and adds their profiles to groups.
async fn write_groups(
    tx: &Transaction<'_>,
    project: i64,
    members: &[usize],
    plans: &[Plan<'_>],
    synced_at: i64,
) -> Result<()> {
    let mut groups: BTreeMap<&str, GroupWrite<'_>> = BTreeMap::new();
    for &i in members {
        for group in plans[i].groups() {
            groups.insert(group.id, group);
        }
    }
    if !groups.is_empty() {
        let upsert = tx.prepare_cached(UPSERT_GROUPS).await?;
        tx.execute(
            &upsert,
            &[
                &project,
                &synced_at,
                &groups.values().map(|g| g.id).collect::<Vec<_>>(),
                &groups.values().map(|g| g.group_type).collect::<Vec<_>>(),
                &groups.values().map(|g| g.name).collect::<Vec<_>>(),
                &groups
                    .values()
                    .map(|g| g.properties.as_str())
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    let pairs: BTreeSet<(&str, &str)> = members
        .iter()
        .flat_map(|&i| plans[i].assignments())
        .collect();
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
    Ok(())
}
