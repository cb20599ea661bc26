//! `backfill`: the demo, and a gateway uploader that needs no Rust.
//!
//! # Layout
//! - `main.rs`: the command line and exit codes.
//! - [`demo`]: `backfill demo`, the whole promise in one command.
//! - [`gateway`]: `enqueue`, `drain`, `status`, `inspect` and `dead-letters` for gateways.
//! - [`input`]: NDJSON and CSV (`input/csv.rs`) readings, read as a stream.
//! - [`dedup`]: content-derived insert ids for `enqueue --dedup-key`.
//! - [`progress`]: the drain's progress display.
//! - [`output`]: stdout that respects `-q` and ends quietly on a closed pipe.
//! - [`units`]: sizes in human units.

/// `std::eprintln!` without its panic: when the reader of stderr has gone (a closed pipe, a
/// log process that died), a failure being reported must still end with its exit code, not
/// a crash. Defined before the modules, so every one of them uses it.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod dedup;
mod demo;
mod gateway;
mod input;
mod output;
mod progress;
mod units;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit codes scripts can rely on, one table for every subcommand (sysexits.h where one fits).
pub mod exit {
    /// Everything done.
    pub const OK: u8 = 0;
    /// The drain finished, but events older than the server's age window were dropped unsent.
    pub const EXPIRED: u8 = 3;
    /// The command line is wrong (EX_USAGE), or the buffer's bounds it gives are too small for
    /// the readings an enqueue adds at once.
    pub const USAGE: u8 = 64;
    /// Bad input data (a malformed reading); nothing was written (EX_DATAERR).
    pub const DATA: u8 = 65;
    /// The input file or the buffer does not exist or cannot be read (EX_NOINPUT).
    pub const NO_INPUT: u8 = 66;
    /// The buffer cannot be created: the directory `--db` names does not exist (EX_CANTCREAT).
    pub const CANT_CREATE: u8 = 73;
    /// The server is unreachable or busy; the data is kept, try again later (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// A bug in backfill (EX_SOFTWARE).
    pub const SOFTWARE: u8 = 70;
    /// The buffer could not be used: not a buffer, damaged, disk full (EX_IOERR).
    pub const IO: u8 = 74;
    /// Another drain holds the buffer, or another enqueue is writing to it; try again later
    /// (EX_TEMPFAIL).
    pub const BUSY: u8 = 75;
    /// The server refused the credentials; the data is kept (EX_NOPERM).
    pub const NOPERM: u8 = 77;
    /// The endpoint is wrong (a bad URL, or the server says no such route); the data is kept
    /// (EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// Interrupted by Ctrl-C (128 + SIGINT); the summary so far is printed.
    pub const INTERRUPTED: u8 = 130;
    /// Stopped by SIGTERM (128 + 15), as `systemctl stop` does; the summary so far is printed.
    pub const TERMINATED: u8 = 143;

    /// The table, as `--help` and the README show it.
    pub const TABLE: &str = "Exit codes:
  0    done
  3    drained, but events older than the server's age window were dropped unsent
  64   the command line is wrong (or its buffer bounds are too small for the input)
  65   bad input data; nothing was added
  66   the input file or the buffer does not exist or cannot be read
  69   the server is unreachable or busy; the data is kept, try again later
  70   a bug in backfill
  73   the buffer cannot be created: the directory --db names does not exist
  74   the buffer cannot be used (not a buffer, damaged, disk full); nothing was changed
  75   another drain holds the buffer, or another process is writing to it; try again later
  77   the server refused the credentials; the data is kept
  78   the endpoint is wrong (bad URL, or no Backfill server there); the data is kept
  130  interrupted (Ctrl-C); the summary so far is printed
  143  stopped by SIGTERM (systemctl stop, kill); the summary so far is printed";
}

#[derive(Debug, Parser)]
#[command(
    name = "backfill",
    version,
    about = "Offline-first events: record on the device, drain when online",
    after_help = exit::TABLE
)]
struct Cli {
    /// Print only errors and warnings (no progress, no summaries).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say more (repeat for more): -v logs the SDK's decisions, -vv its requests.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a server, record a week of offline gateway readings, drain them, show what arrived.
    Demo(demo::DemoArgs),
    /// Add readings (NDJSON or CSV with a header) from FILE or standard input to the buffer.
    ///
    /// All or none: the readings are read as a stream, in memory that does not grow with the
    /// input, and written in one transaction, so that a bad reading (named by its line) or a
    /// full disk adds nothing and leaves the buffer as it was.
    Enqueue(gateway::EnqueueArgs),
    /// Send the buffered readings to the server.
    Drain(gateway::DrainArgs),
    /// Show what the buffer holds (reads only: creates, moves and changes nothing).
    Status {
        #[command(flatten)]
        db: DbArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the oldest buffered events, readably (reads only).
    Inspect {
        #[command(flatten)]
        db: DbArg,
        /// How many events to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print them as NDJSON in enqueue's format instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Events the server refused for good: export them, or put them back in the buffer.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Print every dead letter as NDJSON in enqueue's format (with its insert id), oldest
    /// first, on stdout; the reasons go to stderr.
    Export {
        #[command(flatten)]
        db: DbArg,
    },
    /// Move every dead letter back into the buffer, to be sent by the next drain.
    Requeue {
        #[command(flatten)]
        db: DbArg,
    },
}

impl Command {
    /// The buffer the command works on, if it has one.
    fn db(&self) -> Option<&std::path::Path> {
        match self {
            Command::Demo(_) => None,
            Command::Enqueue(args) => Some(&args.db.db),
            Command::Drain(args) => Some(&args.db.db),
            Command::Status { db, .. }
            | Command::Inspect { db, .. }
            | Command::DeadLetters(DeadLetters::Export { db } | DeadLetters::Requeue { db }) => {
                Some(&db.db)
            }
        }
    }
}

/// The buffer file.
#[derive(Debug, Clone, Args)]
pub struct DbArg {
    /// Path of the SQLite buffer.
    #[arg(long, env = "BACKFILL_DB")]
    pub db: PathBuf,
}

/// Under a file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) the kernel ends a process
/// that writes past it with SIGXFSZ, silently and with no code of the table. With the signal
/// handled, the write fails with `EFBIG` instead: the buffer rolls the write back and the
/// command says so, exit 74, like a full disk.
fn report_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        let _context = runtime.enter();
        // The handler stays installed for the life of the process once registered.
        if let Err(e) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            tracing::debug!(error = %e, "cannot handle SIGXFSZ");
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    output::set_quiet(cli.quiet);
    report_file_size_limit();
    let level = match cli.verbose {
        0 => "error",
        1 => "backfill_core=debug,warn",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a cron line's `2>>backfill.log` gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    if let Some(db) = cli.command.db().filter(|db| db.is_dir()) {
        eprintln!(
            "backfill: --db {} is a directory; give the path of the buffer file, e.g. {}",
            db.display(),
            db.join("gw.db").display()
        );
        return ExitCode::from(exit::NO_INPUT);
    }
    let code = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Enqueue(args) => gateway::enqueue(&args),
        Command::Drain(args) => gateway::drain(&args),
        Command::Status { db, json } => gateway::status(&db.db, json),
        Command::Inspect { db, limit, json } => gateway::inspect(&db.db, limit, json),
        Command::DeadLetters(DeadLetters::Export { db }) => gateway::export_dead_letters(&db.db),
        Command::DeadLetters(DeadLetters::Requeue { db }) => gateway::requeue_dead_letters(&db.db),
    };
    match code {
        Ok(code) => ExitCode::from(code),
        // The buffer failing under a command (a table missing, a write refused) is the
        // buffer's fault, with its code; anything else is a bug.
        Err(e) => match e.downcast_ref::<backfill_core::Error>() {
            Some(sdk) => {
                eprintln!(
                    "backfill: {sdk}. The buffer may be damaged or changed by another program: \
                     move it aside (keep it) and start a new one"
                );
                ExitCode::from(gateway::storage_exit(sdk))
            }
            None => {
                eprintln!("backfill: {e:#}");
                ExitCode::from(exit::SOFTWARE)
            }
        },
    }
}
