//! Store faults: rows the store fails on are `internal`, a store that is down is `503`.

use std::sync::Arc;

use axum::http::StatusCode;
use backfill_server::clock::ManualClock;
use backfill_server::store::RowOutcome;
use backfill_server::store::fault::FaultInjector;
use serde_json::{Value, json};

use crate::common::*;

async fn faulty(kind: StoreKind, down: bool) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(NOW);
    let place = Place::new(kind, dir.path());
    let inner = place.open(&clock).await;
    let store = FaultInjector::new(inner, |row| {
        row.insert_id
            .as_deref()
            .filter(|k| k.starts_with("fail-"))
            .map(|_| RowOutcome::Failed("injected fault".into()))
    });
    store.set_down(down);
    Harness::over(dir, place, clock, Arc::new(store), 5).await
}

async fn rows_the_store_fails_on_are_internal_and_the_rest_is_stored(store: StoreKind) {
    let h = faulty(store, false).await;
    let (status, body) = h
        .batch(vec![
            reading("d", NOW - MINUTE, "ok-1"),
            reading("d", NOW - MINUTE, "fail-1"),
            json!({"type": "alias", "payload": {}}),
            reading("d", NOW - MINUTE, "ok-2"),
        ])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], json!(2));
    assert_eq!(
        body["rejected"],
        json!([
            {"index": 1, "reason": "internal", "error": "injected fault"},
            {"index": 2, "reason": "validation", "error": "Alias is not supported"},
        ])
    );
    let mut keys: Vec<String> = h
        .all_events("name=reading")
        .await
        .iter()
        .filter_map(|e| e["insert_id"].as_str().map(str::to_owned))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["ok-1", "ok-2"],
        "rows in one millisecond are ordered by id, not arrival"
    );
}

async fn a_store_that_is_down_is_503_with_retry_after(store: StoreKind) {
    let h = faulty(store, true).await;
    let (status, headers, body) = h
        .post_raw(
            "/track/batch",
            json!({"events": [reading("d", NOW, "x")]})
                .to_string()
                .into_bytes(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], json!(503));
    assert!(
        !body["message"].as_str().unwrap_or("").contains("disk"),
        "no internals leak: {body}"
    );
    assert!(headers.contains_key("retry-after"));
    assert!(
        headers.get("backfill-max-event-age").is_none(),
        "only 2xx answers carry the window"
    );
    let (status, _, _) = h
        .send(
            axum::http::Request::get("/healthz")
                .body(axum::body::Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

store_tests!(
    rows_the_store_fails_on_are_internal_and_the_rest_is_stored,
    a_store_that_is_down_is_503_with_retry_after,
);

/// PostgreSQL's text cannot hold a NUL character, which JSON allows: the request is then
/// written row by row, and only that row fails (`internal`), leaving no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgresql_refuses_fails_alone() {
    if !crate::cluster::available() {
        return;
    }
    let h = Harness::new(StoreKind::Postgres).await;
    let (status, body) = h
        .batch(vec![
            reading("d", NOW - MINUTE, "ok-1"),
            track(
                "nul\u{0}name",
                json!({"__deviceId": "d", "__timestamp": NOW - MINUTE, "__insertId": "nul-1"}),
            ),
            reading("d", NOW - MINUTE, "ok-2"),
        ])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], json!(2), "{body}");
    assert_eq!(body["rejected"][0]["index"], json!(1), "{body}");
    assert_eq!(body["rejected"][0]["reason"], json!("internal"), "{body}");
    let keys: Vec<Value> = h
        .all_events("")
        .await
        .iter()
        .map(|e| e["insert_id"].clone())
        .collect();
    assert!(keys.contains(&json!("ok-1")) && keys.contains(&json!("ok-2")));
    assert!(!keys.contains(&json!("nul-1")), "{keys:?}");
    let sessions = h.all_sessions("").await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0]["event_count"],
        json!(2),
        "the failed row counts nowhere"
    );
}
