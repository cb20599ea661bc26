//! An IoT gateway: 20 sensors, a week offline at one reading a minute, one drain.
//!
//! Run: `cargo run --release -p backfill-examples --example iot-gateway`
//!
//! It checks its own result: every reading stored exactly once, at its own minute, and exits
//! non-zero otherwise.

use std::time::Instant;

use backfill_core::{Backfill, Clock, Config, DrainEnd, Event, SystemClock};
use backfill_examples::{LocalServer, PROJECT, SECRET};
use backfill_protocol::time::parse_timestamp;
use serde_json::json;

const SENSORS: usize = 20;
const MINUTES: i64 = 7 * 24 * 60;

fn main() -> anyhow::Result<()> {
    // A week of backlog needs a server whose window covers it: 8 days here (the default is 5).
    let server = LocalServer::start(8)?;
    let dir = tempfile::tempdir()?;
    let config = Config::builder(server.url(), PROJECT, SECRET, dir.path().join("gateway.db"))
        .background_upload(false)
        .max_buffer_rows(2_000_000)
        .build()?;
    let gateway = Backfill::open(config)?;

    let start = SystemClock.now_ms() - MINUTES * 60_000;
    let recording = Instant::now();
    for minute in 0..MINUTES {
        let t = start + minute * 60_000 + 30_000;
        let readings = (0..SENSORS)
            .map(|s| Event {
                name: "reading".into(),
                properties: json!({"temp_c": 18.0 + (minute % 600) as f64 / 100.0, "sensor": s})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                timestamp_ms: Some(t),
                device_id: Some(format!("gw-7-sensor-{s:02}")),
                insert_id: None,
            })
            .collect();
        gateway.track_many(readings)?;
    }
    let total = SENSORS as u64 * MINUTES as u64;
    println!(
        "recorded {total} readings offline in {:.1} s",
        recording.elapsed().as_secs_f64()
    );

    let draining = Instant::now();
    let report = gateway.flush()?;
    anyhow::ensure!(
        report.end == DrainEnd::Empty,
        "drain ended early: {report:?}"
    );
    let secs = draining.elapsed().as_secs_f64();
    println!(
        "drained {} readings in {} requests, {:.1} bytes/event on the wire, {:.1} s ({:.0} events/s)",
        report.sent,
        report.requests,
        report.bytes_sent as f64 / report.sent.max(1) as f64,
        secs,
        report.sent as f64 / secs
    );

    let stored = server.events("reading")?;
    anyhow::ensure!(
        stored.len() as u64 == total,
        "stored {} of {total}",
        stored.len()
    );
    let counts = server.insert_id_counts("reading")?;
    anyhow::ensure!(
        counts.len() as u64 == total && counts.values().all(|n| *n == 1),
        "a reading was stored twice"
    );
    let at_their_minute = stored
        .iter()
        .filter_map(|e| parse_timestamp(&e["created_at"]))
        .all(|t| (t - start - 30_000) % 60_000 == 0);
    anyhow::ensure!(at_their_minute, "a reading was stored at the wrong time");
    println!("ok: all {total} readings stored exactly once, each at its own minute");
    Ok(())
}
