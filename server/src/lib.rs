//! The Backfill ingestion server.
//!
//! # Layout
//! - [`config`]: the typed configuration `main` builds from flags and environment.
//! - [`api`]: routes, handlers and middleware; [`body`] reads and decodes request bodies;
//!   [`connections`] accepts and serves connections, with timeouts for stalled clients.
//! - [`ingest`]: validation, time rules and id derivation of rows, and the `202` summary.
//! - [`auth`]: client credentials, modes, and the registry that checks them.
//! - [`admin`]: creating, listing, rotating and revoking clients (`backfill-server project`).
//! - [`openapi`]: the OpenAPI document of every route, served at `/openapi.json`.
//! - [`store`]: the [`store::Store`] trait, the ingest rules every store applies, the embedded
//!   SQLite store and the PostgreSQL store for several nodes.
//! - [`state`], [`metrics`], [`clock`], [`error`]: what the handlers share.
//! - [`read_client`]: a client of the read API, for tools and tests.
//!
//! [`start`] binds the listener, opens the store and serves in the background; `main` and the
//! end-to-end tests use it alike.
#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod connections;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod read_client;
pub mod state;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::api::app;
pub use crate::auth::NewProject;
use crate::clock::Clock;
pub use crate::config::Config;
pub use crate::connections::Timeouts;
use crate::metrics::Metrics;
pub use crate::state::AppState;
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Store, StoreError};

/// Name of the embedded database file inside the data directory.
pub const DATABASE_FILE: &str = "backfill.db";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Serves `state` on `listener` until `shutdown` resolves, then finishes in-flight requests
/// (see [`connections`] for the timeouts).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    connections::serve(app(state), listener, shutdown, Timeouts::default()).await
}

/// Opens the embedded store in `config.data_dir`.
pub fn open_embedded(
    config: &Config,
    clock: Arc<dyn Clock>,
    metrics: &Metrics,
) -> Result<Arc<dyn Store>, StoreError> {
    let options = SqliteOptions {
        clock,
        commit_latency: Some(Arc::clone(&metrics.commit_latency)),
    };
    Ok(Arc::new(SqliteStore::open(
        &config.data_dir.join(DATABASE_FILE),
        options,
    )?))
}

/// Longest wait for a PostgreSQL connection before a request is answered `503`.
pub const DATABASE_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the store `config` names: the PostgreSQL database of `config.database_url`, else the
/// embedded store in `config.data_dir`.
pub async fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
    metrics: &Metrics,
) -> Result<Arc<dyn Store>, StoreError> {
    let Some(url) = &config.database_url else {
        return open_embedded(config, clock, metrics);
    };
    let options = PostgresOptions {
        url: url.0.clone(),
        pool_size: config.database_pool_size,
        acquire_timeout: DATABASE_ACQUIRE_TIMEOUT,
        clock,
        commit_latency: Some(Arc::clone(&metrics.commit_latency)),
    };
    Ok(Arc::new(PostgresStore::connect(options).await?))
}

/// A server running in the background.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// A `root` client created on first start (no project configured, none stored); its secret
    /// is shown nowhere else.
    pub created_project: Option<NewProject>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    store: Arc<dyn Store>,
}

impl RunningServer {
    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes in-flight requests, then closes the store.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = self.task.await.map_err(std::io::Error::other)?;
        self.store.close().await.map_err(std::io::Error::other)?;
        served
    }
}

/// Starts a server for `config` with the store it names (or `store`, when given) and `clock`.
///
/// The listener is bound first: a start that fails there (the port is taken) has touched no
/// store, so it never leaves behind a created client whose secret was not shown.
pub async fn start(
    config: &Config,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn Store>>,
) -> Result<RunningServer, StartError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    let store = match store {
        Some(store) => store,
        None => open_store(config, Arc::clone(&clock), &metrics).await?,
    };
    let created_project = auth::bootstrap(store.as_ref(), &config.projects, clock.now_ms()).await?;
    let only = (!config.projects.is_empty())
        .then(|| config.projects.iter().map(|p| p.client_id).collect());
    let state = AppState::new(
        Arc::clone(&store),
        clock,
        metrics,
        config.max_event_age_days,
        only,
    )
    .await?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(state, listener, async {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        addr,
        created_project,
        shutdown: Some(tx),
        task,
        store,
    })
}
