//! A real mosquitto for one test: its own config file in the test's temp dir, its own free port,
//! persistence in the temp dir (so a stopped and restarted broker keeps retained messages and
//! persistent sessions). Stopped with SIGTERM (clean, saves persistence) or SIGKILL; killed on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "port.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "loaded by each helper file that a test may load alone"
)]
mod port;

/// A free TCP port on 127.0.0.1 (common/port.rs).
pub fn free_port() -> u16 {
    port::free_port_in(0)
}

pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// A plain listener on a free port, anonymous access, persistence on.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, "allow_anonymous true\n")
    }

    /// A listener on a free port with `extra` config lines (TLS, auth…) appended.
    pub fn start_with(dir: &Path, extra: &str) -> Broker {
        let port = free_port();
        let dir = dir.join(format!("mosquitto-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("mosquitto.log");
        let conf = dir.join("mosquitto.conf");
        // Started as root, mosquitto drops to user `mosquitto`, which cannot write the temp dir.
        let user = if running_as_root() { "user root\n" } else { "" };
        let text = format!(
            "{user}listener {port} 127.0.0.1\n\
             persistence true\n\
             persistence_location {}/\n\
             autosave_interval 0\n\
             max_queued_messages 0\n\
             log_dest file {}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             {extra}",
            dir.display(),
            log.display()
        );
        std::fs::write(&conf, text).unwrap();
        let mut b = Broker {
            port,
            dir,
            conf,
            log,
            child: None,
        };
        b.spawn();
        b
    }

    fn running_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.matches(" running").count())
            .unwrap_or(0)
    }

    /// Starts mosquitto and waits (bounded) for it to log that it runs.
    fn spawn(&mut self) {
        let before = self.running_lines();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running_lines() <= before {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "mosquitto exited with {status}: {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker cleanly (SIGTERM: it saves its persistence) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the broker (SIGKILL: whatever it held in memory is lost) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped or killed broker again on the same port with the same config.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts the broker again on the same port with the same config.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Asks the broker to reload its config and password file (SIGHUP).
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "HUP");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Sends a signal by name to one process id (the `kill` utility; no unsafe code).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// `mosquitto_pub` as a third-party publisher: QoS 1, retained when `retain`, payload from a file.
pub fn publish_file(port: u16, topic: &str, file: &Path, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
    ])
    .arg("-f")
    .arg(file);
    if retain {
        cmd.arg("-r");
    }
    let st = cmd.status().expect("mosquitto_pub is installed");
    assert!(st.success(), "mosquitto_pub failed");
}

/// Publishes `payload` with `mosquitto_pub` (written to a file in `dir` first).
pub fn publish(port: u16, dir: &Path, topic: &str, payload: &[u8], retain: bool) {
    let f = dir.join(format!("pub-{}.bin", free_port()));
    std::fs::write(&f, payload).unwrap();
    publish_file(port, topic, &f, retain);
}
