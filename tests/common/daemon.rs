//! Running the real `sitegate` binary: free ports, config files, notify sockets, log capture.

#![allow(clippy::panic, reason = "test helpers fail the test loudly")]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the `sitegate` binary cargo built for the tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sitegate"))
}

#[path = "port.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "loaded by each helper file that a test may load alone"
)]
mod port;

/// A free TCP port on 127.0.0.1 (common/port.rs).
pub fn free_port() -> u16 {
    port::free_port_in(1)
}

/// Sends a signal by name to a process (`kill -TERM pid`).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Waits for a child to exit, at most `limit`; kills it and panics past that.
pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A notify socket like systemd's, bound in a temp dir.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket { path, sock }
    }

    /// Waits until a datagram containing `needle` arrives; returns every message seen so far.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notify message with {needle:?} within {limit:?}; saw {seen:?}"
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let hit = msg.contains(needle);
                seen.push(msg);
                if hit {
                    return seen;
                }
            }
        }
    }
}

/// Collects a child's stderr lines in the background.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn capture(stream: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                l.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Waits until a line contains `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.0.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "no line containing {needle:?} within {limit:?}:\n{}",
            self.all()
        );
    }

    /// Waits until `n` lines contain `needle` (the n-th reload, say).
    pub fn wait_for_count(&self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= n
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "fewer than {n} lines containing {needle:?} within {limit:?}:\n{}",
            self.all()
        );
    }
}

/// Starts `sitegate run --config CONFIG` with NOTIFY_SOCKET (and extra env), capturing stderr.
pub fn spawn_run(config: &Path, notify: Option<&Path>, env: &[(&str, &str)]) -> (Child, Lines) {
    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info");
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", n);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let lines = Lines::capture(child.stderr.take().unwrap());
    (child, lines)
}

/// What one run of the `sitegate` binary printed, and its exit code (-1 when killed by a signal).
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `sitegate` binary with `args` (no stdin) to completion.
pub fn sitegate(args: &[&str]) -> Out {
    let out = std::process::Command::new(bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the `sitegate` binary, requires exit 0 and returns its standard output.
pub fn sitegate_ok(args: &[&str]) -> String {
    let out = sitegate(args);
    assert!(out.code == 0, "{args:?}: {}", out.stderr);
    out.stdout
}

/// Makes a fleet signing key with `sitegate fleet keygen` as `DIR/KID.pk8`; returns its path and
/// the public key the tool prints (base64).
pub fn fleet_keygen(dir: &Path, kid: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{kid}.pk8"));
    let out = sitegate_ok(&[
        "fleet",
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--kid",
        kid,
    ]);
    let pk = out
        .lines()
        .find_map(|l| l.strip_prefix("public_key: "))
        .unwrap()
        .to_string();
    (key, pk)
}
