//! `cargo bench -p backfill-ffi --bench track [-- EVENTS]`: one thread recording events into a
//! fresh buffer (no uploads), through the Rust API and through the FFI wrapper (properties as
//! JSON text: `track`, and `track_utf8` which Python's `track` calls), with each call's
//! latency. `bindings/python/bench.py` runs it beside the Python binding. Prints one JSON line
//! per API.

use std::time::Instant;

use backfill_core::{Backfill, Config};
use backfill_ffi::{BackfillClient, BackfillConfig};
use serde_json::{Map, Value, json};

fn config(db: &std::path::Path) -> Config {
    let mut c = Config::new(
        "http://127.0.0.1:9",
        "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f",
        "bench",
        db.to_string_lossy(),
    );
    c.background_upload = false;
    c
}

struct Run {
    micros: Vec<f64>,
    elapsed_s: f64,
    cpu_us: Option<f64>,
}

fn report(api: &str, mut run: Run) {
    run.micros.sort_by(f64::total_cmp);
    let n = run.micros.len();
    let at = |q: f64| run.micros[((n as f64 - 1.0) * q) as usize];
    println!(
        "{}",
        json!({"api": api, "events": n, "events_per_s": n as f64 / run.elapsed_s,
               "p50_us": at(0.50), "p99_us": at(0.99),
               "cpu_us_per_event": run.cpu_us.map(|us| us / n as f64)})
    );
}

/// CPU time the calling thread has used, in µs: utime + stime from `/proc/thread-self/stat`
/// (proc(5), in USER_HZ = 100 ticks a second), so 10 ms steps. What the work itself cost,
/// whatever else the machine runs; `bench.py` reads the same clock. `None` off Linux.
fn thread_cpu_us() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // After the command name (which may hold spaces) comes field 3, the state; utime and stime
    // are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 * 10_000.0)
}

fn timed(events: usize, mut track: impl FnMut(usize)) -> Run {
    let mut micros = Vec::with_capacity(events);
    let cpu = thread_cpu_us();
    let start = Instant::now();
    for i in 0..events {
        let t = Instant::now();
        track(i);
        micros.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let cpu_us = cpu
        .zip(thread_cpu_us())
        .map(|(before, after)| after - before);
    Run {
        micros,
        elapsed_s,
        cpu_us,
    }
}

fn main() -> anyhow::Result<()> {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;

    let sdk = Backfill::open(config(&dir.path().join("rust.db")))?;
    let run = timed(events, |i| {
        let mut props = Map::new();
        props.insert("temp".into(), Value::from(21.5));
        props.insert("i".into(), Value::from(i));
        if let Err(e) = sdk.track("reading", props) {
            panic!("track: {e}");
        }
    });
    report("rust", run);

    let c = config(&dir.path().join("ffi.db"));
    let client = BackfillClient::new(
        BackfillConfig {
            endpoint: c.endpoint,
            client_id: c.client_id,
            client_secret: c.client_secret,
            database_path: c.database_path,
            device_id: None,
            flush_threshold: None,
            flush_interval_ms: None,
            max_batch_events: None,
            max_batch_bytes: None,
            max_buffer_events: None,
            max_buffer_bytes: None,
            max_database_bytes: None,
            compress: None,
            session_timeout_ms: None,
            retry_base_ms: None,
            retry_cap_ms: None,
            request_timeout_ms: None,
            background_upload: Some(false),
        },
        Some(std::sync::Arc::new(Unreachable)),
    )?;
    let run = timed(events, |i| {
        let props = format!(r#"{{"temp":21.5,"i":{i}}}"#);
        if let Err(e) = client.track("reading".into(), props, None, None, None) {
            panic!("track: {e}");
        }
    });
    report("rust-ffi-wrapper", run);

    let run = timed(events, |i| {
        let props = format!(r#"{{"temp":21.5,"i":{i}}}"#);
        if let Err(e) = client.track_utf8(b"reading", props.as_bytes()) {
            panic!("track_utf8: {e}");
        }
    });
    report("rust-ffi-track-utf8", run);
    Ok(())
}

/// Never called: uploads are off.
struct Unreachable;

impl backfill_ffi::HttpClient for Unreachable {
    fn post(
        &self,
        _: String,
        _: std::collections::HashMap<String, String>,
        _: Vec<u8>,
    ) -> Result<backfill_ffi::HttpResponse, backfill_ffi::HttpError> {
        Err(backfill_ffi::HttpError::Failed {
            reason: "uploads are off".into(),
        })
    }

    fn get(
        &self,
        _: String,
        _: std::collections::HashMap<String, String>,
    ) -> Result<backfill_ffi::HttpResponse, backfill_ffi::HttpError> {
        Err(backfill_ffi::HttpError::Failed {
            reason: "uploads are off".into(),
        })
    }
}
