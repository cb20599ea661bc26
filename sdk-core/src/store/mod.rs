//! The durable buffer: one SQLite file in WAL mode behind one type.
//!
//! Every method runs one transaction; an event is committed before `track` returns, so a killed
//! process loses nothing that was acknowledged to the app. `synchronous=NORMAL` keeps commits
//! cheap (no fsync per event) and survives a killed process; only a power loss can take the
//! last transactions.

pub mod drain_lock;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use crate::error::Error;

/// A row to buffer.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// Event time (ms).
    pub time_ms: i64,
    /// The event's `__insertId`.
    pub insert_id: String,
    /// The event's wire JSON.
    pub body: String,
}

/// One buffered row read for sending, its JSON lent from the database's row.
#[derive(Debug, Clone, Copy)]
pub struct BufferedRow<'a> {
    /// Buffer position (its order in the drain).
    pub seq: i64,
    /// The event's wire JSON.
    pub body: &'a str,
}

/// A dead-lettered row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// When the server refused it (ms).
    pub failed_at: i64,
    /// Its `__insertId`.
    pub insert_id: String,
    /// Its wire JSON.
    pub body: String,
    /// The server's reason.
    pub error: String,
}

/// Bounds of the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most rows.
    pub max_rows: u64,
    /// Most bytes of event JSON.
    pub max_bytes: u64,
}

struct Inner {
    conn: Connection,
    rows: u64,
    bytes: u64,
    /// `PRAGMA data_version` when `rows` and `bytes` were last counted: it changes when another
    /// connection (another process recording into this buffer) commits.
    data_version: i64,
}

impl Inner {
    /// Counts the rows and bytes again if another connection has written since they were
    /// counted.
    fn refresh(&mut self) -> Result<(), Error> {
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if version != self.data_version {
            let (rows, bytes): (i64, i64) = self.conn.query_row(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            self.rows = rows.max(0) as u64;
            self.bytes = bytes.max(0) as u64;
            self.data_version = version;
        }
        Ok(())
    }
}

/// The buffer. Writes are serialised through one connection; the drain reads the rows it packs
/// through a second one, so that packing the next request never waits for a settle (WAL lets a
/// reader and a writer work at once).
pub struct Buffer {
    inner: Mutex<Inner>,
    scanner: Mutex<Connection>,
    /// Copies the WAL back into the file, so that neither `track` nor a settle waits for it.
    checkpointer: Mutex<Connection>,
    /// How its connections open the file: [`Access::Write`] unless opened by
    /// [`Buffer::open_read_only`].
    access: Access,
    /// The database file, for the snapshot a streaming append evicts from.
    path: PathBuf,
    /// How many times eviction or expiry has removed rows since the buffer was opened; changed
    /// only under the `inner` lock, read without it so that packing never waits for a settle.
    removals: AtomicU64,
}

/// Counter names kept in the `counters` table.
pub mod counter {
    /// Events the server accepted (new or duplicate).
    pub const SENT: &str = "sent";
    /// Of those, events the server already had.
    pub const DUPLICATES: &str = "duplicates";
    /// Events the server refused for good, moved to the dead-letter table.
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// Dead letters deleted because the dead-letter table was past its bound.
    pub const DEAD_LETTERS_EVICTED: &str = "dead_letters_evicted";
    /// Events dropped because they fell out of the server's age window.
    pub const EXPIRED: &str = "expired";
    /// Events dropped to keep the buffer within its bounds.
    pub const EVICTED: &str = "evicted";
    /// HTTP requests sent.
    pub const REQUESTS: &str = "requests";
    /// Bytes sent on the wire (request bodies, after compression).
    pub const BYTES_SENT: &str = "bytes_sent";
}

fn poisoned() -> Error {
    Error::Storage("the buffer lock was poisoned".to_owned())
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// WAL pages after which a commit checkpoints by itself, when no drain does it.
const AUTO_CHECKPOINT_PAGES: u32 = 8192;

/// How a connection opens the buffer's file (see [`Buffer::open_read_only`] for how a reader
/// picks one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads and writes, creating the file, its `-wal` and its `-shm` when missing.
    Write,
    /// Opened for reading and writing, never creating the file, and then refused every write
    /// (`query_only`): a read-only connection to a WAL database leaves its `-wal` and `-shm`
    /// files behind, while this one, when it is the last to close, removes them as SQLite does
    /// for any connection. Only for a process that may write the file and its directory.
    Read,
    /// SQLite's read-only open with `readonly_shm=1`: reads through the `-wal` and `-shm`
    /// files that exist, writing neither and creating no `-shm` (SQLite 3.22's read-only WAL).
    ReadExisting,
    /// SQLite's `immutable=1`: reads the database file alone, without locks and without
    /// opening or creating its `-wal` and `-shm`. Exact only while no `-wal` holds commits.
    Immutable,
}

/// `path` as an SQLite URI (`file:` and the path, every byte outside the unreserved set
/// percent-encoded, as RFC 3986 and SQLite's URI filenames say) with the query `query`.
fn sqlite_uri(path: &Path, query: &str) -> String {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().replace('\\', "/").into_bytes();
    // An absolute path gets an empty authority, so that one starting with `//` is not read as
    // a host.
    let mut uri = String::from(if bytes.first() == Some(&b'/') {
        "file://"
    } else {
        "file:"
    });
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
}

fn open_connection(path: &Path, access: Access) -> Result<Connection, rusqlite::Error> {
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match access {
        Access::Write => Connection::open(path)?,
        Access::Read => {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.pragma_update(None, "query_only", true)?;
            conn
        }
        Access::ReadExisting => {
            Connection::open_with_flags(sqlite_uri(path, "mode=ro&readonly_shm=1"), read_only)?
        }
        Access::Immutable => {
            Connection::open_with_flags(sqlite_uri(path, "immutable=1"), read_only)?
        }
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if access == Access::Write {
        // Checkpoints run during and after drains (`Buffer::checkpoint`); the automatic one is
        // only a backstop for long offline stretches, so that `track` rarely pays for copying
        // the WAL back.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        conn.pragma_update(None, "wal_autocheckpoint", AUTO_CHECKPOINT_PAGES)?;
    }
    // Reading the schema touches the file header and the first pages: a damaged file fails here.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(conn)
}

/// Whether this process may write `path` (its effective user and groups, as the kernel would
/// judge an `open` for writing, or for a directory the creation of a file in it). `false` when
/// the system cannot say.
fn may_write(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use rustix::fs::{Access as Mode, AtFlags, CWD, accessat};
        accessat(CWD, path, Mode::WRITE_OK, AtFlags::EACCESS).is_ok()
    }
    #[cfg(not(unix))]
    {
        path.metadata().is_ok_and(|m| !m.permissions().readonly())
    }
}

/// `<path><suffix>`: the `-wal` or `-shm` file SQLite keeps beside a database.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// How a reader opens the buffer at `path` without creating or changing any file: see
/// [`Buffer::open_read_only`].
fn read_access(path: &Path) -> Result<Access, Error> {
    // SQLite names the -wal and -shm files after the file a symbolic link leads to.
    let real = path.canonicalize();
    let path = real.as_deref().unwrap_or(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if may_write(path) && may_write(dir) {
        return Ok(Access::Read);
    }
    let wal = beside(path, "-wal");
    let shm = beside(path, "-shm");
    if wal.metadata().map_or(true, |m| m.len() == 0) {
        return Ok(Access::Immutable);
    }
    if shm.exists() {
        return Ok(Access::ReadExisting);
    }
    Err(Error::Storage(format!(
        "cannot read {} without changing it: its write-ahead log {} holds events not yet \
         copied into it, and reading that log needs {}, which this user cannot create (or would \
         leave behind, owned by this user, keeping the buffer's owner from writing to it). Run \
         the command as the user that enqueues into and drains this buffer; its next enqueue or \
         drain also copies the log back",
        path.display(),
        wal.display(),
        shm.display()
    )))
}

/// The first 16 bytes of every SQLite database file (its file format, section 1.3.1).
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses a file that is not an SQLite database: it is someone's data (an NDJSON log passed as
/// `--db`), never a buffer to recover. A missing or empty file passes (a new buffer).
fn check_header(path: &Path) -> Result<(), Error> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let read = match std::fs::File::open(path) {
        Ok(mut f) => f.read(&mut head),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Storage(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    match read {
        Ok(0) => Ok(()),
        Ok(n) if n == head.len() && &head == SQLITE_HEADER => Ok(()),
        Ok(_) => Err(Error::Storage(format!(
            "{} is not a Backfill buffer (not an SQLite database); it was left untouched",
            path.display()
        ))),
        Err(e) => Err(Error::Storage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Refuses an SQLite database that some other program wrote (version 0, with tables of its
/// own): creating the buffer's tables in it would change someone else's data.
fn check_foreign(conn: &Connection, path: &Path) -> Result<(), Error> {
    let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT IN
            ('events', 'dead_letters', 'state', 'counters') AND name NOT LIKE 'sqlite_%'",
        [],
        |r| r.get(0),
    )?;
    if version == 0 && tables > 0 {
        return Err(Error::Storage(format!(
            "{} is an SQLite database of another program, not a Backfill buffer; it was left \
             untouched",
            path.display()
        )));
    }
    Ok(())
}

impl Buffer {
    /// Opens (or creates) the buffer at `path`. A file that is not an SQLite database, or an
    /// SQLite database of another program, is refused and left untouched. An SQLite file that
    /// fails its checks (a damaged buffer) is moved aside to `<path>.corrupt-<ms>` and a new
    /// buffer is created; the second value then says so.
    pub fn open(
        path: &Path,
        now_ms: i64,
        max_bytes: Option<u64>,
    ) -> Result<(Self, Option<String>), Error> {
        check_header(path)?;
        // Looked at read-only first: opening for writing would already switch another
        // program's database to WAL.
        if path.metadata().is_ok_and(|m| m.len() > 0) {
            match open_connection(path, Access::Read) {
                Ok(conn) => check_foreign(&conn, path)?,
                Err(e) if is_corruption(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let (mut conn, recovered) = match open_connection(path, Access::Write) {
            Ok(conn) => (conn, None),
            Err(e) if is_corruption(&e) => {
                let aside = PathBuf::from(format!("{}.corrupt-{now_ms}", path.display()));
                std::fs::rename(path, &aside).map_err(|io| {
                    Error::Storage(format!("corrupt buffer could not be moved aside: {io}"))
                })?;
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                let note = format!(
                    "the buffer was corrupt ({e}); it was moved to {} and a new one created",
                    aside.display()
                );
                tracing::error!("{note}");
                (open_connection(path, Access::Write)?, Some(note))
            }
            Err(e) => return Err(e.into()),
        };
        schema::migrate(&mut conn).map_err(Error::Storage)?;
        if let Some(max) = max_bytes {
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = (max / page.max(512) as u64).max(8);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        }
        let buffer = Self::with_connection(conn, path, Access::Write)?;
        Ok((buffer, recovered))
    }

    /// Opens an existing buffer for reading only: nothing is created, moved, upgraded or
    /// written, whatever state the file is in and whoever runs it. Writing through it fails.
    ///
    /// SQLite reads a WAL database through its `-wal` and `-shm` files, and a read-only
    /// connection creates them when they are missing and leaves them behind; created by another
    /// user, they keep the buffer's owner from writing to it ("attempt to write a readonly
    /// database"), and in a directory the process cannot write, they cannot be created at all.
    /// So the connection is chosen by what this process may write (its effective user):
    /// - the file and its directory: opened for reading and writing and refused every write
    ///   (`query_only`); missing `-wal`/`-shm` files are created with the file's permissions
    ///   (so whoever may write the file may write them) and removed when it is the last
    ///   connection to close.
    /// - otherwise, with no `-wal` file (or an empty one): SQLite's `immutable=1`, which reads
    ///   the database file alone and creates nothing. No connection has the buffer open then
    ///   (each keeps the `-wal` file while it is open and the last one copies it back and
    ///   deletes it), so the file holds every committed event. Such a read takes no lock: a
    ///   writer that starts while it reads may make it fail or show a mix of before and after
    ///   (SQLite's documentation of `immutable`); running it again reads the new state.
    /// - otherwise, with both a `-wal` and a `-shm` file: SQLite's read-only open with
    ///   `readonly_shm=1`, which reads through both (SQLite 3.22's read-only WAL) and writes
    ///   neither.
    /// - otherwise (a `-wal` file without its `-shm`, left by a writer that was killed while
    ///   closing) the events in the `-wal` file cannot be read without creating a `-shm` file:
    ///   [`Error::Storage`] saying to run the command as the buffer's owner.
    ///
    /// A `-wal` file deleted and created again by a writer closing and another opening, between
    /// the look at the files and the open, can still leave an empty `-wal` file behind.
    pub fn open_read_only(path: &Path) -> Result<Self, Error> {
        if !path.is_file() {
            return Err(Error::Storage(format!("no buffer at {}", path.display())));
        }
        check_header(path)?;
        let access = read_access(path)?;
        let conn = open_connection(path, access)?;
        let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            return Err(Error::Storage(format!(
                "{} is an SQLite database but not a Backfill buffer",
                path.display()
            )));
        }
        if version > schema::VERSION {
            return Err(Error::Storage(format!(
                "buffer schema version {version} is newer than this SDK's {}",
                schema::VERSION
            )));
        }
        Self::with_connection(conn, path, access)
    }

    fn with_connection(conn: Connection, path: &Path, access: Access) -> Result<Self, Error> {
        let mut inner = Inner {
            conn,
            rows: 0,
            bytes: 0,
            data_version: i64::MIN,
        };
        inner.refresh()?;
        let scanner = open_connection(path, access)?;
        let checkpointer = open_connection(path, access)?;
        Ok(Self {
            inner: Mutex::new(inner),
            scanner: Mutex::new(scanner),
            checkpointer: Mutex::new(checkpointer),
            access,
            path: path.to_owned(),
            removals: AtomicU64::new(0),
        })
    }

    /// True when opened by [`Buffer::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.access != Access::Write
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, Error> {
        self.inner.lock().map_err(|_| poisoned())
    }

    /// Runs `f` in one immediate transaction, committed when it returns `Ok`.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut inner = self.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` on the connection for reading.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let inner = self.lock()?;
        f(&inner.conn)
    }

    /// Copies the WAL back into the database file without waiting for readers or writers, on
    /// a connection of its own: recording and settling go on meanwhile.
    pub fn checkpoint(&self) -> Result<(), Error> {
        let conn = self.checkpointer.lock().map_err(|_| poisoned())?;
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Turns the writer's own checkpoints off (while a drain checkpoints in the background) or
    /// back on.
    pub fn auto_checkpoints(&self, on: bool) -> Result<(), Error> {
        let pages = if on { AUTO_CHECKPOINT_PAGES } else { 0 };
        self.read(|conn| Ok(conn.pragma_update(None, "wal_autocheckpoint", pages)?))
    }

    /// How many times eviction or expiry has removed rows since the buffer was opened. A drain
    /// reads it before packing: when it has not changed by the time the answer is settled, every
    /// packed row is still in the buffer.
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }

    /// Buffered rows and bytes, including rows other processes recorded into this buffer.
    pub fn totals(&self) -> Result<(u64, u64), Error> {
        let mut inner = self.lock()?;
        inner.refresh()?;
        Ok((inner.rows, inner.bytes))
    }

    /// Appends rows (with `before`, run in the same transaction, e.g. to save session state),
    /// evicting the oldest rows when the bounds would be passed. Returns the number evicted.
    pub fn append(
        &self,
        rows: &[NewRow],
        bounds: Bounds,
        before: impl FnOnce(&Transaction<'_>) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let add_bytes: u64 = rows.iter().map(|r| r.body.len() as u64).sum();
        if let Some(row) = rows.iter().find(|r| r.body.len() as u64 > bounds.max_bytes) {
            return Err(Error::InvalidEvent(format!(
                "an event of {} bytes is larger than the whole buffer (at most {} bytes)",
                row.body.len(),
                bounds.max_bytes
            )));
        }
        if rows.len() as u64 > bounds.max_rows {
            return Err(Error::InvalidEvent(format!(
                "{} events at once are more than the whole buffer holds (at most {} events)",
                rows.len(),
                bounds.max_rows
            )));
        }
        let mut inner = self.lock()?;
        inner.refresh()?;
        let (mut count, mut bytes) = (inner.rows, inner.bytes);
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        before(&tx)?;
        let mut evicted = 0u64;
        while count + rows.len() as u64 > bounds.max_rows || bytes + add_bytes > bounds.max_bytes {
            let over_rows = (count + rows.len() as u64)
                .saturating_sub(bounds.max_rows)
                .max(1);
            let mut stmt = tx.prepare_cached(
                "DELETE FROM events WHERE seq IN
                    (SELECT seq FROM events ORDER BY seq LIMIT ?1) RETURNING bytes",
            )?;
            let freed: Vec<i64> = stmt
                .query_map(params![over_rows as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if freed.is_empty() {
                break;
            }
            evicted += freed.len() as u64;
            count -= freed.len() as u64;
            bytes = bytes.saturating_sub(freed.iter().map(|b| *b as u64).sum());
        }
        if evicted > 0 {
            bump(&tx, counter::EVICTED, evicted)?;
        }
        for row in rows {
            schema::insert_event(
                &tx,
                row.time_ms,
                &row.insert_id,
                &row.body,
                row.body.len() as i64,
            )?;
        }
        tx.commit()?;
        inner.rows = count + rows.len() as u64;
        inner.bytes = bytes + add_bytes;
        if evicted > 0 {
            self.removals.fetch_add(1, Ordering::Release);
        }
        Ok(evicted)
    }

    /// Appends rows pulled one at a time from `rows`, all in one immediate transaction that is
    /// committed only when `rows` ends without an error (after `before_commit`, run in the same
    /// transaction); on the first error everything is rolled back and the error returned.
    /// Memory is bounded by one row, whatever the number of rows.
    ///
    /// Bounds apply as in [`Buffer::append`]: the rows of this call are never evicted to make
    /// room for each other, so once they alone pass a bound the call fails with
    /// [`Error::InvalidEvent`]; the rows buffered before the call are evicted oldest first
    /// (by event time) as room is needed, and counted.
    pub fn append_stream<F: From<Error>>(
        &self,
        rows: impl Iterator<Item = Result<NewRow, F>>,
        bounds: Bounds,
        before_commit: impl FnOnce(&Transaction<'_>) -> Result<(), Error>,
    ) -> Result<Appended, F> {
        let mut inner = self.lock()?;
        inner.refresh()?;
        let (mut count, mut bytes) = (inner.rows, inner.bytes);
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::from)?;
        let mut oldest = Oldest::new(&self.path);
        let mut appended = Appended::default();
        let mut added_bytes = 0u64;
        for row in rows {
            let row = row?;
            let len = row.body.len() as u64;
            if len > bounds.max_bytes {
                return Err(Error::InvalidEvent(format!(
                    "an event of {len} bytes is larger than the whole buffer (at most {} bytes)",
                    bounds.max_bytes
                ))
                .into());
            }
            appended.rows += 1;
            added_bytes += len;
            if appended.rows > bounds.max_rows {
                return Err(Error::InvalidEvent(format!(
                    "{} events at once are more than the whole buffer holds (at most {} events)",
                    appended.rows, bounds.max_rows
                ))
                .into());
            }
            if added_bytes > bounds.max_bytes {
                return Err(Error::InvalidEvent(format!(
                    "{added_bytes} bytes of events at once are more than the whole buffer holds \
                     (at most {} bytes)",
                    bounds.max_bytes
                ))
                .into());
            }
            while count + 1 > bounds.max_rows || bytes + len > bounds.max_bytes {
                let Some((seq, freed)) = oldest.next()? else {
                    break;
                };
                tx.prepare_cached("DELETE FROM events WHERE seq = ?1")
                    .and_then(|mut stmt| stmt.execute(params![seq]))
                    .map_err(Error::from)?;
                appended.evicted += 1;
                count = count.saturating_sub(1);
                bytes = bytes.saturating_sub(freed);
            }
            schema::insert_event(&tx, row.time_ms, &row.insert_id, &row.body, len as i64)
                .map_err(Error::from)?;
            count += 1;
            bytes += len;
        }
        if appended.evicted > 0 {
            bump(&tx, counter::EVICTED, appended.evicted)?;
        }
        before_commit(&tx)?;
        tx.commit().map_err(Error::from)?;
        inner.rows = count;
        inner.bytes = bytes;
        if appended.evicted > 0 {
            self.removals.fetch_add(1, Ordering::Release);
        }
        Ok(appended)
    }

    /// Reads rows oldest first, starting after the row `after` (a `seq`), calling `take` for
    /// each until it returns `false`. Memory is bounded by what `take` keeps.
    pub fn scan_oldest(
        &self,
        after: Option<i64>,
        mut take: impl FnMut(BufferedRow<'_>) -> bool,
    ) -> Result<(), Error> {
        let scanner = self.scanner.lock().map_err(|_| poisoned())?;
        let mut stmt =
            scanner.prepare_cached("SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq")?;
        let mut rows = stmt.query(params![after.unwrap_or(i64::MIN)])?;
        while let Some(row) = rows.next()? {
            let row = BufferedRow {
                seq: row.get(0)?,
                body: row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?,
            };
            if !take(row) {
                break;
            }
        }
        Ok(())
    }

    /// Removes delivered rows and moves refused ones to the dead-letter table, counting both.
    pub fn settle(
        &self,
        settled: &Settled,
        now_ms: i64,
        max_dead_letters: u64,
    ) -> Result<(), Error> {
        let mut inner = self.lock()?;
        let removals_before = self.removals.load(Ordering::Acquire);
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut freed_rows = 0u64;
        let mut freed_bytes = 0u64;
        let mut recount = false;
        // One statement for the whole batch: the seqs travel as one JSON array.
        let seqs = serde_json::to_string(&settled.delivered).unwrap_or_else(|_| "[]".to_owned());
        let unchanged = settled.removals_when_packed == Some(removals_before);
        let range = settled
            .delivered
            .iter()
            .min()
            .zip(settled.delivered.iter().max());
        if let Some((first, last)) = range.filter(|_| unchanged) {
            // Nothing was evicted or expired since packing, so every delivered row is still
            // here and its bytes are known: the rows need not be read back, and the range lets
            // SQLite walk them in order instead of seeking each one.
            let deleted = tx
                .prepare_cached(
                    "DELETE FROM events WHERE seq BETWEEN ?2 AND ?3
                        AND +seq IN (SELECT value FROM json_each(?1))",
                )?
                .execute(params![seqs, first, last])?;
            freed_rows += deleted as u64;
            freed_bytes += settled.delivered_bytes;
            recount = deleted != settled.delivered.len();
        } else if !settled.delivered.is_empty() {
            let freed: Vec<i64> = tx
                .prepare_cached(
                    "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?1))
                     RETURNING bytes",
                )?
                .query_map(params![seqs], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            freed_rows += freed.len() as u64;
            freed_bytes += freed.iter().map(|b| *b as u64).sum::<u64>();
        }
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM events WHERE seq = ?1 RETURNING bytes")?;
            let mut dead = tx.prepare_cached(
                "INSERT INTO dead_letters (failed_at, insert_id, body, error)
                 SELECT ?2, insert_id, body, ?3 FROM events WHERE seq = ?1",
            )?;
            for (seq, error) in &settled.refused {
                dead.execute(params![seq, now_ms, error])?;
                if let Some(b) = delete
                    .query_row(params![seq], |r| r.get::<_, i64>(0))
                    .optional()?
                {
                    freed_rows += 1;
                    freed_bytes += b as u64;
                }
            }
        }
        if !settled.refused.is_empty() {
            // Past the bound the oldest go, and are counted: never dropped silently.
            let evicted = tx
                .prepare_cached(
                    "DELETE FROM dead_letters
                     WHERE seq <= (SELECT max(seq) FROM dead_letters) - ?1",
                )?
                .execute(params![max_dead_letters as i64])?;
            bump(&tx, counter::DEAD_LETTERS_EVICTED, evicted as u64)?;
        }
        bump(&tx, counter::SENT, settled.delivered.len() as u64)?;
        bump(&tx, counter::DUPLICATES, settled.duplicates)?;
        bump(&tx, counter::DEAD_LETTERED, settled.refused.len() as u64)?;
        bump(&tx, counter::REQUESTS, settled.requests)?;
        bump(&tx, counter::BYTES_SENT, settled.bytes_sent)?;
        // A safety net: the buffer's totals are counted again if rows went missing anyway.
        let totals = if recount {
            Some(tx.query_row(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM events",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?)
        } else {
            None
        };
        tx.commit()?;
        if let Some((rows, bytes)) = totals {
            inner.rows = rows.max(0) as u64;
            inner.bytes = bytes.max(0) as u64;
        } else {
            inner.rows = inner.rows.saturating_sub(freed_rows);
            inner.bytes = inner.bytes.saturating_sub(freed_bytes);
        }
        Ok(())
    }

    /// Drops rows with an event time before `cutoff_ms`; says how many and the oldest's time.
    pub fn expire(&self, cutoff_ms: i64) -> Result<Expired, Error> {
        let mut inner = self.lock()?;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let freed: Vec<(i64, i64)> = tx
            .prepare_cached("DELETE FROM events WHERE seq < ?1 RETURNING bytes, time_ms")?
            .query_map(params![schema::seq_slot(cutoff_ms).0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        bump(&tx, counter::EXPIRED, freed.len() as u64)?;
        tx.commit()?;
        if !freed.is_empty() {
            self.removals.fetch_add(1, Ordering::Release);
        }
        inner.rows = inner.rows.saturating_sub(freed.len() as u64);
        inner.bytes = inner
            .bytes
            .saturating_sub(freed.iter().map(|(b, _)| *b as u64).sum());
        Ok(Expired {
            count: freed.len() as u64,
            oldest_ms: freed.iter().map(|(_, t)| *t).min(),
        })
    }

    /// A counter's value.
    pub fn counter(&self, name: &str) -> Result<u64, Error> {
        self.read(|conn| {
            let v: Option<i64> = conn
                .prepare_cached("SELECT value FROM counters WHERE name = ?1")?
                .query_row(params![name], |r| r.get(0))
                .optional()?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })
    }

    /// A state value.
    pub fn state(&self, key: &str) -> Result<Option<String>, Error> {
        self.read(|conn| get_state(conn, key))
    }

    /// Sets a state value.
    pub fn set_state(&self, key: &str, value: &str) -> Result<(), Error> {
        self.write(|tx| set_state(tx, key, value))
    }

    /// Removes a state value (nothing happens when there is none).
    pub fn remove_state(&self, key: &str) -> Result<(), Error> {
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM state WHERE key = ?1")?
                .execute(params![key])?;
            Ok(())
        })
    }

    /// Times of the oldest and newest buffered events.
    pub fn time_span(&self) -> Result<(Option<i64>, Option<i64>), Error> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT (SELECT time_ms FROM events ORDER BY seq LIMIT 1),
                            (SELECT time_ms FROM events ORDER BY seq DESC LIMIT 1)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
    }

    /// Moves every dead letter back into the buffer, at its event time, to be sent again (once
    /// what made the server refuse it is fixed). Returns how many.
    pub fn requeue_dead_letters(&self) -> Result<u64, Error> {
        let mut inner = self.lock()?;
        inner.refresh()?;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let letters: Vec<(String, String)> = tx
            .prepare("SELECT insert_id, body FROM dead_letters ORDER BY seq")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut bytes = 0u64;
        for (insert_id, body) in &letters {
            let time_ms = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["payload"]["properties"]["__timestamp"].as_i64())
                .ok_or_else(|| {
                    Error::Storage(format!("dead letter {insert_id} has no __timestamp"))
                })?;
            schema::insert_event(&tx, time_ms, insert_id, body, body.len() as i64)?;
            bytes += body.len() as u64;
        }
        tx.execute("DELETE FROM dead_letters", [])?;
        tx.commit()?;
        inner.rows += letters.len() as u64;
        inner.bytes += bytes;
        Ok(letters.len() as u64)
    }

    /// The newest dead letters, newest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT failed_at, insert_id, body, error FROM dead_letters ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                Ok(DeadLetter { failed_at: r.get(0)?, insert_id: r.get(1)?, body: r.get(2)?, error: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

/// What [`Buffer::append_stream`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Rows appended.
    pub rows: u64,
    /// Rows buffered before that were evicted to make room.
    pub evicted: u64,
}

/// The rows buffered before a streaming append, oldest first, read in small pages through a
/// connection of its own. That connection sees only committed rows, and no other writer can
/// commit while the append holds the write lock: it sees exactly the rows buffered before the
/// append, never the append's own (uncommitted) rows, whatever their event times. Opened only
/// when a row must be evicted.
struct Oldest<'a> {
    path: &'a Path,
    conn: Option<Connection>,
    page: std::collections::VecDeque<(i64, u64)>,
    /// The last `seq` read: the rows the append deleted are still visible to this connection.
    after: i64,
    done: bool,
}

impl<'a> Oldest<'a> {
    const PAGE: i64 = 256;

    fn new(path: &'a Path) -> Self {
        Self {
            path,
            conn: None,
            page: std::collections::VecDeque::new(),
            after: i64::MIN,
            done: false,
        }
    }

    /// The next oldest row buffered before the append (its `seq` and bytes), if any is left.
    fn next(&mut self) -> Result<Option<(i64, u64)>, Error> {
        if self.page.is_empty() && !self.done {
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => self.conn.insert(open_connection(self.path, Access::Read)?),
            };
            let mut stmt = conn.prepare_cached(
                "SELECT seq, bytes FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![self.after, Self::PAGE], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })?;
            for row in rows {
                self.page.push_back(row?);
            }
            self.done = (self.page.len() as i64) < Self::PAGE;
            if let Some((seq, _)) = self.page.back() {
                self.after = *seq;
            }
        }
        Ok(self.page.pop_front())
    }
}

/// What [`Buffer::expire`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Rows dropped.
    pub count: u64,
    /// The event time (epoch ms) of the oldest of them.
    pub oldest_ms: Option<i64>,
}

/// What a drain learned about the rows it sent.
#[derive(Debug, Default, Clone)]
pub struct Settled {
    /// Rows the server stored (or already had).
    pub delivered: Vec<i64>,
    /// The buffer bytes of `delivered` (their JSON), so that settling need not read them back.
    pub delivered_bytes: u64,
    /// [`Buffer::removals`] read before the rows were packed; `None` when unknown.
    pub removals_when_packed: Option<u64>,
    /// How many of `delivered` were duplicates.
    pub duplicates: u64,
    /// Rows refused for good, with the reason.
    pub refused: Vec<(i64, String)>,
    /// Requests this settles (counted with the rows, in the same transaction).
    pub requests: u64,
    /// Bytes those requests put on the wire.
    pub bytes_sent: u64,
}

/// Adds `n` to a counter inside `tx`.
pub fn bump(tx: &Connection, name: &str, n: u64) -> Result<(), Error> {
    if n > 0 {
        tx.prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        )?
        .execute(params![name, n as i64])?;
    }
    Ok(())
}

/// Reads a state value.
pub fn get_state(conn: &Connection, key: &str) -> Result<Option<String>, Error> {
    Ok(conn
        .prepare_cached("SELECT value FROM state WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?)
}

/// Writes a state value.
pub fn set_state(conn: &Connection, key: &str, value: &str) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// Removes a state value.
pub fn clear_state(conn: &Connection, key: &str) -> Result<(), Error> {
    conn.prepare_cached("DELETE FROM state WHERE key = ?1")?
        .execute(params![key])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_rows: 1_000_000,
        max_bytes: 1 << 30,
    };

    fn row(time_ms: i64, n: usize) -> NewRow {
        NewRow {
            time_ms,
            insert_id: format!("id-{n}"),
            body: format!(r#"{{"n":{n}}}"#),
        }
    }

    fn order(buffer: &Buffer) -> Vec<String> {
        let mut bodies = Vec::new();
        buffer
            .scan_oldest(None, |r| {
                bodies.push(r.body.to_owned());
                true
            })
            .expect("scan");
        bodies
    }

    /// What a drain would send now: every row, with its size.
    fn packed(buffer: &Buffer) -> Settled {
        let mut settled = Settled {
            removals_when_packed: Some(buffer.removals()),
            ..Settled::default()
        };
        buffer
            .scan_oldest(None, |r| {
                settled.delivered.push(r.seq);
                settled.delivered_bytes += r.body.len() as u64;
                true
            })
            .expect("scan");
        settled
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn read_only_connections_find_any_path_and_create_no_file() {
        let root = tempfile::tempdir().expect("tempdir");
        // Characters an SQLite URI gives a meaning to, in the path.
        let dir = root.path().join("a b?c#d%20e&f=g");
        std::fs::create_dir(&dir).expect("mkdir");
        let path = dir.join("b.db");
        let count = |conn: &Connection| {
            conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
                .expect("count")
        };
        {
            let (buffer, _) = Buffer::open(&path, 0, None).expect("open");
            buffer
                .append(&[row(1_000, 1), row(2_000, 2)], BOUNDS, |_| Ok(()))
                .expect("append");
        }
        assert_eq!(names(&dir), ["b.db"], "closed: no -wal, no -shm");
        let immutable = open_connection(&path, Access::Immutable).expect("immutable");
        assert_eq!(count(&immutable), 2);
        drop(immutable);
        assert_eq!(names(&dir), ["b.db"]);

        // With a writer open and rows only in its -wal file, the read-only open reads them.
        let (writer, _) = Buffer::open(&path, 0, None).expect("open");
        writer.auto_checkpoints(false).expect("off");
        writer
            .append(&[row(3_000, 3)], BOUNDS, |_| Ok(()))
            .expect("append");
        assert_eq!(names(&dir), ["b.db", "b.db-shm", "b.db-wal"]);
        let reader = open_connection(&path, Access::ReadExisting).expect("read-only");
        assert_eq!(count(&reader), 3);
        assert!(
            reader
                .execute("DELETE FROM events", [])
                .is_err_and(|e| e.sqlite_error_code() == Some(ErrorCode::ReadOnly)),
            "it cannot write"
        );
        drop(reader);
        drop(writer);
        assert_eq!(names(&dir), ["b.db"]);
        assert_eq!(
            sqlite_uri(Path::new("//srv/x y.db"), "immutable=1"),
            "file:////srv/x%20y.db?immutable=1",
            "an absolute path starting with // is no host"
        );
    }

    #[test]
    fn settling_frees_exactly_the_delivered_rows_and_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (buffer, _) = Buffer::open(&dir.path().join("b.db"), 0, None).expect("open");
        let rows = [row(1_000, 1), row(2_000, 22), row(3_000, 333)];
        buffer.append(&rows, BOUNDS, |_| Ok(())).expect("append");
        let sent = packed(&buffer);
        buffer.settle(&sent, 0, 10).expect("settle");
        assert_eq!(buffer.totals().expect("totals"), (0, 0));

        // In flight: the oldest row expires and an older event is recorded between the others.
        buffer.append(&rows, BOUNDS, |_| Ok(())).expect("append");
        let sent = packed(&buffer);
        assert_eq!(buffer.expire(1_500).expect("expire").count, 1);
        let late = row(2_500, 4444);
        buffer
            .append(std::slice::from_ref(&late), BOUNDS, |_| Ok(()))
            .expect("append");
        buffer.settle(&sent, 0, 10).expect("settle");
        assert_eq!(
            order(&buffer),
            vec![late.body.clone()],
            "the unsent row stays"
        );
        assert_eq!(
            buffer.totals().expect("totals"),
            (1, late.body.len() as u64),
            "the bytes of the rows actually freed"
        );

        // Should a packed row go missing anyway, the totals are counted again.
        let first = row(500, 1);
        buffer
            .append(std::slice::from_ref(&first), BOUNDS, |_| Ok(()))
            .expect("append");
        let mut sent = packed(&buffer);
        sent.delivered.truncate(1);
        sent.delivered.push(i64::MAX);
        sent.delivered_bytes = first.body.len() as u64 + 10;
        buffer.settle(&sent, 0, 10).expect("settle");
        assert_eq!(
            buffer.totals().expect("totals"),
            (1, late.body.len() as u64)
        );
    }

    #[test]
    fn dead_letters_past_the_bound_are_counted_and_requeued_at_their_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (buffer, _) = Buffer::open(&dir.path().join("b.db"), 0, None).expect("open");
        let rows: Vec<NewRow> = (0..7)
            .map(|n| NewRow {
                time_ms: 1_000 + n as i64,
                insert_id: format!("id-{n}"),
                body: format!(
                    r#"{{"type":"track","payload":{{"name":"r","properties":{{"__timestamp":{}}}}}}}"#,
                    1_000 + n
                ),
            })
            .collect();
        buffer.append(&rows, BOUNDS, |_| Ok(())).expect("append");
        let mut refused = packed(&buffer);
        refused.refused = refused
            .delivered
            .drain(..)
            .map(|s| (s, "no".to_owned()))
            .collect();
        refused.delivered_bytes = 0;
        buffer.settle(&refused, 5, 5).expect("settle");
        assert_eq!(buffer.totals().expect("totals"), (0, 0));
        assert_eq!(buffer.counter(counter::DEAD_LETTERED).expect("counter"), 7);
        assert_eq!(
            buffer
                .counter(counter::DEAD_LETTERS_EVICTED)
                .expect("counter"),
            2,
            "7 refused, 5 kept"
        );
        assert_eq!(buffer.requeue_dead_letters().expect("requeue"), 5);
        assert!(buffer.dead_letters(10).expect("dead letters").is_empty());
        let bodies = order(&buffer);
        assert_eq!(bodies.len(), 5);
        assert!(
            bodies[0].contains("1002"),
            "the newest five, oldest first: {bodies:?}"
        );
        let bytes: u64 = rows[2..].iter().map(|r| r.body.len() as u64).sum();
        assert_eq!(buffer.totals().expect("totals"), (5, bytes));
    }

    #[test]
    fn rows_recorded_through_another_connection_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.db");
        let (drainer, _) = Buffer::open(&path, 0, None).expect("open");
        let (recorder, _) = Buffer::open(&path, 0, None).expect("open again");
        assert_eq!(drainer.totals().expect("totals"), (0, 0));
        let rows = [row(1_000, 1), row(2_000, 22)];
        recorder.append(&rows, BOUNDS, |_| Ok(())).expect("append");
        let bytes = (rows[0].body.len() + rows[1].body.len()) as u64;
        assert_eq!(drainer.totals().expect("totals"), (2, bytes));
        let sent = packed(&drainer);
        drainer.settle(&sent, 0, 10).expect("settle");
        assert_eq!(drainer.totals().expect("totals"), (0, 0));
        assert_eq!(recorder.totals().expect("totals"), (0, 0));
    }

    #[test]
    fn checkpoints_run_beside_the_writer_which_can_leave_them_to_a_drain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.db");
        let (buffer, _) = Buffer::open(&path, 0, None).expect("open");
        let auto = |b: &Buffer| {
            b.read(|c| Ok(c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get::<_, i64>(0))?))
                .expect("pragma")
        };
        assert_eq!(auto(&buffer), i64::from(AUTO_CHECKPOINT_PAGES));
        buffer.auto_checkpoints(false).expect("off");
        assert_eq!(auto(&buffer), 0);
        let rows: Vec<NewRow> = (0..500).map(|n| row(1_000 + n as i64, n)).collect();
        buffer.append(&rows, BOUNDS, |_| Ok(())).expect("append");
        let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
        let before = std::fs::metadata(&wal).expect("wal").len();
        assert!(before > 0);
        // Held by a settle or a `track`, the writer's lock does not stop a checkpoint.
        let writer = buffer.lock().expect("lock");
        std::thread::scope(|scope| {
            let (done, finished) = std::sync::mpsc::channel();
            let buffer = &buffer;
            scope.spawn(move || {
                let _ = done.send(buffer.checkpoint());
            });
            let result = finished.recv_timeout(std::time::Duration::from_secs(10));
            drop(writer);
            assert!(
                matches!(result, Ok(Ok(()))),
                "checkpointed while the writer was busy: {result:?}"
            );
        });
        buffer.auto_checkpoints(true).expect("on");
        assert_eq!(auto(&buffer), i64::from(AUTO_CHECKPOINT_PAGES));
        // Everything is in the database file now: a copy of it alone holds the rows.
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).expect("copy");
        let n: i64 = Connection::open(&copy)
            .expect("open copy")
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 500);
    }

    #[test]
    fn a_streaming_append_is_all_or_nothing_and_evicts_only_rows_buffered_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (buffer, _) = Buffer::open(&dir.path().join("b.db"), 0, None).expect("open");
        let ok = |r: NewRow| Ok::<_, Error>(r);
        buffer
            .append(
                &[row(5_000, 0), row(6_000, 1), row(7_000, 2)],
                BOUNDS,
                |_| Ok(()),
            )
            .expect("append");
        let before = order(&buffer);
        // A failure after many rows (past any chunk) leaves every row and counter as it was.
        let failing = (0..5_000)
            .map(|n| ok(row(1_000 + n as i64, 10 + n)))
            .chain([Err(Error::Storage("the source failed".to_owned()))]);
        let small = Bounds {
            max_rows: 5_001,
            ..BOUNDS
        };
        let err = buffer
            .append_stream(failing, small, |_| Ok(()))
            .expect_err("fails");
        assert_eq!(err, Error::Storage("the source failed".to_owned()));
        assert_eq!(order(&buffer), before);
        assert_eq!(buffer.totals().expect("totals"), (3, 3 * 7));
        assert_eq!(buffer.counter(counter::EVICTED).expect("counter"), 0);
        // Room is made by evicting the rows buffered before, oldest first, never the call's
        // own rows, even those older than every buffered row.
        let bounds = Bounds {
            max_rows: 4,
            ..BOUNDS
        };
        let rows = [row(1_000, 3), row(6_500, 4), row(2_000, 5)];
        let appended = buffer
            .append_stream(rows.into_iter().map(ok), bounds, |_| Ok(()))
            .expect("append");
        assert_eq!(
            appended,
            Appended {
                rows: 3,
                evicted: 2
            }
        );
        let expected: Vec<String> = [3, 5, 4, 2]
            .iter()
            .map(|n| format!(r#"{{"n":{n}}}"#))
            .collect();
        assert_eq!(order(&buffer), expected);
        assert_eq!(buffer.totals().expect("totals"), (4, 4 * 7));
        assert_eq!(buffer.counter(counter::EVICTED).expect("counter"), 2);
        // More rows than the whole buffer holds: refused as a whole at the row past the bound.
        let many = (0..5).map(|n| ok(row(9_000, 20 + n)));
        let err = buffer
            .append_stream(many, bounds, |_| Ok(()))
            .expect_err("too many");
        assert!(
            matches!(&err, Error::InvalidEvent(m) if m.starts_with("5 events at once")),
            "{err}"
        );
        assert_eq!(order(&buffer), expected);
        assert_eq!(buffer.counter(counter::EVICTED).expect("counter"), 2);
    }

    #[test]
    fn rows_come_out_by_event_time_then_recording_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (buffer, _) = Buffer::open(&dir.path().join("b.db"), 0, None).expect("open");
        let times = [5_000, 1_000, 5_000, 3_000, 1_000, 5_000];
        let rows: Vec<NewRow> = times.iter().enumerate().map(|(n, t)| row(*t, n)).collect();
        buffer
            .append(&rows[..3], BOUNDS, |_| Ok(()))
            .expect("append");
        buffer
            .append(&rows[3..], BOUNDS, |_| Ok(()))
            .expect("append");
        let expected: Vec<String> = [1, 4, 3, 0, 2, 5]
            .iter()
            .map(|n| format!(r#"{{"n":{n}}}"#))
            .collect();
        assert_eq!(order(&buffer), expected);
        assert_eq!(buffer.expire(3_000).expect("expire").count, 2);
        assert_eq!(order(&buffer), expected[2..]);
        assert_eq!(
            buffer.time_span().expect("span"),
            (Some(3_000), Some(5_000))
        );
    }

    #[test]
    fn a_millisecond_with_more_events_than_its_slot_keeps_every_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (buffer, _) = Buffer::open(&dir.path().join("b.db"), 0, None).expect("open");
        let slot = 1usize << schema::SEQ_SHIFT;
        let rows: Vec<NewRow> = (0..slot + 10).map(|n| row(7_000, n)).collect();
        buffer.append(&rows, BOUNDS, |_| Ok(())).expect("append");
        buffer
            .append(&[row(7_001, slot + 10)], BOUNDS, |_| Ok(()))
            .expect("the next millisecond still has room");
        let bodies = order(&buffer);
        assert_eq!(bodies.len(), slot + 11);
        let unique: std::collections::HashSet<&String> = bodies.iter().collect();
        assert_eq!(unique.len(), slot + 11);
        assert_eq!(bodies[0], r#"{"n":0}"#);
        assert_eq!(bodies[slot - 1], format!(r#"{{"n":{}}}"#, slot - 1));
    }

    #[test]
    fn a_version_1_buffer_is_upgraded_in_order_without_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).expect("create");
            conn.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL,
                     insert_id TEXT NOT NULL, body TEXT NOT NULL, bytes INTEGER NOT NULL);
                 CREATE INDEX events_by_time ON events (time_ms, seq);
                 CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, failed_at INTEGER NOT NULL,
                     insert_id TEXT NOT NULL, body TEXT NOT NULL, error TEXT NOT NULL);
                 CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
                 CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO events (time_ms, insert_id, body, bytes) VALUES
                     (9000, 'a', '{\"n\":0}', 7), (2000, 'b', '{\"n\":1}', 7),
                     (9000, 'c', '{\"n\":2}', 7);
                 INSERT INTO state VALUES ('device_id', 'dev-1');
                 PRAGMA user_version = 1;",
            )
            .expect("version 1 buffer");
        }
        let (buffer, recovered) = Buffer::open(&path, 0, None).expect("open and upgrade");
        assert!(recovered.is_none());
        assert_eq!(order(&buffer), [r#"{"n":1}"#, r#"{"n":0}"#, r#"{"n":2}"#]);
        assert_eq!(buffer.totals().expect("totals"), (3, 21));
        assert_eq!(
            buffer.state("device_id").expect("state").as_deref(),
            Some("dev-1")
        );
        let version: i32 = buffer
            .read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .expect("version");
        assert_eq!(version, schema::VERSION);
    }
}
