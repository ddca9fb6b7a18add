//! Tracing set-up: human format on a TTY, JSON with `--log-format json`, and no timestamps when
//! stdout goes to journald (`JOURNAL_STREAM` set), which stamps lines itself.

use std::io::IsTerminal;
use std::sync::OnceLock;

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
    let from_env = env("RUST_LOG").and_then(|f| EnvFilter::try_new(f).ok());
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| config_filter(level));
    let journald = env("JOURNAL_STREAM").is_some_and(|s| !s.is_empty());
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // try_init: a second call (tests, tools) keeps the first subscriber. The filter is
    // reloadable so that a configuration reload can change the level.
    macro_rules! install {
        ($b:expr) => {{
            let b = $b.with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() && !pinned {
                let _ = SET_FILTER.set(Box::new(move |f| handle.reload(f).is_ok()));
            }
        }};
    }
    match (format, journald) {
        (LogFormat::Json, true) => install!(builder.json().without_time()),
        (LogFormat::Json, false) => install!(builder.json()),
        (LogFormat::Human, true) => install!(builder.with_ansi(false).without_time()),
        (LogFormat::Human, false) => install!(builder.with_ansi(tty)),
    }
}

type FilterSetter = Box<dyn Fn(EnvFilter) -> bool + Send + Sync>;

/// Swaps the installed subscriber's filter (absent when `RUST_LOG` chose it or no subscriber
/// of ours is installed).
static SET_FILTER: OnceLock<FilterSetter> = OnceLock::new();

/// The filter for the config's `[log] level`.
fn config_filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("{level},rumqttc=warn,hyper=warn"))
}

/// Applies a reloaded config's `[log] level`. Returns false when the level is fixed by
/// `RUST_LOG` (which wins over the config, as at start) or logging is not ours.
pub fn set_level(level: &str) -> bool {
    SET_FILTER
        .get()
        .is_some_and(|set| set(config_filter(level)))
}
