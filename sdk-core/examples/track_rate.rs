//! The Rust side of the binding benchmarks: `track` straight on `backfill-core`, on one thread,
//! offline, with the readings the Kotlin bench records (`bindings/kotlin/bench.sh` runs both and
//! prints them side by side).
//!
//! `track_rate EVENTS DB_DIR` prints one line:
//! `rust track: EVENTS events, RATE events/s, p50 P50 us, p99 P99 us`.

use std::time::{Duration, Instant};

use backfill_core::upload::transport::{HttpClient, HttpResponse, NetworkError};
use backfill_core::{Backfill, Config};
use serde_json::{Map, Value, json};

/// Nothing is sent while the bench runs (offline, no background uploads); a request would fail.
struct Offline;

impl HttpClient for Offline {
    fn post(
        &self,
        _: &str,
        _: Vec<(String, String)>,
        _: Vec<u8>,
    ) -> Result<HttpResponse, NetworkError> {
        Err(NetworkError("offline".to_owned()))
    }

    fn get(&self, _: &str, _: Vec<(String, String)>) -> Result<HttpResponse, NetworkError> {
        Err(NetworkError("offline".to_owned()))
    }
}

fn reading(i: u64) -> Map<String, Value> {
    let value = json!({
        "temp": 18.0 + (i % 100) as f64 / 10.0,
        "humidity": 40 + (i % 30),
        "battery": 3.7 - (i % 50) as f64 / 100.0,
        "ok": i % 7 != 0,
    });
    value.as_object().cloned().unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .ok_or("usage: track_rate EVENTS DB_DIR")?
        .parse()?;
    let dir = args.next().ok_or("usage: track_rate EVENTS DB_DIR")?;

    let mut config = Config::new(
        "http://127.0.0.1:9",
        "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f",
        "bench-secret",
        format!("{dir}/rust-track.db"),
    );
    config.background_upload = false;
    let backfill = Backfill::open_with_http_client(config, Offline)?;
    backfill.set_online(false);

    // Warm the page cache, the statement cache and the allocator as the JVM side warms its JIT.
    for i in 0..events / 10 {
        backfill.track("reading", reading(i))?;
    }
    let mut latencies = Vec::with_capacity(events as usize);
    let start = Instant::now();
    for i in 0..events {
        let properties = reading(i);
        let t = Instant::now();
        backfill.track("reading", properties)?;
        latencies.push(t.elapsed());
    }
    let total = start.elapsed();
    latencies.sort_unstable();
    println!(
        "rust track: {events} events, {:.0} events/s, p50 {:.1} us, p99 {:.1} us",
        events as f64 / total.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
    );
    backfill.close();
    Ok(())
}
