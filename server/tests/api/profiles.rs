use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

fn identify(profile: &str, t: i64, fields: Value) -> Value {
    let mut payload = fields;
    payload["profileId"] = json!(profile);
    let props = payload.get("properties").cloned().unwrap_or(json!({}));
    let mut props = props;
    props["__timestamp"] = json!(t);
    payload["properties"] = props;
    json!({"type": "identify", "payload": payload})
}

async fn identify_merges_fields_and_later_event_time_wins(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![identify(
        "u1",
        NOW - HOUR,
        json!({"firstName": "Ada", "email": "ada@new.io", "properties": {"plan": "pro"}}),
    )])
    .await;
    // Older history arrives later: it fills gaps but does not overwrite newer values.
    h.accept(vec![identify("u1", NOW - 3 * HOUR, json!({"firstName": "Old", "lastName": "Lovelace", "email": "ada@old.io", "properties": {"plan": "free", "city": "London"}}))]).await;
    let (status, p) = h.get("/api/profiles/u1").await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["first_name"], json!("Ada"));
    assert_eq!(p["last_name"], json!("Lovelace"));
    assert_eq!(p["email"], json!("ada@new.io"));
    assert_eq!(p["properties"], json!({"plan": "pro", "city": "London"}));
    assert_eq!(
        h.all_events("").await,
        Vec::<Value>::new(),
        "profile rows are not listed as events"
    );
}

async fn increment_and_decrement_count_from_zero_and_deduplicate(store: StoreKind) {
    let h = Harness::new(store).await;
    let inc = |v: i64, key: &str| json!({"type": "increment", "payload": {"profileId": "u2", "property": "visits", "value": v, "properties": {"__insertId": key}}});
    let dec = json!({"type": "decrement", "payload": {"profileId": "u2", "property": "visits", "properties": {"__insertId": "d1"}}});
    let body = h
        .accept(vec![inc(5, "i1"), inc(5, "i1"), inc(2, "i2"), dec])
        .await;
    assert_eq!(
        body["duplicates"],
        json!(1),
        "a retried increment is not applied twice"
    );
    let (_, p) = h.get("/api/profiles/u2").await;
    assert_eq!(p["properties"]["visits"], json!(6));
}

async fn incrementing_a_non_number_rejects_the_row_and_changes_nothing(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![identify(
        "u3",
        NOW - HOUR,
        json!({"properties": {"plan": "pro"}}),
    )])
    .await;
    let (status, body) = h
        .batch(vec![
            json!({"type": "increment", "payload": {"profileId": "u3", "property": "plan", "properties": {"__insertId": "bad"}}}),
            json!({"type": "increment", "payload": {"profileId": "u3", "property": "logins"}}),
        ])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], json!(1));
    assert_eq!(
        body["rejected"],
        json!([{"index": 0, "reason": "validation", "error": "profile property plan is not a number"}])
    );
    let (_, p) = h.get("/api/profiles/u3").await;
    assert_eq!(p["properties"], json!({"plan": "pro", "logins": 1}));
}

async fn groups_and_assignments(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![
        json!({"type": "group", "payload": {"id": "acme", "type": "company", "name": "Acme"}}),
        json!({"type": "assign_group", "payload": {"profileId": "u4", "groupIds": ["acme", "beta"]}}),
        json!({"type": "assign_group", "payload": {"profileId": "u4", "groupIds": ["acme"]}}),
    ])
    .await;
    let (status, p) = h.get("/api/profiles/u4").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["groups"], json!(["acme", "beta"]));
    let (status, body) = h.get("/api/profiles/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], json!(404));
}

async fn a_session_takes_the_first_profile_id(store: StoreKind) {
    let h = Harness::new(store).await;
    let t = NOW - 2 * HOUR - (NOW - 2 * HOUR) % (30 * MINUTE) + 60_000;
    h.accept(vec![
        track("anon", json!({"__deviceId": "p", "__timestamp": t})),
        json!({"type": "track", "payload": {"name": "login", "profileId": "u5", "properties": {"__deviceId": "p", "__timestamp": t + MINUTE}}}),
        json!({"type": "track", "payload": {"name": "later", "profileId": "u6", "properties": {"__deviceId": "p", "__timestamp": t + 2 * MINUTE}}}),
    ])
    .await;
    let sessions = h.all_sessions("").await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["profile_id"], json!("u5"));
}

store_tests!(
    identify_merges_fields_and_later_event_time_wins,
    increment_and_decrement_count_from_zero_and_deduplicate,
    incrementing_a_non_number_rejects_the_row_and_changes_nothing,
    groups_and_assignments,
    a_session_takes_the_first_profile_id,
);
