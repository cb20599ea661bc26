//! The PostgreSQL store, for several stateless server nodes sharing one database.
//!
//! Nothing is kept in one node that another would need: insert ids, sessions, profiles, the
//! daily device salt and the projects are all in the database, and every rule that spans
//! requests holds by its constraints and row locks.
//!
//! Writes are committed in groups, as in the embedded store: a few writer tasks each take every
//! request that is waiting (up to [`MAX_GROUP_ROWS`] rows) and write them in one transaction of
//! one statement per table ([`write`]); a serialization failure or deadlock runs the group again,
//! and its requests are answered only after `COMMIT` returns (with PostgreSQL's default
//! `synchronous_commit = on`, after the commit record is flushed). When the database refuses a
//! group's data, each request is written again in a transaction of its own, and a request it
//! still refuses row by row, so that only the refused row fails.
//!
//! Connections come from a pool of a configured size; a connection that cannot be had within
//! the acquire timeout fails the request with [`StoreError::Unavailable`] (`503`), and the pool
//! reconnects by itself when the database is back.

mod error;
mod read;
pub mod schema;
mod write;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use self::error::{Failure, classify, describe, from_pg, from_pool, violates};
use self::write::{ClaimForm, KEY_INDEX, Part};
use super::{
    ClientMode, EventQuery, IngestJob, PreviousSecret, ProjectRecord, RowOutcome, SecretHash,
    SessionQuery, Store, StoreError, StoreFuture, StoredEvent, StoredProfile, StoredSession,
};
use crate::clock::Clock;
use crate::metrics::Histogram;

/// How many times a transaction is run again after a serialization failure or deadlock.
const MAX_RETRIES: u32 = 8;

/// Most rows one group takes before it is written, to bound a transaction's latency.
pub const MAX_GROUP_ROWS: usize = 16_000;

/// Groups one node writes at once (never more than its pool size): while one group waits for
/// its `COMMIT`, the next is already being written.
const WRITERS: usize = 2;

type Reply = oneshot::Sender<Result<Vec<RowOutcome>, StoreError>>;

/// A request waiting for its group.
struct Pending {
    job: IngestJob,
    reply: Reply,
}

/// What the PostgreSQL store needs to connect.
#[derive(Clone)]
pub struct PostgresOptions {
    /// A libpq connection string: `postgres://user:password@host:port/database` or
    /// `host=... user=... dbname=...`. TLS is not supported: reach the database over a trusted
    /// network or a local socket.
    pub url: String,
    /// Most connections this node opens.
    pub pool_size: usize,
    /// Longest wait for a connection (from the pool or a new one) before a request fails with
    /// `503`.
    pub acquire_timeout: Duration,
    /// Source of `__syncedAt` and other commit times.
    pub clock: Arc<dyn Clock>,
    /// Where to record the duration of each transaction.
    pub commit_latency: Option<Arc<Histogram>>,
}

/// The PostgreSQL store. Cheap to clone; its writers stop when the last clone is dropped, after
/// writing the requests they were given.
#[derive(Clone)]
pub struct PostgresStore {
    core: Core,
    writers: Arc<Writers>,
}

/// What the writers share with the store's other methods.
#[derive(Clone)]
struct Core {
    pool: Pool,
    clock: Arc<dyn Clock>,
    commit_latency: Option<Arc<Histogram>>,
}

/// The queue of the writer tasks, and the tasks.
struct Writers {
    queue: Mutex<Option<mpsc::UnboundedSender<Pending>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Why writing rows failed.
enum WriteError {
    /// The database refused the rows' data; another split may succeed.
    Refused(String),
    /// The store as a whole failed.
    Store(StoreError),
}

impl PostgresStore {
    /// Connects to the database and applies the missing migrations (see [`schema`]). Fails with
    /// [`StoreError::Unavailable`] when the URL is invalid or the database cannot be reached.
    pub async fn connect(options: PostgresOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("invalid database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.acquire_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("backfill-server");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.acquire_timeout))
            .recycle_timeout(Some(options.acquire_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot build the pool: {e}")))?;
        let mut client = pool.get().await.map_err(from_pool)?;
        schema::migrate(&mut client).await?;
        drop(client);
        let core = Core {
            pool,
            clock: options.clock,
            commit_latency: options.commit_latency,
        };
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(tokio::sync::Mutex::new(waiting));
        let tasks = (0..WRITERS.min(options.pool_size.max(1)))
            .map(|_| tokio::spawn(core.clone().run_writer(Arc::clone(&waiting))))
            .collect();
        Ok(Self {
            core,
            writers: Arc::new(Writers {
                queue: Mutex::new(Some(queue)),
                tasks: Mutex::new(tasks),
            }),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.core.client().await
    }
}

impl Core {
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(from_pool)
    }

    /// Takes every request waiting (up to [`MAX_GROUP_ROWS`] rows) and writes them as one
    /// group, until the queue is closed and empty. A request that shares an insert id with an
    /// earlier one of the group waits for the next group, which this writer starts with.
    async fn run_writer(self, waiting: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>>) {
        let mut carried: Vec<Pending> = Vec::new();
        loop {
            let mut taken = std::mem::take(&mut carried);
            if taken.is_empty() {
                let mut queue = waiting.lock().await;
                match queue.recv().await {
                    Some(first) => taken.push(first),
                    None => return,
                }
                take_waiting(&mut queue, &mut taken);
            } else if let Ok(mut queue) = waiting.try_lock() {
                // Another writer waiting for the next request holds the queue: the carried
                // requests go without what is queued.
                take_waiting(&mut queue, &mut taken);
            }
            let (group, later) = split_shared_keys(taken);
            carried = later;
            self.commit_group(group).await;
        }
    }

    /// Writes `group` and answers its requests.
    async fn commit_group(&self, group: Vec<Pending>) {
        let parts: Vec<Part<'_>> = group
            .iter()
            .map(|p| Part {
                job: &p.job,
                rows: p.job.rows.iter().collect(),
            })
            .collect();
        let answers: Vec<Result<Vec<RowOutcome>, StoreError>> = match self.write(&parts).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(WriteError::Store(e)) => parts.iter().map(|_| Err(e.clone())).collect(),
            Err(WriteError::Refused(e)) => {
                if parts.len() > 1 {
                    tracing::warn!(error = %e, requests = parts.len(), "group refused as a whole; writing it request by request");
                }
                let mut answers = Vec::with_capacity(parts.len());
                for part in &parts {
                    answers.push(self.write_alone(part).await);
                }
                answers
            }
        };
        drop(parts);
        for (pending, answer) in group.into_iter().zip(answers) {
            let _ = pending.reply.send(answer);
        }
    }

    /// Writes one request in a transaction of its own; when the database refuses it, row by
    /// row, so that only the refused row fails.
    async fn write_alone(&self, part: &Part<'_>) -> Result<Vec<RowOutcome>, StoreError> {
        match self.write(std::slice::from_ref(part)).await {
            Ok(mut outcomes) => Ok(outcomes.pop().unwrap_or_default()),
            Err(WriteError::Store(e)) => Err(e),
            Err(WriteError::Refused(e)) => {
                // One row the database refuses must not cost the others: each is written on
                // its own, and only the refused one fails.
                tracing::warn!(error = %e, rows = part.rows.len(), "request refused as a whole; writing it row by row");
                let mut outcomes = Vec::with_capacity(part.rows.len());
                for &row in &part.rows {
                    let one = Part {
                        job: part.job,
                        rows: vec![row],
                    };
                    let outcome = match self.write(std::slice::from_ref(&one)).await {
                        Ok(mut one) => one
                            .pop()
                            .and_then(|mut o| o.pop())
                            .unwrap_or(RowOutcome::Stored),
                        Err(WriteError::Refused(e)) => {
                            RowOutcome::Failed(format!("store failed on this row: {e}"))
                        }
                        Err(WriteError::Store(e)) => return Err(e),
                    };
                    outcomes.push(outcome);
                }
                Ok(outcomes)
            }
        }
    }

    /// Writes `parts` in one transaction, run again on a serialization failure or deadlock.
    async fn write(&self, parts: &[Part<'_>]) -> Result<Vec<Vec<RowOutcome>>, WriteError> {
        let mut attempt = 0;
        let mut form = ClaimForm::Fresh;
        loop {
            let mut client = self.client().await.map_err(WriteError::Store)?;
            let started = Instant::now();
            let result = async {
                let tx = client.transaction().await?;
                let synced_at = self.clock.now_ms();
                let outcomes = write::write_group(&tx, parts, synced_at, form).await?;
                tx.commit().await?;
                Ok::<_, tokio_postgres::Error>(outcomes)
            }
            .await;
            if let Some(h) = &self.commit_latency {
                h.observe(started.elapsed().as_secs_f64());
            }
            let e = match result {
                Ok(outcomes) => return Ok(outcomes),
                Err(e) => e,
            };
            if form == ClaimForm::Fresh && violates(&e, KEY_INDEX) {
                // A key of the group is stored already: skip it this time.
                form = ClaimForm::Deduplicating;
                continue;
            }
            match classify(&e) {
                Failure::Retry if attempt < MAX_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "transaction conflicted; running it again");
                    // Overlapping writers spread out before they meet again.
                    let jitter = fastrand::u64(0..=(5 << attempt.min(6)));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Failure::Refused => return Err(WriteError::Refused(describe(&e))),
                _ => return Err(WriteError::Store(from_pg(e))),
            }
        }
    }
}

/// Moves requests from `queue` into `taken` while it holds fewer than [`MAX_GROUP_ROWS`] rows.
fn take_waiting(queue: &mut mpsc::UnboundedReceiver<Pending>, taken: &mut Vec<Pending>) {
    let mut rows: usize = taken.iter().map(|p| p.job.rows.len()).sum();
    while rows < MAX_GROUP_ROWS {
        match queue.try_recv() {
            Ok(next) => {
                rows += next.job.rows.len();
                taken.push(next);
            }
            Err(_) => break,
        }
    }
}

/// Splits `taken` into a group whose requests share no insert id, in order, and the requests
/// that would share one with an earlier request of it.
fn split_shared_keys(taken: Vec<Pending>) -> (Vec<Pending>, Vec<Pending>) {
    let fits: Vec<bool> = {
        let mut keys: HashSet<(i64, &str)> = HashSet::new();
        taken
            .iter()
            .map(|pending| {
                let project = pending.job.project;
                let own: Vec<(i64, &str)> = pending
                    .job
                    .rows
                    .iter()
                    .filter_map(|r| r.insert_id.as_deref().map(|k| (project, k)))
                    .collect();
                let fits = !own.iter().any(|k| keys.contains(k));
                if fits {
                    keys.extend(own);
                }
                fits
            })
            .collect()
    };
    let (mut group, mut later) = (Vec::new(), Vec::new());
    for (pending, fits) in taken.into_iter().zip(fits) {
        if fits {
            group.push(pending);
        } else {
            later.push(pending);
        }
    }
    (group, later)
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is shut down".to_owned())
}

/// A client from its row of `projects`.
fn project_row(r: &tokio_postgres::Row) -> Result<ProjectRecord, StoreError> {
    let field = |e: tokio_postgres::Error| from_pg(e);
    let mode: String = r.try_get(3).map_err(field)?;
    let mode = mode
        .parse::<ClientMode>()
        .map_err(|e| StoreError::Internal(format!("stored client mode: {e}")))?;
    let previous_hash: Option<String> = r.try_get(7).map_err(field)?;
    let previous_salt: Option<String> = r.try_get(8).map_err(field)?;
    let previous_until: Option<i64> = r.try_get(9).map_err(field)?;
    let previous = match (previous_hash, previous_salt, previous_until) {
        (Some(hash), Some(salt), Some(valid_until_ms)) => Some(PreviousSecret {
            secret: SecretHash { hash, salt },
            valid_until_ms,
        }),
        _ => None,
    };
    Ok(ProjectRecord {
        key: r.try_get(0).map_err(field)?,
        client_id: r.try_get(1).map_err(field)?,
        name: r.try_get(2).map_err(field)?,
        mode,
        owner: r.try_get(4).map_err(field)?,
        secret: SecretHash {
            hash: r.try_get(5).map_err(field)?,
            salt: r.try_get(6).map_err(field)?,
        },
        previous,
        revoked_at: r.try_get(10).map_err(field)?,
        created_at: r.try_get(11).map_err(field)?,
    })
}

impl Store for PostgresStore {
    fn ingest(&self, job: IngestJob) -> StoreFuture<Vec<RowOutcome>> {
        if job.rows.is_empty() {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let (reply, answer) = oneshot::channel();
        let sent = match self.writers.queue.lock() {
            Ok(queue) => match queue.as_ref() {
                Some(queue) => queue.send(Pending { job, reply }).map_err(|_| closed()),
                None => Err(closed()),
            },
            Err(_) => Err(closed()),
        };
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| closed())?
        })
    }

    fn daily_salt(&self, day: String) -> StoreFuture<String> {
        let store = self.clone();
        Box::pin(async move {
            let client = store.client().await?;
            let fresh = uuid::Uuid::new_v4().simple().to_string();
            // Two statements: the second sees a salt another node committed while the first
            // waited for it.
            client
                .execute(
                    "INSERT INTO salts (day, salt) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&day, &fresh],
                )
                .await
                .map_err(from_pg)?;
            let row = client
                .query_one("SELECT salt FROM salts WHERE day = $1", &[&day])
                .await
                .map_err(from_pg)?;
            row.try_get(0).map_err(from_pg)
        })
    }

    fn projects(&self) -> StoreFuture<Vec<ProjectRecord>> {
        let store = self.clone();
        Box::pin(async move {
            let client = store.client().await?;
            let rows = client
                .query(
                    "SELECT key, client_id, name, mode, owner, secret_hash, secret_salt,
                            previous_hash, previous_salt, previous_until, revoked_at, created_at
                     FROM projects ORDER BY key",
                    &[],
                )
                .await
                .map_err(from_pg)?;
            rows.iter().map(project_row).collect()
        })
    }

    fn save_project(&self, record: ProjectRecord) -> StoreFuture<i64> {
        let store = self.clone();
        Box::pin(async move {
            let client = store.client().await?;
            let now = store.core.clock.now_ms();
            let previous = record.previous.as_ref();
            let row = client
                .query_one(
                    "INSERT INTO projects (client_id, name, mode, owner, secret_hash, secret_salt,
                         previous_hash, previous_salt, previous_until, revoked_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (client_id) DO UPDATE SET name = excluded.name,
                        mode = excluded.mode, owner = excluded.owner,
                        secret_hash = excluded.secret_hash, secret_salt = excluded.secret_salt,
                        previous_hash = excluded.previous_hash,
                        previous_salt = excluded.previous_salt,
                        previous_until = excluded.previous_until,
                        revoked_at = excluded.revoked_at
                     RETURNING key",
                    &[
                        &record.client_id,
                        &record.name,
                        &record.mode.as_str(),
                        &record.owner,
                        &record.secret.hash,
                        &record.secret.salt,
                        &previous.map(|p| p.secret.hash.as_str()),
                        &previous.map(|p| p.secret.salt.as_str()),
                        &previous.map(|p| p.valid_until_ms),
                        &record.revoked_at,
                        &now,
                    ],
                )
                .await
                .map_err(from_pg)?;
            row.try_get(0).map_err(from_pg)
        })
    }

    fn events(&self, query: EventQuery) -> StoreFuture<Vec<StoredEvent>> {
        let store = self.clone();
        Box::pin(async move {
            let client = store.client().await?;
            read::events(&client, &query).await.map_err(from_pg)
        })
    }

    fn sessions(&self, query: SessionQuery) -> StoreFuture<Vec<StoredSession>> {
        let store = self.clone();
        Box::pin(async move {
            let client = store.client().await?;
            read::sessions(&client, &query).await.map_err(from_pg)
        })
    }

    fn profile(&self, project: i64, profile_id: String) -> StoreFuture<Option<StoredProfile>> {
        let store = self.clone();
        Box::pin(async move {
            let client = store.client().await?;
            read::profile(&client, project, &profile_id)
                .await
                .map_err(from_pg)
        })
    }

    fn health(&self) -> StoreFuture<()> {
        let store = self.clone();
        Box::pin(async move {
            let client = store.client().await?;
            client.execute("SELECT 1", &[]).await.map_err(from_pg)?;
            Ok(())
        })
    }

    fn close(&self) -> StoreFuture<()> {
        let writers = Arc::clone(&self.writers);
        let pool = self.core.pool.clone();
        Box::pin(async move {
            // Closing the queue lets each writer finish what it was given, then end.
            if let Ok(mut queue) = writers.queue.lock() {
                queue.take();
            }
            let tasks = writers
                .tasks
                .lock()
                .map(|mut t| std::mem::take(&mut *t))
                .unwrap_or_default();
            for task in tasks {
                let _ = task.await;
            }
            pool.close();
            Ok(())
        })
    }
}
