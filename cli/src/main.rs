//! `backfill`: the demo, and a gateway uploader that needs no Rust.
//!
//! # Layout
//! - `main.rs`: the command line and exit codes.
//! - [`demo`]: `backfill demo`, the whole promise in one command.
//! - [`gateway`]: `enqueue`, `drain` and `status` for gateways.
//! - [`input`]: NDJSON and CSV readings.
//! - [`progress`]: the drain's progress display.

mod demo;
mod gateway;
mod input;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit codes scripts can rely on (sysexits.h).
pub mod exit {
    /// Everything done.
    pub const OK: u8 = 0;
    /// Something went wrong that is not one of the below.
    pub const FAILURE: u8 = 1;
    /// Bad input data (a malformed reading); nothing was written.
    pub const DATA: u8 = 65;
    /// The buffer could not be read or written.
    pub const IO: u8 = 74;
    /// The server is unreachable or busy; the data is kept, try again later.
    pub const TEMPFAIL: u8 = 75;
    /// The server refused the credentials; the data is kept.
    pub const NOPERM: u8 = 77;
}

#[derive(Debug, Parser)]
#[command(
    name = "backfill",
    version,
    about = "Offline-first events: record on the device, drain when online"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a server, record a week of offline gateway readings, drain them, show what arrived.
    Demo(demo::DemoArgs),
    /// Add readings (NDJSON or CSV with a header) from FILE or standard input to the buffer.
    Enqueue {
        #[command(flatten)]
        db: DbArg,
        /// The readings; `-` or nothing for standard input.
        file: Option<PathBuf>,
    },
    /// Send the buffered readings to the server.
    Drain(gateway::DrainArgs),
    /// Show what the buffer holds.
    Status {
        #[command(flatten)]
        db: DbArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The buffer file.
#[derive(Debug, Clone, Args)]
pub struct DbArg {
    /// Path of the SQLite buffer.
    #[arg(long, env = "BACKFILL_DB")]
    pub db: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Enqueue { db, file } => gateway::enqueue(&db.db, file.as_deref()),
        Command::Drain(args) => gateway::drain(&args),
        Command::Status { db, json } => gateway::status(&db.db, json),
    };
    match code {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("backfill: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
