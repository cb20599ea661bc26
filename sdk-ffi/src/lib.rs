//! Backfill's device SDK for Kotlin, Swift and Python, through uniffi (proc-macros; bindings
//! generated in library mode by the workspace's `uniffi-bindgen`). Wrappers only: each exported
//! object holds the core object and each method delegates to it; the logic lives in
//! `backfill-core`.
//!
//! # Layout
//! - [`client`]: [`BackfillClient`], the SDK object apps hold.
//! - [`records`]: [`BackfillConfig`] (only endpoint, client id, secret and database path are
//!   required), [`BackfillStats`], [`DrainReport`] and [`DrainEnd`].
//! - [`http`]: the [`HttpClient`] trait an app implements to upload through its platform's own
//!   HTTP stack, and its adapter to the core's transport.
//! - [`error`]: [`BackfillError`], the few cases a host app can act on, and [`HttpError`].
//!
//! Properties cross the boundary as JSON object text, so no binding parses JSON: the core
//! checks it where it checks every event.
#![deny(missing_docs)]

uniffi::setup_scaffolding!("backfill_ffi");

pub mod client;
pub mod error;
pub mod http;
pub mod records;

pub use client::BackfillClient;
pub use error::{BackfillError, HttpError};
pub use http::{HttpClient, HttpResponse};
pub use records::{BackfillConfig, BackfillStats, DrainEnd, DrainReport};
