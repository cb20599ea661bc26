use axum::http::StatusCode;
use serde_json::json;

use crate::common::*;

async fn the_same_insert_id_twice_in_one_batch_is_stored_once(store: StoreKind) {
    let h = Harness::new(store).await;
    let (status, body) = h
        .batch(vec![
            reading("d", NOW - MINUTE, "dup"),
            reading("d", NOW - MINUTE, "dup"),
        ])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        body,
        json!({"accepted": 2, "duplicates": 1, "rejected": []})
    );
    assert_eq!(h.all_events("name=reading").await.len(), 1);
}

async fn a_resent_batch_is_all_duplicates_and_changes_nothing(store: StoreKind) {
    let h = Harness::new(store).await;
    let batch: Vec<_> = (0..50)
        .map(|i| reading("d", NOW - HOUR + i * MINUTE, &format!("k{i}")))
        .collect();
    h.accept(batch.clone()).await;
    let sessions_before = h.all_sessions("").await;
    let body = h.accept(batch).await;
    assert_eq!(body["duplicates"], json!(50));
    assert_eq!(h.all_events("name=reading").await.len(), 50);
    assert_eq!(
        h.all_sessions("").await,
        sessions_before,
        "duplicates do not count into sessions"
    );
}

async fn events_without_insert_id_are_never_deduplicated(store: StoreKind) {
    let h = Harness::new(store).await;
    let e = track(
        "reading",
        json!({"__deviceId": "d", "__timestamp": NOW - MINUTE}),
    );
    h.accept(vec![e.clone(), e]).await;
    assert_eq!(h.all_events("name=reading").await.len(), 2);
}

async fn keys_survive_a_restart(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![reading("d", NOW - MINUTE, "persisted")])
        .await;
    let h = h.restart().await;
    let body = h
        .accept(vec![reading("d", NOW - MINUTE, "persisted")])
        .await;
    assert_eq!(body["duplicates"], json!(1));
    assert_eq!(h.all_events("name=reading").await.len(), 1);
}

async fn a_rejected_row_does_not_claim_its_key(store: StoreKind) {
    let h = Harness::new(store).await;
    let (_, body) = h.batch(vec![reading("d", NOW - 6 * DAY, "late")]).await;
    assert_eq!(body["accepted"], json!(0));
    let body = h.accept(vec![reading("d", NOW - MINUTE, "late")]).await;
    assert_eq!(
        body["duplicates"],
        json!(0),
        "the corrected resend is stored"
    );
}

store_tests!(
    the_same_insert_id_twice_in_one_batch_is_stored_once,
    a_resent_batch_is_all_duplicates_and_changes_nothing,
    events_without_insert_id_are_never_deduplicated,
    keys_survive_a_restart,
    a_rejected_row_does_not_claim_its_key,
);
