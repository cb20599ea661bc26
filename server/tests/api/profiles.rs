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

/// A `track` event of the client session `session` at `t`, with `profile` as its profile id.
fn in_session(session: &str, t: i64, profile: Option<&str>) -> Value {
    let mut payload = json!({"name": "tap", "properties": {
        "__deviceId": "phone", "__sessionId": session, "__timestamp": t}});
    if let Some(profile) = profile {
        payload["profileId"] = json!(profile);
    }
    json!({"type": "track", "payload": payload})
}

/// The profile id `GET /api/events` gives the `session_start` of `session`.
async fn start_profile_of(h: &Harness, session: &str) -> Value {
    let starts = h
        .all_events(&format!("name=session_start&session_id={session}"))
        .await;
    assert_eq!(starts.len(), 1, "one session_start: {starts:?}");
    starts[0]["profile_id"].clone()
}

/// The profile id `GET /api/sessions` gives `session`.
async fn profile_of(h: &Harness, session: &str) -> Value {
    let sessions = h.all_sessions("").await;
    sessions
        .iter()
        .find(|s| s["id"] == json!(session))
        .map(|s| s["profile_id"].clone())
        .unwrap_or_else(|| panic!("no session {session} in {sessions:?}"))
}

async fn a_session_takes_the_profile_of_its_earliest_event_whatever_the_arrival_order(
    store: StoreKind,
) {
    let h = Harness::new(store).await;
    let t = NOW - 2 * HOUR;
    h.accept(vec![in_session("s", t + 10 * MINUTE, Some("late"))])
        .await;
    assert_eq!(profile_of(&h, "s").await, json!("late"));
    h.accept(vec![in_session("s", t, Some("early"))]).await;
    assert_eq!(
        profile_of(&h, "s").await,
        json!("early"),
        "an earlier event that arrives later gives the session its profile id"
    );
    h.accept(vec![in_session("s", t + 5 * MINUTE, Some("middle"))])
        .await;
    assert_eq!(profile_of(&h, "s").await, json!("early"));
    h.accept(vec![in_session("s", t - 10 * MINUTE, None)]).await;
    assert_eq!(
        profile_of(&h, "s").await,
        json!("early"),
        "an earlier event without a profile id leaves it"
    );
    // The same events in the opposite order make the same session.
    for (t, profile) in [
        (t - 10 * MINUTE, None),
        (t + 5 * MINUTE, Some("middle")),
        (t, Some("early")),
        (t + 10 * MINUTE, Some("late")),
    ] {
        h.accept(vec![in_session("reversed", t, profile)]).await;
    }
    let sessions = h.all_sessions("").await;
    let strip = |id: &str| {
        let mut s = sessions
            .iter()
            .find(|s| s["id"] == json!(id))
            .cloned()
            .expect("session");
        s["id"] = json!("");
        s
    };
    assert_eq!(strip("s"), strip("reversed"));
    assert_eq!(strip("s")["event_count"], json!(4));
    for session in ["s", "reversed"] {
        assert_eq!(
            start_profile_of(&h, session).await,
            json!("early"),
            "the session_start of {session} carries the session's profile id"
        );
    }
}

async fn within_one_batch_the_earliest_event_gives_the_profile_id(store: StoreKind) {
    let h = Harness::new(store).await;
    let t = NOW - 2 * HOUR;
    h.accept(vec![
        in_session("b", t + 10 * MINUTE, Some("late")),
        in_session("b", t - MINUTE, None),
        in_session("b", t, Some("early")),
        in_session("b", t + MINUTE, Some("after")),
    ])
    .await;
    assert_eq!(profile_of(&h, "b").await, json!("early"));
}

async fn on_equal_times_the_bytewise_smaller_profile_id_wins(store: StoreKind) {
    let h = Harness::new(store).await;
    let t = NOW - 2 * HOUR;
    // Bytewise "Zeta" < "alpha" < "zeta"; a dictionary order would put "alpha" first.
    h.accept(vec![in_session("apart", t, Some("alpha"))]).await;
    h.accept(vec![in_session("apart", t, Some("Zeta"))]).await;
    h.accept(vec![in_session("apart", t, Some("zeta"))]).await;
    h.accept(vec![
        in_session("together", t, Some("alpha")),
        in_session("together", t, Some("Zeta")),
        in_session("together", t, Some("zeta")),
    ])
    .await;
    h.accept(vec![in_session("reversed", t, Some("zeta"))])
        .await;
    h.accept(vec![in_session("reversed", t, Some("Zeta"))])
        .await;
    h.accept(vec![in_session("reversed", t, Some("alpha"))])
        .await;
    for session in ["apart", "together", "reversed"] {
        assert_eq!(profile_of(&h, session).await, json!("Zeta"), "{session}");
        assert_eq!(
            start_profile_of(&h, session).await,
            json!("Zeta"),
            "{session}"
        );
    }
}

async fn concurrent_requests_leave_the_profile_id_of_the_earliest_event(store: StoreKind) {
    let h = Harness::new(store).await;
    let t = NOW - 3 * HOUR;
    // Sixteen requests race, the latest event's first: whichever is written first, the
    // earliest event's profile id is the session's.
    let mut tasks = Vec::new();
    for i in (0..16).rev() {
        let body =
            json!({"events": [in_session("raced", t + i * MINUTE, Some(&format!("p{i:02}")))]});
        let router = h.router.clone();
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let req = axum::http::Request::post("/track/batch")
                .header("openpanel-client-id", PROJECT)
                .header("openpanel-client-secret", SECRET)
                .body(axum::body::Body::from(body.to_string()))
                .expect("request");
            router.oneshot(req).await.expect("infallible").status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::ACCEPTED);
    }
    assert_eq!(profile_of(&h, "raced").await, json!("p00"));
    assert_eq!(start_profile_of(&h, "raced").await, json!("p00"));
}

/// Puts a closed store back to the schema from before sessions kept their profile id's time:
/// SQLite's version 4, PostgreSQL's migration 1.
async fn to_schema_before_profile_times(place: &Place) {
    match place {
        Place::File(path) => rusqlite::Connection::open(path)
            .expect("open")
            .execute_batch(
                "ALTER TABLE sessions DROP COLUMN profile_at;
                 PRAGMA user_version = 4;",
            )
            .expect("version 4"),
        Place::Database(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
                .batch_execute(
                    "ALTER TABLE sessions DROP COLUMN profile_at;
                     DELETE FROM schema_migrations WHERE version = 2;",
                )
                .await
                .expect("migration 1");
        }
    }
}

async fn sessions_stored_before_profile_times_keep_their_profile_id_and_take_an_earlier_one(
    store: StoreKind,
) {
    let h = Harness::new(store).await;
    let t = NOW - 2 * HOUR;
    h.accept(vec![
        in_session("known", t + 10 * MINUTE, Some("late")),
        in_session("anonymous", t, None),
    ])
    .await;
    h.store.close().await.expect("close");
    let Harness {
        dir,
        place,
        clock,
        store,
        router,
    } = h;
    drop((router, store));
    to_schema_before_profile_times(&place).await;
    let store = place.open(&clock).await;
    let h = Harness::over(dir, place, clock, store, 5).await;
    assert_eq!(
        h.select_text("SELECT CAST(profile_at AS TEXT) FROM sessions WHERE id = 'known'")
            .await,
        (t + 10 * MINUTE).to_string(),
        "a stored profile id counts from its session's start"
    );
    assert_eq!(profile_of(&h, "known").await, json!("late"));
    assert_eq!(profile_of(&h, "anonymous").await, Value::Null);
    h.accept(vec![
        in_session("known", t + 20 * MINUTE, Some("later")),
        in_session("anonymous", t + MINUTE, Some("first")),
    ])
    .await;
    assert_eq!(
        profile_of(&h, "known").await,
        json!("late"),
        "a later event leaves the stored profile id"
    );
    assert_eq!(profile_of(&h, "anonymous").await, json!("first"));
    h.accept(vec![in_session("known", t, Some("early"))]).await;
    assert_eq!(
        profile_of(&h, "known").await,
        json!("early"),
        "an event before every stored one takes the profile id over"
    );
    assert_eq!(start_profile_of(&h, "known").await, json!("early"));
    assert_eq!(start_profile_of(&h, "anonymous").await, json!("first"));
}

store_tests!(
    identify_merges_fields_and_later_event_time_wins,
    increment_and_decrement_count_from_zero_and_deduplicate,
    incrementing_a_non_number_rejects_the_row_and_changes_nothing,
    groups_and_assignments,
    a_session_takes_the_first_profile_id,
    a_session_takes_the_profile_of_its_earliest_event_whatever_the_arrival_order,
    within_one_batch_the_earliest_event_gives_the_profile_id,
    on_equal_times_the_bytewise_smaller_profile_id_wins,
    concurrent_requests_leave_the_profile_id_of_the_earliest_event,
    sessions_stored_before_profile_times_keep_their_profile_id_and_take_an_earlier_one,
);
