//! The fake Launchpad (DESIGN §5). To be written.

use std::process::ExitCode;

/// Flags of `berth fake-launchpad`.
#[derive(Debug, clap::Args)]
pub struct FakeLaunchpadArgs {}

/// Runs `berth fake-launchpad` until Ctrl-C.
pub async fn run_cli(_args: FakeLaunchpadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
