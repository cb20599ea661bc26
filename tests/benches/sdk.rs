//! SDK benchmark: `cargo bench -p backfill-e2e --bench sdk`.
//!
//! Prints `track` throughput and p50/p99 latency on one thread with a raw rusqlite single-row
//! insert as the ceiling; `track_many` against a raw batched insert; the drain of a backlog
//! (1,000,000 events by default, `BENCH_BACKLOG` to change) into the release server running as
//! its own process, with gzip on and off; the client's peak RSS during each drain; and bytes on
//! the wire per event.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backfill_core::{Backfill, Config, DrainEnd, Event};
use serde_json::{Map, Value, json};

const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
const SECRET: &str = "bench-secret";
const DAY: i64 = 86_400_000;

fn now_ms() -> i64 {
    use backfill_core::Clock;
    backfill_core::SystemClock.now_ms()
}

fn reading(i: u64) -> Map<String, Value> {
    json!({"temp": 18.0 + (i % 100) as f64 / 10.0, "humidity": 40 + (i % 30), "battery": 3.7 - (i % 50) as f64 / 100.0})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    // Built every time (a no-op when current), so the drain never meets a stale server.
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "backfill-server"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the server");
    release.join("backfill-server")
}

fn start_server(data: &Path) -> (Child, String) {
    let mut child = Command::new(server_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-event-age-days",
            "8",
            "--project",
        ])
        .arg(format!("{PROJECT}:{SECRET}"))
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    (
        child,
        first.trim().trim_start_matches("listening on ").to_owned(),
    )
}

/// User plus system CPU time of a process (`self` or a pid), in seconds.
fn cpu_seconds(process: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn config(url: &str, db: &Path, compress: bool) -> Config {
    Config::builder(url, PROJECT, SECRET, db)
        .background_upload(false)
        .compress(compress)
        .max_buffer_rows(5_000_000)
        .max_buffer_bytes(4 << 30)
        .build()
        .expect("config")
}

fn bench_track(dir: &Path, n: usize) {
    let sdk =
        Backfill::open(config("http://127.0.0.1:9", &dir.join("track.db"), true)).expect("open");
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        sdk.track("reading", reading(i as u64)).expect("track");
        latencies.push(t.elapsed());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    latencies.sort();

    // The ceiling: one INSERT per row into the buffer's table shape (rows keyed in time order,
    // no secondary index), autocommit, same durability (WAL, synchronous=NORMAL).
    let conn = rusqlite::Connection::open(dir.join("raw.db")).expect("raw");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE events (seq INTEGER PRIMARY KEY, time_ms INTEGER, insert_id TEXT, body TEXT, bytes INTEGER);",
    )
    .expect("schema");
    let body = json!({"type": "track", "payload": {"name": "reading", "properties": reading(1)}})
        .to_string();
    let started = Instant::now();
    for i in 0..n {
        conn.execute(
            "INSERT INTO events (seq, time_ms, insert_id, body, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                (i as i64) << 15,
                i as i64,
                uuid::Uuid::now_v7().to_string(),
                body,
                body.len() as i64
            ],
        )
        .expect("insert");
    }
    let raw = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "track (1 thread): {rate:>9.0} events/s  p50 {:.1} µs  p99 {:.1} µs | raw single-row insert {raw:.0} rows/s | ratio {:.2}",
        percentile(&latencies, 0.5).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        rate / raw
    );

    let sdk =
        Backfill::open(config("http://127.0.0.1:9", &dir.join("many.db"), true)).expect("open");
    let started = Instant::now();
    for chunk in 0..n / 1000 {
        let events = (0..1000)
            .map(|i| Event {
                name: "reading".into(),
                properties: reading((chunk * 1000 + i) as u64),
                timestamp_ms: None,
                device_id: Some("s-1".into()),
                insert_id: None,
            })
            .collect();
        sdk.track_many(events).expect("track_many");
    }
    let many = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for chunk in 0..n / 1000 {
        let tx = conn.unchecked_transaction().expect("tx");
        for i in 0..1000 {
            tx.execute(
                "INSERT INTO events (seq, time_ms, insert_id, body, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    ((n + chunk * 1000 + i) as i64) << 15,
                    (n + chunk * 1000 + i) as i64,
                    uuid::Uuid::now_v7().to_string(),
                    body,
                    body.len() as i64
                ],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let raw_many = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "track_many (1000/tx): {many:>9.0} events/s | raw batched insert {raw_many:.0} rows/s | ratio {:.2}",
        many / raw_many
    );
}

fn bench_drain(dir: &Path, url: &str, server_pid: u32, backlog: usize, compress: bool) {
    let label = if compress { "gzip" } else { "plain" };
    let db = dir.join(format!("backlog-{label}.db"));
    let sdk = Backfill::open(config(url, &db, compress)).expect("open");
    let start = now_ms() - 6 * DAY;
    let step = (6 * DAY) / backlog as i64;
    for chunk in 0..backlog / 1000 {
        let events = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                Event {
                    name: "reading".into(),
                    properties: reading(n as u64),
                    timestamp_ms: Some(start + n as i64 * step),
                    device_id: Some(format!("gw-0001-sensor-{:02}", n % 7)),
                    insert_id: None,
                }
            })
            .collect();
        sdk.track_many(events).expect("record");
    }
    reset_peak_rss();
    let server = server_pid.to_string();
    let cpu_before = (cpu_seconds("self"), cpu_seconds(&server));
    let started = Instant::now();
    let report = sdk.flush().expect("drain");
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds("self") - cpu_before.0;
    let server_cpu = cpu_seconds(&server) - cpu_before.1;
    assert_eq!(report.end, DrainEnd::Empty, "{report:?}");
    assert_eq!(report.sent as usize, backlog);
    println!(
        "drain {label:>5}: {backlog} events in {elapsed:.1} s = {:>7.0} events/s, {} requests, {:.1} bytes/event on the wire, client peak RSS {:.1} MiB",
        backlog as f64 / elapsed,
        report.requests,
        report.bytes_sent as f64 / backlog as f64,
        peak_rss_mib()
    );
    println!(
        "            CPU per event: client {:.1} µs, server {:.1} µs; {:.2} of {} cores busy",
        client_cpu * 1e6 / backlog as f64,
        server_cpu * 1e6 / backlog as f64,
        (client_cpu + server_cpu) / elapsed,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
}

fn main() {
    let backlog: usize = std::env::var("BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    bench_track(dir.path(), 100_000);
    let (mut server, url) = start_server(&dir.path().join("server"));
    let pid = server.id();
    bench_drain(dir.path(), &url, pid, backlog, true);
    bench_drain(dir.path(), &url, pid, backlog, false);
    let _ = server.kill();
    let _ = server.wait();
}
