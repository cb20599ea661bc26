//! `backfill demo`: a gateway of sensors offline for a week, then one drain into a local server.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use backfill_core::{Backfill, Clock, Config, DrainEnd, Event, SystemClock};
use backfill_protocol::limits::DEFAULT_MAX_EVENT_AGE_DAYS;
use backfill_protocol::time::{format_iso_ms, parse_timestamp, utc_day};
use backfill_server::config::ProjectCredential;
use backfill_server::read_client::ReadClient;
use clap::Args;
use serde_json::{Map, Value, json};

use crate::exit;
use crate::gateway::drain_with_progress;

const PROJECT: &str = "0d3a9d8e-5f7c-4a1b-9e2d-6c4b8a7f1e30";
const SECRET: &str = "demo-secret-not-for-production";
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// Options of `backfill demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the server's store and the gateway's buffer here (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Sensors on the gateway.
    #[arg(long, default_value_t = 7)]
    sensors: usize,
    /// Days offline, of one-minute readings.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=89))]
    days: u32,
    /// Print a JSON summary instead of tables.
    #[arg(long)]
    json: bool,
}

/// A plausible reading of sensor `s` at minute `m`: a daily temperature swing, humidity against
/// it, a slowly draining battery.
fn reading(s: usize, m: i64) -> Map<String, Value> {
    let day_phase = (m % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
    let wobble = ((m * 7919 + s as i64 * 104_729) % 100) as f64 / 100.0 - 0.5;
    let temp = 19.0 + s as f64 * 0.4 + 3.5 * (day_phase - 2.0).sin() + wobble * 0.3;
    let humidity = 55.0 - 8.0 * (day_phase - 2.0).sin() + wobble;
    let battery = 3.95 - m as f64 * 0.000_02;
    let mut p = Map::new();
    p.insert("temp_c".into(), json!((temp * 10.0).round() / 10.0));
    p.insert("humidity".into(), json!((humidity * 10.0).round() / 10.0));
    p.insert(
        "battery_v".into(),
        json!((battery * 1000.0).round() / 1000.0),
    );
    p
}

/// Readings a faulty sensor produces; the SDK refuses each at the call, with its reason.
fn glitches(t: i64) -> Vec<(&'static str, Event)> {
    let deep = (0..20).fold(json!(0), |acc, _| json!({"raw": acc}));
    let event = |name: &str, properties: Value| Event {
        name: name.to_owned(),
        properties: properties.as_object().cloned().unwrap_or_default(),
        timestamp_ms: Some(t),
        device_id: Some("gw-0001-sensor-00".to_owned()),
        insert_id: None,
    };
    vec![
        (
            "a garbled name with a line break",
            event("read\ning", json!({"temp_c": 20.1})),
        ),
        ("an empty name", event("", json!({"temp_c": 20.1}))),
        (
            "a dump nested 20 levels deep",
            event("reading", json!({"dump": deep})),
        ),
    ]
}

/// Runs the demo; exits non-zero if the server does not hold exactly what was recorded.
pub fn run(args: &DemoArgs) -> anyhow::Result<u8> {
    let temp;
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let window_days = args.days + 1;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = backfill_server::Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.join("server"),
        max_event_age_days: window_days,
        projects: vec![
            format!("{PROJECT}:{SECRET}")
                .parse::<ProjectCredential>()
                .map_err(anyhow::Error::msg)?,
        ],
        ..Default::default()
    };
    let server = runtime.block_on(backfill_server::start(&config, Arc::new(SystemClock), None))?;
    let url = server.url();
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    say(format!(
        "server listening on {url} (embedded store in {})",
        config.data_dir.display()
    ));
    say(format!(
        "its age window is {window_days} days, to take a {}-day backlog (the default is {DEFAULT_MAX_EVENT_AGE_DAYS} days; \
         --max-event-age-days or BACKFILL_MAX_EVENT_AGE_DAYS sets it)",
        args.days
    ));

    let sdk_config = Config::builder(&url, PROJECT, SECRET, dir.join("gateway.db"))
        .background_upload(false)
        .build()?;
    let sdk = Backfill::open(sdk_config)?;
    let now = SystemClock.now_ms();
    let minutes = i64::from(args.days) * 1440;
    let start = now - minutes * MINUTE;
    say(format!(
        "\noffline: a gateway records {} sensors every minute for {} days ({} .. {})",
        args.sensors,
        args.days,
        format_iso_ms(start),
        format_iso_ms(now)
    ));
    let mut recorded = 0u64;
    for s in 0..args.sensors {
        for day in 0..i64::from(args.days) {
            let events = (day * 1440..(day + 1) * 1440)
                .map(|m| Event {
                    name: "reading".to_owned(),
                    properties: reading(s, m),
                    timestamp_ms: Some(start + m * MINUTE + 15_000),
                    device_id: Some(format!("gw-0001-sensor-{s:02}")),
                    insert_id: None,
                })
                .collect();
            recorded += sdk.track_many(events)?.len() as u64;
        }
    }
    let mut refused = Vec::new();
    for (what, event) in glitches(start + DAY) {
        if let Err(e) = sdk.track_many(vec![event]) {
            refused.push((what, e.to_string()));
        }
    }
    let buffered = sdk.stats()?;
    say(format!(
        "buffered {recorded} readings ({:.1} MiB) safely on the device; refused {} faulty ones at the call",
        buffered.buffered_bytes as f64 / 1_048_576.0,
        refused.len()
    ));

    say("\nonline: draining".to_owned());
    let started = Instant::now();
    let end = drain_with_progress(&sdk, true)?.end;
    let seconds = started.elapsed().as_secs_f64();
    let stats = sdk.stats()?;
    if end != DrainEnd::Empty {
        anyhow::bail!("the drain did not finish: {end:?}");
    }

    let reader = ReadClient::new(&url, PROJECT, SECRET);
    let events = runtime.block_on(reader.events("name=reading"))?;
    let sessions = runtime.block_on(reader.sessions(""))?;
    let mut per_day: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut insert_ids = HashSet::new();
    let mut stored = 0u64;
    for e in events.iter().filter(|e| e["name"] == json!("reading")) {
        stored += 1;
        insert_ids.insert(e["insert_id"].as_str().unwrap_or_default().to_owned());
        if let Some(t) = parse_timestamp(&e["created_at"]) {
            per_day.entry(utc_day(t)).or_default().0 += 1;
        }
    }
    for s in &sessions {
        if let Some(t) = parse_timestamp(&s["started_at"]) {
            per_day.entry(utc_day(t)).or_default().1 += 1;
        }
    }
    let expected = recorded - stats.expired;
    let exact = stored == expected && insert_ids.len() as u64 == stored;

    if args.json {
        let summary = json!({
            "recorded": recorded,
            "refused_at_record": refused.len(),
            "expired": stats.expired,
            "dead_lettered": stats.dead_lettered,
            "sent": stats.sent,
            "stored_events": stored,
            "sessions": sessions.len(),
            "requests": stats.requests,
            "bytes_sent": stats.bytes_sent,
            "seconds": seconds,
            "data_dir": dir.display().to_string(),
            "project": PROJECT,
            "exact": exact,
        });
        println!("{summary}");
    } else {
        println!("\nwhat the server stored, read back through its API:");
        println!("  {:<12} {:>10} {:>10}", "day (UTC)", "events", "sessions");
        for (day, (n, s)) in &per_day {
            println!("  {day:<12} {n:>10} {s:>10}");
        }
        println!("  {:<12} {:>10} {:>10}", "total", stored, sessions.len());
        println!("\nrefused at the call (never buffered):");
        for (what, why) in &refused {
            println!("  {what}: {why}");
        }
        println!(
            "rejected by the server: {} (dead-lettered); expired on the device: {}",
            stats.dead_lettered, stats.expired
        );
        println!(
            "\n{} events in {} requests, {:.1} MiB on the wire ({:.1} bytes/event, gzip), {:.1} s ({:.0} events/s)",
            stats.sent,
            stats.requests,
            stats.bytes_sent as f64 / 1_048_576.0,
            stats.bytes_sent as f64 / stats.sent.max(1) as f64,
            seconds,
            stats.sent as f64 / seconds.max(1e-3)
        );
        println!(
            "{}",
            if exact {
                "every reading arrived exactly once, at its own time"
            } else {
                "MISMATCH between what was recorded and what was stored"
            }
        );
    }
    drop(sdk);
    runtime.block_on(server.stop())?;
    Ok(if exact { exit::OK } else { exit::SOFTWARE })
}
