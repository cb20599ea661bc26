//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! All writes go through one writer thread. It takes every ingest job that is waiting, applies
//! them in a single immediate transaction and commits once (group commit). A syncer thread then
//! fsyncs the WAL and only then answers the requests of that commit, so each `202` follows the
//! durable write of its rows, while the writer already applies the next group. A checkpointer
//! thread copies the WAL back into the database off the writer's path. Reads use a small pool
//! of connections on blocking threads and never wait for the writer.

mod read;
pub mod schema;
mod write;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{
    ClientMode, EventQuery, IngestJob, PreviousSecret, ProjectRecord, RowOutcome, SecretHash,
    SessionQuery, Store, StoreError, StoreFuture, StoredEvent, StoredProfile, StoredSession,
};
use crate::clock::Clock;
use crate::metrics::Histogram;

/// Most rows one group commit takes before committing, to bound a transaction's latency.
const MAX_GROUP_ROWS: usize = 16_000;
/// Read connections kept open.
const READ_POOL: usize = 4;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum WriteJob {
    Ingest(IngestJob, Reply<Vec<RowOutcome>>),
    Call(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// What the embedded store needs besides its file.
#[derive(Clone)]
pub struct SqliteOptions {
    /// Source of `__syncedAt` and other commit times.
    pub clock: Arc<dyn Clock>,
    /// Where to record the duration of each group commit.
    pub commit_latency: Option<Arc<Histogram>>,
}

/// The embedded SQLite store. Cheap to clone; the writer stops when the last clone is dropped,
/// after finishing the jobs it was given.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_checkpoints: Mutex<Option<mpsc::Sender<()>>>,
    readers: Mutex<Vec<Connection>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.to_string())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    /// Stops taking jobs, lets the writer finish those it was given, then the checkpointer does
    /// a last pass; returns when every thread has ended. Later calls find nothing to stop.
    fn stop(&self) {
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
        if let Ok(mut stop) = self.stop_checkpoints.lock() {
            stop.take();
        }
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// The WAL size past which the writer makes the WAL start over. SQLite starts the WAL over only
/// when a checkpoint has copied all of it, which under a steady stream of writes the checkpointer
/// never does (the writer is always a commit ahead), so the WAL would grow for as long as the
/// stream lasts. Past this size the writer copies, between two groups, what the checkpointer has
/// not yet copied, and the next group starts the WAL over.
const WAL_CATCH_UP_BYTES: u64 = 256 << 20;

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Checkpoints on its own connection so that the writer never pays for copying the WAL back
/// into the database inside a commit.
fn run_checkpointer(conn: Connection, stop: mpsc::Receiver<()>) {
    loop {
        let last = !matches!(
            stop.recv_timeout(CHECKPOINT_INTERVAL),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let mode = if last { "TRUNCATE" } else { "PASSIVE" };
        if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed");
        }
        if last {
            return;
        }
    }
}

fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA page_size = 16384;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA cache_size = -32000;
         PRAGMA mmap_size = 268435456;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// Writes a consistent copy of the database at `path` to `dest` (a new file) with SQLite's
/// `VACUUM INTO`, while servers keep writing: it reads one snapshot, and in WAL mode a reader
/// never blocks the writer. The copy is a complete database, compacted, that a server opens as
/// its `backfill.db`.
pub fn backup(path: &Path, dest: &Path) -> Result<(), StoreError> {
    if dest.exists() {
        return Err(StoreError::Unavailable(format!(
            "{} already exists; a backup never overwrites a file",
            dest.display()
        )));
    }
    if !path.exists() {
        return Err(StoreError::Unavailable(format!(
            "no database at {}; is --data-dir right?",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let dest = dest
        .to_str()
        .ok_or_else(|| StoreError::Unavailable(format!("{} is not valid UTF-8", dest.display())))?;
    conn.execute("VACUUM INTO ?1", params![dest])
        .map_err(|e| StoreError::Unavailable(format!("backup to {dest} failed: {e}")))?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating or upgrading) the database at `path` and starts its writer thread.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_with(path, options, WAL_CATCH_UP_BYTES)
    }

    fn open_with(
        path: &Path,
        options: SqliteOptions,
        wal_catch_up_bytes: u64,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = open_connection(path, OpenFlags::default())
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A WAL that starts over is cut back to a quarter of the catch-up size.
        conn.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(wal_catch_up_bytes / 4).unwrap_or(i64::MAX),
        )?;
        // Durability comes from the syncer's fsync of the WAL (see `run_syncer`), so SQLite's
        // own per-commit sync is not needed; NORMAL keeps the database safe from corruption.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let wal_path = PathBuf::from(format!("{}-wal", path.display()));
        let wal = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&wal_path)
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot open {}: {e}", wal_path.display()))
                })?,
        );
        let checkpoints = open_connection(path, OpenFlags::default())
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let spawn_error =
            |e: std::io::Error| StoreError::Unavailable(format!("cannot start a thread: {e}"));
        let (stop_checkpoints, stop) = mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("backfill-checkpoint".to_owned())
            .spawn(move || run_checkpointer(checkpoints, stop))
            .map_err(spawn_error)?;
        let (to_syncer, committed) = mpsc::channel();
        let wal_for_syncer = Arc::clone(&wal);
        let syncer = std::thread::Builder::new()
            .name("backfill-fsync".to_owned())
            .spawn(move || run_syncer(wal_for_syncer, committed))
            .map_err(spawn_error)?;
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("backfill-writer".to_owned())
            .spawn(move || run_writer(conn, rx, options, wal, to_syncer, wal_catch_up_bytes))
            .map_err(spawn_error)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(Some(tx)),
                threads: Mutex::new(vec![writer, syncer, checkpointer]),
                stop_checkpoints: Mutex::new(Some(stop_checkpoints)),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    fn send(&self, job: WriteJob) -> Result<(), StoreError> {
        let writer = self.inner.writer.lock().map_err(|_| closed())?;
        writer
            .as_ref()
            .ok_or_else(closed)?
            .send(job)
            .map_err(|_| closed())
    }

    /// Runs `f` on the writer thread, in order with ingest jobs.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<T> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(WriteJob::Call(Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(StoreError::from));
        })));
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| closed())?
        })
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<T> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let pooled = inner.readers.lock().ok().and_then(|mut pool| pool.pop());
                let conn = match pooled {
                    Some(conn) => conn,
                    None => open_connection(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                };
                let result = f(&conn).map_err(StoreError::from);
                if let Ok(mut pool) = inner.readers.lock()
                    && pool.len() < READ_POOL
                {
                    pool.push(conn);
                }
                result
            })
            .await
            .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
        })
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is shut down".to_owned())
}

/// Outcomes committed but not yet synced, waiting for the syncer's next fsync, with the jobs
/// they came from: the syncer frees those, which keeps that work off the writer.
type Committed = Vec<(Reply<Vec<RowOutcome>>, Vec<RowOutcome>, IngestJob)>;

fn run_writer(
    mut conn: Connection,
    rx: mpsc::Receiver<WriteJob>,
    options: SqliteOptions,
    wal: Arc<File>,
    syncer: mpsc::Sender<Committed>,
    wal_catch_up_bytes: u64,
) {
    let mut group: Vec<(IngestJob, Reply<Vec<RowOutcome>>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut rows = 0;
        while let Some(job) = next.take() {
            match job {
                WriteJob::Ingest(job, reply) => {
                    rows += job.rows.len();
                    group.push((job, reply));
                }
                WriteJob::Call(f) => {
                    commit_group(&mut conn, &mut group, &options, &syncer);
                    f(&mut conn);
                    // Rare writes (salts, projects) are synced before their caller hears back.
                    if let Err(e) = wal.sync_data() {
                        tracing::error!(error = %e, "fsync of the WAL failed");
                    }
                }
            }
            if rows < MAX_GROUP_ROWS {
                next = rx.try_recv().ok();
            }
        }
        commit_group(&mut conn, &mut group, &options, &syncer);
        if wal.metadata().is_ok_and(|m| m.len() > wal_catch_up_bytes) {
            catch_up_checkpoint(&conn);
        }
    }
}

/// Copies the rest of the WAL into the database from the writer's own connection, so that no
/// commit lands meanwhile and the next one starts the WAL over. When the checkpointer is busy or
/// a reader still needs old frames, it copies what it can and the writer tries again after its
/// next group.
fn catch_up_checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "checkpoint failed");
    }
}

/// Makes commits durable: one `fsync` of the WAL covers every commit written before it, so
/// while it runs the writer goes on applying the next group, and the commits that queue up
/// meanwhile share the next `fsync`. Replies are sent only after the `fsync` returns.
fn run_syncer(wal: Arc<File>, rx: mpsc::Receiver<Committed>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = first;
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
        }
        match wal.sync_data() {
            Ok(()) => {
                for (reply, outcome, _) in waiting {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "fsync of the WAL failed");
                for (reply, _, _) in waiting {
                    let _ = reply.send(Err(StoreError::Unavailable(format!("fsync failed: {e}"))));
                }
            }
        }
    }
}

/// Writes every job of `group` with `apply` in one transaction; on failure the transaction is
/// rolled back (when it is dropped) and nothing of the group stays.
fn write_group(
    conn: &mut Connection,
    group: &[(IngestJob, Reply<Vec<RowOutcome>>)],
    synced_at: i64,
    apply: fn(&Connection, &IngestJob, i64) -> rusqlite::Result<Vec<RowOutcome>>,
) -> rusqlite::Result<Vec<Vec<RowOutcome>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let outcomes = group
        .iter()
        .map(|(job, _)| apply(&tx, job, synced_at))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(outcomes)
}

fn commit_group(
    conn: &mut Connection,
    group: &mut Vec<(IngestJob, Reply<Vec<RowOutcome>>)>,
    options: &SqliteOptions,
    syncer: &mpsc::Sender<Committed>,
) {
    if group.is_empty() {
        return;
    }
    let started = Instant::now();
    let synced_at = options.clock.now_ms();
    // The jobs are written together first: a savepoint per job would copy every page it touches
    // into the statement journal, for a failure that almost never comes.
    let result = write_group(conn, group, synced_at, write::apply_job).or_else(|e| {
        tracing::warn!(error = %e, jobs = group.len(), "group failed as a whole; writing it job by job");
        write_group(conn, group, synced_at, write::apply_job_apart)
    });
    if let Some(h) = &options.commit_latency {
        h.observe(started.elapsed().as_secs_f64());
    }
    match result {
        Ok(outcomes) => {
            let committed: Committed = group
                .drain(..)
                .zip(outcomes)
                .map(|((job, reply), outcome)| (reply, outcome, job))
                .collect();
            if let Err(mpsc::SendError(committed)) = syncer.send(committed) {
                for (reply, _, _) in committed {
                    let _ = reply.send(Err(closed()));
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = group.len(), "group commit failed");
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
            }
        }
    }
}

/// Reads a `projects` row selected in the column order of [`Store::projects`].
fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProjectRecord> {
    let mode: String = r.get(3)?;
    let mode = mode.parse::<ClientMode>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
    })?;
    let previous_hash: Option<String> = r.get(7)?;
    let previous_salt: Option<String> = r.get(8)?;
    let previous_until: Option<i64> = r.get(9)?;
    let previous = match (previous_hash, previous_salt, previous_until) {
        (Some(hash), Some(salt), Some(valid_until_ms)) => Some(PreviousSecret {
            secret: SecretHash { hash, salt },
            valid_until_ms,
        }),
        _ => None,
    };
    Ok(ProjectRecord {
        key: r.get(0)?,
        client_id: r.get(1)?,
        name: r.get(2)?,
        mode,
        owner: r.get(4)?,
        secret: SecretHash {
            hash: r.get(5)?,
            salt: r.get(6)?,
        },
        previous,
        revoked_at: r.get(10)?,
        created_at: r.get(11)?,
    })
}

impl Store for SqliteStore {
    fn ingest(&self, job: IngestJob) -> StoreFuture<Vec<RowOutcome>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(WriteJob::Ingest(job, reply));
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| closed())?
        })
    }

    fn daily_salt(&self, day: String) -> StoreFuture<String> {
        self.call(move |conn| {
            let fresh = uuid::Uuid::new_v4().simple().to_string();
            conn.execute(
                "INSERT OR IGNORE INTO salts (day, salt) VALUES (?1, ?2)",
                params![day, fresh],
            )?;
            conn.query_row("SELECT salt FROM salts WHERE day = ?1", params![day], |r| {
                r.get(0)
            })
        })
    }

    fn projects(&self) -> StoreFuture<Vec<ProjectRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, client_id, name, mode, owner, secret_hash, secret_salt,
                        previous_hash, previous_salt, previous_until, revoked_at, created_at
                 FROM projects ORDER BY key",
            )?;
            let rows = stmt.query_map([], project_row)?;
            rows.collect()
        })
    }

    fn save_project(&self, record: ProjectRecord) -> StoreFuture<i64> {
        let now = uuid::Timestamp::now(uuid::NoContext).to_unix();
        let now_ms = i64::try_from(now.0 * 1000 + u64::from(now.1 / 1_000_000)).unwrap_or(0);
        self.call(move |conn| {
            let previous = record.previous.as_ref();
            conn.execute(
                "INSERT INTO projects (client_id, name, mode, owner, secret_hash, secret_salt,
                     previous_hash, previous_salt, previous_until, revoked_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (client_id) DO UPDATE SET name = excluded.name,
                    mode = excluded.mode, owner = excluded.owner,
                    secret_hash = excluded.secret_hash, secret_salt = excluded.secret_salt,
                    previous_hash = excluded.previous_hash,
                    previous_salt = excluded.previous_salt,
                    previous_until = excluded.previous_until, revoked_at = excluded.revoked_at",
                params![
                    record.client_id,
                    record.name,
                    record.mode.as_str(),
                    record.owner,
                    record.secret.hash,
                    record.secret.salt,
                    previous.map(|p| &p.secret.hash),
                    previous.map(|p| &p.secret.salt),
                    previous.map(|p| p.valid_until_ms),
                    record.revoked_at,
                    now_ms,
                ],
            )?;
            conn.query_row(
                "SELECT key FROM projects WHERE client_id = ?1",
                params![record.client_id],
                |r| r.get(0),
            )
        })
    }

    fn events(&self, query: EventQuery) -> StoreFuture<Vec<StoredEvent>> {
        self.read(move |conn| read::events(conn, &query))
    }

    fn sessions(&self, query: SessionQuery) -> StoreFuture<Vec<StoredSession>> {
        self.read(move |conn| read::sessions(conn, &query))
    }

    fn profile(&self, project: i64, profile_id: String) -> StoreFuture<Option<StoredProfile>> {
        self.read(move |conn| read::profile(conn, project, &profile_id))
    }

    fn health(&self) -> StoreFuture<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn close(&self) -> StoreFuture<()> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.stop())
                .await
                .map_err(|e| StoreError::Internal(format!("closing the store failed: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewEvent, PreparedRow, RowAction};
    use backfill_protocol::clock::SystemClock;

    fn job(first: usize, rows: usize) -> IngestJob {
        let now = SystemClock.now_ms();
        IngestJob {
            project: 1,
            sdk_name: None,
            sdk_version: None,
            rows: (first..first + rows)
                .map(|i| PreparedRow {
                    insert_id: Some(format!("key-{i:08}")),
                    time_ms: now,
                    action: RowAction::Event(NewEvent {
                        id: crate::ingest::new_event_id(now),
                        name: "reading".to_owned(),
                        device_id: "gw-1".to_owned(),
                        session_id: "s-1".to_owned(),
                        profile_id: None,
                        properties: format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(200)),
                        groups: None,
                    }),
                })
                .collect(),
        }
    }

    fn options() -> SqliteOptions {
        SqliteOptions {
            clock: Arc::new(SystemClock),
            commit_latency: None,
        }
    }

    /// A steady stream of writes never lets the checkpointer copy the whole WAL, so without the
    /// writer's catch-up the WAL holds the whole stream (38 MB here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_a_steady_stream_of_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backfill.db");
        let bound = 1 << 20;
        let store = SqliteStore::open_with(&path, options(), bound).expect("open");
        let (jobs, rows) = (200, 500);
        let pending: Vec<_> = (0..jobs)
            .map(|j| store.ingest(job(j * rows, rows)))
            .collect();
        for answer in pending {
            let outcomes = answer.await.expect("stored");
            assert!(outcomes.iter().all(|o| matches!(o, RowOutcome::Stored)));
        }
        let wal = std::fs::metadata(format!("{}-wal", path.display()))
            .expect("wal")
            .len();
        // The bound plus the groups committed before a catch-up finds the checkpointer idle.
        assert!(wal < 12 << 20, "the WAL grew to {wal} bytes");
        let stored: i64 = store
            .read(|conn| {
                conn.query_row(
                    "SELECT count(*) FROM events WHERE name = 'reading'",
                    [],
                    |r| r.get(0),
                )
            })
            .await
            .expect("count");
        assert_eq!(stored, i64::try_from(jobs * rows).expect("fits"));
    }

    /// A key already taken, by an earlier request or an earlier row of the same one, makes
    /// exactly its row a duplicate, and a refused duplicate leaves its own key unclaimed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_duplicate_key_is_found_within_and_across_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("backfill.db"), options()).expect("open");
        let stored = |outcomes: &[RowOutcome]| {
            outcomes
                .iter()
                .map(|o| matches!(o, RowOutcome::Stored))
                .collect::<Vec<_>>()
        };
        // Rows 0..300, with row 250 repeating row 7's key and row 9 repeating row 8's.
        let mut first = job(0, 300);
        first.rows[250].insert_id = first.rows[7].insert_id.clone();
        first.rows[9].insert_id = first.rows[8].insert_id.clone();
        let outcomes = store.ingest(first).await.expect("first");
        let expected: Vec<bool> = (0..300).map(|i| i != 250 && i != 9).collect();
        assert_eq!(stored(&outcomes), expected);
        // A resend of rows 100..400: the first 200 are there already (row 250's key was taken
        // by row 7, row 250's own never), the last 100 are new.
        let outcomes = store.ingest(job(100, 300)).await.expect("resend");
        let expected: Vec<bool> = (100..400).map(|i| i == 250 || i >= 300).collect();
        assert_eq!(stored(&outcomes), expected);
        let (events, keys): (i64, i64) = store
            .read(|conn| {
                conn.query_row(
                    "SELECT (SELECT count(*) FROM events WHERE name = 'reading'),
                            (SELECT count(*) FROM insert_ids)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await
            .expect("counts");
        assert_eq!((events, keys), (399, 399));
    }

    /// Jobs are written together without savepoints; when the database refuses one row, the
    /// group is written again job by job and that row alone fails, leaving no trace.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_the_database_refuses_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backfill.db");
        let store = SqliteStore::open(&path, options()).expect("open");
        Connection::open(&path)
            .expect("side connection")
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.name = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
            )
            .expect("trigger");
        let (jobs, rows) = (6, 10);
        let pending: Vec<_> = (0..jobs)
            .map(|j| {
                let mut job = job(j * rows, rows);
                if j == 2
                    && let RowAction::Event(event) = &mut job.rows[3].action
                {
                    event.name = "poison".to_owned();
                }
                store.ingest(job)
            })
            .collect();
        for (j, answer) in pending.into_iter().enumerate() {
            let outcomes = answer.await.expect("the group is written");
            for (i, outcome) in outcomes.iter().enumerate() {
                match outcome {
                    RowOutcome::Failed(error) if (j, i) == (2, 3) => {
                        assert!(error.contains("poisoned row"), "{error}");
                    }
                    RowOutcome::Stored if (j, i) != (2, 3) => {}
                    other => panic!("job {j} row {i}: {other:?}"),
                }
            }
        }
        let (events, keys, counted): (i64, i64, i64) = store
            .read(|conn| {
                conn.query_row(
                    "SELECT (SELECT count(*) FROM events WHERE name = 'reading'),
                            (SELECT count(*) FROM insert_ids),
                            (SELECT event_count FROM sessions WHERE id = 's-1')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })
            .await
            .expect("counts");
        let expected = i64::try_from(jobs * rows - 1).expect("fits");
        assert_eq!((events, keys, counted), (expected, expected, expected));
    }
}
