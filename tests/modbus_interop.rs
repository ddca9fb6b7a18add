//! Interoperability with third-party peers: pymodbus as a device the engine polls and writes,
//! and mbpoll as a client of `sitegate sim` over TCP and RTU.
#![allow(clippy::panic, reason = "test helper")]

mod common;

use std::time::Duration;

use common::modbus::*;
use serde_json::json;
use sitegate::modbus::{ProfileRegistry, Quality, WriteStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_polls_and_writes_a_pymodbus_device() {
    let port = free_port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/pymodbus_server.py"
    );
    let child = std::process::Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg("3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 is installed");
    let _py = ChildGuard(child);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let h = Harness::start(
        &[tcp_link("py", addr, 1000)],
        &[unit("ac", "py", 3, "coolmaster-va", 200)],
        ProfileRegistry::builtin().unwrap(),
    );
    // The engine reconnects with back-off until the Python server is up.
    eventually(30, "pymodbus device polled", || {
        let s = h.engine.snapshot(&uid("ac"))?;
        (s.points["room_temperature"].value == json!(26.8)
            && s.points["mode"].value == json!("cool")
            && s.points["fan"].value == json!("auto"))
        .then_some(())
    })
    .await;
    let out = h
        .engine
        .write_point(&uid("ac"), "setpoint", json!(22.5))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Ok, "{out:?}");
    assert_eq!(out.read_back, Some(json!(22.5)));
    let out = h
        .engine
        .write_point(&uid("ac"), "on", json!(true))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Ok, "{out:?}");
    let snap = h
        .engine
        .read_fresh(&uid("ac"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(snap.points["setpoint"].value, json!(22.5));
    assert_eq!(snap.points["on"].value, json!(true));
    assert_eq!(snap.points["on"].quality, Quality::Good);
    h.shutdown().await;
}

fn port_of(line: &str) -> String {
    match line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("127.0.0.1:"))
    {
        Some(p) => p.to_string(),
        None => panic!("no address in {line:?}"),
    }
}

#[test]
fn mbpoll_reads_and_writes_the_simulator_over_tcp() {
    let (_sim, line) = spawn_sim(&["--tcp", "127.0.0.1:0", "--generator", "1", "--hvac", "2"]);
    let port = port_of(&line);
    let p = port.as_str();
    let (ok, out) = mbpoll(&[
        "-m",
        "tcp",
        "-a",
        "2",
        "-0",
        "-r",
        "18",
        "-c",
        "1",
        "-t",
        "4",
        "-1",
        "-p",
        p,
        "127.0.0.1",
    ]);
    assert!(ok && out.contains("[18]: \t240"), "{out}");
    let (ok, out) = mbpoll(&[
        "-m",
        "tcp",
        "-a",
        "2",
        "-0",
        "-r",
        "18",
        "-t",
        "4",
        "-1",
        "-p",
        p,
        "127.0.0.1",
        "215",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = mbpoll(&[
        "-m",
        "tcp",
        "-a",
        "2",
        "-0",
        "-r",
        "18",
        "-c",
        "1",
        "-t",
        "4",
        "-1",
        "-p",
        p,
        "127.0.0.1",
    ]);
    assert!(ok && out.contains("[18]: \t215"), "{out}");
    // An out-of-range setpoint is refused by the unit with exception 03.
    let (ok, out) = mbpoll(&[
        "-m",
        "tcp",
        "-a",
        "2",
        "-0",
        "-r",
        "18",
        "-t",
        "4",
        "-1",
        "-p",
        p,
        "127.0.0.1",
        "999",
    ]);
    assert!(
        !ok || out.to_lowercase().contains("illegal data value"),
        "{out}"
    );
    // A DSE control key: FC16 of key and complement selects manual mode.
    let (ok, out) = mbpoll(&[
        "-m",
        "tcp",
        "-a",
        "1",
        "-0",
        "-r",
        "4104",
        "-t",
        "4",
        "-1",
        "-p",
        p,
        "127.0.0.1",
        "35702",
        "29833",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = mbpoll(&[
        "-m",
        "tcp",
        "-a",
        "1",
        "-0",
        "-r",
        "772",
        "-c",
        "1",
        "-t",
        "4",
        "-1",
        "-p",
        p,
        "127.0.0.1",
    ]);
    assert!(ok && out.contains("[772]: \t2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_the_simulator_over_rtu_through_a_pty_pair() {
    let pty = PtyPair::new().await;
    let a = pty.a.display().to_string();
    let (_sim, line) = spawn_sim(&["--rtu", &a, "--baud", "9600", "--hvac", "4"]);
    assert!(line.contains("rtu"), "{line}");
    let b = pty.b.display().to_string();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        mbpoll(&[
            "-m", "rtu", "-b", "9600", "-P", "none", "-a", "4", "-0", "-r", "16", "-c", "3", "-t",
            "4", "-1", &b,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("[17]: \t3") && out.contains("[18]: \t240"),
        "{out}"
    );
}
