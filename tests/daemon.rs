//! The daemon's lifecycle as systemd sees it: config errors exit 78 with every problem listed,
//! READY/WATCHDOG/STOPPING arrive on the notify socket, SIGTERM and SIGINT stop it cleanly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::daemon::*;

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let port = free_port();
    let text = format!(
        r#"
[site]
id = "s-1"
gateway = "gw-1"

[state]
dir = "{state}"

[api]
listen = "127.0.0.1:{port}"
mode = "plain"
{extra}
"#,
        state = dir.join("state").display()
    );
    let path = dir.join("sitegate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const BROKEN: &str = r#"
[site]
id = "s-1"
gateway = "gw-1"
colour = "red"
"#;

const BROKEN_SEMANTICS: &str = r#"
[[links]]
name = "bus1"
kind = "tcp"
address = "127.0.0.1:5020"

[[units]]
id = "gen-1"
link = "bus9"
slave = 0
profile = "dse-gencomm"
"#;

#[test]
fn check_config_lists_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");

    std::fs::write(&path, BROKEN).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `colour`"), "{err}");

    std::fs::write(&path, BROKEN_SEMANTICS).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("units[0].link: no link named `bus9`"), "{err}");
    assert!(err.contains("units[0].slave: 0 is not a unicast"), "{err}");
}

#[test]
fn check_config_refuses_a_profile_whose_command_is_a_cheaper_path_to_a_configure_register() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("genset.toml"),
        r#"name = "genset"
[[points]]
name = "shutdown_latch"
kind = "holding"
address = 100
type = "u16"
write = "configure"

[[commands]]
name = "reset_alarms"
capability = "control"
writes = [{ kind = "holding", address = 100, values = [0] }]
"#,
    )
    .unwrap();
    let path = write_config(
        dir.path(),
        &format!("\n[profiles]\ndir = \"{}\"\n", profiles.display()),
    );
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "commands[0] (`reset_alarms`).capability: `control` is below `configure`, which point `shutdown_latch` needs to write the holding register(s) this command writes at 100"
        ),
        "{err}"
    );
    assert!(err.contains("genset.toml"), "{err}");
}

#[test]
fn run_refuses_an_invalid_config_with_the_same_messages_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BROKEN_SEMANTICS).unwrap();
    let check = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let run = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(78));
    assert_eq!(run.stderr, check.stderr);
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = Command::new(bin())
        .args(["check-config", "--config", "/nonexistent/sitegate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn sd_notify_ready_watchdog_and_stopping_then_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let notify = NotifySocket::bind(dir.path());
    let (mut child, lines) = spawn_run(&config, Some(&notify.path), &[("WATCHDOG_USEC", "400000")]);
    notify.wait_for("READY=1", Duration::from_secs(20));
    // WATCHDOG_USEC=400ms → pings every 200 ms.
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    signal(child.id(), "TERM");
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    let st = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", lines.all());
}

#[test]
fn sigint_stops_the_daemon_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let notify = NotifySocket::bind(dir.path());
    let (mut child, lines) = spawn_run(&config, Some(&notify.path), &[]);
    notify.wait_for("READY=1", Duration::from_secs(20));
    signal(child.id(), "INT");
    let st = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", lines.all());
}

#[test]
fn sigterm_during_start_up_exits_0() {
    // Hold a write lock on the database so start-up blocks on SQLite's busy timeout; the
    // SIGTERM then arrives while the daemon is still starting.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    {
        // Create the schema first so the daemon's migrations have nothing to do.
        let s = sitegate::store::Store::open_in(&dir.path().join("state")).unwrap();
        drop(s);
    }
    let lock = rusqlite::Connection::open(dir.path().join("state/sitegate.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let notify = NotifySocket::bind(dir.path());
    let (mut child, lines) = spawn_run(&config, Some(&notify.path), &[]);
    lines.wait_for("starting", Duration::from_secs(20));
    signal(child.id(), "TERM");
    let st = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", lines.all());
    assert!(
        !lines.all().contains("sitegate is running"),
        "the signal was meant to arrive during start-up:\n{}",
        lines.all()
    );
    lock.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn version_prints_the_package_version() {
    let out = Command::new(bin()).arg("version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn json_logs_have_no_timestamps_under_journald() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let notify = NotifySocket::bind(dir.path());
    let mut cmd_env = vec![("JOURNAL_STREAM", "8:1234")];
    cmd_env.push(("RUST_LOG", "info"));
    let mut cmd = Command::new(bin());
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        .envs(cmd_env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let lines = Lines::capture(child.stderr.take().unwrap());
    notify.wait_for("READY=1", Duration::from_secs(20));
    signal(child.id(), "TERM");
    wait_exit(&mut child, Duration::from_secs(5));
    let all = lines.all();
    let first = all.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert!(v.get("timestamp").is_none(), "{first}");
    assert_eq!(v["level"], "INFO");
}
