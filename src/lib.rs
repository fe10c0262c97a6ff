//! berth hands out build slots (first kind: Launchpad PPAs) to CI pipelines, over RabbitMQ,
//! keeping every bit of slot state in the store. See docs/DESIGN.md for the whole picture.

pub mod assigner;
pub mod backoff;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod fake;
pub mod lease;
pub mod protocol;
pub mod record;
pub mod shutdown;
pub mod store;
pub mod telemetry;
