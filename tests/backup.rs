//! `sitegate backup` / `restore` with the real binary: a provisioned, used state dir is backed
//! up, removed, restored, and the daemon starts from it with the same site, certificate, device
//! key, audit chain and sessions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should fail the test loudly"
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{bin, fleet_keygen, free_port, signal, sitegate_ok, spawn_run, wait_exit};
use serde_json::{Value, json};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn fingerprint(config: &Path) -> String {
    sitegate_ok(&["api-cert", "--config", config.to_str().unwrap()])
        .lines()
        .find_map(|l| l.strip_prefix("sha256 fingerprint: "))
        .unwrap()
        .to_string()
}

async fn wait_healthy(http: &reqwest::Client, base: &str, logs: &common::daemon::Lines) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status().is_success())
    {
        assert!(Instant::now() < deadline, "no answer: {}", logs.all());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn me(http: &reqwest::Client, base: &str, bearer: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}/me"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_on_a_fresh_state_dir_starts_the_same_box_with_its_sessions() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, pk) = fleet_keygen(d, "fleet-a");
    let port = free_port();
    let state = d.join("state");
    let etc = d.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("sitegate.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n\n[state]\ndir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[[grants.trust]]\nkid = \"fleet-a\"\npublic_key = \"{pk}\"\n",
            state.display()
        ),
    )
    .unwrap();

    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}/api/v1");
    let (mut child, logs) = spawn_run(&config, None, &[]);
    wait_healthy(&http, &base, &logs).await;
    let now = time::OffsetDateTime::now_utc();
    let desc = json!({
        "site": "s-1", "issued_at": sitegate::clock::rfc3339(now - time::Duration::minutes(1)),
        "user": {"id": "ivo", "email": "ivo@installer.example", "name": "ivo", "active": true},
        "grant": {"id": "g-ivo", "user": "ivo", "role": "technician", "scope": {"site": "s-1"},
                  "expires_at": sitegate::clock::rfc3339(now + time::Duration::hours(4))},
    });
    let (input, tok) = (d.join("ivo.json"), d.join("ivo.token"));
    std::fs::write(&input, serde_json::to_vec(&desc).unwrap()).unwrap();
    sitegate_ok(&[
        "fleet",
        "issue-token",
        "--key",
        key.to_str().unwrap(),
        "--kid",
        "fleet-a",
        "--in",
        input.to_str().unwrap(),
        "--out",
        tok.to_str().unwrap(),
    ]);
    let token = std::fs::read_to_string(&tok).unwrap().trim().to_string();
    let r = http
        .post(format!("{base}/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let bearer = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, me_before) = me(&http, &base, &bearer).await;
    assert_eq!(st, 200, "{me_before}");

    // Backed up while the daemon runs (SQLite's online backup).
    let archive = d.join("box.tar");
    sitegate_ok(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--to",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(mode(&archive), 0o600);
    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(st.code(), Some(0));
    let fp = fingerprint(&config);
    let device_key = std::fs::read(state.join("device.pk8")).unwrap();

    // A fresh box: no state dir, no config.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::remove_dir_all(&etc).unwrap();
    sitegate_ok(&[
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--from",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("sitegate.db")), 0o600);
    assert_eq!(mode(&state.join("device.pk8")), 0o600);
    assert_eq!(mode(&state.join("tls")), 0o700);
    assert_eq!(mode(&state.join("tls/key.pem")), 0o600);
    assert_eq!(mode(&config), 0o640);
    assert_eq!(std::fs::read(state.join("device.pk8")).unwrap(), device_key);
    assert_eq!(fingerprint(&config), fp);

    // Restoring again over it is refused without --force.
    let again = Command::new(bin())
        .args(["restore", "--config"])
        .arg(&config)
        .arg("--from")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));

    let (mut child, logs) = spawn_run(&config, None, &[]);
    wait_healthy(&http, &base, &logs).await;
    assert!(logs.all().contains(&fp), "{}", logs.all());
    let (st, me_after) = me(&http, &base, &bearer).await;
    assert_eq!(st, 200, "{me_after}");
    // (A token grant's expires_at comes back at the stored millisecond precision after any
    // restart, so the grant is compared by id, role and scope.)
    for k in ["user", "site", "session", "units"] {
        assert_eq!(me_after[k], me_before[k], "{k}");
    }
    for k in ["id", "role", "scope", "origin"] {
        assert_eq!(me_after["grants"][0][k], me_before["grants"][0][k], "{k}");
    }
    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(st.code(), Some(0));

    let store = sitegate::store::Store::open_in(&state).unwrap();
    let chain = store
        .with_conn(|c| sitegate::audit::verify_chain(c))
        .unwrap();
    assert!(chain.is_ok(), "{chain:?}");
}
