//! Values are stored and read back exactly as sent (SPEC §7), and the ISO-8601 spellings of
//! SPEC §4 are read as the times they name, through the real HTTP path.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::*;

/// A batch body written as text: `json!` cannot hold a 20-digit integer.
async fn batch_text(h: &Harness, body: String) -> (StatusCode, serde_json::Value) {
    let (status, _, answer) = h.post_raw("/track/batch", body.into_bytes(), &[]).await;
    (status, answer)
}

/// The `properties` text of each listed event, in event order, from the answer's own text.
fn properties_texts(body: &str) -> Vec<&str> {
    body.split(r#""properties":"#)
        .skip(1)
        .filter_map(|rest| rest.split(r#","insert_id""#).next())
        .collect()
}

async fn numbers_keep_their_text_whichever_way_the_row_is_read(store: StoreKind) {
    let h = Harness::new(store).await;
    let t = NOW - HOUR;
    // The second row holds an escaped string, which the quick reader leaves to the full check.
    let body = format!(
        r#"{{"events":[
        {{"type":"track","payload":{{"name":"sim","properties":{{"iccid":89014103211118510720,"price":1.10,"n":1e3,"__timestamp":{t},"__insertId":"plain"}}}}}},
        {{"type":"track","payload":{{"name":"sim","properties":{{"iccid":89014103211118510720,"price":1.10,"n":1e3,"city":"caf\u00e9","__timestamp":{},"__insertId":"escaped"}}}}}}]}}"#,
        t + 1
    );
    let (status, answer) = batch_text(&h, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], json!(2), "{answer}");

    let (status, text) = h.get_text("/api/events?name=sim").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let props = properties_texts(&text);
    assert_eq!(props.len(), 2, "{text}");
    for p in props {
        assert!(p.contains(r#""iccid":89014103211118510720"#), "{p}");
        assert!(p.contains(r#""price":1.10"#), "{p}");
        assert!(p.contains(r#""n":1e3"#), "{p}");
    }
}

async fn a_single_track_keeps_number_text_too(store: StoreKind) {
    let h = Harness::new(store).await;
    let body = r#"{"type":"track","payload":{"name":"one","profileId":89014103211118510720,"properties":{"iccid":89014103211118510720,"__deviceId":"d1"}}}"#;
    let (status, _, answer) = h.post_raw("/track", body.as_bytes().to_vec(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, text) = h.get_text("/api/events?name=one").await;
    assert!(text.contains(r#""iccid":89014103211118510720"#), "{text}");
    assert!(
        text.contains(r#""profile_id":"89014103211118510720""#),
        "a numeric profile id keeps its digits: {text}"
    );
}

async fn profiles_keep_number_text_and_increments_are_exact_or_refused(store: StoreKind) {
    let h = Harness::new(store).await;
    let t = NOW - HOUR;
    let body = format!(
        r#"{{"events":[
        {{"type":"identify","payload":{{"profileId":"u1","properties":{{"iccid":89014103211118510720,"ratio":1.10,"__timestamp":{t}}}}}}},
        {{"type":"identify","payload":{{"profileId":"u1","properties":{{"plan":"pro","__timestamp":{t}}}}}}},
        {{"type":"increment","payload":{{"profileId":"u1","property":"iccid"}}}},
        {{"type":"increment","payload":{{"profileId":"u1","property":"ratio","value":0.2}}}},
        {{"type":"increment","payload":{{"profileId":"u1","property":"visits","value":1234567890123456789012345678901}}}}]}}"#
    );
    let (status, answer) = batch_text(&h, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], json!(4), "{answer}");
    assert_eq!(rejected_indices(&answer), vec![4], "{answer}");
    assert_eq!(answer["rejected"][0]["reason"], json!("validation"));

    let (status, text) = h.get_text("/api/profiles/u1").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains(r#""iccid":89014103211118510721"#),
        "incremented exactly: {text}"
    );
    assert!(
        text.contains(r#""ratio":1.30"#),
        "1.10 + 0.2, exactly: {text}"
    );
    assert!(!text.contains("visits"), "{text}");
}

async fn group_properties_keep_number_text(store: StoreKind) {
    let h = Harness::new(store).await;
    let body = r#"{"events":[{"type":"group","payload":{"id":"g1","type":"company","name":"Acme","properties":{"seats":89014103211118510720,"share":1.10,"n":1e3}}}]}"#;
    let (status, answer) = batch_text(&h, body.to_owned()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], json!(1), "{answer}");
    // Groups have no read endpoint: read the store as an operator would.
    let stored = h
        .select_text("SELECT properties FROM groups WHERE id = 'g1'")
        .await;
    assert_eq!(
        stored,
        r#"{"n":1e3,"seats":89014103211118510720,"share":1.10}"#
    );
}

async fn iso_8601_offsets_loggers_write_are_read_as_their_utc_time(store: StoreKind) {
    let h = Harness::new(store).await;
    // 2026-11-28T08:52:41.139Z, written as Java's SimpleDateFormat, Python and a log line would.
    let forms = [
        "2026-11-28T09:52:41.139+0100",
        "2026-11-28T09:52:41.139+01",
        "2026-11-28T09:52:41.139+01:00",
        "2026-11-28 08:52:41.139",
        "2026-11-28t08:52:41.139z",
        "2026-11-28T08:52:41.139000000Z",
    ];
    let events = forms
        .iter()
        .map(|ts| track("logged", json!({"__timestamp": ts, "form": ts})))
        .collect();
    let body = h.accept(events).await;
    assert_eq!(body["rejected"], json!([]), "{body}");
    let events = h.all_events("name=logged").await;
    assert_eq!(events.len(), forms.len());
    for e in events {
        assert_eq!(
            e["created_at"],
            json!("2026-11-28T08:52:41.139Z"),
            "{}",
            e["properties"]["form"]
        );
    }
}

async fn sent_at_takes_the_same_forms(store: StoreKind) {
    let h = Harness::new(store).await;
    // The device clock is two hours behind: sentAt in +0100 form, event times in epoch ms.
    let device_now = NOW - 2 * HOUR;
    let (status, answer) = h
        .batch_body(json!({
            "events": [track("skewed", json!({"__timestamp": device_now - 5 * MINUTE}))],
            "sentAt": "2026-11-28T09:00:00.000+0100",
        }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], json!(1), "{answer}");
    let events = h.all_events("name=skewed").await;
    assert_eq!(
        events[0]["created_at"],
        json!(backfill_protocol::time::format_iso_ms(NOW - 5 * MINUTE))
    );
}

store_tests!(
    numbers_keep_their_text_whichever_way_the_row_is_read,
    a_single_track_keeps_number_text_too,
    profiles_keep_number_text_and_increments_are_exact_or_refused,
    group_properties_keep_number_text,
    iso_8601_offsets_loggers_write_are_read_as_their_utc_time,
    sent_at_takes_the_same_forms,
);
