//! The PostgreSQL store's schema, as numbered migrations recorded in `schema_migrations`.
//!
//! Every node applies the missing migrations at start-up, one node at a time: they are run under
//! a session-level advisory lock, so nodes that start together wait for the first one and then
//! find nothing left to do. A database migrated by a newer build is refused.

use tokio_postgres::Client;

use super::error::from_pg;
use crate::store::StoreError;

/// The advisory lock key held while migrating (`"backfill"` in ASCII, as an `int8`).
const MIGRATION_LOCK: i64 = 0x6261_636b_6669_6c6c;

/// Migrations in order; text keys compare bytewise (`COLLATE "C"`), as in the embedded
/// store, whatever the database's default collation; the version of each is its position, from 1. Never edit one that has
/// shipped: add the next.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
-- One row per client (credential), as in the embedded store. A client reaches the data of its
-- own key, or of `owner`'s for a key issued for an existing project.
CREATE TABLE projects (
    key            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id      TEXT NOT NULL UNIQUE,
    secret_hash    TEXT NOT NULL,
    secret_salt    TEXT NOT NULL,
    -- Epoch ms.
    created_at     BIGINT NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    -- 'write', 'read' or 'root' (SPEC §1).
    mode           TEXT NOT NULL DEFAULT 'root',
    owner          BIGINT REFERENCES projects (key),
    -- The secret a rotation replaced, accepted until previous_until (epoch ms).
    previous_hash  TEXT,
    previous_salt  TEXT,
    previous_until BIGINT,
    revoked_at     BIGINT
);
CREATE TABLE salts (
    day  TEXT PRIMARY KEY,
    salt TEXT NOT NULL
);
-- The primary key is the read order of a project's events, so it is also the one index a read
-- of a page or a time range uses. Rows of other types than 'track' are marker rows that hold
-- the insert id of a profile or group change; reads list only 'track' rows.
CREATE TABLE events (
    project     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    id          UUID NOT NULL,
    type        TEXT NOT NULL,
    name        TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    profile_id  TEXT,
    properties  TEXT NOT NULL,
    groups      TEXT,
    sdk_name    TEXT,
    sdk_version TEXT,
    synced_at   BIGINT NOT NULL,
    insert_id   TEXT COLLATE "C",
    PRIMARY KEY (project, created_at, id)
);
-- Idempotency keys of every row kind: each key is stored once per project (SPEC §5).
CREATE UNIQUE INDEX events_by_insert_id ON events (project, insert_id);
-- start_event is the id of the session's one session_start, which sits at started_at - 100 ms;
-- previous_started_at is started_at before the last upsert (NULL when that upsert created the
-- row), which tells the writer where to find the session_start it moves.
CREATE TABLE sessions (
    project             BIGINT NOT NULL,
    id                  TEXT COLLATE "C" NOT NULL,
    device_id           TEXT NOT NULL,
    profile_id          TEXT,
    started_at          BIGINT NOT NULL,
    ended_at            BIGINT NOT NULL,
    event_count         BIGINT NOT NULL,
    start_event         UUID NOT NULL,
    previous_started_at BIGINT,
    PRIMARY KEY (project, id)
);
CREATE INDEX sessions_by_start ON sessions (project, started_at, id);
CREATE TABLE profiles (
    project     BIGINT NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    fields      TEXT NOT NULL,
    properties  TEXT NOT NULL,
    field_times TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (project, id)
);
CREATE TABLE groups (
    project    BIGINT NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    type       TEXT NOT NULL,
    name       TEXT NOT NULL,
    properties TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (project, id)
);
CREATE TABLE profile_groups (
    project    BIGINT NOT NULL,
    profile_id TEXT COLLATE "C" NOT NULL,
    group_id   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (project, profile_id, group_id)
);
"#,
    // 2: the event time of each session's profile id.
    r#"
-- Event time (epoch ms) of the event a session's profile_id came from, so that an earlier
-- event arriving later gives the session its profile id (SPEC §6b); NULL when profile_id is.
-- The time of the event a stored profile id came from was not kept: the session's start is the
-- earliest it can be, so an event that arrives after this migration takes the session's
-- profile id over only if it lies before every event the session had, or at its start with a
-- bytewise smaller id.
ALTER TABLE sessions ADD COLUMN profile_at BIGINT;
UPDATE sessions SET profile_at = started_at WHERE profile_id IS NOT NULL;
"#,
];

/// The schema version this build writes.
pub fn version() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Brings the database to [`version`], holding the migration lock meanwhile.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(from_pg)?;
    let result = apply_missing(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(from_pg);
    result.and(unlocked.map(|_| ()))
}

async fn apply_missing(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(from_pg)?;
    let found: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(from_pg)?
        .try_get(0)
        .map_err(from_pg)?;
    if found > version() {
        return Err(StoreError::Unavailable(format!(
            "database schema version {found} is newer than this server's {}; run a newer server",
            version()
        )));
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await.map_err(from_pg)?;
        tx.batch_execute(sql).await.map_err(from_pg)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&number],
        )
        .await
        .map_err(from_pg)?;
        tx.commit().await.map_err(from_pg)?;
        tracing::info!(version = number, "applied database migration");
    }
    Ok(())
}
