//! The state every handler shares.

use std::sync::{Arc, Mutex};

use backfill_protocol::time::utc_day;
use uuid::Uuid;

use crate::auth::ProjectRegistry;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Shared handler state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    projects: ProjectRegistry,
    clock: Arc<dyn Clock>,
    max_event_age_days: u32,
    metrics: Arc<Metrics>,
    salt: Mutex<Option<(String, String)>>,
    parse_slots: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Builds the state over `store`. With `only_projects`, just those client ids are accepted.
    pub async fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        max_event_age_days: u32,
        only_projects: Option<Vec<Uuid>>,
    ) -> Result<Self, StoreError> {
        let projects =
            ProjectRegistry::load(Arc::clone(&store), Arc::clone(&clock), only_projects).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                projects,
                clock,
                max_event_age_days,
                metrics,
                salt: Mutex::new(None),
                parse_slots: Arc::new(tokio::sync::Semaphore::new(parse_slots())),
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The project registry.
    pub fn projects(&self) -> &ProjectRegistry {
        &self.inner.projects
    }

    /// Now, by the server's clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The age window in days.
    pub fn max_event_age_days(&self) -> u32 {
        self.inner.max_event_age_days
    }

    /// Permits for decoding and checking request bodies, the CPU-heavy part of a request.
    pub fn parse_slots(&self) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(&self.inner.parse_slots)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The device-id salt of the UTC day of `now_ms`, from memory when already known.
    pub async fn salt_for(&self, now_ms: i64) -> Result<String, StoreError> {
        let day = utc_day(now_ms);
        if let Ok(cached) = self.inner.salt.lock()
            && let Some((d, salt)) = cached.as_ref()
            && *d == day
        {
            return Ok(salt.clone());
        }
        let salt = self.inner.store.daily_salt(day.clone()).await?;
        if let Ok(mut cached) = self.inner.salt.lock() {
            *cached = Some((day, salt.clone()));
        }
        Ok(salt)
    }
}

/// How many request bodies are decoded and checked at once: one fewer than the machine's cores,
/// at least one. Decoded bodies (up to 10 MiB each) are held only this many at a time, and a core
/// stays free for the store's writer, which every ingest waits for.
fn parse_slots() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}
