//! Shared helpers for the Modbus integration tests (re-exported from `common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sitegate::audit::Audit;
use sitegate::clock::SystemClock;
use sitegate::config::{Link, LinkKind, Parity, Unit};
use sitegate::modbus::{ModbusEngine, ProfileRegistry};
use sitegate::model::{LinkId, SlaveId, UnitId};
use sitegate::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub fn tcp_link(name: &str, addr: std::net::SocketAddr, timeout_ms: u64) -> Link {
    Link {
        name: LinkId::new(name).unwrap(),
        kind: LinkKind::Tcp {
            address: addr.to_string(),
        },
        timeout: Duration::from_millis(timeout_ms),
        retries: 1,
        max_gap: 8,
        inter_frame_delay: Duration::ZERO,
    }
}

pub fn rtu_link(name: &str, device: PathBuf) -> Link {
    Link {
        name: LinkId::new(name).unwrap(),
        kind: LinkKind::Rtu {
            device,
            baud: 38400,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        },
        timeout: Duration::from_millis(1000),
        retries: 1,
        max_gap: 8,
        inter_frame_delay: Duration::from_millis(2),
    }
}

pub fn unit(id: &str, link: &str, slave: u8, profile: &str, poll_ms: u64) -> Unit {
    Unit {
        id: UnitId::new(id).unwrap(),
        name: id.to_string(),
        link: LinkId::new(link).unwrap(),
        slave: SlaveId::new(slave).unwrap(),
        profile: profile.to_string(),
        group: None,
        poll_interval: Duration::from_millis(poll_ms),
        va: None,
        base_offset: 0,
    }
}

pub fn uid(s: &str) -> UnitId {
    UnitId::new(s).unwrap()
}

/// A running engine with its own store, audit trail and shutdown token.
pub struct Harness {
    pub engine: ModbusEngine,
    pub audit: Audit,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn start(links: &[Link], units: &[Unit], registry: ProfileRegistry) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let audit = Audit::new(store, Arc::new(SystemClock), None);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let engine = ModbusEngine::start(
            links,
            units,
            Arc::new(registry),
            audit.clone(),
            stop.clone(),
            &tracker,
        )
        .unwrap();
        Harness {
            engine,
            audit,
            stop,
            tracker,
            _dir: dir,
        }
    }

    /// Kinds of the audit records written so far, with their unit.
    pub async fn audit_kinds(&self) -> Vec<(String, Option<String>)> {
        self.audit
            .store()
            .call(|c| {
                let mut st = c.prepare("SELECT kind, unit FROM audit ORDER BY seq")?;
                let rows = st
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap()
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("engine tasks stop within 10 s");
    }
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[path = "port.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "loaded by each helper file that a test may load alone"
)]
mod port;

/// A free TCP port on 127.0.0.1 (common/port.rs).
pub fn free_port() -> u16 {
    port::free_port_in(2)
}

/// A child process that is killed (by its own pid) when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A socat PTY pair `DIR/ttyA` ⇄ `DIR/ttyB`; both links exist when this returns.
pub struct PtyPair {
    pub a: PathBuf,
    pub b: PathBuf,
    _socat: ChildGuard,
    _dir: tempfile::TempDir,
}

impl PtyPair {
    pub async fn new() -> PtyPair {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("ttyA");
        let b = dir.path().join("ttyB");
        let child = std::process::Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat is installed");
        let guard = ChildGuard(child);
        eventually(10, "socat ptys", || {
            (a.exists() && b.exists()).then_some(())
        })
        .await;
        PtyPair {
            a,
            b,
            _socat: guard,
            _dir: dir,
        }
    }
}

/// Spawns `sitegate sim ARGS` and returns it with the first line it printed.
pub fn spawn_sim(args: &[&str]) -> (ChildGuard, String) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sitegate"))
        .arg("sim")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert!(line.starts_with("sim "), "unexpected first line: {line:?}");
    (guard, line)
}

/// Runs mbpoll with a bounded time; returns (success, stdout+stderr).
pub fn mbpoll(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("timeout")
        .arg("15")
        .arg("mbpoll")
        .args(args)
        .output()
        .expect("mbpoll is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
