//! Time as the server sees it; the [`Clock`] trait is shared with the SDK.

pub use backfill_protocol::clock::{Clock, ManualClock, SystemClock};
