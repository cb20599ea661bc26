use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::common::*;

async fn events_page_in_time_order_with_a_cursor(store: StoreKind) {
    let h = Harness::new(store).await;
    // Sent newest first; read back oldest first.
    let rows: Vec<Value> = (0..25)
        .rev()
        .map(|i| reading("d", NOW - 10 * HOUR + i * MINUTE, &format!("k{i}")))
        .collect();
    h.accept(rows).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, body) = h
            .get(&format!(
                "/api/events?name=reading&limit=10&cursor={cursor}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        for e in body["events"].as_array().expect("events") {
            seen.push(e["insert_id"].as_str().expect("insert id").to_owned());
            let synced = e["properties"]["__syncedAt"].as_str().expect("__syncedAt");
            assert!(synced.ends_with('Z') && synced.len() == 24, "{synced}");
            assert!(e["properties"].get("__timestamp").is_none());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).map(|i| format!("k{i}")).collect();
    assert_eq!(seen, want);
}

async fn events_of_one_millisecond_page_in_id_order(store: StoreKind) {
    let h = Harness::new(store).await;
    // A fleet reporting on the same minute: 23 events share one timestamp, sent in two requests.
    let rows = |range: std::ops::Range<i64>| -> Vec<Value> {
        range
            .map(|i| reading(&format!("d{i}"), NOW - HOUR, &format!("k{i}")))
            .collect()
    };
    h.accept(rows(0..12)).await;
    h.accept(rows(12..23)).await;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = h
            .get(&format!("/api/events?name=reading&limit=5&cursor={cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        for e in body["events"].as_array().expect("events") {
            let field = |k: &str| e[k].as_str().expect(k).to_owned();
            seen.push((field("created_at"), field("id")));
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 23, "every event once: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "(created_at, id) order across pages: {seen:?}"
    );
}

async fn filters_by_time_device_and_session(store: StoreKind) {
    let h = Harness::new(store).await;
    h.accept(vec![
        reading("a", NOW - 3 * HOUR, "a1"),
        reading("a", NOW - HOUR, "a2"),
        reading("b", NOW - HOUR, "b1"),
    ])
    .await;
    let from = backfill_protocol::time::format_iso_ms(NOW - 2 * HOUR);
    let events = h.all_events(&format!("name=reading&from={from}")).await;
    assert_eq!(events.len(), 2);
    let events = h
        .all_events(&format!("name=reading&to={}", NOW - 2 * HOUR))
        .await;
    assert_eq!(events.len(), 1);
    let events = h.all_events("device_id=b").await;
    assert_eq!(events.len(), 2, "b1 and its session_start");
    let sid = events[0]["session_id"].as_str().expect("sid").to_owned();
    assert_eq!(h.all_events(&format!("session_id={sid}")).await.len(), 2);
    assert_eq!(h.all_sessions("device_id=a").await.len(), 2);
    assert_eq!(h.all_sessions(&format!("from={from}")).await.len(), 2);
}

async fn bad_query_parameters_are_400(store: StoreKind) {
    let h = Harness::new(store).await;
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "from=yesterday",
        "cursor=%%%",
        "cursor=bm9wZQ",
    ] {
        let (status, body) = h.get(&format!("/api/events?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(body["status"], json!(400));
    }
    let (status, _) = h.get("/api/sessions?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
}

async fn health_metrics_and_unknown_routes(store: StoreKind) {
    let h = Harness::new(store).await;
    h.batch(vec![
        reading("d", NOW, "m1"),
        reading("d", NOW, "m1"),
        json!({"type": "alias", "payload": {}}),
    ])
    .await;
    let (status, headers, _) = h
        .send(Request::get("/healthz").body(Body::empty()).expect("req"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["backfill-max-event-age"], "432000",
        "every 2xx carries the window"
    );
    let (status, _, text) = h
        .send(Request::get("/metrics").body(Body::empty()).expect("req"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("text").to_owned();
    assert!(text.contains("backfill_events_accepted_total 2"), "{text}");
    assert!(
        text.contains("backfill_events_duplicates_total 1"),
        "{text}"
    );
    assert!(
        text.contains("backfill_events_rejected_total{reason=\"validation\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("backfill_http_request_duration_seconds_count{route=\"/track/batch\"} 1"),
        "{text}"
    );
    let (status, _, body) = h
        .send(Request::get("/nowhere").body(Body::empty()).expect("req"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], json!(404));
    let (status, _, body) = h
        .send(
            Request::get("/track/batch")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["status"], json!(405));
}

async fn ingestion_routes_answer_cors_preflight(store: StoreKind) {
    let h = Harness::new(store).await;
    let req = Request::options("/track/batch")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "openpanel-client-id,openpanel-client-secret,content-type",
        )
        .body(Body::empty())
        .expect("req");
    let (status, headers, _) = h.send(req).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(
        headers["backfill-max-event-age"], "432000",
        "every 2xx answer, a preflight's too, carries the window"
    );
}

store_tests!(
    events_page_in_time_order_with_a_cursor,
    events_of_one_millisecond_page_in_id_order,
    filters_by_time_device_and_session,
    bad_query_parameters_are_400,
    health_metrics_and_unknown_routes,
    ingestion_routes_answer_cors_preflight,
);
