use std::collections::HashSet;

use axum::http::StatusCode;
use backfill_protocol::ids;
use serde_json::{Value, json};

use crate::common::*;

fn session_of(events: &[Value], name: &str) -> String {
    events
        .iter()
        .find(|e| e["name"] == json!(name))
        .and_then(|e| e["session_id"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn deterministic_session_ids_match_the_spec_vectors(store: StoreKind) {
    let h = Harness::new(store).await;
    // The vectors lie a year before NOW: move the clock next to them.
    h.clock.set(1_764_289_805_000 + HOUR);
    let device = "gw-0001-sensor-07";
    let times: [i64; 5] = [
        1_764_288_000_000,
        1_764_288_004_999,
        1_764_288_005_000,
        1_764_289_799_999,
        1_764_289_805_000,
    ];
    let rows = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            track(
                &format!("v{i}"),
                json!({"__deviceId": device, "__timestamp": t}),
            )
        })
        .collect();
    h.accept(rows).await;
    let events = h.all_events("").await;
    assert_eq!(session_of(&events, "v0"), "QWBTyQ-9gHGf9KlYq5-i_g");
    assert_eq!(
        session_of(&events, "v1"),
        "QWBTyQ-9gHGf9KlYq5-i_g",
        "5 s grace"
    );
    assert_eq!(session_of(&events, "v2"), "qoPcS5WjlrHt4Zf5X8ETDg");
    assert_eq!(session_of(&events, "v3"), "qoPcS5WjlrHt4Zf5X8ETDg");
    assert_eq!(session_of(&events, "v4"), "h3ga5RYgRDjCWlwzG74Qdg");
    let starts = events
        .iter()
        .filter(|e| e["name"] == json!("session_start"))
        .count();
    assert_eq!(starts, 3, "one session_start per session");
}

async fn client_sessions_are_honoured(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![
        track("a", json!({"__deviceId": "phone", "__sessionId": "app-session-1", "__timestamp": NOW - 3 * HOUR})),
        track("b", json!({"__deviceId": "phone", "__sessionId": "app-session-1", "__timestamp": NOW - MINUTE})),
    ])
    .await;
    let sessions = h.all_sessions("").await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["id"], json!("app-session-1"));
    assert_eq!(sessions[0]["duration_ms"], json!(3 * HOUR - MINUTE));
    assert_eq!(sessions[0]["event_count"], json!(2));
}

async fn session_start_moves_earlier_when_earlier_events_arrive(store: StoreKind) {
    let h = Harness::new(store).await;
    let base = NOW - 2 * HOUR - 30 * MINUTE + 10_000; // inside one 30-minute bucket
    h.accept(vec![reading("d", base + 20 * MINUTE, "late")])
        .await;
    h.accept(vec![
        reading("d", base + 5 * MINUTE, "early"),
        reading("d", base + 25 * MINUTE, "latest"),
    ])
    .await;
    let starts = h.all_events("name=session_start").await;
    assert_eq!(starts.len(), 1);
    assert_eq!(
        starts[0]["created_at"],
        json!(backfill_protocol::time::format_iso_ms(
            base + 5 * MINUTE - 100
        ))
    );
    let sessions = h.all_sessions("").await;
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(
        s["started_at"],
        json!(backfill_protocol::time::format_iso_ms(base + 5 * MINUTE))
    );
    assert_eq!(
        s["ended_at"],
        json!(backfill_protocol::time::format_iso_ms(base + 25 * MINUTE))
    );
    assert_eq!(s["duration_ms"], json!(20 * MINUTE));
    assert_eq!(s["event_count"], json!(3));
    assert_eq!(s["device_id"], json!("d"));
}

async fn sixteen_concurrent_batches_of_one_session_make_one_session_start(store: StoreKind) {
    let h = Harness::new(store).await;
    let start = NOW - 4 * HOUR - (NOW - 4 * HOUR) % (30 * MINUTE) + 10_000;
    let mut times: Vec<i64> = (0..16 * 20).map(|i| start + i * 5_000).collect();
    // Scramble the order deterministically so each batch holds a spread of times.
    let mut seed = 0x9e37_79b9_u64;
    for i in (1..times.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        times.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let mut tasks = Vec::new();
    for (b, chunk) in times.chunks(20).enumerate() {
        let rows: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| reading("sensor-1", *t, &format!("b{b}-{i}")))
            .collect();
        let router = h.router.clone();
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let req = axum::http::Request::post("/track/batch")
                .header("openpanel-client-id", PROJECT)
                .header("openpanel-client-secret", SECRET)
                .body(axum::body::Body::from(json!({"events": rows}).to_string()))
                .expect("request");
            router.oneshot(req).await.expect("infallible").status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::ACCEPTED);
    }
    let sessions = h.all_sessions("device_id=sensor-1").await;
    assert_eq!(
        sessions.len(),
        1,
        "all 320 readings lie in one 30-minute bucket"
    );
    assert_eq!(sessions[0]["event_count"], json!(320));
    let starts = h.all_events("name=session_start").await;
    assert_eq!(starts.len(), 1);
    assert_eq!(
        starts[0]["created_at"],
        json!(backfill_protocol::time::format_iso_ms(start - 100))
    );
}

async fn a_backfill_never_touches_the_live_session(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![
        reading("phone", NOW - 2 * MINUTE, "live-1"),
        reading("phone", NOW - MINUTE, "live-2"),
    ])
    .await;
    let live_before = h.all_sessions("device_id=phone").await;
    assert_eq!(live_before.len(), 1);
    // Six hours of history arrive afterwards.
    let history: Vec<Value> = (0..36)
        .map(|i| reading("phone", NOW - 6 * HOUR + i * 5 * MINUTE, &format!("h{i}")))
        .collect();
    h.accept(history).await;
    let after = h.all_sessions("device_id=phone").await;
    let live_after = after
        .iter()
        .find(|s| s["id"] == live_before[0]["id"])
        .expect("live session kept");
    assert_eq!(live_after, &live_before[0], "the live session is unchanged");
    let expected: HashSet<String> = (0..36)
        .map(|i| ids::session_id(PROJECT, "phone", NOW - 6 * HOUR + i * 5 * MINUTE))
        .collect();
    assert_eq!(after.len(), 1 + expected.len());
    let events = h.all_events("device_id=phone&name=reading").await;
    for e in &events {
        let t = backfill_protocol::time::parse_timestamp(&e["created_at"]).expect("time");
        assert_eq!(
            e["session_id"],
            json!(ids::session_id(PROJECT, "phone", t)),
            "each event in its own bucket"
        );
    }
}

async fn fingerprint_devices_and_server_events(store: StoreKind) {
    let h = Harness::new(store).await;
    let body =
        json!({"events": [track("a", json!({})), track("b", json!({"__ip": "198.51.100.1"}))]})
            .to_string()
            .into_bytes();
    let ua = [
        ("user-agent", "Mozilla/5.0 (Linux; Android 14)"),
        ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
    ];
    let (status, _, _) = h.post_raw("/track/batch", body.clone(), &ua).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = h
        .post_raw(
            "/track/batch",
            json!({"events": [track("server", json!({}))]})
                .to_string()
                .into_bytes(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let events = h.all_events("").await;
    let dev = |name: &str| {
        events
            .iter()
            .find(|e| e["name"] == json!(name))
            .map(|e| e["device_id"].clone())
            .expect("event")
    };
    let a = dev("a");
    assert_eq!(a.as_str().map(str::len), Some(32), "hex of 16 bytes");
    assert_ne!(a, dev("b"), "__ip changes the fingerprint");
    assert_eq!(
        dev("server"),
        json!(""),
        "no user agent, no device id: a server event"
    );
    let server = events
        .iter()
        .find(|e| e["name"] == json!("server"))
        .expect("server event");
    assert_eq!(server["session_id"], json!(""));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["name"] == json!("session_start"))
            .count(),
        2
    );
    // The same device on the same day keeps its id.
    let (_, _, _) = h
        .post_raw(
            "/track/batch",
            json!({"events": [track("again", json!({}))]})
                .to_string()
                .into_bytes(),
            &ua,
        )
        .await;
    let events = h.all_events("name=again").await;
    assert_eq!(events[0]["device_id"], a);
}

async fn single_track_answers_with_its_ids(store: StoreKind) {
    let h = Harness::new(store).await;
    let body = track(
        "tap",
        json!({"__deviceId": "phone-9", "__timestamp": NOW - MINUTE}),
    )
    .to_string()
    .into_bytes();
    let (status, headers, answer) = h.post_raw("/track", body, &[]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["deviceId"], json!("phone-9"));
    assert_eq!(
        answer["sessionId"],
        json!(ids::session_id(PROJECT, "phone-9", NOW - MINUTE))
    );
    assert_eq!(headers["backfill-max-event-age"], "432000");
    let body = track("session_start", json!({})).to_string().into_bytes();
    let (status, _, answer) = h.post_raw("/track", body, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["message"], json!("name session_start is reserved"));
    let body = json!({"type": "alias", "payload": {}})
        .to_string()
        .into_bytes();
    let (status, _, answer) = h.post_raw("/track", body, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["message"], json!("Alias is not supported"));
}

store_tests!(
    deterministic_session_ids_match_the_spec_vectors,
    client_sessions_are_honoured,
    session_start_moves_earlier_when_earlier_events_arrive,
    sixteen_concurrent_batches_of_one_session_make_one_session_start,
    a_backfill_never_touches_the_live_session,
    fingerprint_devices_and_server_events,
    single_track_answers_with_its_ids,
);
