//! The PostgreSQL store writes the requests that wait at the same time in one transaction (group
//! commit): each request keeps its own outcomes, as if the requests had been written one after
//! the other.
//!
//! Each test first holds the `sessions` table locked from a connection of its own, so that both
//! of the store's writers wait inside a transaction with one request each; the requests sent
//! meanwhile queue up and are written as one group once the lock is released.

use std::sync::Arc;
use std::time::Duration;

use backfill_protocol::number::Decimal;
use backfill_protocol::properties::RawMap;
use backfill_server::clock::ManualClock;
use backfill_server::ingest::new_event_id;
use backfill_server::metrics::Histogram;
use backfill_server::store::postgres::{PostgresOptions, PostgresStore};
use backfill_server::store::{
    EventQuery, IngestJob, NewEvent, PreparedRow, RowAction, RowOutcome, SessionQuery, Store,
    StoreFuture,
};
use serde_json::value::RawValue;
use tokio_postgres::NoTls;

use crate::common::{MINUTE, NOW};

const PROJECT: i64 = 1;

fn event(key: &str, session: &str, t: i64) -> PreparedRow {
    PreparedRow {
        insert_id: Some(key.to_owned()),
        time_ms: t,
        action: RowAction::Event(NewEvent {
            id: new_event_id(t),
            name: "reading".to_owned(),
            device_id: format!("dev-{session}"),
            session_id: session.to_owned(),
            profile_id: None,
            properties: r#"{"temp":21.5}"#.to_owned(),
            groups: None,
        }),
    }
}

/// An event of `session` at `t` with `profile` as its profile id.
fn profiled(key: &str, session: &str, t: i64, profile: &str) -> PreparedRow {
    let mut row = event(key, session, t);
    if let RowAction::Event(event) = &mut row.action {
        event.profile_id = Some(profile.to_owned());
    }
    row
}

fn increment(key: &str, property: &str, delta: i64) -> PreparedRow {
    PreparedRow {
        insert_id: Some(key.to_owned()),
        time_ms: NOW - MINUTE,
        action: RowAction::Increment {
            profile_id: "p".to_owned(),
            property: property.to_owned(),
            delta: Decimal::from(delta),
        },
    }
}

fn identify(key: &str, plan: &str) -> PreparedRow {
    let mut properties = RawMap::new();
    properties.insert(
        "plan".to_owned(),
        RawValue::from_string(format!("{plan:?}")).expect("JSON"),
    );
    PreparedRow {
        insert_id: Some(key.to_owned()),
        time_ms: NOW - MINUTE,
        action: RowAction::Identify {
            profile_id: "p".to_owned(),
            fields: Vec::new(),
            properties,
        },
    }
}

fn job(rows: Vec<PreparedRow>) -> IngestJob {
    IngestJob {
        project: PROJECT,
        sdk_name: None,
        sdk_version: None,
        rows,
    }
}

/// `count` readings of `session`, keys `{prefix}-{i}`, one second apart from `first`.
fn readings(prefix: &str, session: &str, first: i64, count: usize) -> Vec<PreparedRow> {
    (0..count)
        .map(|i| event(&format!("{prefix}-{i}"), session, first + 1000 * i as i64))
        .collect()
}

/// A store whose two writers are each held inside a transaction, waiting for the `sessions`
/// table, with one request each; dropping `release` commits the lock.
struct Held {
    store: PostgresStore,
    transactions: Arc<Histogram>,
    locker: tokio_postgres::Client,
    first: Vec<StoreFuture<Vec<RowOutcome>>>,
}

/// Backends waiting for a lock on `sessions`.
async fn waiting(locker: &tokio_postgres::Client) -> i64 {
    locker
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'sessions'::regclass",
            &[],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

async fn wait_for_waiters(locker: &tokio_postgres::Client, count: i64) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while waiting(locker).await < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the writers reach the locked table");
}

async fn held() -> Held {
    let url = crate::cluster::shared().create_schema();
    let transactions = Arc::new(Histogram::default());
    let store = PostgresStore::connect(PostgresOptions {
        url: url.clone(),
        pool_size: 4,
        acquire_timeout: Duration::from_secs(2),
        clock: Arc::new(ManualClock::new(NOW)),
        commit_latency: Some(Arc::clone(&transactions)),
    })
    .await
    .expect("connect");
    let (locker, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE sessions IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    let mut first = Vec::new();
    for (n, session) in ["held-1", "held-2"].into_iter().enumerate() {
        first.push(store.ingest(job(readings(session, session, NOW - 2 * MINUTE, 5))));
        wait_for_waiters(&locker, n as i64 + 1).await;
    }
    Held {
        store,
        transactions,
        locker,
        first,
    }
}

impl Held {
    /// Sends `jobs` while the writers are held, releases them, and returns each job's outcomes.
    async fn write(
        self,
        jobs: Vec<IngestJob>,
    ) -> (PostgresStore, Arc<Histogram>, Vec<Vec<RowOutcome>>) {
        let queued: Vec<_> = jobs.into_iter().map(|j| self.store.ingest(j)).collect();
        self.locker.batch_execute("COMMIT").await.expect("unlock");
        for answer in self.first {
            let outcomes = answer.await.expect("stored");
            assert!(outcomes.iter().all(|o| *o == RowOutcome::Stored));
        }
        let mut answers = Vec::new();
        for answer in queued {
            answers.push(answer.await.expect("written"));
        }
        (self.store, self.transactions, answers)
    }
}

fn stored(n: usize) -> Vec<RowOutcome> {
    vec![RowOutcome::Stored; n]
}

async fn events(store: &PostgresStore, session: &str) -> Vec<(String, i64)> {
    let page = store
        .events(EventQuery {
            project: PROJECT,
            limit: 1000,
            session_id: Some(session.to_owned()),
            ..EventQuery::default()
        })
        .await
        .expect("events");
    page.into_iter().map(|e| (e.name, e.created_at)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_written_in_one_group_keep_their_own_outcomes() {
    if !crate::cluster::available() {
        return;
    }
    let held = held().await;
    let base = NOW - 60 * MINUTE;
    let mut repeat = readings("r2", "s-a", base, 10);
    repeat.extend(readings("r5", "s-a", base - 20_000, 5));
    let jobs = vec![
        // Three requests reach one session.
        job(readings("r2", "s-a", base, 20)),
        job(readings("r3", "s-a", base + 100_000, 20)),
        job(readings("r4", "s-b", base, 20)),
        // Shares ten keys with the first: written in the next group, where they are
        // duplicates, and moves s-a's session_start earlier.
        job(repeat),
        // A refused increment, whose key a later request then stores.
        job(vec![
            identify("i6-0", "pro"),
            increment("i6-1", "plan", 1),
            increment("i6-2", "count", 1),
        ]),
        job(vec![
            increment("i7-0", "count", 2),
            increment("i6-1", "count", 10),
        ]),
    ];
    let (store, transactions, answers) = held.write(jobs).await;

    assert_eq!(answers[0], stored(20));
    assert_eq!(answers[1], stored(20));
    assert_eq!(answers[2], stored(20));
    let mut expected = vec![RowOutcome::Duplicate; 10];
    expected.extend(stored(5));
    assert_eq!(answers[3], expected);
    assert_eq!(answers[4][0], RowOutcome::Stored);
    assert!(
        matches!(&answers[4][1], RowOutcome::Invalid(reason) if reason.contains("plan")),
        "{:?}",
        answers[4][1]
    );
    assert_eq!(answers[4][2], RowOutcome::Stored);
    assert_eq!(answers[5], stored(2));
    // One transaction for each held request, one for the group, and two for the two requests
    // that shared a key with it: the first finds stored keys, and the second skips them.
    assert_eq!(transactions.count(), 5);

    let a = events(&store, "s-a").await;
    let starts: Vec<i64> = a
        .iter()
        .filter(|(name, _)| name == "session_start")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(
        starts,
        [base - 20_000 - 100],
        "one session_start, moved earlier"
    );
    assert_eq!(a.len(), 1 + 20 + 20 + 5);
    let sessions = store
        .sessions(SessionQuery {
            project: PROJECT,
            limit: 100,
            ..SessionQuery::default()
        })
        .await
        .expect("sessions");
    let s_a = sessions.iter().find(|s| s.id == "s-a").expect("s-a");
    assert_eq!(
        (s_a.started_at, s_a.ended_at, s_a.event_count),
        (base - 20_000, base + 100_000 + 19_000, 45)
    );
    let s_b = sessions.iter().find(|s| s.id == "s-b").expect("s-b");
    assert_eq!(s_b.event_count, 20);

    let profile = store
        .profile(PROJECT, "p".to_owned())
        .await
        .expect("read")
        .expect("profile");
    assert_eq!(profile.properties["count"].get(), "13");
    assert_eq!(profile.properties["plan"].get(), "\"pro\"");
}

/// PostgreSQL's text cannot hold a NUL character: the group is written again request by
/// request, and only the row with it fails, leaving no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_refused_in_a_group_fails_alone() {
    if !crate::cluster::available() {
        return;
    }
    let held = held().await;
    let base = NOW - 60 * MINUTE;
    let mut poisoned = readings("b", "s-1", base + 50_000, 10);
    if let RowAction::Event(event) = &mut poisoned[4].action {
        event.name = "nul\u{0}name".to_owned();
    }
    let jobs = vec![
        job(readings("a", "s-1", base, 10)),
        job(poisoned),
        job(readings("c", "s-2", base, 10)),
    ];
    let (store, _, answers) = held.write(jobs).await;
    assert_eq!(answers[0], stored(10));
    assert_eq!(answers[2], stored(10));
    for (i, outcome) in answers[1].iter().enumerate() {
        match outcome {
            RowOutcome::Failed(error) if i == 4 => assert!(error.contains("0x00"), "{error}"),
            RowOutcome::Stored if i != 4 => {}
            other => panic!("row {i}: {other:?}"),
        }
    }
    let s1 = events(&store, "s-1").await;
    assert_eq!(s1.len(), 1 + 10 + 9);
    let sessions = store
        .sessions(SessionQuery {
            project: PROJECT,
            limit: 100,
            ..SessionQuery::default()
        })
        .await
        .expect("sessions");
    let counts: Vec<(String, i64)> = sessions
        .iter()
        .filter(|s| s.id.starts_with("s-"))
        .map(|s| (s.id.clone(), s.event_count))
        .collect();
    assert_eq!(counts, [("s-1".to_owned(), 19), ("s-2".to_owned(), 10)]);
}

/// Requests of one group reach one session with profile ids in another order than their
/// events' times: the session takes the profile id of the earliest event, and of two at one
/// time the bytewise smaller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_keeps_the_profile_id_of_the_earliest_event() {
    if !crate::cluster::available() {
        return;
    }
    let held = held().await;
    let base = NOW - 60 * MINUTE;
    let jobs = vec![
        job(vec![profiled("p1", "s-p", base + 10 * MINUTE, "late")]),
        job(vec![
            event("p2", "s-p", base - MINUTE),
            profiled("p3", "s-p", base, "early"),
        ]),
        job(vec![profiled("p4", "s-p", base, "Early")]),
        job(vec![profiled("p5", "s-p", base + MINUTE, "after")]),
    ];
    let (store, transactions, answers) = held.write(jobs).await;
    assert_eq!(answers, [stored(1), stored(2), stored(1), stored(1)]);
    assert_eq!(
        transactions.count(),
        3,
        "one transaction for each held request and one for the group"
    );
    let sessions = store
        .sessions(SessionQuery {
            project: PROJECT,
            limit: 100,
            ..SessionQuery::default()
        })
        .await
        .expect("sessions");
    let session = sessions.iter().find(|s| s.id == "s-p").expect("s-p");
    assert_eq!(session.profile_id.as_deref(), Some("Early"));
    assert_eq!(session.event_count, 5);
}
