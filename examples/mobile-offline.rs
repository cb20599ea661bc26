//! A phone app: records while offline, comes back online, and is killed (SIGKILL) in the middle
//! of its drain; restarted, it finishes the drain. Nothing is lost and nothing is doubled.
//!
//! Run: `cargo run --release -p backfill-examples --example mobile-offline`
//!
//! The app is this same program started again as a child process (`mobile-offline app ...`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backfill_core::{Backfill, Config, DrainEnd};
use backfill_examples::{LocalServer, PROJECT, SECRET};
use serde_json::json;

const EVENTS: usize = 20_000;

/// The app: records EVENTS taps offline (printing each insert id), then goes online and lets the
/// background uploader drain in small requests (50 events), so that the kill lands mid-drain.
fn app(db: &str, url: &str) -> anyhow::Result<()> {
    let config = Config::builder(url, PROJECT, SECRET, db)
        .max_batch_events(50)
        .flush_threshold(1)
        .build()?;
    let app = Backfill::open(config)?;
    app.set_online(false);
    let mut out = std::io::stdout().lock();
    for i in 0..EVENTS {
        let id = app.track(
            "tap",
            json!({"screen": format!("s{}", i % 12), "i": i})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )?;
        writeln!(out, "{id}")?;
    }
    writeln!(out, "online")?;
    out.flush()?;
    drop(out);
    app.set_online(true);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, db, url] = args.as_slice()
        && mode == "app"
    {
        return app(db, url);
    }
    let server = LocalServer::start(5)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("app")
        .arg(&db)
        .arg(server.url())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .lines();
    let mut recorded = HashSet::new();
    for line in lines.by_ref() {
        let line = line?;
        if line == "online" {
            break;
        }
        recorded.insert(line);
    }
    println!(
        "the app recorded {} taps offline and came back online",
        recorded.len()
    );
    // Kill it once part of the backlog has arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.any("tap")? {
        anyhow::ensure!(Instant::now() < deadline, "the drain never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    let _ = child.wait();
    let arrived = server.events("tap")?.len();
    println!(
        "killed the app (SIGKILL) mid-drain with {arrived} of {} taps on the server",
        recorded.len()
    );
    anyhow::ensure!(
        arrived < recorded.len(),
        "the kill came after the drain; nothing to resume"
    );

    // Restarted, the app finds its buffer and finishes.
    let config = Config::builder(server.url(), PROJECT, SECRET, &db)
        .background_upload(false)
        .build()?;
    let restarted = Backfill::open(config)?;
    let report = restarted.flush()?;
    anyhow::ensure!(
        report.end == DrainEnd::Empty,
        "drain ended early: {report:?}"
    );
    println!(
        "restarted: sent the {} taps still buffered; {} of them had reached the server before the kill (answers lost with the process) and came back as duplicates",
        report.sent, report.duplicates
    );

    let counts = server.insert_id_counts("tap")?;
    anyhow::ensure!(counts.values().all(|n| *n == 1), "a tap was stored twice");
    let stored: HashSet<String> = counts.into_keys().collect();
    anyhow::ensure!(
        stored == recorded,
        "stored {} taps, recorded {}",
        stored.len(),
        recorded.len()
    );
    println!("ok: all {} taps stored exactly once", recorded.len());
    Ok(())
}
