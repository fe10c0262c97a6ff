//! berth hands out build slots (first kind: Launchpad PPAs) to CI pipelines, over RabbitMQ,
//! keeping every bit of slot state in the store. See docs/DESIGN.md for the whole picture.
//!
//! The HTTP side (the assigner, the fake Launchpad, `berth dev`, the client commands) is the
//! `server` feature, on by default; the slot workers build without it.

pub mod access;
#[cfg(feature = "server")]
pub mod assigner;
pub mod backoff;
pub mod broker;
#[cfg(feature = "server")]
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
#[cfg(feature = "server")]
pub mod dev;
#[cfg(feature = "server")]
pub mod fake;
pub mod lease;
pub mod protocol;
pub mod record;
pub mod redact;
pub mod secret_file;
pub mod shutdown;
pub mod store;
pub mod telemetry;
