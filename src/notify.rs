//! systemd's notify protocol (`sd_notify`) over the datagram socket named by `NOTIFY_SOCKET`.
//!
//! Implemented with std's `UnixDatagram`: one datagram per message, `KEY=VALUE` lines. An abstract
//! socket name (leading `@`) is not reachable through std without `unsafe`, so only path sockets
//! are supported; systemd uses a path (`/run/systemd/notify`). Without `NOTIFY_SOCKET` every call
//! is a no-op, so the daemon runs the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// A handle on the notify socket (or nothing when not under systemd).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (+ `WATCHDOG_PID`) through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Notifier {
        let socket = env("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .and_then(|s| {
                if s.starts_with('@') {
                    tracing::warn!("abstract NOTIFY_SOCKET is not supported; sd_notify disabled");
                    None
                } else {
                    Some(PathBuf::from(s))
                }
            });
        let pid_ok = env("WATCHDOG_PID")
            .map(|p| p.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = env("WATCHDOG_USEC")
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// The process environment.
    pub fn from_process_env() -> Notifier {
        Notifier::from_env(&|k| std::env::var(k).ok())
    }

    /// How often to send `WATCHDOG=1`: half the watchdog period, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification; failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        let res = UnixDatagram::unbound().and_then(|s| s.send_to(state.as_bytes(), path));
        if let Err(e) = res {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=running");
    }
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping");
    }
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", status.replace('\n', " ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let p = path.to_string_lossy().to_string();
        let n = Notifier::from_env(&|k| match k {
            "NOTIFY_SOCKET" => Some(p.clone()),
            "WATCHDOG_USEC" => Some("2000000".into()),
            _ => None,
        });
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        n.ready();
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..len])
                .unwrap()
                .starts_with("READY=1")
        );
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn watchdog_for_another_pid_is_ignored() {
        let n = Notifier::from_env(&|k| match k {
            "WATCHDOG_USEC" => Some("2000000".into()),
            "WATCHDOG_PID" => Some("1".into()),
            _ => None,
        });
        assert_eq!(n.watchdog_interval(), None);
    }
}
