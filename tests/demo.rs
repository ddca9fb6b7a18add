//! `sitegate demo` starts a whole site, and every curl line it prints works as printed: a
//! scripted client runs them with the real `curl` binary and checks the announced status.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test"
)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{bin, signal, wait_exit};

#[test]
fn the_demo_starts_and_every_printed_curl_line_gets_the_status_it_announces() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("demo-state");
    let mut child = Command::new(bin())
        .args(["demo", "--state-dir"])
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the demo did not finish starting: {lines:#?}"));
        let done = line.starts_with("Press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    assert!(lines[0].contains("sitegate demo is running"), "{lines:#?}");
    assert!(state.join("tls/cert.pem").exists());
    assert!(state.join("sitegate.toml").exists());
    assert!(state.join("demo-fleet.pk8").exists());

    let steps: Vec<&String> = lines.iter().filter(|l| l.starts_with("  $ ")).collect();
    assert!(steps.len() >= 10, "{lines:#?}");
    let mut env: HashMap<String, String> = HashMap::new();
    let mut seen = Vec::new();
    for (i, line) in steps.iter().enumerate() {
        let (cmd, note) = line
            .trim_start_matches("  $ ")
            .split_once("    # expect ")
            .unwrap_or_else(|| panic!("no expected status in `{line}`"));
        assert!(cmd.starts_with("curl "), "{line}");
        let (status, sets) = match note.split_once(", then: export ") {
            Some((s, rest)) => (s, rest.split_once('=').map(|(v, _)| v.to_string())),
            None => (note, None),
        };
        let want: u16 = status.trim().parse().unwrap();
        let body = dir.path().join(format!("body-{i}"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} -o '{}' -w '%{{http_code}}'", body.display()))
            .envs(&env)
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let text = std::fs::read_to_string(&body).unwrap_or_default();
        assert_eq!(
            got,
            want.to_string(),
            "`{line}` answered {got}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(var) = sets {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let token = v["token"].as_str().unwrap().to_string();
            env.insert(var, token);
        }
        seen.push((cmd.to_string(), want, text));
    }
    // What the walk-through shows is what happened.
    let put = seen
        .iter()
        .find(|(c, _, _)| c.contains("points/setpoint"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&put.2).unwrap();
    assert_eq!(v["read_back"], serde_json::json!(22.5), "{}", put.2);
    assert!(seen.iter().any(|(_, s, _)| *s == 403));
    let audit = seen.iter().find(|(c, _, _)| c.contains("/audit")).unwrap();
    assert!(
        audit.2.contains("\"records\"") || audit.2.contains("kind"),
        "{}",
        audit.2
    );

    signal(child.id(), "TERM");
    let st = wait_exit(&mut child, Duration::from_secs(15));
    assert!(st.success(), "{st:?}");
    assert!(state.join("sitegate.db").exists(), "the state dir is kept");
}

#[test]
fn the_demo_publishes_to_the_broker_given_with_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker::Broker::start(dir.path());
    let state = dir.path().join("demo-state");
    let mut child = Command::new(bin())
        .args(["demo", "--state-dir"])
        .arg(&state)
        .args(["--listen", "127.0.0.1:0", "--mqtt"])
        .arg(format!("mqtt://127.0.0.1:{}", broker.port))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut intro = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        intro.push_str(&line);
        intro.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        intro.contains("MQTT topics: sitegate/v1/demo-site/demo-gw/#"),
        "{intro}"
    );
    // The retained online status (bounded wait: -W).
    let out = Command::new("mosquitto_sub")
        .args(["-p", &broker.port.to_string(), "-h", "127.0.0.1", "-q", "1"])
        .args([
            "-t",
            "sitegate/v1/demo-site/demo-gw/status",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("\"online\":true"), "{status:?}");
    signal(child.id(), "TERM");
    let st = wait_exit(&mut child, Duration::from_secs(15));
    assert!(st.success(), "{st:?}");
}

#[test]
fn the_demo_refuses_a_state_dir_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sitegate.db"), b"a real box's database").unwrap();
    let out = Command::new(bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was not made by `sitegate demo`"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("sitegate.db")).unwrap(),
        b"a real box's database"
    );
    assert!(!dir.path().join("sitegate.toml").exists());
}
