//! The PostgreSQL store, for several stateless server nodes sharing one database.
//!
//! Nothing is kept in one node that another would need: insert ids, sessions, profiles, the
//! daily device salt and the projects are all in the database, and every rule that spans
//! requests holds by its constraints and row locks. Each request is written in one transaction
//! of one statement per table ([`write`]); a serialization failure or deadlock runs it again,
//! and the request is answered only after `COMMIT` returns (with PostgreSQL's default
//! `synchronous_commit = on`, after the commit record is flushed). Concurrent requests share
//! WAL flushes through PostgreSQL's own group commit.
//!
//! Connections come from a pool of a configured size; a connection that cannot be had within
//! the acquire timeout fails the request with [`StoreError::Unavailable`] (`503`), and the pool
//! reconnects by itself when the database is back.

mod error;
mod read;
pub mod schema;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use self::error::{Failure, classify, describe, from_pg, from_pool};
use super::{
    ClientMode, EventQuery, IngestJob, PreparedRow, PreviousSecret, ProjectRecord, RowOutcome,
    SecretHash, SessionQuery, Store, StoreError, StoreFuture, StoredEvent, StoredProfile,
    StoredSession,
};
use crate::clock::Clock;
use crate::metrics::Histogram;

/// How many times a transaction is run again after a serialization failure or deadlock.
const MAX_RETRIES: u32 = 8;

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

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
    commit_latency: Option<Arc<Histogram>>,
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
        Ok(Self {
            pool,
            clock: options.clock,
            commit_latency: options.commit_latency,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(from_pool)
    }

    /// Writes `rows` in one transaction, run again on a serialization failure or deadlock.
    async fn write(
        &self,
        job: &IngestJob,
        rows: &[&PreparedRow],
    ) -> Result<Vec<RowOutcome>, WriteError> {
        let mut attempt = 0;
        loop {
            let mut client = self.client().await.map_err(WriteError::Store)?;
            let started = Instant::now();
            let result = async {
                let tx = client.transaction().await?;
                let synced_at = self.clock.now_ms();
                let outcomes = write::write_rows(&tx, job, rows, synced_at).await?;
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

    async fn ingest_job(&self, job: IngestJob) -> Result<Vec<RowOutcome>, StoreError> {
        let rows: Vec<&PreparedRow> = job.rows.iter().collect();
        match self.write(&job, &rows).await {
            Ok(outcomes) => Ok(outcomes),
            Err(WriteError::Store(e)) => Err(e),
            Err(WriteError::Refused(e)) => {
                // One row the database refuses must not cost the others: each is written on
                // its own, and only the refused one fails.
                tracing::warn!(error = %e, rows = rows.len(), "request refused as a whole; writing it row by row");
                let mut outcomes = Vec::with_capacity(rows.len());
                for row in rows {
                    let outcome = match self.write(&job, &[row]).await {
                        Ok(mut one) => one.pop().unwrap_or(RowOutcome::Stored),
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
        let store = self.clone();
        Box::pin(async move { store.ingest_job(job).await })
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
            let now = store.clock.now_ms();
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
        let pool = self.pool.clone();
        Box::pin(async move {
            pool.close();
            Ok(())
        })
    }
}
