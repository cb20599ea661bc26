//! The device buffer's schema, versioned through `PRAGMA user_version`.

use rusqlite::{Connection, params};

/// The schema version this build writes.
pub const VERSION: i32 = 2;

/// Low bits of `events.seq` that order the events of one millisecond.
pub const SEQ_SHIFT: u32 = 15;

/// The `seq` range of the events of `time_ms`: `[start, end)`.
pub fn seq_slot(time_ms: i64) -> (i64, i64) {
    let start = time_ms.clamp(0, (i64::MAX >> SEQ_SHIFT) - 1) << SEQ_SHIFT;
    (start, start + (1 << SEQ_SHIFT))
}

/// The events table. `seq` is the event time in ms shifted left by `SEQ_SHIFT`, plus the event's
/// place among those of the same millisecond: the table itself is in drain order (oldest first),
/// so reading a batch, settling it and expiring old events need no second index. (Version 1 had
/// one.)
const EVENTS_V2: &str = "
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    time_ms   INTEGER NOT NULL,
    insert_id TEXT NOT NULL,
    body      TEXT NOT NULL,
    bytes     INTEGER NOT NULL
);";

/// The rest of a new buffer: dead letters, state and counters (unchanged since version 1).
const OTHER_TABLES_V2: &str = "
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
        tx.execute_batch(EVENTS_V2).map_err(|e| e.to_string())?;
        tx.execute_batch(OTHER_TABLES_V2)
            .map_err(|e| e.to_string())?;
    } else {
        upgrade(&tx, found)
            .map_err(|e| format!("upgrading the buffer from version {found}: {e}"))?;
    }
    tx.pragma_update(None, "user_version", VERSION)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Steps from each older version to the next.
fn upgrade(conn: &Connection, from: i32) -> rusqlite::Result<()> {
    if from == 1 {
        // Version 1 ordered by an index on (time_ms, seq); renumber the rows in that order.
        conn.execute_batch("ALTER TABLE events RENAME TO events_v1;")?;
        conn.execute_batch(EVENTS_V2)?;
        {
            let mut read = conn.prepare(
                "SELECT time_ms, insert_id, body, bytes FROM events_v1 ORDER BY time_ms, seq",
            )?;
            let mut rows = read.query([])?;
            while let Some(row) = rows.next()? {
                insert_event(
                    conn,
                    row.get(0)?,
                    row.get_ref(1)?.as_str()?,
                    row.get_ref(2)?.as_str()?,
                    row.get(3)?,
                )?;
            }
        }
        conn.execute_batch("DROP TABLE events_v1;")?;
    }
    Ok(())
}

/// Inserts an event after those of its millisecond already buffered. In the rare case of more
/// than 2^15 events in one millisecond, the rest go after every buffered event.
pub fn insert_event(
    conn: &Connection,
    time_ms: i64,
    insert_id: &str,
    body: &str,
    bytes: i64,
) -> rusqlite::Result<()> {
    let (start, end) = seq_slot(time_ms);
    let placed = conn
        .prepare_cached(
            "INSERT INTO events (seq, time_ms, insert_id, body, bytes)
             VALUES (coalesce((SELECT max(seq) + 1 FROM events WHERE seq >= ?1 AND seq < ?2), ?1),
                     ?3, ?4, ?5, ?6)",
        )?
        .execute(params![start, end, time_ms, insert_id, body, bytes]);
    match placed {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            conn.prepare_cached(
                "INSERT INTO events (seq, time_ms, insert_id, body, bytes)
                 VALUES ((SELECT max(seq) + 1 FROM events), ?1, ?2, ?3, ?4)",
            )?
            .execute(params![time_ms, insert_id, body, bytes])?;
            Ok(())
        }
        other => other.map(|_| ()),
    }
}
