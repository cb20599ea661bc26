//! Wire contract shared by the Backfill server and the device SDK.
//!
//! # Layout
//! - [`clock`]: the injectable source of the current time (system or manual).
//! - [`limits`]: every number the contract fixes (batch size, body size, age window, ...).
//! - [`wire`]: request and response bodies of `POST /track/batch`, `POST /track` and the read API.
//! - [`time`]: parsing `__timestamp` values and formatting times as ISO-8601 with milliseconds.
//! - [`ids`]: the device-id fingerprint and the deterministic 30-minute session id.
//! - [`properties`]: a row's properties with each value's JSON text exactly as sent.
//! - [`number`]: exact decimal sums for `increment`/`decrement`.
//! - [`validate`]: the per-event rules, one small function each; the server rejects rows with them and the SDK checks
//!   input at the call with the same code, so a tracked event is never one the server refuses.
//!
//! The crate does no I/O.
#![deny(missing_docs)]

pub mod clock;
pub mod ids;
pub mod limits;
pub mod number;
pub mod properties;
pub mod time;
pub mod validate;
pub mod wire;
