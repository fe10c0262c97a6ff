//! Helpers of the integration tests, one module per concern: a namespace per test on the
//! shared broker, the assigner in-process on port 0, HTTP calls, the binaries as child
//! processes, `/metrics` parsed, a stack of real processes; and, for tests that cut the broker
//! off, a TCP proxy. What the worker's tests need too (the test configuration, polling with a
//! deadline, free ports, the private RabbitMQ node and three-node cluster of the tests that
//! stop, kill or pause a broker: `berth_testkit::rabbit`) is in the `berth-testkit` crate
//! (`testkit/`). The
//! everyday helpers are re-exported here:
//! `use support::*`.
#![allow(unreachable_pub, dead_code, unused_imports)] // each test binary uses a different part of these helpers

pub mod app;
pub mod http;
pub mod metrics;
pub mod namespace;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod stack;

pub use app::TestApp;
pub use berth_testkit::wait_for;
pub use http::*;
pub use metrics::*;
pub use namespace::*;
pub use process::*;
