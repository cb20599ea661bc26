//! Backfill's device SDK: record events offline for days, keep every one safe in SQLite, and
//! drain the backlog in the fewest requests the contract allows, without loss or duplicates.
//!
//! # Layout
//! - [`client`]: [`Backfill`], the API (`track`, `track_at`, `track_for_device`, `identify`,
//!   `flush`, `set_online`, `stats`, `reset`, `opt_out`/`opt_in`, `on_background`/
//!   `on_foreground`, `close`), `track_all` (a stream of events of any length, all or none,
//!   in bounded memory) and the background uploader.
//! - [`config`]: [`Config`] in plain types, and its builder.
//! - [`event`]: building and checking wire events (properties as a map or as JSON text).
//! - [`session`]: client sessions (30 minutes of inactivity, 24 hours at most).
//! - `store` (internal): the durable SQLite buffer, its schema, bounds and dead letters.
//! - `batch` (internal): packing rows into requests within 2000 events and 10 MiB.
//! - [`upload`]: the retry policy, when to drain next, the transport trait with the seam for
//!   an app's own HTTP stack and the built-in one (cargo feature `http`), and (internal) the
//!   drain.
//! - [`stats`], [`error`]: what the SDK reports.
//!
//! ```no_run
//! use backfill_core::{Backfill, Config};
//! use serde_json::json;
//!
//! let config = Config::builder("https://ingest.example.com", "client-id", "secret", "events.db").build()?;
//! let backfill = Backfill::open(config)?;
//! backfill.track("reading", json!({"temp": 21.5}).as_object().cloned().unwrap_or_default())?;
//! let report = backfill.flush()?; // or let the background uploader do it
//! println!("sent {} events in {} requests", report.sent, report.requests);
//! # Ok::<(), backfill_core::Error>(())
//! ```
#![deny(missing_docs)]

pub(crate) mod batch;
pub mod client;
pub mod config;
pub mod error;
pub mod event;
pub mod session;
pub mod stats;
pub(crate) mod store;
pub mod upload;

pub use backfill_protocol::clock::{Clock, ManualClock, SystemClock};
pub use client::{Backfill, Recorded, TrackAllError};
pub use config::{Config, ConfigBuilder};
pub use error::Error;
pub use event::Event;
pub use stats::Stats;
pub use store::DeadLetter;
pub use upload::drain::{DrainEnd, DrainReport, PIPELINE_DEPTH};
