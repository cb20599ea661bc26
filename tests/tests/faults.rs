//! The drain against a server that fails: row faults, outages, bad credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_core::{Backfill, DrainEnd, Error};
use backfill_e2e::*;
use backfill_server::store::fault::FaultInjector;
use backfill_server::store::sqlite::{SqliteOptions, SqliteStore};
use backfill_server::store::{RowAction, RowOutcome, Store};
use serde_json::{Map, json};

fn props(v: serde_json::Value) -> Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn inner_store(dir: &std::path::Path) -> Arc<dyn Store> {
    let options = SqliteOptions {
        clock: Arc::new(backfill_server::clock::SystemClock),
        commit_latency: None,
    };
    Arc::new(SqliteStore::open(&dir.join("faulty.db"), options).expect("store"))
}

#[test]
fn only_internal_rows_are_resent_and_validation_rows_are_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let flaky_failures = Arc::new(Mutex::new(0usize));
    let (seen_in_rule, failures_in_rule) = (Arc::clone(&seen), Arc::clone(&flaky_failures));
    let store = FaultInjector::new(inner_store(dir.path()), move |row| {
        let RowAction::Event(e) = &row.action else {
            return None;
        };
        if let Ok(mut seen) = seen_in_rule.lock() {
            *seen.entry(e.name.clone()).or_default() += 1;
        }
        match e.name.as_str() {
            "poison" => Some(RowOutcome::Invalid("poisoned reading".into())),
            "flaky" => {
                let mut failures = failures_in_rule.lock().ok()?;
                // Each of the 3 flaky rows fails the first time it arrives.
                (*failures < 3).then(|| {
                    *failures += 1;
                    RowOutcome::Failed("injected fault".into())
                })
            }
            _ => None,
        }
    });
    let server = TestServer::start(5, Some(Arc::new(store)));
    let sdk_db = dir.path().join("sdk.db");
    let config = server
        .sdk_config(&sdk_db)
        .retry_base(Duration::from_millis(10))
        .build()
        .expect("config");
    let sdk = Backfill::open(config).expect("open");
    let now = now_ms();
    for (i, name) in [
        "ok", "flaky", "poison", "ok", "flaky", "ok", "poison", "flaky", "ok",
    ]
    .iter()
    .enumerate()
    {
        sdk.track_at(name, props(json!({"i": i})), now - 60_000 + i as i64)
            .expect("track");
    }
    let first = sdk.flush().expect("first drain");
    assert!(
        matches!(first.end, DrainEnd::RetryIn(_)),
        "internal rows wait for a backoff: {first:?}"
    );
    assert_eq!((first.sent, first.dead_lettered), (4, 2));
    assert_eq!(
        sdk.stats().expect("stats").buffered_events,
        3,
        "only the flaky rows remain"
    );
    let second = sdk.flush().expect("second drain");
    assert_eq!(second.end, DrainEnd::Empty);
    assert_eq!((second.sent, second.requests), (3, 1));

    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.get("ok"), Some(&4), "accepted rows were sent once");
    assert_eq!(
        seen.get("poison"),
        Some(&2),
        "validation rows were never resent"
    );
    assert_eq!(
        seen.get("flaky"),
        Some(&6),
        "internal rows were resent once each"
    );
    let stored: Vec<String> = server
        .events("")
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored.iter().filter(|n| *n == "ok").count(), 4);
    assert_eq!(stored.iter().filter(|n| *n == "flaky").count(), 3);
    assert_eq!(stored.iter().filter(|n| *n == "poison").count(), 0);
    let stats = sdk.stats().expect("stats");
    assert_eq!(
        (stats.sent, stats.dead_lettered, stats.buffered_events),
        (7, 2, 0)
    );
    let dead = sdk.dead_letters(10).expect("dead letters");
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .all(|d| d.error == "poisoned reading" && d.body.contains("poison"))
    );
}

#[test]
fn an_outage_is_waited_out_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FaultInjector::new(inner_store(dir.path()), |_| None));
    let server = TestServer::start(5, Some(Arc::clone(&store) as Arc<dyn Store>));
    let sdk_db = dir.path().join("sdk.db");
    let sdk = Backfill::open(server.sdk_config(&sdk_db).build().expect("config")).expect("open");
    for i in 0..500 {
        sdk.track_at("reading", props(json!({"i": i})), now_ms() - 3_600_000 + i)
            .expect("track");
    }
    store.set_down(true);
    let report = sdk.flush().expect("drain");
    match report.end {
        DrainEnd::RetryIn(wait) => assert!(
            wait >= Duration::from_secs(5),
            "Retry-After is honoured: {wait:?}"
        ),
        other => panic!("expected a wait, got {other:?}"),
    }
    assert_eq!(sdk.stats().expect("stats").buffered_events, 500);
    assert!(
        sdk.stats().expect("stats").last_error.is_some(),
        "the failure is reported"
    );
    store.set_down(false);
    let report = sdk.flush().expect("drain");
    assert_eq!((report.end, report.sent), (DrainEnd::Empty, 500));
    assert_eq!(server.events("name=reading").len(), 500);
}

#[test]
fn refused_credentials_stop_uploads_and_keep_the_data() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let wrong = backfill_core::Config::builder(server.url(), PROJECT, "not-the-secret", &db)
        .background_upload(false)
        .build()
        .expect("config");
    let sdk = Backfill::open(wrong).expect("open");
    for i in 0..10 {
        sdk.track("tap", props(json!({"i": i}))).expect("track");
    }
    assert_eq!(sdk.flush(), Err(Error::Unauthorized(401)));
    let stats = sdk.stats().expect("stats");
    assert!(stats.unauthorized);
    assert_eq!(
        (stats.buffered_events, stats.requests),
        (10, 1),
        "one request, no retry loop"
    );
    drop(sdk);
    let right = Backfill::open(server.sdk_config(&db).build().expect("config")).expect("reopen");
    let report = right.flush().expect("drain");
    assert_eq!(report.sent, 10, "the data kept through the refusal arrives");
    assert_eq!(server.events("name=tap").len(), 10);
}
