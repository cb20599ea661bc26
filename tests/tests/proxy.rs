//! The drain through a proxy that loses answers, refuses, stalls and hangs up.

use std::collections::HashSet;
use std::time::Duration;

use backfill_core::{Backfill, DrainEnd};
use backfill_e2e::proxy::{Proxy, Step};
use backfill_e2e::*;
use serde_json::json;

#[test]
fn the_drain_completes_through_every_fault_with_nothing_lost_or_doubled() {
    let server = TestServer::start(5, None);
    let script = vec![
        Step::DropAnswer,
        Step::Status(500, 0),
        Step::Status(503, 1),
        Step::Status(429, 1),
        Step::Stall,
        Step::CloseMidRequest,
        Step::Forward,
        Step::DropAnswer,
    ];
    let proxy = Proxy::start(&server.runtime, server.addr(), script);
    let db = server.dir.path().join("sdk.db");
    let config =
        backfill_core::Config::builder(format!("http://{}", proxy.addr), PROJECT, SECRET, &db)
            .background_upload(false)
            .max_batch_events(500)
            .retry_base(Duration::from_millis(10))
            .request_timeout(Duration::from_secs(2))
            .build()
            .expect("config");
    let sdk = Backfill::open(config).expect("open");
    let now = now_ms();
    let ids: Vec<String> = (0..2000)
        .map(|i| {
            sdk.track_at(
                "reading",
                json!({"i": i}).as_object().cloned().unwrap_or_default(),
                now - 600_000 + i,
            )
            .expect("track")
        })
        .collect();
    let mut drains = 0;
    loop {
        drains += 1;
        assert!(drains < 30, "the drain must finish");
        let report = sdk.flush().expect("drain");
        if report.end == DrainEnd::Empty {
            break;
        }
    }
    assert_eq!(proxy.remaining(), 0, "every fault was met");
    let stored: Vec<String> = server
        .events("name=reading")
        .iter()
        .filter_map(|e| e["insert_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored.len(), 2000, "nothing lost, nothing doubled");
    assert_eq!(
        stored.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    let stats = sdk.stats().expect("stats");
    assert_eq!(stats.buffered_events, 0);
    assert!(
        stats.duplicates >= 500,
        "answers lost after commit came back as duplicates: {stats:?}"
    );
}
