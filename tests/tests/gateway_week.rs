//! A gateway of 7 sensors offline for a week of one-minute readings, drained at once.

use std::collections::{HashMap, HashSet};

use backfill_core::{Backfill, DrainEnd, Event};
use backfill_e2e::*;
use backfill_protocol::ids;
use backfill_protocol::time::parse_timestamp;
use serde_json::json;

const SENSORS: usize = 7;
const MINUTES: i64 = 7 * 24 * 60;

/// Records the week; readings sit 30 s past each minute so no reading lies on the age boundary.
fn record_week(sdk: &Backfill, start: i64) -> usize {
    let mut total = 0;
    for minute in 0..MINUTES {
        let t = start + minute * MINUTE + 30_000;
        let events = (0..SENSORS)
            .map(|s| Event {
                name: "reading".into(),
                properties: json!({"temp": 18.0 + (minute % 60) as f64 / 10.0, "sensor": s})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                timestamp_ms: Some(t),
                device_id: Some(format!("gw-0001-sensor-{s:02}")),
                insert_id: None,
            })
            .collect();
        total += sdk.track_many(events).expect("recorded").len();
    }
    total
}

#[test]
fn a_week_drains_into_an_eight_day_server_in_the_fewest_requests() {
    let server = TestServer::start(8, None);
    let db = server.dir.path().join("gateway.db");
    let sdk = Backfill::open(server.sdk_config(&db).build().expect("config")).expect("open");
    let start = now_ms() - 7 * DAY;
    let total = record_week(&sdk, start);
    assert_eq!(total, 70_560);
    assert_eq!(sdk.stats().expect("stats").buffered_events, 70_560);

    let report = sdk.flush().expect("drain");
    assert_eq!(report.end, DrainEnd::Empty);
    assert_eq!(report.sent, 70_560);
    assert_eq!(report.requests, 36, "ceil(70,560 / 2000) requests");
    assert_eq!(
        report.expired, 0,
        "the server's 8-day window was learned before expiring"
    );
    let stats = sdk.stats().expect("stats");
    assert_eq!(
        (stats.buffered_events, stats.sent, stats.duplicates),
        (0, 70_560, 0)
    );

    let events = server.events("name=reading");
    assert_eq!(events.len(), 70_560);
    let mut seen = HashSet::new();
    let mut sessions_of_events = HashSet::new();
    for e in &events {
        assert!(
            seen.insert(e["insert_id"].as_str().expect("insert id").to_owned()),
            "stored once: {e}"
        );
        let t = parse_timestamp(&e["created_at"]).expect("time");
        assert_eq!((t - start - 30_000) % MINUTE, 0, "at its own minute: {e}");
        let device = e["device_id"].as_str().expect("device");
        assert_eq!(
            e["session_id"],
            json!(ids::session_id(PROJECT, device, t)),
            "its 30-minute session"
        );
        sessions_of_events.insert(e["session_id"].as_str().unwrap_or_default().to_owned());
    }
    let starts = server.events("name=session_start");
    let mut per_session: HashMap<String, usize> = HashMap::new();
    for s in &starts {
        *per_session
            .entry(s["session_id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_session.values().all(|n| *n == 1),
        "one session_start per session"
    );
    let start_sessions: HashSet<String> = per_session.into_keys().collect();
    assert_eq!(start_sessions, sessions_of_events);
    let sessions = server.sessions("");
    assert_eq!(sessions.len(), sessions_of_events.len());
    let counted: i64 = sessions
        .iter()
        .filter_map(|s| s["event_count"].as_i64())
        .sum();
    assert_eq!(counted, 70_560);
}

#[test]
fn against_the_default_window_old_readings_expire_on_the_device() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("gateway.db");
    let sdk = Backfill::open(server.sdk_config(&db).build().expect("config")).expect("open");
    let start = now_ms() - 7 * DAY;
    let total = record_week(&sdk, start) as u64;
    let report = sdk.flush().expect("drain");
    let drained_by = now_ms();
    assert_eq!(report.end, DrainEnd::Empty);
    // Readings older than 5 days at drain time: 2 days of minutes for 7 sensors, plus the minutes
    // that crossed the boundary while the week was being recorded (none when that took < 30 s).
    let late_minutes = ((drained_by - start - 7 * DAY - 30_000).max(0) / MINUTE + 1) as u64;
    let too_old = 2 * 24 * 60 * SENSORS as u64;
    assert!(
        (too_old..=too_old + late_minutes * SENSORS as u64).contains(&report.expired),
        "expired {} (at least {too_old})",
        report.expired
    );
    assert_eq!(
        report.expired % SENSORS as u64,
        0,
        "whole minutes expire, all sensors alike"
    );
    let too_old = report.expired;
    assert_eq!(report.sent, total - too_old);
    assert_eq!(report.dead_lettered, 0, "expired events are never sent");
    let stats = sdk.stats().expect("stats");
    assert_eq!(stats.expired, too_old, "expiry is counted, never silent");
    assert_eq!(server.events("name=reading").len() as u64, total - too_old);
}
