//! Launchpad web service client. Written in the foundation issue.

/// Placeholder until the client lands.
#[derive(Debug)]
pub struct LaunchpadStore;
