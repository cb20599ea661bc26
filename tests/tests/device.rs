//! The device side: storage failures, bounds, client sessions and the background uploader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backfill_core::upload::transport::HttpTransport;
use backfill_core::{Backfill, DrainEnd, Error, ManualClock};
use backfill_e2e::*;
use serde_json::{Map, Value, json};

fn props(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn a_corrupt_buffer_is_moved_aside_and_recreated() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    // An SQLite file whose pages are damaged (its header says SQLite; recovery applies only
    // to such a file: anything else is refused untouched).
    let mut damaged = b"SQLite format 3\0".to_vec();
    damaged.extend(std::iter::repeat_n(0x5au8, 64 * 1024));
    std::fs::write(&db, damaged).expect("write garbage");
    let sdk =
        Backfill::open(server.sdk_config(&db).build().expect("config")).expect("opens anyway");
    let stats = sdk.stats().expect("stats");
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("corrupt")),
        "reported: {stats:?}"
    );
    let aside: Vec<_> = std::fs::read_dir(server.dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sdk.db.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept for inspection");
    sdk.track("after", props(json!({})))
        .expect("recording works");
    assert_eq!(sdk.flush().expect("drain").sent, 1);
}

#[test]
fn a_full_disk_is_an_error_and_recording_resumes_when_space_returns() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let config = server
        .sdk_config(&db)
        .max_database_bytes(256 * 1024)
        .build()
        .expect("config");
    let sdk = Backfill::open(config).expect("open");
    let blob = "x".repeat(2000);
    let mut recorded = 0u64;
    let full = loop {
        match sdk.track("big", props(json!({"blob": blob}))) {
            Ok(_) => recorded += 1,
            Err(e) => break e,
        }
        assert!(recorded < 10_000, "the cap must be reached");
    };
    assert!(matches!(full, Error::StorageFull(_)), "{full:?}");
    assert_eq!(
        sdk.stats().expect("stats").buffered_events,
        recorded,
        "the failed call recorded nothing"
    );
    let report = sdk.flush().expect("drain frees space");
    assert_eq!(report.sent, recorded);
    sdk.track("big", props(json!({"blob": blob})))
        .expect("space is back");
    assert_eq!(server.events("name=big").len() as u64, recorded);
}

#[test]
fn the_buffer_evicts_the_oldest_past_its_bounds_and_counts_them() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let sdk = Backfill::open(
        server
            .sdk_config(&db)
            .max_buffer_rows(100)
            .build()
            .expect("config"),
    )
    .expect("open");
    let now = now_ms();
    for i in 0..150 {
        sdk.track_at("r", props(json!({"i": i})), now - 100_000 + i)
            .expect("track");
    }
    let stats = sdk.stats().expect("stats");
    assert_eq!((stats.buffered_events, stats.evicted), (100, 50));
    sdk.flush().expect("drain");
    let kept: Vec<i64> = server
        .events("name=r")
        .iter()
        .filter_map(|e| e["properties"]["i"].as_i64())
        .collect();
    assert_eq!(kept.len(), 100);
    assert!(kept.iter().all(|i| *i >= 50), "the oldest 50 went first");
}

#[test]
fn invalid_input_is_refused_at_the_call() {
    let server = TestServer::start(5, None);
    let sdk = Backfill::open(
        server
            .sdk_config(&server.dir.path().join("sdk.db"))
            .build()
            .expect("config"),
    )
    .expect("open");
    for name in ["", "session_start", "a\nb"] {
        assert!(
            matches!(sdk.track(name, Map::new()), Err(Error::InvalidEvent(_))),
            "{name:?}"
        );
    }
    let deep = (0..20).fold(json!(1), |acc, _| json!({"n": acc}));
    assert!(matches!(
        sdk.track("deep", props(json!({"n": deep}))),
        Err(Error::InvalidEvent(_))
    ));
    assert!(matches!(
        sdk.identify("u1", props(json!({"email": "nope"}))),
        Err(Error::InvalidEvent(_))
    ));
    assert_eq!(sdk.stats().expect("stats").buffered_events, 0);
}

#[test]
fn client_sessions_follow_event_time_and_survive_a_restart() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let t0 = now_ms() - 3 * 3_600_000;
    let clock = ManualClock::new(t0);
    let open = |clock: &ManualClock| {
        let config = server.sdk_config(&db).build().expect("config");
        let transport =
            HttpTransport::new(&config.endpoint, PROJECT, SECRET, Duration::from_secs(10))
                .expect("transport");
        Backfill::with_parts(config, Arc::new(transport), Arc::new(clock.clone())).expect("open")
    };
    let sdk = open(&clock);
    sdk.identify(
        "user-7",
        props(json!({"firstName": "Ada", "email": "ada@example.com"})),
    )
    .expect("identify");
    for (minute, name) in [(0, "open"), (10, "tap"), (50, "later")] {
        clock.set(t0 + minute * MINUTE);
        sdk.track(name, Map::new()).expect("track");
    }
    sdk.shutdown();
    drop(sdk);
    let sdk = open(&clock);
    clock.set(t0 + 55 * MINUTE);
    sdk.track("after-restart", Map::new()).expect("track");
    assert_eq!(sdk.flush().expect("drain").end, DrainEnd::Empty);

    let events = server.events("");
    let session_of = |name: &str| {
        events
            .iter()
            .find(|e| e["name"] == json!(name))
            .map(|e| e["session_id"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(session_of("open"), session_of("tap"));
    assert_ne!(
        session_of("tap"),
        session_of("later"),
        "40 minutes of silence start a new session"
    );
    assert_eq!(
        session_of("later"),
        session_of("after-restart"),
        "the session survives a restart"
    );
    assert!(
        events
            .iter()
            .filter(|e| e["name"] != json!("session_start"))
            .all(|e| e["profile_id"] == json!("user-7"))
    );
    let sessions = server.sessions("");
    assert_eq!(sessions.len(), 2);
    assert!(
        sessions
            .iter()
            .all(|s| s["device_id"] == json!(sdk.device_id()))
    );
    let profile = server.get("/api/profiles/user-7");
    assert_eq!(profile["first_name"], json!("Ada"));
}

#[test]
fn the_background_uploader_drains_on_the_threshold_and_when_back_online() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let config = server
        .sdk_config(&db)
        .background_upload(true)
        .flush_threshold(50)
        .flush_interval(Duration::from_secs(3600))
        .build()
        .expect("config");
    let sdk = Backfill::open(config).expect("open");
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for i in 0..49 {
        sdk.track("tick", props(json!({"i": i}))).expect("track");
    }
    // When each drain is due is `upload::schedule::next`'s, tested without a clock there.
    assert_eq!(
        sdk.stats().expect("stats").sent,
        0,
        "below the threshold nothing is sent"
    );
    sdk.track("tick", props(json!({"i": 49}))).expect("track");
    wait_until("the threshold starts a drain", &|| {
        sdk.stats().map(|s| s.sent == 50).unwrap_or(false)
    });

    sdk.set_online(false);
    for i in 0..60 {
        sdk.track("offline", props(json!({"i": i}))).expect("track");
    }
    assert_eq!(
        sdk.stats().expect("stats").buffered_events,
        60,
        "offline: nothing is sent"
    );
    sdk.set_online(true);
    wait_until("going online drains", &|| {
        sdk.stats().map(|s| s.buffered_events == 0).unwrap_or(false)
    });
    sdk.shutdown();
    assert_eq!(server.events("name=offline").len(), 60);
}

#[test]
fn a_few_events_below_the_threshold_leave_on_the_interval() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let config = server
        .sdk_config(&db)
        .background_upload(true)
        .flush_threshold(1000)
        .flush_interval(Duration::from_millis(300))
        .build()
        .expect("config");
    let sdk = Backfill::open(config).expect("open");
    for i in 0..3 {
        sdk.track("rare", props(json!({"i": i}))).expect("track");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while sdk.stats().map(|s| s.sent < 3).unwrap_or(true) {
        assert!(
            Instant::now() < deadline,
            "the interval drains what the threshold does not"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.events("name=rare").len(), 3);
}

#[test]
fn going_to_the_background_drains_within_the_deadline_and_close_refuses_later_calls() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let sdk = Backfill::open(server.sdk_config(&db).build().expect("config")).expect("open");
    for i in 0..30 {
        sdk.track("before-sleep", props(json!({"i": i})))
            .expect("track");
    }
    let report = sdk
        .on_background(Duration::from_secs(25))
        .expect("drain")
        .expect("done within the deadline");
    assert_eq!((report.sent, report.end), (30, DrainEnd::Empty));
    sdk.on_foreground();
    sdk.close();
    assert_eq!(sdk.track("late", Map::new()), Err(Error::Closed));
    assert_eq!(sdk.flush().err(), Some(Error::Closed));
    assert_eq!(
        sdk.on_background(Duration::from_secs(1)).err(),
        Some(Error::Closed)
    );
    assert_eq!(server.events("name=before-sleep").len(), 30);
}

#[test]
fn opting_out_survives_a_restart_and_reset_starts_a_new_session_for_the_same_device() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let open = || Backfill::open(server.sdk_config(&db).build().expect("config")).expect("open");
    let sdk = open();
    let device = sdk.device_id();
    sdk.identify("user-1", Map::new()).expect("identify");
    sdk.track("signed-in", Map::new()).expect("track");
    sdk.reset(false).expect("reset");
    sdk.track("signed-out", Map::new()).expect("track");
    sdk.opt_out().expect("opt out");
    assert_eq!(sdk.track("hidden", Map::new()).expect("no error"), "");
    sdk.close();
    let sdk = open();
    assert!(sdk.is_opted_out());
    sdk.track("hidden", Map::new()).expect("no error");
    let stats = sdk.stats().expect("stats");
    assert_eq!(
        (
            stats.buffered_events,
            stats.opted_out,
            stats.opted_out_calls
        ),
        (3, true, 1)
    );
    sdk.opt_in().expect("opt in");
    sdk.reset(true).expect("a new device id");
    assert_ne!(sdk.device_id(), device);
    assert_eq!(sdk.flush().expect("drain").sent, 3);
    let events = server.events("");
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["name"] == json!(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert!(find("hidden").is_null(), "nothing recorded while opted out");
    assert_eq!(find("signed-in")["profile_id"], json!("user-1"));
    assert_eq!(find("signed-out")["device_id"], json!(device));
    assert_ne!(find("signed-out")["profile_id"], json!("user-1"));
    assert_ne!(
        find("signed-in")["session_id"],
        find("signed-out")["session_id"]
    );
}
