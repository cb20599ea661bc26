//! A wrong endpoint, or answers that refuse every request alike, never cost an event (SPEC §9).

use std::time::Duration;

use backfill_core::{Backfill, Config, DrainEnd, Error};
use backfill_e2e::proxy::{Proxy, Step};
use backfill_e2e::*;
use serde_json::json;

fn record(sdk: &Backfill, n: usize) {
    let now = now_ms();
    let events = (0..n)
        .map(|i| backfill_core::Event {
            name: "reading".to_owned(),
            properties: json!({"i": i}).as_object().cloned().unwrap_or_default(),
            timestamp_ms: Some(now - 3_600_000 + i as i64),
            device_id: Some(format!("sensor-{}", i % 7)),
            insert_id: None,
        })
        .collect();
    sdk.track_many(events).expect("record");
}

fn open(endpoint: &str, db: &std::path::Path) -> Backfill {
    let config = Config::builder(endpoint, PROJECT, SECRET, db)
        .background_upload(false)
        .retry_base(Duration::from_millis(10))
        .build()
        .expect("config");
    Backfill::open(config).expect("open")
}

fn assert_kept(sdk: &Backfill, n: u64, paused: bool) {
    let stats = sdk.stats().expect("stats");
    assert_eq!(stats.buffered_events, n, "every event kept: {stats:?}");
    assert_eq!(stats.dead_lettered, 0, "none dead-lettered: {stats:?}");
    assert_eq!(stats.misconfigured, paused, "{stats:?}");
    assert!(sdk.dead_letters(10).expect("dead letters").is_empty());
}

#[test]
fn a_wrong_endpoint_keeps_the_whole_backlog() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("gw.db");
    // The server's window is learned first, so that the wrong URLs below are met by the uploads
    // themselves (`POST .../v1/track/batch`), not only by the window's probe.
    {
        let sdk = open(&server.url(), &db);
        record(&sdk, 1);
        assert_eq!(sdk.flush().expect("drain").sent, 1);
    }
    // A route as the endpoint is refused before anything is opened.
    let route = Config::builder(
        format!("{}/track/batch", server.url()),
        PROJECT,
        SECRET,
        &db,
    )
    .build();
    assert!(
        matches!(&route, Err(Error::InvalidConfig(why)) if why.contains("base URL")),
        "{route:?}"
    );
    for wrong in ["/v1", "/ingest/v2"] {
        let sdk = open(&format!("{}{wrong}", server.url()), &db);
        record(&sdk, 1500);
        let before = sdk.stats().expect("stats").requests;
        let result = sdk.flush();
        assert!(
            matches!(&result, Err(Error::Misconfigured(why)) if why.contains("404")),
            "{wrong}: {result:?}"
        );
        let stats = sdk.stats().expect("stats");
        assert_eq!(
            stats.buffered_events,
            1500 * if wrong == "/v1" { 1 } else { 2 }
        );
        // The requests already in flight (at most one per 2000 events) and no split.
        assert!(
            stats.requests - before <= stats.buffered_events.div_ceil(2000),
            "{wrong}: no split: {stats:?}"
        );
    }
    let sdk = open(&format!("{}/v1", server.url()), &db);
    assert_kept(&sdk, 3000, false);
    drop(sdk);

    // A fresh buffer meets the wrong URL at the window's probe (`GET .../v1/healthz`).
    let fresh = server.dir.path().join("fresh.db");
    let sdk = open(&format!("{}/v1", server.url()), &fresh);
    record(&sdk, 10);
    assert!(matches!(sdk.flush(), Err(Error::Misconfigured(_))));
    assert_kept(&sdk, 10, true);

    let sdk = open(&server.url(), &db);
    let report = sdk.flush().expect("drain");
    assert_eq!((report.end, report.sent), (DrainEnd::Empty, 3000));
    assert_eq!(server.events("name=reading").len(), 3001);
}

#[test]
fn an_answer_that_is_not_the_contracts_stops_uploads() {
    let server = TestServer::start(5, None);
    for (code, body) in [
        (200, "<html>Welcome to nginx!</html>"),
        (400, "<html>400 Bad Request</html>"),
        (202, "queued"),
        // Contract-shaped answers that do not account for the 100 events sent (SPEC §2: each
        // index once, accepted or rejected): deleting by them would lose events.
        (202, r#"{"accepted": 1, "duplicates": 0, "rejected": []}"#),
        (
            202,
            r#"{"accepted": 99, "duplicates": 0, "rejected": [{"index": 100, "reason": "validation", "error": "x"}]}"#,
        ),
        (
            202,
            r#"{"accepted": 98, "duplicates": 0, "rejected": [{"index": 3, "reason": "validation", "error": "x"}, {"index": 3, "reason": "validation", "error": "x"}]}"#,
        ),
        (
            202,
            r#"{"accepted": 100, "duplicates": 101, "rejected": []}"#,
        ),
    ] {
        let proxy = Proxy::start(
            &server.runtime,
            server.addr(),
            vec![Step::Forward, Step::Foreign(code, body)],
        );
        let db = server
            .dir
            .path()
            .join(format!("gw-{code}-{}.db", body.len()));
        let sdk = open(&format!("http://{}", proxy.addr), &db);
        record(&sdk, 100);
        let result = sdk.flush();
        assert!(
            matches!(&result, Err(Error::Misconfigured(why)) if why.contains(&code.to_string())),
            "{code}: {result:?}"
        );
        assert_kept(&sdk, 100, true);
    }
}

#[test]
fn a_window_no_server_would_say_expires_nothing() {
    let server = TestServer::start(5, None);
    for (i, window) in ["1", "3600", "86401", "7862400"].into_iter().enumerate() {
        let proxy = Proxy::start(
            &server.runtime,
            server.addr(),
            vec![Step::Window(window); 8],
        );
        let db = server.dir.path().join(format!("gw-window-{i}.db"));
        let sdk = open(&format!("http://{}", proxy.addr), &db);
        // An hour old: inside the server's 5 days, outside a window of 1 s or 1 h.
        record(&sdk, 10);
        let report = sdk.flush().expect("drain");
        assert_eq!(
            (report.sent, report.expired),
            (10, 0),
            "{window}: {report:?}"
        );
        assert_eq!(
            report.window_ms,
            5 * 86_400_000,
            "{window}: the default is kept"
        );
        drop(sdk);
        // Nor is it saved for later.
        let sdk = open(&format!("http://{}", proxy.addr), &db);
        record(&sdk, 3);
        let report = sdk.flush().expect("drain");
        assert_eq!(
            (report.sent, report.expired),
            (3, 0),
            "{window}: {report:?}"
        );
    }
}

#[test]
fn an_endless_answer_is_not_read_to_its_end_and_costs_no_event() {
    let server = TestServer::start(5, None);
    const PAGE: usize = 1 << 30;
    let proxy = Proxy::start(
        &server.runtime,
        server.addr(),
        vec![Step::Forward, Step::Padded(202, PAGE)],
    );
    let db = server.dir.path().join("gw-endless.db");
    let sdk = open(&format!("http://{}", proxy.addr), &db);
    record(&sdk, 100);
    let result = sdk.flush();
    assert!(
        matches!(&result, Err(Error::Misconfigured(why)) if why.contains("202")),
        "{result:?}"
    );
    assert_kept(&sdk, 100, true);
    let taken = proxy.padding_written();
    assert!(
        taken < PAGE / 16,
        "the client stopped reading a 1 GiB answer after {taken} bytes"
    );
}

#[test]
fn every_event_refused_alike_is_a_configuration_fault() {
    let server = TestServer::start(5, None);
    // The probe, then 4 events refused, 2, then each of the last two alone.
    let script = vec![
        Step::Forward,
        Step::Status(400, 0),
        Step::Status(400, 0),
        Step::Status(400, 0),
        Step::Status(400, 0),
    ];
    let proxy = Proxy::start(&server.runtime, server.addr(), script);
    let db = server.dir.path().join("gw.db");
    let sdk = open(&format!("http://{}", proxy.addr), &db);
    record(&sdk, 4);
    let result = sdk.flush();
    assert!(
        matches!(&result, Err(Error::Misconfigured(why)) if why.contains("every event sent alone")),
        "{result:?}"
    );
    assert_eq!(proxy.remaining(), 0);
    assert_kept(&sdk, 4, true);
}

#[test]
fn a_single_event_the_server_told_apart_is_dead_lettered() {
    let server = TestServer::start(5, None);
    // The probe, then 4 events refused, 2, the first alone; its sibling alone is accepted.
    let script = vec![
        Step::Forward,
        Step::Status(422, 0),
        Step::Status(422, 0),
        Step::Status(422, 0),
    ];
    let proxy = Proxy::start(&server.runtime, server.addr(), script);
    let db = server.dir.path().join("gw.db");
    let sdk = open(&format!("http://{}", proxy.addr), &db);
    record(&sdk, 4);
    let report = sdk.flush().expect("drain");
    assert_eq!(report.end, DrainEnd::Empty);
    assert_eq!((report.sent, report.dead_lettered), (3, 1));
    let dead = sdk.dead_letters(10).expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body.contains(r#""i":0"#), "{dead:?}");
    assert_eq!(dead[0].error, "injected by the proxy");
    assert_eq!(server.events("name=reading").len(), 3);
    let stats = sdk.stats().expect("stats");
    assert_eq!((stats.buffered_events, stats.dead_lettered), (0, 1));
    assert!(!stats.misconfigured);
}
