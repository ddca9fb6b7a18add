//! systemd's notify protocol (`sd_notify`) over the datagram socket named by `NOTIFY_SOCKET`.
//!
//! Implemented with std's `UnixDatagram`: one datagram per message, `KEY=VALUE` lines. Both forms
//! of `NOTIFY_SOCKET` are supported: a path (`/run/systemd/notify`, what systemd sets for a
//! service) and, on Linux, an abstract name (leading `@`, as `systemd-run` and containers may
//! set), reached through std's `SocketAddrExt::from_abstract_name`. Without `NOTIFY_SOCKET`
//! every call is a no-op, so the daemon runs the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// An abstract socket name, without the leading `@`.
    Abstract(Vec<u8>),
}

/// A handle on the notify socket (or nothing when not under systemd).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<Target>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (+ `WATCHDOG_PID`) through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Notifier {
        let socket =
            env("NOTIFY_SOCKET")
                .filter(|s| !s.is_empty())
                .map(|s| match s.strip_prefix('@') {
                    Some(name) => Target::Abstract(name.as_bytes().to_vec()),
                    None => Target::Path(PathBuf::from(s)),
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
        let Some(target) = &self.socket else { return };
        let res = UnixDatagram::unbound().and_then(|s| match target {
            Target::Path(path) => s.send_to(state.as_bytes(), path),
            Target::Abstract(name) => send_abstract(&s, name, state.as_bytes()),
        });
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

#[cfg(target_os = "linux")]
fn send_abstract(s: &UnixDatagram, name: &[u8], msg: &[u8]) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    s.send_to_addr(msg, &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
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

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sitegate-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::from_env(&|k| match k {
            "NOTIFY_SOCKET" => Some(format!("@{name}")),
            _ => None,
        });
        n.stopping();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping");
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
