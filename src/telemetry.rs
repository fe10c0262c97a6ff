//! Logging set-up shared by the binaries: text for people, or JSON (one object per line,
//! with the fields of the event's spans) for log shippers.

use tracing_subscriber::EnvFilter;

/// The assigner's and the CLI's filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn";

/// How log lines are written (`--log-format`, `BERTH_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain text, in colour on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`),
    /// `span` (the current span's name and fields) and `spans` (every open span, outermost
    /// first).
    Json,
}

/// Logs to stderr in `format`, `info` and up unless `RUST_LOG` says otherwise.
pub fn init(format: LogFormat) {
    init_with_format(DEFAULT_FILTER, format);
}

/// Logs text to stderr with `default_filter` unless `RUST_LOG` says otherwise.
pub fn init_with(default_filter: &str) {
    init_with_format(default_filter, LogFormat::Text);
}

/// Logs to stderr in `format` with `default_filter` unless `RUST_LOG` says otherwise; text
/// is in colour only on a terminal, so that log files and journald get plain text.
pub fn init_with_format(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
