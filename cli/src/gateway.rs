//! `enqueue`, `drain` and `status`: Backfill for gateways that pipe readings in.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_core::{Backfill, Config, DrainEnd, DrainReport, Error, Event, Stats, TrackAllError};
use clap::Args;
use serde_json::json;

use crate::dedup::{self, DedupKey};
use crate::exit;
use crate::input::{readings as read_readings, to_reading};
use crate::output;
use crate::progress::Progress;
use crate::units::{format_size, parse_size};

/// Where to drain to.
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub(crate) db: crate::DbArg,
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
    /// Most dead letters kept for inspection; past it the oldest are evicted (and counted).
    #[arg(long, env = "BACKFILL_MAX_DEAD_LETTERS", default_value_t = 1000)]
    max_dead_letters: u64,
    /// Check the settings and say what would be sent, without sending anything.
    #[arg(long, conflicts_with_all = ["watch", "until_empty"])]
    dry_run: bool,
}

/// Where to enqueue, and how.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub(crate) db: crate::DbArg,
    /// The readings; `-` or nothing for standard input.
    file: Option<PathBuf>,
    /// Give each reading a content-derived insert id, so that enqueueing the same log again is
    /// harmless (the server stores each reading once): `content` (name, device id, timestamp
    /// and every property) or a comma-separated list of fields (`name`, `device_id`,
    /// `timestamp`, property names). Every reading then needs a timestamp. A reading's own
    /// `insert_id` wins.
    #[arg(long, value_name = "content|FIELD,...")]
    dedup_key: Option<DedupKey>,
    /// Read and check the readings, and say what would be added and what an enqueue would
    /// warn of, without creating or changing the buffer.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    limits: Limits,
}

/// The buffer's bounds; past either, the oldest events are evicted (and counted).
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Most events the buffer holds; past it the oldest are evicted and counted.
    #[arg(long, env = "BACKFILL_MAX_ROWS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_rows: u64,
    /// Most bytes of event JSON the buffer holds (e.g. 512MiB, 2GB); past it the oldest are
    /// evicted and counted.
    #[arg(long, env = "BACKFILL_MAX_BYTES", default_value = "512MiB", value_parser = parse_size)]
    max_bytes: u64,
}

/// Opens a buffer for local work (no uploads).
fn open_offline(db: &Path, limits: &Limits) -> Result<Backfill, Error> {
    let config = Config::builder("http://127.0.0.1", "offline", "offline", db)
        .background_upload(false)
        .max_buffer_rows(limits.max_rows)
        .max_buffer_bytes(limits.max_bytes)
        .build()?;
    Backfill::open(config)
}

/// The exit code of an SDK error (the table in `main`).
pub fn storage_exit(e: &Error) -> u8 {
    match e {
        Error::Unauthorized(_) => exit::NOPERM,
        Error::Misconfigured(_) | Error::InvalidConfig(_) => exit::CONFIG,
        Error::InvalidEvent(_) => exit::DATA,
        Error::Busy(_) => exit::BUSY,
        _ => exit::IO,
    }
}

/// Opens an existing buffer to read it; says why not, with the exit code, when it cannot.
fn open_to_read(command: &str, db: &Path) -> Result<Backfill, u8> {
    if !db.exists() {
        eprintln!("backfill {command}: no buffer at {}", db.display());
        return Err(exit::NO_INPUT);
    }
    Backfill::open_read_only(db).map_err(|e| {
        eprintln!("backfill {command}: {e}");
        storage_exit(&e)
    })
}

/// Refuses a buffer whose directory does not exist, naming the missing directory, and gives
/// the exit code: the buffer file is created when missing, but a mistyped `--db` must not
/// create a directory tree (the SDK creates a missing folder, as an app opening its buffer in
/// a folder of its own wants).
fn check_directory(command: &str, db: &Path) -> Result<(), u8> {
    let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    // The outermost missing directory (or the file standing where a directory should be).
    let missing = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.is_dir())
        .last()
        .unwrap_or(dir);
    let (why, fix) = if missing.exists() {
        (
            format!("{} is not a directory", missing.display()),
            "Correct --db".to_owned(),
        )
    } else {
        (
            format!("the directory {} does not exist", missing.display()),
            format!(
                "Correct --db, or create the directory first (mkdir -p {})",
                dir.display()
            ),
        )
    };
    eprintln!(
        "backfill {command}: cannot create the buffer {}: {why}; nothing was created. {fix}",
        db.display(),
    );
    Err(exit::CANT_CREATE)
}

/// Readings read before the buffer is opened: a bad or empty input this short leaves no
/// buffer behind, and the rest is read as it is written.
const FIRST_CHUNK: usize = 1000;

/// What the warnings after an enqueue say, tallied as the readings stream by.
#[derive(Debug, Default)]
struct Tally {
    /// Readings older than the age window, and the oldest time among them.
    too_old: (u64, Option<i64>),
    /// Readings stamped past the server's tolerance, and the latest (its line and time).
    future: (u64, Option<(usize, i64)>),
}

impl Tally {
    fn note(&mut self, line: usize, event: &Event, now: i64, cutoff: i64) {
        use backfill_protocol::limits::FUTURE_TOLERANCE_MS;
        let Some(t) = event.timestamp_ms else {
            return;
        };
        if t < cutoff {
            self.too_old.0 += 1;
            self.too_old.1 = Some(self.too_old.1.map_or(t, |oldest| oldest.min(t)));
        }
        if t > now + FUTURE_TOLERANCE_MS {
            self.future.0 += 1;
            if self.future.1.is_none_or(|(_, latest)| t > latest) {
                self.future.1 = Some((line, t));
            }
        }
    }

    /// Says when readings are already older than the age window (the next drain would drop
    /// them unsent), and when readings are stamped later than now past the server's minute of
    /// tolerance (the server stores those at the time they arrive instead, SPEC §4, keeping
    /// the given time aside as `__clientTimestamp`).
    fn warn(&self, window: Duration) {
        if let (n, Some(oldest)) = self.too_old {
            eprintln!(
                "backfill enqueue: warning: {n} readings (the oldest from {}) are older than the \
                 server's {:.0}-day age window and will be dropped unsent by the next drain; to \
                 keep them, start the server with --max-event-age-days N (1 to 90)",
                iso(Some(oldest)),
                window.as_secs_f64() / 86_400.0
            );
        }
        if let (n, Some((line, latest))) = self.future {
            eprintln!(
                "backfill enqueue: warning: {n} readings are stamped in the future (the latest, \
                 line {line}, at {}); the server will store them at the time they arrive, keeping \
                 the given time as __clientTimestamp. Is the clock of the device that stamped \
                 them right?",
                iso(Some(latest)),
            );
        }
    }
}

/// `backfill enqueue`: all readings or none, read as a stream. A file is read once, as its
/// readings are written. Standard input or a pipe is first read to its end and checked while
/// it is copied to a spool file, and then written from the spool: the buffer's write lock is
/// held only while checked readings are written, never while a slow producer is still piping
/// them in (a `drain --watch` beside it keeps settling what it sends).
pub fn enqueue(args: &EnqueueArgs) -> anyhow::Result<u8> {
    if let Err(code) = check_directory("enqueue", &args.db.db) {
        return Ok(code);
    }
    match args.file.as_deref().filter(|f| f.as_os_str() != "-") {
        Some(path) => match std::fs::File::open(path) {
            Ok(f) if args.dry_run || f.metadata().is_ok_and(|m| m.is_file()) => {
                enqueue_from(args, BufReader::with_capacity(1 << 16, f))
            }
            // A named pipe or a device.
            Ok(f) => enqueue_spooled(args, f),
            Err(e) => {
                eprintln!("backfill enqueue: cannot open {}: {e}", path.display());
                Ok(exit::NO_INPUT)
            }
        },
        None => {
            use std::io::IsTerminal;
            // Run by hand without a file, it would otherwise wait without a word.
            if std::io::stdin().is_terminal() && !output::quiet() {
                eprintln!(
                    "backfill enqueue: reading readings (NDJSON or CSV) from the terminal; end \
                     with Ctrl-D, or give a file: backfill enqueue --db {} FILE",
                    args.db.db.display()
                );
            }
            if args.dry_run {
                enqueue_from(args, std::io::stdin().lock())
            } else {
                enqueue_spooled(args, std::io::stdin().lock())
            }
        }
    }
}

/// Reads a stream to its end, checking every reading while copying it to a spool file (next
/// to the buffer when its directory exists: a gateway's `/tmp` is often memory), then writes
/// the readings from the spool. The spool has no name in the directory (the system removes it
/// when the command ends, even when it is killed).
fn enqueue_spooled(args: &EnqueueArgs, input: impl std::io::Read) -> anyhow::Result<u8> {
    let dir = args
        .db
        .db
        .parent()
        .filter(|d| d.is_dir())
        .map_or_else(std::env::temp_dir, Path::to_owned);
    let mut spool = match tempfile::tempfile_in(&dir) {
        Ok(spool) => spool,
        Err(e) => {
            eprintln!(
                "backfill enqueue: cannot create a spool file for the input in {}: {e}; \
                 nothing was added",
                dir.display()
            );
            return Ok(exit::IO);
        }
    };
    let mut tee = Tee {
        inner: input,
        copy: std::io::BufWriter::new(&spool),
        failed: None,
    };
    let checked = check_pass(args, BufReader::with_capacity(1 << 16, &mut tee));
    let failed = match std::io::Write::flush(&mut tee.copy) {
        Ok(()) => tee.failed.take(),
        Err(e) => Some(e),
    };
    drop(tee);
    if let Some(e) = failed {
        // Said after whatever the check said of the line it stopped at.
        eprintln!(
            "backfill enqueue: cannot write the spool file in {} ({e}); nothing was added. If \
             the disk is full or a file-size limit was reached, free space or raise the limit",
            dir.display()
        );
        return Ok(exit::IO);
    }
    match checked {
        Ok(0) => {
            eprintln!("backfill enqueue: the input is empty (no readings); nothing was added");
            Ok(exit::OK)
        }
        Ok(_) => {
            std::io::Seek::rewind(&mut spool)?;
            enqueue_from(args, BufReader::with_capacity(1 << 16, spool))
        }
        Err(code) => Ok(code),
    }
}

/// A reader that writes what it reads to `copy`; a failed write ends the reading and is kept
/// in `failed`.
struct Tee<R, W> {
    inner: R,
    copy: W,
    failed: Option<std::io::Error>,
}

impl<R: std::io::Read, W: std::io::Write> std::io::Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.copy.write_all(&buf[..n]) {
            let said = std::io::Error::new(e.kind(), format!("cannot spool it: {e}"));
            self.failed = Some(e);
            return Err(said);
        }
        Ok(n)
    }
}

/// Reads and checks every reading of `input`, writing nothing; counts them, or says why not
/// and gives the exit code.
fn check_pass(args: &EnqueueArgs, input: impl std::io::BufRead) -> Result<u64, u8> {
    let readings = read_readings(input).map_err(refused)?;
    let mut n = 0u64;
    for item in with_insert_ids(args, readings) {
        checked(item)?;
        n += 1;
    }
    Ok(n)
}

/// Passes a reading on when it was read and the SDK would record it ([`Event::check`], no
/// buffer needed); else says why on stderr, naming its line, and gives the exit code. Checked
/// as each is read, a reading the SDK refuses is named in its place among those the input
/// reader refuses: the first bad reading is the one named, whatever its fault.
fn checked(item: Result<(usize, Event), crate::input::InputError>) -> Result<(usize, Event), u8> {
    let (line, event) = item.map_err(refused)?;
    match event.check(backfill_protocol::clock::Clock::now_ms(
        &backfill_core::SystemClock,
    )) {
        Ok(()) => Ok((line, event)),
        Err(e) => Err(refused(format!("line {line}: {e}"))),
    }
}

/// `enqueue --dry-run`: given readings checked by [`checked`] (or the exit code of the first
/// that is not), writes nothing and warns as an enqueue would:
/// of readings older than the age window or stamped in the future, and of buffered events the
/// readings would evict past `--max-rows` (past `--max-bytes` too, an enqueue alone can say:
/// it counts the bytes of the events as stamped). The buffer, when there is one, is only read
/// (for the server's age window as last seen, and what it holds), never created or changed.
fn dry_run(
    args: &EnqueueArgs,
    readings: impl Iterator<Item = Result<(usize, Event), u8>>,
) -> anyhow::Result<u8> {
    let db = &args.db.db;
    let buffer = db
        .is_file()
        .then(|| Backfill::open_read_only(db).ok())
        .flatten();
    let window = buffer.as_ref().map_or_else(
        || {
            use backfill_protocol::limits::{DEFAULT_MAX_EVENT_AGE_DAYS, max_event_age_ms};
            Duration::from_millis(max_event_age_ms(DEFAULT_MAX_EVENT_AGE_DAYS).unsigned_abs())
        },
        Backfill::max_event_age,
    );
    let (now, cutoff) = now_and_cutoff(window);
    let mut tally = Tally::default();
    let mut n = 0u64;
    for item in readings {
        let (line, event) = match item {
            Ok(reading) => reading,
            Err(code) => return Ok(code),
        };
        tally.note(line, &event, now, cutoff);
        n += 1;
    }
    if n > args.limits.max_rows {
        return Ok(beyond_bounds(&args.limits, false));
    }
    let buffered = match &buffer {
        Some(buffer) => buffer.stats()?.buffered_events,
        None => 0,
    };
    let evicted = (buffered + n)
        .saturating_sub(args.limits.max_rows)
        .min(buffered);
    if evicted > 0 {
        eprintln!(
            "backfill enqueue: the buffer would be full ({} events at most): the {evicted} \
             oldest events would be evicted to make room",
            args.limits.max_rows,
        );
    }
    tally.warn(window);
    output::line(&format!(
        "dry run: {n} readings are valid and would be added to {}; nothing was written",
        db.display()
    ));
    Ok(exit::OK)
}

/// Now (ms), and the time before which a reading is older than `window`.
fn now_and_cutoff(window: Duration) -> (i64, i64) {
    let now = backfill_protocol::clock::Clock::now_ms(&backfill_core::SystemClock);
    (
        now,
        now - i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
    )
}

/// With `--dedup-key`, gives each reading without an insert id its content-derived one as it
/// is read (so a missing timestamp is a bad line).
fn with_insert_ids<'a>(
    args: &'a EnqueueArgs,
    readings: impl Iterator<Item = Result<(usize, Event), crate::input::InputError>> + 'a,
) -> impl Iterator<Item = Result<(usize, Event), crate::input::InputError>> + 'a {
    readings.map(|item| {
        let (line, mut event) = item?;
        if let Some(key) = &args.dedup_key
            && event.insert_id.is_none()
        {
            event.insert_id = Some(
                dedup::insert_id(&event, key)
                    .map_err(|message| crate::input::InputError { line, message })?,
            );
        }
        Ok((line, event))
    })
}

/// Says that bad input stopped the command, and gives its exit code.
fn refuse(e: impl std::fmt::Display) -> anyhow::Result<u8> {
    Ok(refused(e))
}

/// Says that bad input stopped the command; returns its exit code.
fn refused(e: impl std::fmt::Display) -> u8 {
    eprintln!("backfill enqueue: {e}; nothing was added");
    exit::DATA
}

/// Reads and writes the readings of `input` in one transaction (or, with `--dry-run`, checks
/// them).
fn enqueue_from(args: &EnqueueArgs, input: impl std::io::BufRead) -> anyhow::Result<u8> {
    let db = &args.db.db;
    let readings = match read_readings(input) {
        Ok(readings) => readings,
        Err(e) => return refuse(e),
    };
    let mut readings = with_insert_ids(args, readings);
    // The first readings are checked as the SDK records them before the buffer is opened, so
    // that a short bad input creates no buffer, and a reading the SDK refuses is named before
    // a later one the reader refuses.
    let mut first = Vec::with_capacity(FIRST_CHUNK);
    for item in readings.by_ref().take(FIRST_CHUNK) {
        match checked(item) {
            Ok(reading) => first.push(reading),
            Err(code) => return Ok(code),
        }
    }
    if first.is_empty() {
        eprintln!("backfill enqueue: the input is empty (no readings); nothing was added");
        return Ok(exit::OK);
    }
    if first.len() as u64 > args.limits.max_rows {
        return Ok(beyond_bounds(&args.limits, false));
    }
    if args.dry_run {
        return dry_run(args, first.into_iter().map(Ok).chain(readings.map(checked)));
    }
    let all = first.into_iter().map(Ok).chain(readings);
    let sdk = match open_offline(db, &args.limits) {
        Ok(sdk) => sdk,
        Err(e) => {
            eprintln!("backfill enqueue: {e}");
            return Ok(storage_exit(&e));
        }
    };
    // Reads every table: a damaged buffer is refused before any reading goes into it.
    sdk.stats()?;
    let window = sdk.max_event_age();
    let (now, cutoff) = now_and_cutoff(window);
    let mut tally = Tally::default();
    // The line of the reading being written, to name it when the SDK refuses it.
    let mut line = 0;
    let events = all.map(|item| {
        let (n, event) = item?;
        line = n;
        tally.note(n, &event, now, cutoff);
        Ok::<_, crate::input::InputError>(event)
    });
    let recorded = match sdk.track_all(events) {
        Ok(recorded) => recorded,
        Err(TrackAllError::Source { error, .. }) => return refuse(error),
        Err(TrackAllError::Sdk {
            error: Error::Busy(_),
            ..
        }) => {
            eprintln!(
                "backfill enqueue: the buffer is busy: another process is writing to it; nothing \
                 was added, enqueue the readings again once it ends"
            );
            return Ok(exit::BUSY);
        }
        // The readings alone pass the buffer's bounds: no reading is bad, the bound is too
        // small for the input.
        Err(TrackAllError::Sdk {
            error: Error::InvalidEvent(why),
            ..
        }) if why.contains("the whole buffer") => {
            return Ok(beyond_bounds(&args.limits, why.contains("bytes")));
        }
        Err(TrackAllError::Sdk { index, error }) => {
            let at = match index {
                Some(_) => format!("line {line}: "),
                None => String::new(),
            };
            let hint = match &error {
                // SQLite names a write refused by the OS (ENOSPC, EFBIG, EIO) as a disk I/O
                // error.
                Error::Storage(_) | Error::StorageFull(_) => {
                    ". If the disk is full or a file-size limit (ulimit -f, systemd's \
                     LimitFSIZE=) was reached, free space or raise the limit and enqueue the \
                     readings again"
                }
                _ => "",
            };
            eprintln!(
                "backfill enqueue: {at}{error}; nothing was added, the buffer is unchanged{hint}"
            );
            return Ok(storage_exit(&error));
        }
    };
    if recorded.evicted > 0 {
        eprintln!(
            "backfill enqueue: the buffer was full ({} events, {} at most): the {} oldest \
             events were evicted to make room",
            args.limits.max_rows,
            format_size(args.limits.max_bytes),
            recorded.evicted
        );
    }
    tally.warn(window);
    let readings = if recorded.events == 1 {
        "reading"
    } else {
        "readings"
    };
    output::line(&format!(
        "added {} {readings} to {}",
        recorded.events,
        db.display()
    ));
    Ok(exit::OK)
}

/// Says that the input's readings alone pass the buffer's bound on events (or, with `bytes`,
/// on bytes), and gives the exit code: the command line's bound is too small for the input,
/// which holds no bad reading (`EX_USAGE`: the fix is a flag, or a smaller input). An enqueue
/// is all or nothing and never evicts its own readings for each other, so it adds nothing.
fn beyond_bounds(limits: &Limits, bytes: bool) -> u8 {
    let (what, fix) = if bytes {
        (
            format!(
                "the readings take more than {} of event JSON, the most the buffer holds",
                format_size(limits.max_bytes)
            ),
            "Raise --max-bytes (BACKFILL_MAX_BYTES) above the input's size",
        )
    } else {
        (
            format!(
                "the input holds more than {} readings, the most the buffer holds",
                limits.max_rows
            ),
            "Raise --max-rows (BACKFILL_MAX_ROWS) above the input's number of readings",
        )
    };
    eprintln!(
        "backfill enqueue: {what}; an enqueue adds all its readings or none and does not evict \
         its own readings for each other, so nothing was added and the buffer is unchanged. \
         {fix}, or enqueue the input in smaller parts"
    );
    exit::USAGE
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
    .max_dead_letters(args.max_dead_letters)
    .build();
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("backfill drain: {e}");
            return Ok(storage_exit(&e));
        }
    };
    // A mistyped --db in a cron line would otherwise drain a new, empty buffer forever. A
    // watching drain may start before the first enqueue, in a directory that exists.
    if args.watch
        && let Err(code) = check_directory("drain", &args.db.db)
    {
        return Ok(code);
    }
    if !args.watch && !args.db.db.exists() {
        eprintln!("backfill drain: no buffer at {}", args.db.db.display());
        return Ok(exit::NO_INPUT);
    }
    if args.dry_run {
        let sdk = match open_to_read("drain", &args.db.db) {
            Ok(sdk) => sdk,
            Err(code) => return Ok(code),
        };
        let stats = sdk.stats()?;
        output::line(&format!(
            "dry run: {} events ({}) would be sent to {} in about {} requests, oldest from {}; \
             nothing was sent",
            stats.buffered_events,
            format_size(stats.buffered_bytes),
            args.endpoint,
            stats.buffered_events.div_ceil(2000),
            iso(stats.oldest_event_ms)
        ));
        return Ok(exit::OK);
    }
    let interrupt = on_interrupt();
    {
        let sdk = match Backfill::open(config.clone()) {
            Ok(sdk) => sdk,
            Err(e) => {
                eprintln!("backfill drain: {e}");
                return Ok(storage_exit(&e));
            }
        };
        let opened = file_identity(&args.db.db);
        // One drain per buffer: a second one would send every reading again.
        if let Err(e) = sdk.hold_drain_lock() {
            eprintln!("backfill drain: {e}; try again once it ends");
            return Ok(storage_exit(&e));
        }
        watch_for_interrupt(&interrupt, Some(&sdk));
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
                        output::line(&format!(
                            "sent {sent} events in {} requests ({}); {} duplicates, {} dead-lettered, {} expired; {} left",
                            after.requests - before.requests,
                            format_size(after.bytes_sent - before.bytes_sent),
                            after.duplicates - before.duplicates,
                            after.dead_lettered - before.dead_lettered,
                            after.expired - before.expired,
                            after.buffered_events
                        ));
                    }
                }
                // Only a drain without --until-empty or --watch gets here (the others wait and
                // go on): it does not retry, so the backoff's wait is no promise of its own.
                Ok(DrainReport {
                    end: DrainEnd::RetryIn(_),
                    last_error,
                    ..
                }) => {
                    let cause = last_error.as_deref().unwrap_or("the server is busy");
                    eprintln!(
                        "backfill drain: {cause}; {} events kept. Run drain again later, or \
                         with --until-empty (or --watch) to retry with backoff until they are \
                         sent",
                        after.buffered_events,
                    );
                    return Ok(exit::UNAVAILABLE);
                }
                Ok(DrainReport {
                    end: DrainEnd::Unauthorized(code),
                    ..
                })
                | Err(Error::Unauthorized(code)) => {
                    // The server's own words (a wrong secret, a read-only key), as the SDK kept them.
                    let why = after.last_error.clone().unwrap_or_else(|| {
                        format!("the server refused the credentials (HTTP {code})")
                    });
                    eprintln!(
                        "backfill drain: {why}; nothing was deleted, {} events kept. Check \
                     BACKFILL_CLIENT_ID and BACKFILL_CLIENT_SECRET (a write or root key of this \
                     server)",
                        after.buffered_events
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
                // Another process held the write lock past the busy timeout (a large enqueue
                // being written): what was sent stays buffered; a watching drain goes on.
                Err(Error::Busy(why)) if args.watch => {
                    eprintln!(
                        "backfill drain: {why}; {} events kept, trying again in {} s",
                        after.buffered_events,
                        args.interval.max(1)
                    );
                    std::thread::sleep(Duration::from_secs(args.interval.max(1)));
                    continue;
                }
                Err(e) => {
                    eprintln!("backfill drain: {e}");
                    return Ok(storage_exit(&e));
                }
            }
            if !args.watch {
                return Ok(code);
            }
            loop {
                // Looked at before the buffer is read: once another file stands at the path, the
                // old one must not be read or closed (see `start_again`).
                let now_at_path = file_identity(&args.db.db);
                if now_at_path.is_some() && now_at_path != opened {
                    eprintln!(
                        "backfill drain: the buffer {} was replaced (moved aside, or deleted and \
                         created again); watching the one now at that path",
                        args.db.db.display()
                    );
                    let e = start_again();
                    eprintln!("backfill drain: cannot start again ({e}); run it again");
                    return Ok(exit::IO);
                }
                if sdk.stats()?.buffered_events > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_secs(args.interval.max(1)));
            }
        }
    }
}

/// Runs this command again in this process (same arguments, environment and pid, so a service
/// manager sees no exit), returning only on failure. A watching drain does this when its buffer
/// was replaced: SQLite finds a database's `-wal` and `-shm` files by its path, so closing the
/// old connection would checkpoint and delete the WAL of the new buffer at that path (losing
/// what was written to it), and reading through it would mix the two files. The old
/// connection's files are closed by the system instead, with nothing written.
fn start_again() -> std::io::Error {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        match std::env::current_exe() {
            Ok(exe) => std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .exec(),
            Err(e) => e,
        }
    }
    #[cfg(not(unix))]
    {
        std::io::Error::other("replacing a watched buffer is noticed only on Unix")
    }
}

/// The file behind `path` (device and inode), to notice when it is replaced; `None` when
/// there is none, or where the platform does not say.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The buffer a drain works on, and its stats when the drain took it, for the summary on
/// Ctrl-C.
type Interrupt = Arc<Mutex<Option<(Backfill, Stats)>>>;

/// Sets (or, with `None`, clears) the buffer the Ctrl-C summary speaks of.
fn watch_for_interrupt(interrupt: &Interrupt, sdk: Option<&Backfill>) {
    let entry = sdk.and_then(|sdk| sdk.stats().ok().map(|start| (sdk.clone(), start)));
    if let Ok(mut current) = interrupt.lock() {
        *current = entry;
    }
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM (what `systemctl stop`, `docker stop` and
/// `kill` send), and returns the exit code that says which: 130 or 143 (128 + the signal).
async fn stop_signal() -> Option<u8> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok()?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.ok().map(|()| exit::INTERRUPTED),
            _ = term.recv() => Some(exit::TERMINATED),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .ok()
            .map(|()| exit::INTERRUPTED)
    }
}

/// On Ctrl-C (SIGINT) or SIGTERM, prints what this drain did so far and ends with exit 130 or
/// 143. Rows sent but not yet settled stay buffered and are resent by the next drain: their
/// insert ids make the server count them as duplicates, not store them twice.
fn on_interrupt() -> Interrupt {
    let interrupt = Interrupt::default();
    let current = Arc::clone(&interrupt);
    let watcher = std::thread::Builder::new()
        .name("backfill-signal".to_owned())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let Some(code) = runtime.block_on(stop_signal()) else {
                return;
            };
            let how = if code == exit::TERMINATED {
                "stopped (SIGTERM)"
            } else {
                "interrupted"
            };
            let (now, start) = match current.lock().ok().and_then(|c| c.clone()) {
                Some((sdk, start)) => (sdk.stats().unwrap_or_default(), start),
                None => Default::default(),
            };
            eprintln!(
                "\nbackfill drain: {how}; sent {} events in {} requests, {} duplicates, {} \
                 dead-lettered, {} expired; {} left in the buffer for the next drain",
                now.sent.saturating_sub(start.sent),
                now.requests.saturating_sub(start.requests),
                now.duplicates.saturating_sub(start.duplicates),
                now.dead_lettered.saturating_sub(start.dead_lettered),
                now.expired.saturating_sub(start.expired),
                now.buffered_events
            );
            std::process::exit(i32::from(code));
        });
    if let Err(e) = watcher {
        tracing::warn!(error = %e, "cannot watch for Ctrl-C or SIGTERM");
    }
    interrupt
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

/// `backfill status`: reads only.
pub fn status(db: &Path, as_json: bool) -> anyhow::Result<u8> {
    let sdk = match open_to_read("status", db) {
        Ok(sdk) => sdk,
        Err(code) => return Ok(code),
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
        output::always(&serde_json::to_string_pretty(&value)?);
        return Ok(exit::OK);
    }
    let mut lines = vec![
        format!("buffer          {}", db.display()),
        format!(
            "buffered        {} events, {}",
            stats.buffered_events,
            format_size(stats.buffered_bytes)
        ),
        format!("oldest event    {}", iso(stats.oldest_event_ms)),
        format!("newest event    {}", iso(stats.newest_event_ms)),
        format!(
            "sent            {} ({} duplicates) in {} requests, {}",
            stats.sent,
            stats.duplicates,
            stats.requests,
            format_size(stats.bytes_sent)
        ),
        format!("expired         {}", stats.expired),
        format!("evicted         {}", stats.evicted),
        format!("dead-lettered   {}", stats.dead_lettered),
    ];
    if stats.dead_letters_evicted > 0 {
        lines.push(format!(
            "                {} of them evicted past the dead-letter bound (oldest first); \
             export the rest with `backfill dead-letters export`",
            stats.dead_letters_evicted
        ));
    }
    if let Some(e) = &stats.last_error {
        lines.push(format!("last error      {e}"));
    }
    if !dead.is_empty() {
        lines.push(String::new());
        lines.push("recent dead letters:".to_owned());
        lines.push(format!("  {:<24}  {:<36}  error", "failed at", "insert id"));
        for d in &dead {
            lines.push(format!(
                "  {:<24}  {:<36}  {}",
                iso(Some(d.failed_at)),
                d.insert_id,
                d.error
            ));
        }
    }
    for line in lines {
        output::always(&line);
    }
    Ok(exit::OK)
}

/// `backfill inspect`: the oldest buffered events, readably; reads only.
pub fn inspect(db: &Path, limit: usize, as_json: bool) -> anyhow::Result<u8> {
    let sdk = match open_to_read("inspect", db) {
        Ok(sdk) => sdk,
        Err(code) => return Ok(code),
    };
    let bodies = sdk.buffered(limit)?;
    if !as_json {
        output::always(&format!(
            "{:<24}  {:<20}  {:<16}  properties",
            "time (UTC)", "device", "name"
        ));
    }
    for body in &bodies {
        let Some(reading) = to_reading(body) else {
            output::always(body);
            continue;
        };
        if as_json {
            output::always(&reading.to_string());
            continue;
        }
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        let mut properties = reading["properties"].to_string();
        if properties.chars().count() > 60 {
            properties = properties.chars().take(57).collect::<String>() + "...";
        }
        output::always(&format!(
            "{:<24}  {:<20}  {:<16}  {properties}",
            text(&reading["timestamp"]),
            text(&reading["device_id"]),
            text(&reading["name"]),
        ));
    }
    let total = sdk.stats()?.buffered_events;
    if !as_json && total as usize > bodies.len() {
        output::line(&format!(
            "({} of {total} buffered events shown, oldest first)",
            bodies.len()
        ));
    }
    Ok(exit::OK)
}

/// `backfill dead-letters export`: NDJSON in enqueue's format, oldest first.
pub fn export_dead_letters(db: &Path) -> anyhow::Result<u8> {
    let sdk = match open_to_read("dead-letters export", db) {
        Ok(sdk) => sdk,
        Err(code) => return Ok(code),
    };
    let mut letters = sdk.dead_letters(usize::MAX)?;
    letters.reverse();
    let mut skipped = 0;
    for letter in &letters {
        match to_reading(&letter.body) {
            Some(reading) => {
                output::always(&reading.to_string());
                eprintln!("{}: {}", letter.insert_id, letter.error);
            }
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        eprintln!(
            "backfill dead-letters export: {skipped} dead letters are not readings (identify \
             and the like) and were left out; `requeue` puts them back too"
        );
    }
    let evicted = sdk.stats()?.dead_letters_evicted;
    if evicted > 0 {
        eprintln!(
            "backfill dead-letters export: {evicted} older dead letters were evicted past the \
             bound and are gone"
        );
    }
    Ok(exit::OK)
}

/// `backfill dead-letters requeue`.
pub fn requeue_dead_letters(db: &Path) -> anyhow::Result<u8> {
    if !db.exists() {
        eprintln!(
            "backfill dead-letters requeue: no buffer at {}",
            db.display()
        );
        return Ok(exit::NO_INPUT);
    }
    let limits = Limits {
        max_rows: u64::MAX,
        max_bytes: u64::MAX,
    };
    let requeued = open_offline(db, &limits).and_then(|sdk| sdk.requeue_dead_letters());
    match requeued {
        Ok(n) => {
            output::line(&format!(
                "requeued {n} dead letters into {}; the next drain sends them",
                db.display()
            ));
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("backfill dead-letters requeue: {e}");
            Ok(storage_exit(&e))
        }
    }
}
