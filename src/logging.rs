//! Tracing set-up: human format on a TTY, JSON with `--log-format json`, and no timestamps when
//! stdout goes to journald (`JOURNAL_STREAM` set), which stamps lines itself.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Output format chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable; colours only on a terminal.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `level` is the config's default; `RUST_LOG` overrides it.
/// Logs go to stderr so that command output on stdout stays clean.
pub fn init(format: LogFormat, level: &str, env: &dyn Fn(&str) -> Option<String>) {
    let filter = env("RUST_LOG")
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("{level},rumqttc=warn,hyper=warn")));
    let journald = env("JOURNAL_STREAM").is_some_and(|s| !s.is_empty());
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // try_init: a second call (tests, tools) keeps the first subscriber.
    let _ = match (format, journald) {
        (LogFormat::Json, true) => builder.json().without_time().try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Human, true) => builder.with_ansi(false).without_time().try_init(),
        (LogFormat::Human, false) => builder.with_ansi(tty).try_init(),
    };
}
