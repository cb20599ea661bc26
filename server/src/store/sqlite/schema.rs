//! The embedded store's schema, versioned through `PRAGMA user_version`.

use rusqlite::Connection;

use crate::store::StoreError;

/// The schema version this build writes.
pub const VERSION: i32 = 5;

const CREATE: &str = "
-- One row per client (credential). A client reaches the data of its own key, or of `owner`'s
-- for a key issued for an existing project.
CREATE TABLE projects (
    key            INTEGER PRIMARY KEY,
    client_id      TEXT NOT NULL UNIQUE,
    secret_hash    TEXT NOT NULL,
    secret_salt    TEXT NOT NULL,
    -- Epoch ms.
    created_at     INTEGER NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    -- 'write', 'read' or 'root' (SPEC §1).
    mode           TEXT NOT NULL DEFAULT 'root',
    owner          INTEGER REFERENCES projects (key),
    -- The secret a rotation replaced, accepted until previous_until (epoch ms).
    previous_hash  TEXT,
    previous_salt  TEXT,
    previous_until INTEGER,
    revoked_at     INTEGER
);
CREATE TABLE salts (
    day  TEXT PRIMARY KEY,
    salt TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    -- The UUID's 16 bytes: they sort like its text, and keep the time index small.
    id          BLOB NOT NULL,
    project     INTEGER NOT NULL,
    type        TEXT NOT NULL,
    name        TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    profile_id  TEXT,
    created_at  INTEGER NOT NULL,
    properties  TEXT NOT NULL,
    groups      TEXT,
    sdk_name    TEXT,
    sdk_version TEXT,
    synced_at   INTEGER NOT NULL
);
-- The one secondary index: reads by session use the session's time range (from `sessions`).
-- Time comes first: it tells entries apart in the first comparison, where a leading project
-- column, the same in nearly every entry, would not; reads give both. The event id is left out:
-- it would double each entry (and each insert's comparisons) to order only the events of one
-- millisecond, which a read sorts itself.
CREATE INDEX events_by_time ON events (created_at, project);
-- Idempotency keys of every row kind (events, profile and group changes), key first for the
-- same reason.
CREATE TABLE insert_ids (
    project   INTEGER NOT NULL,
    insert_id TEXT NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (insert_id, project)
) WITHOUT ROWID;
CREATE TABLE sessions (
    project        INTEGER NOT NULL,
    id             TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    profile_id     TEXT,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER NOT NULL,
    event_count    INTEGER NOT NULL,
    start_event    INTEGER NOT NULL,
    -- Event time (epoch ms) of the event profile_id came from; NULL when profile_id is.
    profile_at     INTEGER,
    PRIMARY KEY (project, id)
) WITHOUT ROWID;
CREATE INDEX sessions_by_start ON sessions (project, started_at, id);
CREATE TABLE profiles (
    project     INTEGER NOT NULL,
    id          TEXT NOT NULL,
    fields      TEXT NOT NULL,
    properties  TEXT NOT NULL,
    field_times TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project, id)
) WITHOUT ROWID;
CREATE TABLE groups (
    project    INTEGER NOT NULL,
    id         TEXT NOT NULL,
    type       TEXT NOT NULL,
    name       TEXT NOT NULL,
    properties TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (project, id)
) WITHOUT ROWID;
CREATE TABLE profile_groups (
    project    INTEGER NOT NULL,
    profile_id TEXT NOT NULL,
    group_id   TEXT NOT NULL,
    PRIMARY KEY (project, profile_id, group_id)
) WITHOUT ROWID;
";

/// Brings a database to [`VERSION`]: creates it when new, upgrades it when older, and refuses one
/// written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found == VERSION {
        return Ok(());
    }
    if found > VERSION {
        return Err(StoreError::Unavailable(format!(
            "database schema version {found} is newer than this server's {VERSION}"
        )));
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    if found == 0 {
        create(&tx)?;
    } else {
        upgrade(&tx, found)?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}

fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CREATE)
}

/// Version 2 puts the distinguishing column first in the time index and the idempotency keys.
const UPGRADE_TO_2: &str = "
DROP INDEX events_by_time;
CREATE INDEX events_by_time ON events (created_at, project, id);
CREATE TABLE insert_ids_v2 (
    project   INTEGER NOT NULL,
    insert_id TEXT NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (insert_id, project)
) WITHOUT ROWID;
INSERT INTO insert_ids_v2 (project, insert_id, seen_at)
    SELECT project, insert_id, seen_at FROM insert_ids;
DROP TABLE insert_ids;
ALTER TABLE insert_ids_v2 RENAME TO insert_ids;
";

/// Version 3 leaves the event id out of the time index.
const UPGRADE_TO_3: &str = "
DROP INDEX events_by_time;
CREATE INDEX events_by_time ON events (created_at, project);
";

/// Version 4 gives each client a mode, a name, an owner project, a rotation's previous secret
/// and a revocation time. Clients stored before keep working as `root`, as they did; creation
/// times move from seconds to milliseconds.
const UPGRADE_TO_4: &str = "
ALTER TABLE projects ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE projects ADD COLUMN mode TEXT NOT NULL DEFAULT 'root';
ALTER TABLE projects ADD COLUMN owner INTEGER REFERENCES projects (key);
ALTER TABLE projects ADD COLUMN previous_hash TEXT;
ALTER TABLE projects ADD COLUMN previous_salt TEXT;
ALTER TABLE projects ADD COLUMN previous_until INTEGER;
ALTER TABLE projects ADD COLUMN revoked_at INTEGER;
UPDATE projects SET created_at = created_at * 1000;
";

/// Version 5 keeps the event time of each session's profile id, so that an earlier event
/// arriving later gives the session its profile id (SPEC §6b). The time of the event a stored
/// profile id came from was not kept; the session's start is the earliest it can be, so an
/// event that arrives after the upgrade takes the session's profile id over only if it lies
/// before every event the session had, or at its start with a bytewise smaller id.
const UPGRADE_TO_5: &str = "
ALTER TABLE sessions ADD COLUMN profile_at INTEGER;
UPDATE sessions SET profile_at = started_at WHERE profile_id IS NOT NULL;
";

/// Steps from each older version to the next, up to [`VERSION`].
fn upgrade(conn: &Connection, from: i32) -> Result<(), StoreError> {
    for version in from..VERSION {
        match version {
            1 => conn.execute_batch(UPGRADE_TO_2)?,
            2 => conn.execute_batch(UPGRADE_TO_3)?,
            3 => {
                conn.execute_batch(UPGRADE_TO_4)?;
                let clients: i64 =
                    conn.query_row("SELECT count(*) FROM projects", [], |r| r.get(0))?;
                if clients > 0 {
                    tracing::warn!(
                        clients,
                        "clients stored before client modes existed are now `root`: they can \
                         read every stored event and profile. Issue `write` keys for apps and \
                         gateways (backfill-server project create --mode write --for <client-id>) \
                         and revoke root keys that apps ship"
                    );
                }
            }
            4 => conn.execute_batch(UPGRADE_TO_5)?,
            _ => {
                return Err(StoreError::Unavailable(format!(
                    "no upgrade path from schema version {version}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reopens_without_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut conn = Connection::open(&path).expect("open");
        migrate(&mut conn).expect("create");
        conn.execute(
            "INSERT INTO salts (day, salt) VALUES ('2026-11-28', 'x')",
            [],
        )
        .expect("insert");
        drop(conn);
        let mut conn = Connection::open(&path).expect("reopen");
        migrate(&mut conn).expect("reopen is a no-op");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM salts", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
    }

    /// A version-4 database: today's schema without the sessions' `profile_at`.
    fn version_4(conn: &Connection) {
        create(conn).expect("create");
        conn.execute_batch(
            "ALTER TABLE sessions DROP COLUMN profile_at;
             PRAGMA user_version = 4;",
        )
        .expect("version 4");
    }

    /// Version 4's schema with the `projects` table as versions 1 to 3 wrote it (no modes).
    fn create_before_modes(conn: &Connection) {
        version_4(conn);
        conn.execute_batch(
            "DROP TABLE projects;
             CREATE TABLE projects (
                 key         INTEGER PRIMARY KEY,
                 client_id   TEXT NOT NULL UNIQUE,
                 secret_hash TEXT NOT NULL,
                 secret_salt TEXT NOT NULL,
                 created_at  INTEGER NOT NULL
             );",
        )
        .expect("projects before modes");
    }

    /// A version-1 database: today's schema with the time index, the idempotency keys and the
    /// clients in their first shape.
    fn version_1(conn: &Connection) {
        create_before_modes(conn);
        conn.execute_batch(
            "DROP INDEX events_by_time;
             CREATE INDEX events_by_time ON events (project, created_at, id);
             DROP TABLE insert_ids;
             CREATE TABLE insert_ids (
                 project   INTEGER NOT NULL,
                 insert_id TEXT NOT NULL,
                 seen_at   INTEGER NOT NULL,
                 PRIMARY KEY (project, insert_id)
             ) WITHOUT ROWID;
             INSERT INTO insert_ids VALUES (1, 'key-a', 5), (2, 'key-a', 6), (1, 'key-b', 7);
             PRAGMA user_version = 1;",
        )
        .expect("version 1");
    }

    /// The time index's definition.
    fn time_index(conn: &Connection) -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'events_by_time'",
            [],
            |r| r.get(0),
        )
        .expect("index")
    }

    #[test]
    fn upgrades_version_1_keeping_every_key() {
        let mut conn = Connection::open_in_memory().expect("open");
        version_1(&conn);
        migrate(&mut conn).expect("upgrade");
        let version: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, VERSION);
        let keys: Vec<(i64, String, i64)> = conn
            .prepare(
                "SELECT project, insert_id, seen_at FROM insert_ids ORDER BY project, insert_id",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            keys,
            vec![
                (1, "key-a".to_owned(), 5),
                (1, "key-b".to_owned(), 7),
                (2, "key-a".to_owned(), 6)
            ]
        );
        let claimed = conn
            .execute(
                "INSERT OR IGNORE INTO insert_ids (project, insert_id, seen_at) VALUES (2, 'key-a', 9)",
                [],
            )
            .expect("claim");
        assert_eq!(
            claimed, 0,
            "a key stored before the upgrade is still a duplicate"
        );
        let index = time_index(&conn);
        assert!(index.contains("(created_at, project)"), "{index}");
    }

    #[test]
    fn upgrades_version_2_keeping_every_event_readable_by_time() {
        let mut conn = Connection::open_in_memory().expect("open");
        create_before_modes(&conn);
        conn.execute_batch(
            "DROP INDEX events_by_time;
             CREATE INDEX events_by_time ON events (created_at, project, id);
             INSERT INTO events (id, project, type, name, device_id, session_id, created_at,
                 properties, synced_at)
             VALUES (x'02', 1, 'track', 'b', 'd', 's', 20, '{}', 30),
                    (x'01', 1, 'track', 'a', 'd', 's', 10, '{}', 30);
             PRAGMA user_version = 2;",
        )
        .expect("version 2");
        migrate(&mut conn).expect("upgrade");
        let index = time_index(&conn);
        assert!(index.contains("(created_at, project)"), "{index}");
        let names: Vec<String> = conn
            .prepare("SELECT name FROM events INDEXED BY events_by_time WHERE created_at > 0 AND +project = 1 ORDER BY created_at")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(names, ["a", "b"]);
    }

    /// A version-3 database with one client.
    const PROJECTS_V3: &str = "
        INSERT INTO projects (client_id, secret_hash, secret_salt, created_at)
            VALUES ('3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f', 'h', 's', 1795860000);
        PRAGMA user_version = 3;";

    #[test]
    fn upgrades_version_3_clients_to_root() {
        let mut conn = Connection::open_in_memory().expect("open");
        create_before_modes(&conn);
        conn.execute_batch(PROJECTS_V3).expect("version 3");
        migrate(&mut conn).expect("upgrade");
        let (client_id, hash, mode, created_at, owner, revoked): (
            String,
            String,
            String,
            i64,
            Option<i64>,
            Option<i64>,
        ) = conn
            .query_row(
                "SELECT client_id, secret_hash, mode, created_at, owner, revoked_at FROM projects",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .expect("client");
        assert_eq!(client_id, "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f");
        assert_eq!(hash, "h", "the secret is kept");
        assert_eq!(mode, "root");
        assert_eq!(created_at, 1_795_860_000_000, "seconds became milliseconds");
        assert_eq!((owner, revoked), (None, None));
    }

    #[test]
    fn upgrades_version_4_sessions_keeping_their_profile_ids_from_their_start() {
        let mut conn = Connection::open_in_memory().expect("open");
        version_4(&conn);
        conn.execute_batch(
            "INSERT INTO sessions (project, id, device_id, profile_id, started_at, ended_at,
                 event_count, start_event)
             VALUES (1, 'known', 'd', 'u1', 100, 900, 3, 1),
                    (1, 'anonymous', 'd', NULL, 200, 300, 2, 2);",
        )
        .expect("version 4 sessions");
        migrate(&mut conn).expect("upgrade");
        let sessions: Vec<(String, Option<String>, Option<i64>)> = conn
            .prepare("SELECT id, profile_id, profile_at FROM sessions ORDER BY id")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            sessions,
            [
                ("anonymous".to_owned(), None, None),
                ("known".to_owned(), Some("u1".to_owned()), Some(100)),
            ]
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "user_version", VERSION + 1)
            .expect("set");
        assert!(migrate(&mut conn).is_err());
    }
}
