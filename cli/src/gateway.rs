//! `enqueue`, `drain` and `status`: Backfill for gateways that pipe readings in.

use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use backfill_core::{Backfill, Config, DrainEnd, DrainReport, Error};
use clap::Args;
use serde_json::json;

use crate::exit;
use crate::input::read_events;
use crate::progress::Progress;

/// Where to drain to.
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    db: crate::DbArg,
    /// Base URL of the server.
    #[arg(long, env = "BACKFILL_ENDPOINT")]
    endpoint: String,
    /// The project's client id.
    #[arg(long, env = "BACKFILL_CLIENT_ID")]
    client_id: String,
    /// The project's client secret (prefer the environment variable: arguments are visible to
    /// other users of the machine).
    #[arg(long, env = "BACKFILL_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
    /// Keep retrying (with backoff) until the buffer is empty.
    #[arg(long)]
    until_empty: bool,
    /// Keep running: drain whenever new readings arrive.
    #[arg(long, conflicts_with = "until_empty")]
    watch: bool,
    /// With --watch, how often to look for new readings, in seconds.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Send request bodies uncompressed.
    #[arg(long)]
    no_gzip: bool,
}

/// Opens a buffer for local work (no uploads).
fn open_offline(db: &Path) -> Result<Backfill, Error> {
    let config = Config::builder("http://127.0.0.1", "offline", "offline", db)
        .background_upload(false)
        .build()?;
    Backfill::open(config)
}

fn storage_exit(e: &Error) -> u8 {
    match e {
        Error::Unauthorized(_) => exit::NOPERM,
        Error::Misconfigured(_) | Error::InvalidConfig(_) => exit::CONFIG,
        Error::InvalidEvent(_) => exit::DATA,
        Error::Busy(_) => exit::BUSY,
        _ => exit::IO,
    }
}

/// `backfill enqueue`: all readings or none.
pub fn enqueue(db: &Path, file: Option<&Path>) -> anyhow::Result<u8> {
    let events = match file.filter(|f| f.as_os_str() != "-") {
        Some(path) => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            read_events(BufReader::new(f))
        }
        None => read_events(std::io::stdin().lock()),
    };
    let events = match events {
        Ok(events) => events,
        Err(e) => {
            eprintln!("backfill enqueue: {e}; nothing was added");
            return Ok(exit::DATA);
        }
    };
    let sdk = match open_offline(db) {
        Ok(sdk) => sdk,
        Err(e) => {
            eprintln!("backfill enqueue: {e}");
            return Ok(storage_exit(&e));
        }
    };
    for (line, event) in &events {
        if let Err(e) = sdk.check(event) {
            eprintln!("backfill enqueue: line {line}: {e}; nothing was added");
            return Ok(exit::DATA);
        }
    }
    let n = events.len();
    if let Err(e) = sdk.track_many(events.into_iter().map(|(_, e)| e).collect()) {
        eprintln!("backfill enqueue: {e}; nothing was added");
        return Ok(storage_exit(&e));
    }
    println!("added {n} readings to {}", db.display());
    Ok(exit::OK)
}

/// Drains once (or, with `until_empty`, again after each wait until the buffer is empty),
/// showing progress; returns the last drain's report. Each wait names its cause on stderr.
pub fn drain_with_progress(sdk: &Backfill, until_empty: bool) -> Result<DrainReport, Error> {
    let before = sdk.stats()?;
    let mut progress = Progress::new(before.buffered_events);
    // What earlier rounds expired, so the report returned covers them all.
    let mut expired = 0;
    let mut oldest_expired: Option<i64> = None;
    loop {
        let worker = sdk.clone();
        let flush = std::thread::spawn(move || worker.flush());
        while !flush.is_finished() {
            if let Ok(now) = sdk.stats() {
                progress.update(now.sent - before.sent, now.requests - before.requests);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let report = flush
            .join()
            .map_err(|_| Error::Storage("the drain thread panicked".to_owned()))?;
        let now = sdk.stats()?;
        progress.update(now.sent - before.sent, now.requests - before.requests);
        if let Ok(r) = &report {
            expired += r.expired;
            oldest_expired = match (oldest_expired, r.oldest_expired_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        match report {
            Ok(mut r) => match r.end {
                DrainEnd::RetryIn(wait) if until_empty => {
                    progress.pause(&format!(
                        "{}; retrying in {:.0} s",
                        r.last_error.as_deref().unwrap_or("the server is busy"),
                        wait.as_secs_f64()
                    ));
                    std::thread::sleep(wait);
                }
                _ => {
                    progress.finish();
                    r.expired = expired;
                    r.oldest_expired_ms = oldest_expired;
                    return Ok(r);
                }
            },
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        }
    }
}

/// `backfill drain`.
pub fn drain(args: &DrainArgs) -> anyhow::Result<u8> {
    let config = Config::builder(
        &args.endpoint,
        &args.client_id,
        &args.client_secret,
        &args.db.db,
    )
    .background_upload(false)
    .compress(!args.no_gzip)
    .build();
    let sdk = match config.and_then(Backfill::open) {
        Ok(sdk) => sdk,
        Err(e) => {
            eprintln!("backfill drain: {e}");
            return Ok(storage_exit(&e));
        }
    };
    // One drain per buffer: a second one would send every reading again.
    if let Err(e) = sdk.hold_drain_lock() {
        eprintln!("backfill drain: {e}; try again once it ends");
        return Ok(storage_exit(&e));
    }
    loop {
        let before = sdk.stats()?;
        let result = drain_with_progress(&sdk, args.until_empty || args.watch);
        let after = sdk.stats()?;
        let sent = after.sent - before.sent;
        let mut code = exit::OK;
        if let Ok(report) = &result
            && report.expired > 0
        {
            warn_expired(report);
            code = exit::EXPIRED;
        }
        match result {
            Ok(DrainReport {
                end: DrainEnd::Empty,
                ..
            }) => {
                if sent > 0 || !args.watch {
                    println!(
                        "sent {sent} events in {} requests ({} bytes); {} duplicates, {} dead-lettered, {} expired; {} left",
                        after.requests - before.requests,
                        after.bytes_sent - before.bytes_sent,
                        after.duplicates - before.duplicates,
                        after.dead_lettered - before.dead_lettered,
                        after.expired - before.expired,
                        after.buffered_events
                    );
                }
            }
            Ok(DrainReport {
                end: DrainEnd::RetryIn(wait),
                last_error,
                ..
            }) => {
                let cause = last_error.as_deref().unwrap_or("the server is busy");
                eprintln!(
                    "backfill drain: {cause}; {} events kept, retry in {:.0} s",
                    after.buffered_events,
                    wait.as_secs_f64()
                );
                return Ok(exit::UNAVAILABLE);
            }
            Ok(DrainReport {
                end: DrainEnd::Unauthorized(code),
                ..
            })
            | Err(Error::Unauthorized(code)) => {
                eprintln!(
                    "backfill drain: the server refused the credentials (HTTP {code}); the data is kept"
                );
                return Ok(exit::NOPERM);
            }
            Ok(DrainReport {
                end: DrainEnd::Misconfigured(why),
                ..
            })
            | Err(Error::Misconfigured(why)) => {
                eprintln!(
                    "backfill drain: {why} (endpoint {}); nothing was deleted, {} events kept. \
                     Set BACKFILL_ENDPOINT to the server's base URL, e.g. https://ingest.example.com",
                    args.endpoint, after.buffered_events
                );
                return Ok(exit::CONFIG);
            }
            Err(e) => {
                eprintln!("backfill drain: {e}");
                return Ok(storage_exit(&e));
            }
        }
        if !args.watch {
            return Ok(code);
        }
        while sdk.stats()?.buffered_events == 0 {
            std::thread::sleep(Duration::from_secs(args.interval.max(1)));
        }
    }
}

/// Says loudly that events were dropped unsent for their age, and how to keep them.
fn warn_expired(report: &DrainReport) {
    let days = report.window_ms as f64 / 86_400_000.0;
    eprintln!(
        "backfill drain: {} events were older than the server's {days:.0}-day age window and \
         were dropped unsent (the oldest from {}). To keep such events, start the server with \
         --max-event-age-days N (1 to 90) larger than the gateway's longest time offline.",
        report.expired,
        iso(report.oldest_expired_ms)
    );
}

fn iso(ms: Option<i64>) -> String {
    ms.map(backfill_protocol::time::format_iso_ms)
        .unwrap_or_else(|| "-".to_owned())
}

/// `backfill status`.
pub fn status(db: &Path, as_json: bool) -> anyhow::Result<u8> {
    if !db.exists() {
        eprintln!("backfill status: no buffer at {}", db.display());
        return Ok(exit::NO_INPUT);
    }
    let sdk = match Backfill::open_read_only(db) {
        Ok(sdk) => sdk,
        Err(e) => {
            eprintln!("backfill status: {e}");
            return Ok(storage_exit(&e));
        }
    };
    let stats = sdk.stats()?;
    let dead = sdk.dead_letters(20)?;
    if as_json {
        let value = json!({
            "buffer": db.display().to_string(),
            "buffered_events": stats.buffered_events,
            "buffered_bytes": stats.buffered_bytes,
            "oldest_event": stats.oldest_event_ms.map(backfill_protocol::time::format_iso_ms),
            "newest_event": stats.newest_event_ms.map(backfill_protocol::time::format_iso_ms),
            "stats": stats,
            "dead_letters": dead,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(exit::OK);
    }
    println!("buffer          {}", db.display());
    println!(
        "buffered        {} events, {} bytes",
        stats.buffered_events, stats.buffered_bytes
    );
    println!("oldest event    {}", iso(stats.oldest_event_ms));
    println!("newest event    {}", iso(stats.newest_event_ms));
    println!(
        "sent            {} ({} duplicates) in {} requests",
        stats.sent, stats.duplicates, stats.requests
    );
    println!("expired         {}", stats.expired);
    println!("evicted         {}", stats.evicted);
    println!("dead-lettered   {}", stats.dead_lettered);
    if let Some(e) = &stats.last_error {
        println!("last error      {e}");
    }
    if !dead.is_empty() {
        println!("\nrecent dead letters:");
        println!("  {:<24}  {:<36}  error", "failed at", "insert id");
        for d in &dead {
            println!(
                "  {:<24}  {:<36}  {}",
                iso(Some(d.failed_at)),
                d.insert_id,
                d.error
            );
        }
    }
    Ok(exit::OK)
}
