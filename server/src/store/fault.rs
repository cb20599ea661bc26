//! A [`Store`] wrapper that injects faults, for testing how clients handle them: rows a rule
//! picks fail (`internal`) or are refused (`validation`), and the whole store can be taken down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    EventQuery, IngestJob, PreparedRow, ProjectRecord, RowOutcome, SessionQuery, Store, StoreError,
    StoreFuture, StoredEvent, StoredProfile, StoredSession,
};

/// Decides a row's fate before the real store sees it: `Some(outcome)` to fail or refuse it,
/// `None` to let it through.
pub type FaultRule = dyn Fn(&PreparedRow) -> Option<RowOutcome> + Send + Sync;

/// Wraps a store and injects faults.
pub struct FaultInjector {
    inner: Arc<dyn Store>,
    rule: Box<FaultRule>,
    down: AtomicBool,
}

impl FaultInjector {
    /// Wraps `inner`; `rule` picks the rows to fail or refuse.
    pub fn new(
        inner: Arc<dyn Store>,
        rule: impl Fn(&PreparedRow) -> Option<RowOutcome> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            rule: Box::new(rule),
            down: AtomicBool::new(false),
        }
    }

    /// Takes the whole store down (every write and health check fails) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

impl Store for FaultInjector {
    fn ingest(&self, mut job: IngestJob) -> StoreFuture<Vec<RowOutcome>> {
        if self.is_down() {
            return Box::pin(async { Err(StoreError::Unavailable("injected outage".into())) });
        }
        let injected: Vec<Option<RowOutcome>> = job.rows.iter().map(|r| (self.rule)(r)).collect();
        let mut keep = injected.iter().map(Option::is_none);
        job.rows.retain(|_| keep.next().unwrap_or(true));
        let inner = self.inner.ingest(job);
        Box::pin(async move {
            let mut stored = inner.await?.into_iter();
            Ok(injected
                .into_iter()
                .map(|fault| {
                    fault
                        .or_else(|| stored.next())
                        .unwrap_or(RowOutcome::Failed("lost outcome".into()))
                })
                .collect())
        })
    }

    fn daily_salt(&self, day: String) -> StoreFuture<String> {
        self.inner.daily_salt(day)
    }

    fn projects(&self) -> StoreFuture<Vec<ProjectRecord>> {
        self.inner.projects()
    }

    fn save_project(&self, record: ProjectRecord) -> StoreFuture<i64> {
        self.inner.save_project(record)
    }

    fn events(&self, query: EventQuery) -> StoreFuture<Vec<StoredEvent>> {
        self.inner.events(query)
    }

    fn sessions(&self, query: SessionQuery) -> StoreFuture<Vec<StoredSession>> {
        self.inner.sessions(query)
    }

    fn profile(&self, project: i64, profile_id: String) -> StoreFuture<Option<StoredProfile>> {
        self.inner.profile(project, profile_id)
    }

    fn health(&self) -> StoreFuture<()> {
        if self.is_down() {
            return Box::pin(async { Err(StoreError::Unavailable("injected outage".into())) });
        }
        self.inner.health()
    }

    fn close(&self) -> StoreFuture<()> {
        self.inner.close()
    }
}
