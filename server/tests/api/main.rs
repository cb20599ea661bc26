//! The HTTP contract (SPEC §1–§8) through `app(state).oneshot(..)` with a manual clock, on
//! each store (`common::StoreKind`).

#[macro_use]
mod common;
#[path = "../cluster/mod.rs"]
mod cluster;

mod auth;
mod dedup;
mod envelope;
mod faults;
mod fidelity;
mod grouping;
mod modes;
mod profiles;
mod read;
mod rules;
mod sessions;
