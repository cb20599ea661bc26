use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

fn ev(kind: &str, payload: Value) -> Value {
    json!({"type": kind, "payload": payload})
}

async fn each_rule_rejects_only_its_row_with_its_text(store: StoreKind) {
    let h = Harness::new(store).await;
    let deep = (0..17).fold(json!(1), |acc, _| json!({"n": acc}));
    let rows: Vec<(Value, Option<&str>)> = vec![
        (track("ok-1", json!({"__deviceId": "d1"})), None),
        (
            ev("alias", json!({"profileId": "u1", "alias": "u2"})),
            Some("Alias is not supported"),
        ),
        (
            ev("screen_view", json!({"name": "x"})),
            Some("unsupported type"),
        ),
        (
            ev("track", json!({"name": ""})),
            Some("name must be 1 to 80 characters"),
        ),
        (
            ev("track", json!({"name": "x".repeat(81)})),
            Some("name must be 1 to 80 characters"),
        ),
        (
            ev("track", json!({"name": "a\nb"})),
            Some("name must not contain line breaks"),
        ),
        (
            ev("track", json!({"name": "session_start"})),
            Some("name session_start is reserved"),
        ),
        (
            ev("track", json!({"name": "session_end"})),
            Some("name session_end is reserved"),
        ),
        (
            ev("track", json!({"name": "p", "properties": [1, 2]})),
            Some("properties must be an object"),
        ),
        (
            ev("track", json!({"name": "p", "profileId": ""})),
            Some("profileId must be a non-empty string or a number"),
        ),
        (
            ev("track", json!({"name": "g", "groups": ["a", ""]})),
            Some("groups must be null or an array of non-empty strings"),
        ),
        (
            track("ts", json!({"__timestamp": "next tuesday"})),
            Some("invalid __timestamp"),
        ),
        (
            track("dev", json!({"__deviceId": "   "})),
            Some("__deviceId must be 1 to 64 characters"),
        ),
        (
            track("dev", json!({"__deviceId": "d".repeat(65)})),
            Some("__deviceId must be 1 to 64 characters"),
        ),
        (
            track("sid", json!({"__sessionId": ""})),
            Some("__sessionId must be 1 to 64 characters"),
        ),
        (
            track("iid", json!({"__insertId": "i".repeat(65)})),
            Some("__insertId must be 1 to 64 characters"),
        ),
        (
            track("big", json!({"blob": "x".repeat(256 * 1024)})),
            Some("event larger than 256 KiB"),
        ),
        (
            track("deep", json!({"n": deep})),
            Some("properties nest deeper than 16 levels"),
        ),
        (
            ev("identify", json!({"firstName": "Ada"})),
            Some("identify requires a profileId"),
        ),
        (
            ev(
                "identify",
                json!({"profileId": "u1", "email": "ada-at-example"}),
            ),
            Some("email must be a valid email address"),
        ),
        (
            ev(
                "identify",
                json!({"profileId": "u1", "avatar": "javascript:alert(1)"}),
            ),
            Some("avatar must be an http(s) URL"),
        ),
        (
            ev("increment", json!({"profileId": "u1"})),
            Some("increment requires a non-empty property"),
        ),
        (
            ev("decrement", json!({"property": "p"})),
            Some("decrement requires a profileId"),
        ),
        (
            ev(
                "increment",
                json!({"profileId": "u1", "property": "p", "value": -1}),
            ),
            Some("value must be a positive number"),
        ),
        (
            ev("group", json!({"id": "g1", "type": "company"})),
            Some("group requires a non-empty name"),
        ),
        (
            ev("assign_group", json!({"profileId": "u1", "groupIds": [""]})),
            Some("groupIds must be a non-empty array of non-empty strings"),
        ),
        (json!("not an object"), Some("event must be an object")),
        (
            track(
                "ok-2",
                json!({"__deviceId": "d1", "nested": {"a": [1, {"b": null}]}}),
            ),
            None,
        ),
        (
            ev(
                "identify",
                json!({"profileId": 7, "email": "ada@example.com", "avatar": "https://x.io/a.png"}),
            ),
            None,
        ),
        (
            ev(
                "increment",
                json!({"profileId": "u1", "property": "logins"}),
            ),
            None,
        ),
        (
            ev(
                "group",
                json!({"id": "g1", "type": "company", "name": "Acme"}),
            ),
            None,
        ),
        (
            ev(
                "assign_group",
                json!({"profileId": "u1", "groupIds": ["g1"]}),
            ),
            None,
        ),
    ];
    let expected_ok = rows.iter().filter(|(_, e)| e.is_none()).count();
    let (status, body) = h.batch(rows.iter().map(|(r, _)| r.clone()).collect()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], json!(expected_ok), "{body}");
    let rejected = body["rejected"].as_array().expect("rejected");
    let want: Vec<(usize, &str)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, (_, e))| e.map(|e| (i, e)))
        .collect();
    assert_eq!(rejected.len(), want.len(), "{body}");
    for (got, (index, error)) in rejected.iter().zip(want) {
        assert_eq!(got["index"], json!(index), "{got}");
        assert_eq!(got["reason"], json!("validation"), "{got}");
        assert_eq!(got["error"], json!(error), "row {index}");
    }
    let mut names: Vec<String> = h
        .all_events("")
        .await
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .filter(|n| n != "session_start")
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["ok-1".to_owned(), "ok-2".to_owned()],
        "rejected rows stored nothing"
    );
}

async fn an_all_rejected_batch_is_still_202(store: StoreKind) {
    let h = Harness::new(store).await;
    let (status, body) = h
        .batch(vec![ev("alias", json!({})), ev("nope", json!({}))])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], json!(0));
    assert_eq!(rejected_indices(&body), vec![0, 1]);
}

async fn stored_time(h: &Harness, device: &str) -> Value {
    let events = h
        .all_events(&format!("device_id={device}&name=reading"))
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    events[0].clone()
}

async fn timestamps_in_every_accepted_form(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![
        track(
            "reading",
            json!({"__deviceId": "iso-offset", "__timestamp": "2026-11-28T11:30:00.250+02:00"}),
        ),
        track(
            "reading",
            json!({"__deviceId": "iso-naive", "__timestamp": "2026-11-28T09:30:00"}),
        ),
        track(
            "reading",
            json!({"__deviceId": "epoch-ms", "__timestamp": NOW - HOUR}),
        ),
        track("reading", json!({"__deviceId": "absent"})),
    ])
    .await;
    assert_eq!(
        stored_time(&h, "iso-offset").await["created_at"],
        json!("2026-11-28T09:30:00.250Z")
    );
    assert_eq!(
        stored_time(&h, "iso-naive").await["created_at"],
        json!("2026-11-28T09:30:00.000Z")
    );
    assert_eq!(
        stored_time(&h, "epoch-ms").await["created_at"],
        json!("2026-11-28T09:00:00.000Z")
    );
    assert_eq!(
        stored_time(&h, "absent").await["created_at"],
        json!("2026-11-28T10:00:00.000Z"),
        "receive time"
    );
}

async fn the_age_window_rejects_older_than_five_days(store: StoreKind) {
    let h = Harness::new(store).await;
    let (status, body) = h
        .batch(vec![
            reading("d", NOW - 5 * DAY - 1000, "too-old"),
            reading("d", NOW - 5 * DAY + 1000, "just-in"),
        ])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], json!(1));
    assert_eq!(body["rejected"][0]["index"], json!(0));
    assert_eq!(
        body["rejected"][0]["error"],
        json!("event timestamp older than 5 days")
    );
}

async fn a_configured_window_is_named_and_advertised(store: StoreKind) {
    let h = Harness::with_window(store, 8).await;
    let (status, headers, body) = h
        .post_raw(
            "/track/batch",
            json!({"events": [reading("d", NOW - 7 * DAY, "week"), reading("d", NOW - 9 * DAY, "nine")]})
                .to_string()
                .into_bytes(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["backfill-max-event-age"], "691200");
    assert_eq!(body["accepted"], json!(1));
    assert_eq!(
        body["rejected"][0]["error"],
        json!("event timestamp older than 8 days")
    );
}

async fn future_times_are_clamped_to_the_receive_time(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![
        reading("future", NOW + 2 * MINUTE, "f"),
        reading("near", NOW + 30_000, "n"),
    ])
    .await;
    let clamped = stored_time(&h, "future").await;
    assert_eq!(clamped["created_at"], json!("2026-11-28T10:00:00.000Z"));
    assert_eq!(
        clamped["properties"]["__clientTimestamp"],
        json!(NOW + 2 * MINUTE)
    );
    let near = stored_time(&h, "near").await;
    assert_eq!(
        near["created_at"],
        json!("2026-11-28T10:00:30.000Z"),
        "within 60 s is kept"
    );
    assert!(near["properties"].get("__clientTimestamp").is_none());
}

async fn skew_is_corrected_from_sent_at(store: StoreKind) {
    let h = Harness::new(store).await;
    // The device clock is two hours behind: it recorded 10 minutes ago at its 07:50.
    let device_now = NOW - 2 * HOUR;
    let (status, body) = h
        .batch_body(json!({
            "events": [reading("skewed", device_now - 10 * MINUTE, "s1"), track("reading", json!({"__deviceId": "no-ts"}))],
            "sentAt": backfill_protocol::time::format_iso_ms(device_now),
        }))
        .await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::ACCEPTED, json!(2))
    );
    let e = stored_time(&h, "skewed").await;
    assert_eq!(e["created_at"], json!("2026-11-28T09:50:00.000Z"));
    assert_eq!(
        e["properties"]["__clientTimestamp"],
        json!(device_now - 10 * MINUTE)
    );
    let e = stored_time(&h, "no-ts").await;
    assert_eq!(
        e["created_at"],
        json!("2026-11-28T10:00:00.000Z"),
        "no timestamp: receive time, unshifted"
    );

    // 30 s of skew is under the threshold and left alone.
    let (status, _) = h
        .batch_body(
            json!({"events": [reading("slight", NOW - 40_000, "s2")], "sentAt": NOW - 30_000}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let e = stored_time(&h, "slight").await;
    assert_eq!(e["created_at"], json!("2026-11-28T09:59:20.000Z"));
    assert!(e["properties"].get("__clientTimestamp").is_none());
}

store_tests!(
    each_rule_rejects_only_its_row_with_its_text,
    an_all_rejected_batch_is_still_202,
    timestamps_in_every_accepted_form,
    the_age_window_rejects_older_than_five_days,
    a_configured_window_is_named_and_advertised,
    future_times_are_clamped_to_the_receive_time,
    skew_is_corrected_from_sent_at,
);
