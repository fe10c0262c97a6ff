//! Helpers shared by the integration tests that need their own broker or a proxy.
#![allow(unreachable_pub, dead_code)] // each test binary uses a different part of these helpers

pub mod broker;
pub mod proxy;
