//! Ingest throughput with durable acknowledgements.
//!
//! `cargo bench -p backfill-server --bench ingest` starts the release server binary on a temp
//! dir, posts 2000-event batches of IoT readings from 4 concurrent connections (plain, then
//! gzip), and prints events/s, p50/p99 request latency and the server's peak RSS. In the same run
//! it measures a plain rusqlite batched insert of the same rows (same columns, WAL,
//! `synchronous=FULL`, one transaction per 2000 rows, no secondary index) as the ceiling.
//! `BENCH_EVENTS` sets the number of events per run (default 200,000), `BENCH_ROUNDS` the number
//! of rounds (default 3; the summary gives medians).
//!
//! `BENCH_STORE=postgres` measures the PostgreSQL store instead, on a throw-away cluster (see
//! `tests/cluster`): plain batches from 6 connections to 1 node, then spread over 3 nodes sharing
//! one database, each on a fresh database; and, in the same round, the ceiling: the same rows
//! inserted by a plain `INSERT ... SELECT FROM unnest(...)` into a table without indexes, 2000
//! rows per statement, from as many connections, and the same insert with its arrays unnested
//! in the select list (the store's form, which spares PostgreSQL a tuplestore per array), each
//! ratio given against both. It prints events/s, p50/p99, and the CPU the
//! server processes and PostgreSQL spent per event. `BENCH_WRITE_FORMS=1` adds, each round, the
//! store's insert of events as `unnest` arrays against binary `COPY` into a staging table.
//!
//! `BENCH_SERVER=path` runs that `backfill-server` binary instead of this build's, so that two
//! builds can be measured alternately on one machine (its speed drifts from minute to minute).

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
const SECRET: &str = "bench-secret";
const BATCH: usize = 2000;
const CONNECTIONS: usize = 4;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One-minute readings of a fleet of gateways (7 sensors each), oldest first, spread over the
/// past week: as many sensors as it takes for `total` readings to fit in 10,080 minutes, so no
/// reading lies in the future.
fn readings(total: usize, run: &str) -> Vec<Value> {
    const WEEK_MINUTES: usize = 7 * 24 * 60;
    let sensors = total.div_ceil(WEEK_MINUTES).div_ceil(7).max(1) * 7;
    let start = now_ms() - 7 * 86_400_000;
    (0..total)
        .map(|i| {
            let sensor = i % sensors;
            let minute = (i / sensors) as i64;
            json!({"type": "track", "payload": {"name": "reading", "properties": {
                "temp": 18.0 + (i % 100) as f64 / 10.0,
                "humidity": 40 + (i % 30) as i64,
                "battery": 3.7 - (i % 50) as f64 / 100.0,
                "rssi": -60 - (i % 20) as i64,
                "__deviceId": format!("gw-{:04}-sensor-{:02}", sensor / 7 + 1, sensor % 7 + 1),
                "__timestamp": start + minute * 60_000,
                "__insertId": format!("{run}-{i:08}"),
            }}})
        })
        .collect()
}

fn bodies(events: &[Value], gzip: bool) -> Vec<Vec<u8>> {
    events
        .chunks(BATCH)
        .map(|chunk| {
            let body = json!({"events": chunk, "sentAt": now_ms()})
                .to_string()
                .into_bytes();
            if gzip {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = enc.write_all(&body);
                enc.finish().unwrap_or_default()
            } else {
                body
            }
        })
        .collect()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

/// Sum and count of the server's group-commit histogram.
async fn commit_stats(url: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("backfill_store_commit_duration_seconds_sum "),
        value("backfill_store_commit_duration_seconds_count "),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Run {
    events_per_sec: f64,
    p50: Duration,
    p99: Duration,
    wire_bytes: usize,
}

async fn post_all(url: &str, bodies: Vec<Vec<u8>>, gzip: bool, events: usize) -> Run {
    post_spread(&[url.to_owned()], CONNECTIONS, bodies, gzip, events).await
}

/// Posts `bodies` from `connections` concurrent clients, client `i` to `urls[i % len]`.
async fn post_spread(
    urls: &[String],
    connections: usize,
    bodies: Vec<Vec<u8>>,
    gzip: bool,
    events: usize,
) -> Run {
    let wire_bytes = bodies.iter().map(Vec::len).sum();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (queue, url) = (queue.clone(), urls[i % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(body) = next else { break };
                let mut req = client
                    .post(format!("{url}/track/batch"))
                    .header("content-type", "application/json")
                    .header("openpanel-client-id", PROJECT)
                    .header("openpanel-client-secret", SECRET);
                if gzip {
                    req = req.header("content-encoding", "gzip");
                }
                let t = Instant::now();
                let response = req.body(body).send().await.expect("request");
                assert_eq!(response.status(), 202, "bench batches are accepted");
                let answer: Value = response.json().await.expect("json");
                assert_eq!(answer["rejected"], json!([]), "{answer}");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Run {
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        wire_bytes,
    }
}

/// The ceiling: the same rows inserted straight into SQLite, durably, 2000 per transaction.
fn raw_insert_rate(events: &[Value]) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, project INTEGER NOT NULL,
            type TEXT NOT NULL, name TEXT NOT NULL, device_id TEXT NOT NULL, session_id TEXT NOT NULL,
            profile_id TEXT, created_at INTEGER NOT NULL, properties TEXT NOT NULL, groups TEXT,
            insert_id TEXT, sdk_name TEXT, sdk_version TEXT, synced_at INTEGER NOT NULL);",
    )
    .expect("schema");
    // Rows as the server would store them, prepared before the clock starts.
    let rows: Vec<(String, String, i64, String, String)> = events
        .iter()
        .map(|e| {
            let mut props = e["payload"]["properties"].clone();
            let t = props["__timestamp"].as_i64().unwrap_or(0);
            if let Some(m) = props.as_object_mut() {
                m.remove("__timestamp");
            }
            let device = props["__deviceId"].as_str().unwrap_or("").to_owned();
            let key = props["__insertId"].as_str().unwrap_or("").to_owned();
            (
                uuid::Uuid::now_v7().to_string(),
                device,
                t,
                props.to_string(),
                key,
            )
        })
        .collect();
    let started = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let tx = conn.unchecked_transaction().expect("tx");
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO events (id, project, type, name, device_id, session_id, created_at,
                        properties, insert_id, synced_at)
                     VALUES (?1, 1, 'track', 'reading', ?2, 'sess', ?3, ?4, ?5, ?3)",
                )
                .expect("prepare");
            for (id, device, t, props, key) in chunk {
                stmt.execute(rusqlite::params![id, device, t, props, key])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    if std::env::var("BENCH_STORE").is_ok_and(|s| s == "postgres") {
        return postgres::run(total).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().display().to_string();
    let (mut child, url) = start_server(&["--data-dir", &data_dir]);

    let rounds = rounds();
    println!(
        "backfill-server ingest benchmark: {total} events per run, batches of {BATCH}, {CONNECTIONS} connections, {rounds} rounds"
    );
    // This machine's speed drifts from minute to minute, so each round measures both modes and
    // the ceiling side by side, and the summary gives medians.
    let mut plain = Vec::new();
    let mut gzipped = Vec::new();
    let mut ceilings = Vec::new();
    for round in 0..rounds {
        for (label, gzip) in [("plain", false), ("gzip", true)] {
            let events = readings(total, &format!("{label}-{round}"));
            let bodies = bodies(&events, gzip);
            let cpu_before = cpu_seconds(child.id());
            let (commit_before, groups_before) = commit_stats(&url).await;
            let wall = Instant::now();
            let run = post_all(&url, bodies, gzip, total).await;
            let wall = wall.elapsed().as_secs_f64();
            let cpu = cpu_seconds(child.id()) - cpu_before;
            let (commit_after, groups_after) = commit_stats(&url).await;
            println!(
                "{label:>5}: {:>9.0} events/s  p50 {:>6.1} ms  p99 {:>6.1} ms  {:.1} bytes/event on the wire",
                run.events_per_sec,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.wire_bytes as f64 / total as f64
            );
            println!(
                "       server CPU {:.1} µs/event; writer busy {:.0}% of the run in {} group commits of {:.0} events on average",
                cpu * 1e6 / total as f64,
                (commit_after - commit_before) * 100.0 / wall,
                groups_after - groups_before,
                total as f64 / (groups_after - groups_before).max(1.0)
            );
            if gzip {
                gzipped.push(run.events_per_sec);
            } else {
                plain.push(run.events_per_sec);
            }
        }
        let ceiling = raw_insert_rate(&readings(total, &format!("raw-{round}")));
        println!(
            "ceiling (plain rusqlite batched insert, same rows, durable): {ceiling:.0} rows/s"
        );
        ceilings.push(ceiling);
    }
    println!(
        "server peak RSS: {:.1} MiB",
        peak_rss_kib(child.id()) as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();

    let ceiling = median(&mut ceilings);
    println!("median of {rounds} rounds: ceiling {ceiling:.0} rows/s");
    for (label, rates) in [("plain", &mut plain), ("gzip", &mut gzipped)] {
        let rate = median(rates);
        println!(
            "median {label:>5}: {rate:>9.0} events/s (runs {:.0} to {:.0}), ratio to the ceiling {:.2}",
            rates.first().copied().unwrap_or(0.0),
            rates.last().copied().unwrap_or(0.0),
            rate / ceiling
        );
    }
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// Starts a release server with `args`, returns it and its URL.
fn start_server(args: &[&str]) -> (std::process::Child, String) {
    let server = std::env::var("BENCH_SERVER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_backfill-server").to_owned());
    let mut child = Command::new(server)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-event-age-days",
            "8",
            "--project",
        ])
        .arg(format!("{PROJECT}:{SECRET}"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    let url = first.trim().trim_start_matches("listening on ").to_owned();
    (child, url)
}

mod postgres {
    use super::*;

    /// Client connections in every PostgreSQL run and in its ceiling.
    const PG_CONNECTIONS: usize = 6;

    /// A reading as the raw inserts write it: event time, event id, device id, properties
    /// without `__timestamp` (JSON text), insert id.
    type Row = (i64, uuid::Uuid, String, String, String);

    /// `total` readings of run `run` as [`Row`]s.
    fn raw_rows(total: usize, run: &str) -> Vec<Row> {
        readings(total, run)
            .iter()
            .map(|e| {
                let mut props = e["payload"]["properties"].clone();
                let t = props["__timestamp"].as_i64().unwrap_or(0);
                if let Some(m) = props.as_object_mut() {
                    m.remove("__timestamp");
                }
                let device = props["__deviceId"].as_str().unwrap_or("").to_owned();
                let key = props["__insertId"].as_str().unwrap_or("").to_owned();
                (t, uuid::Uuid::now_v7(), device, props.to_string(), key)
            })
            .collect()
    }

    /// CPU seconds of the cluster: the postmaster with its exited children, and its live ones.
    fn cluster_cpu(cluster: &cluster::Cluster) -> f64 {
        let pid: u32 = std::fs::read_to_string(cluster.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0);
        let stat = |pid: &str| -> Vec<String> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let ticks = |fields: &[String], at: &[usize]| -> u64 {
            at.iter()
                .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
                .sum()
        };
        let mut total = ticks(&stat(&pid.to_string()), &[11, 12, 13, 14]);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let fields = stat(&name);
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                total += ticks(&fields, &[11, 12]);
            }
        }
        total as f64 / 100.0
    }

    struct Measured {
        rate: f64,
        line: String,
    }

    async fn run_nodes(
        cluster: &cluster::Cluster,
        nodes: usize,
        total: usize,
        round: usize,
    ) -> Measured {
        let database = cluster.create_database();
        let servers: Vec<_> = (0..nodes)
            .map(|_| start_server(&["--database-url", &database]))
            .collect();
        let urls: Vec<String> = servers.iter().map(|(_, url)| url.clone()).collect();
        let events = readings(total, &format!("pg{nodes}-{round}"));
        let bodies = bodies(&events, false);
        let server_cpu = |servers: &[(std::process::Child, String)]| -> f64 {
            servers.iter().map(|(c, _)| cpu_seconds(c.id())).sum()
        };
        let (cpu_before, pg_before) = (server_cpu(&servers), cluster_cpu(cluster));
        let run = post_spread(&urls, PG_CONNECTIONS, bodies, false, total).await;
        let (cpu, pg) = (
            server_cpu(&servers) - cpu_before,
            cluster_cpu(cluster) - pg_before,
        );
        for (mut child, _) in servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        Measured {
            rate: run.events_per_sec,
            line: format!(
                "{nodes} node(s): {:>8.0} events/s  p50 {:>6.1} ms  p99 {:>6.1} ms  CPU/event: servers {:.1} µs, PostgreSQL {:.1} µs",
                run.events_per_sec,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                cpu * 1e6 / total as f64,
                pg * 1e6 / total as f64,
            ),
        }
    }

    /// How the ceiling's insert takes its arrays.
    #[derive(Clone, Copy)]
    enum CeilingForm {
        /// `FROM unnest($1, $2, ...)`: the yardstick.
        From,
        /// `SELECT unnest($1), unnest($2), ...`: the form the store uses, which spares
        /// PostgreSQL a tuplestore per array.
        SelectList,
    }

    impl CeilingForm {
        fn sql(self) -> &'static str {
            match self {
                Self::From => {
                    "INSERT INTO events (project, created_at, id, type, name, device_id,
                        session_id, properties, insert_id, synced_at)
                     SELECT 1, u.t, u.id, 'track', 'reading', u.device, 'sess', u.props,
                        u.key, u.t
                     FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                        AS u (t, id, device, props, key)"
                }
                Self::SelectList => {
                    "INSERT INTO events (project, created_at, id, type, name, device_id,
                        session_id, properties, insert_id, synced_at)
                     SELECT 1, u.t, u.id, 'track', 'reading', u.device, 'sess', u.props,
                        u.key, u.t
                     FROM (SELECT unnest($1::int8[]) AS t, unnest($2::uuid[]) AS id,
                        unnest($3::text[]) AS device, unnest($4::text[]) AS props,
                        unnest($5::text[]) AS key) AS u"
                }
            }
        }
    }

    /// The ceiling: the same rows, as the server would store them, inserted by a plain
    /// `unnest` insert into an index-free table, 2000 rows a statement (each its own durable
    /// transaction), from [`PG_CONNECTIONS`] connections.
    async fn ceiling(
        cluster: &cluster::Cluster,
        total: usize,
        round: usize,
        form: CeilingForm,
    ) -> (f64, f64) {
        let url = cluster.create_database();
        let setup = connect(&url).await;
        setup
            .batch_execute(
                "CREATE TABLE events (project BIGINT NOT NULL, created_at BIGINT NOT NULL,
                    id UUID NOT NULL, type TEXT NOT NULL, name TEXT NOT NULL,
                    device_id TEXT NOT NULL, session_id TEXT NOT NULL, profile_id TEXT,
                    properties TEXT NOT NULL, groups TEXT, sdk_name TEXT, sdk_version TEXT,
                    synced_at BIGINT NOT NULL, insert_id TEXT)",
            )
            .await
            .expect("table");
        let rows = raw_rows(total, &format!("raw-{round}"));
        let queue = std::sync::Arc::new(std::sync::Mutex::new(
            rows.chunks(BATCH).map(<[Row]>::to_vec).collect::<Vec<_>>(),
        ));
        let pg_before = cluster_cpu(cluster);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..PG_CONNECTIONS {
            let (queue, url) = (queue.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let client = connect(&url).await;
                let insert = client.prepare(form.sql()).await.expect("prepare");
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some(chunk) = next else { break };
                    let t: Vec<i64> = chunk.iter().map(|r| r.0).collect();
                    let id: Vec<uuid::Uuid> = chunk.iter().map(|r| r.1).collect();
                    let device: Vec<&str> = chunk.iter().map(|r| r.2.as_str()).collect();
                    let props: Vec<&str> = chunk.iter().map(|r| r.3.as_str()).collect();
                    let key: Vec<&str> = chunk.iter().map(|r| r.4.as_str()).collect();
                    client
                        .execute(&insert, &[&t, &id, &device, &props, &key])
                        .await
                        .expect("insert");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
        let pg = cluster_cpu(cluster) - pg_before;
        (rate, pg * 1e6 / rows.len() as f64)
    }

    /// The two write forms of the store's insert of events, on the store's own schema (applied
    /// by connecting a store), with the same rows sorted by insert id, 2000 to a transaction,
    /// from [`PG_CONNECTIONS`] connections: the rows as arrays unnested in the select list
    /// (what the store does) or binary `COPY` into a temporary staging table
    /// followed by `INSERT ... SELECT FROM` it. Both are the plain insert the store runs for a
    /// group of new keys (its unique index on the insert id still checks each). Returns rows/s
    /// of each.
    async fn write_forms(cluster: &cluster::Cluster, total: usize, round: usize) -> (f64, f64) {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::{ToSql, Type};

        const UNNEST: &str = "
            INSERT INTO events (project, created_at, id, type, name, device_id, session_id,
                properties, synced_at, insert_id)
            SELECT 1, u.t, u.id, 'track', 'reading', u.device, u.session, u.props, u.t, u.key
            FROM (SELECT unnest($1::int8[]) AS t, unnest($2::uuid[]) AS id,
                unnest($3::text[]) AS device, unnest($4::text[]) AS session,
                unnest($5::text[]) AS props, unnest($6::text[]) AS key) AS u";
        const STAGE: &str = "
            CREATE TEMP TABLE IF NOT EXISTS staged (t int8, id uuid, device text, session text,
                props text, key text) ON COMMIT DELETE ROWS";
        const FROM_STAGE: &str = "
            INSERT INTO events (project, created_at, id, type, name, device_id, session_id,
                properties, synced_at, insert_id)
            SELECT 1, s.t, s.id, 'track', 'reading', s.device, s.session, s.props, s.t, s.key
            FROM staged AS s";
        let mut rates = [0.0; 2];
        for (form, rate) in rates.iter_mut().enumerate() {
            let url = cluster.create_database();
            let options = backfill_server::store::postgres::PostgresOptions {
                url: url.clone(),
                pool_size: 1,
                acquire_timeout: Duration::from_secs(10),
                clock: std::sync::Arc::new(backfill_server::clock::SystemClock),
                commit_latency: None,
            };
            let store = backfill_server::store::postgres::PostgresStore::connect(options)
                .await
                .expect("schema");
            drop(store);
            let mut rows = raw_rows(total, &format!("form{form}-{round}"));
            rows.sort_by(|a, b| a.4.cmp(&b.4));
            let queue = std::sync::Arc::new(std::sync::Mutex::new(
                rows.chunks(BATCH).map(<[Row]>::to_vec).collect::<Vec<_>>(),
            ));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..PG_CONNECTIONS {
                let (queue, url) = (queue.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let mut client = connect(&url).await;
                    client.batch_execute(STAGE).await.expect("staging table");
                    let unnest = client.prepare(UNNEST).await.expect("prepare");
                    let from_stage = client.prepare(FROM_STAGE).await.expect("prepare");
                    loop {
                        let next = queue.lock().ok().and_then(|mut q| q.pop());
                        let Some(chunk) = next else { break };
                        let tx = client.transaction().await.expect("begin");
                        let claimed = if form == 0 {
                            let t: Vec<i64> = chunk.iter().map(|r| r.0).collect();
                            let id: Vec<uuid::Uuid> = chunk.iter().map(|r| r.1).collect();
                            let device: Vec<&str> = chunk.iter().map(|r| r.2.as_str()).collect();
                            let session = vec!["sess"; chunk.len()];
                            let props: Vec<&str> = chunk.iter().map(|r| r.3.as_str()).collect();
                            let key: Vec<&str> = chunk.iter().map(|r| r.4.as_str()).collect();
                            tx.execute(&unnest, &[&t, &id, &device, &session, &props, &key])
                                .await
                                .expect("insert")
                        } else {
                            let sink = tx
                                .copy_in("COPY staged FROM STDIN (FORMAT binary)")
                                .await
                                .expect("copy");
                            let types = [
                                Type::INT8,
                                Type::UUID,
                                Type::TEXT,
                                Type::TEXT,
                                Type::TEXT,
                                Type::TEXT,
                            ];
                            let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
                            for r in &chunk {
                                let row: [&(dyn ToSql + Sync); 6] =
                                    [&r.0, &r.1, &r.2, &"sess", &r.3, &r.4];
                                writer.as_mut().write(&row).await.expect("row");
                            }
                            writer.finish().await.expect("copy done");
                            tx.execute(&from_stage, &[]).await.expect("insert")
                        };
                        assert_eq!(claimed, chunk.len() as u64, "every row is stored");
                        tx.commit().await.expect("commit");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            *rate = rows.len() as f64 / started.elapsed().as_secs_f64();
        }
        (rates[0], rates[1])
    }

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    pub async fn run(total: usize) {
        assert!(cluster::available(), "PostgreSQL is not installed");
        let cluster = cluster::Cluster::start();
        let rounds = rounds();
        let forms = std::env::var("BENCH_WRITE_FORMS").is_ok_and(|v| v == "1");
        println!(
            "backfill-server ingest benchmark, PostgreSQL store: {total} events per run, batches of {BATCH}, {PG_CONNECTIONS} connections, {rounds} rounds"
        );
        let (mut one, mut three, mut ceilings) = (Vec::new(), Vec::new(), Vec::new());
        let mut select_list_ceilings = Vec::new();
        for round in 0..rounds {
            // The second run of a round inherits the first one's dirty pages and checkpoint:
            // the order alternates, so that neither side always pays for the other.
            let order = if round % 2 == 0 { [1, 3] } else { [3, 1] };
            for nodes in order {
                let m = run_nodes(&cluster, nodes, total, round).await;
                println!("{}", m.line);
                if nodes == 1 {
                    one.push(m.rate);
                } else {
                    three.push(m.rate);
                }
            }
            let (c, pg) = ceiling(&cluster, total, round, CeilingForm::From).await;
            println!(
                "ceiling (plain unnest insert, same rows, no index, durable): {c:.0} rows/s  CPU/row: PostgreSQL {pg:.1} µs"
            );
            ceilings.push(c);
            let (c, pg) = ceiling(&cluster, total, round, CeilingForm::SelectList).await;
            println!(
                "  the same, arrays unnested in the select list as the store does: {c:.0} rows/s  CPU/row: PostgreSQL {pg:.1} µs"
            );
            select_list_ceilings.push(c);
            if forms {
                let (unnest, copy) = write_forms(&cluster, total, round).await;
                println!(
                    "claim write forms (store schema, 2000 rows a transaction): unnest {unnest:.0} rows/s, binary COPY into a staging table {copy:.0} rows/s"
                );
            }
        }
        let ceiling = median(&mut ceilings);
        let select_list = median(&mut select_list_ceilings);
        println!(
            "median of {rounds} rounds: ceiling {ceiling:.0} rows/s (select-list form {select_list:.0})"
        );
        for (label, rates) in [("1 node ", &mut one), ("3 nodes", &mut three)] {
            let rate = median(rates);
            println!(
                "median {label}: {rate:>9.0} events/s (runs {:.0} to {:.0}), ratio to the ceiling {:.2} (to the select-list form {:.2})",
                rates.first().copied().unwrap_or(0.0),
                rates.last().copied().unwrap_or(0.0),
                rate / ceiling,
                rate / select_list
            );
        }
    }
}

/// The median of `values`, which it sorts.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
