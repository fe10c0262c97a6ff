//! Logging set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// The assigner's and the CLI's filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn";

/// Logs to stderr, `info` and up unless `RUST_LOG` says otherwise.
pub fn init() {
    init_with(DEFAULT_FILTER);
}

/// Logs to stderr with `default_filter` unless `RUST_LOG` says otherwise; in colour only
/// on a terminal, so that log files and journald get plain text.
pub fn init_with(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
