//! The installer tools `sitegate units test` and `sitegate scan`, run as the built binary
//! against the simulator.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration test helpers"
)]

mod common;

use sitegate::sim::{SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

fn write_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\ndir = \"{}\"\n\
             [[links]]\nname = \"bus\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout_ms = 300\n\
             [[units]]\nid = \"gen-1\"\nlink = \"bus\"\nslave = 1\nprofile = \"dse-gencomm\"\n\
             [[units]]\nid = \"ac-1\"\nlink = \"bus\"\nslave = 2\nprofile = \"coolmaster-va\"\n\
             [[units]]\nid = \"ghost\"\nlink = \"bus\"\nslave = 9\nprofile = \"coolmaster-va\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

async fn run(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sitegate"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_test_prints_every_point_and_fails_for_a_unit_that_does_not_answer() {
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port());
    let cfg = cfg.display().to_string();
    let (code, out) = run(vec![
        "units".into(),
        "test".into(),
        "ac-1".into(),
        "--config".into(),
        cfg.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("setpoint") && out.contains("24") && out.contains("°C"),
        "{out}"
    );
    assert!(out.contains("all points read"), "{out}");
    let (code, out) = run(vec![
        "units".into(),
        "test".into(),
        "ghost".into(),
        "--config".into(),
        cfg.clone(),
        "--timeout-ms".into(),
        "3000".into(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(s.stats().writes.is_empty(), "the tool never writes");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_and_identifies_units_and_proposes_config_entries() {
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port());
    let (code, out) = run(vec![
        "scan".into(),
        "--link".into(),
        "bus".into(),
        "--config".into(),
        cfg.display().to_string(),
        "--range".into(),
        "1-4".into(),
        "--timeout-ms".into(),
        "100".into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 unit(s) answered"), "{out}");
    assert!(
        out.contains("slave = 1\nprofile = \"dse-gencomm\""),
        "{out}"
    );
    assert!(
        out.contains("slave = 2\nprofile = \"coolmaster-va\""),
        "{out}"
    );
    assert!(!out.contains("slave = 3"), "{out}");
    // The proposed entries are valid config.
    let toml_part: String = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed: toml::Value = toml::from_str(&toml_part).unwrap();
    assert_eq!(parsed["units"].as_array().unwrap().len(), 2);
    assert!(s.stats().writes.is_empty(), "a scan never writes");
    stop.cancel();
}
