//! The device buffer's schema, versioned through `PRAGMA user_version`.

use rusqlite::Connection;

/// The schema version this build writes.
pub const VERSION: i32 = 1;

const CREATE_V1: &str = "
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    time_ms   INTEGER NOT NULL,
    insert_id TEXT NOT NULL,
    body      TEXT NOT NULL,
    bytes     INTEGER NOT NULL
);
CREATE INDEX events_by_time ON events (time_ms, seq);
CREATE TABLE dead_letters (
    seq       INTEGER PRIMARY KEY,
    failed_at INTEGER NOT NULL,
    insert_id TEXT NOT NULL,
    body      TEXT NOT NULL,
    error     TEXT NOT NULL
);
CREATE TABLE state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Brings a buffer to [`VERSION`]; refuses one written by a newer SDK.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let found: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if found == VERSION {
        return Ok(());
    }
    if found > VERSION {
        return Err(format!(
            "buffer schema version {found} is newer than this SDK's {VERSION}"
        ));
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    if found == 0 {
        tx.execute_batch(CREATE_V1).map_err(|e| e.to_string())?;
    } else {
        upgrade(&tx, found)?;
    }
    tx.pragma_update(None, "user_version", VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Steps from each older version to the next; version 1 is the first.
fn upgrade(_conn: &Connection, from: i32) -> Result<(), String> {
    Err(format!("no upgrade path from buffer schema version {from}"))
}
