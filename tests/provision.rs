//! From a blank box to a working site with the real binary: `sitegate provision`, a simulated
//! bus found by `sitegate scan`, `sitegate units test`; provisioning refuses to clobber; and the
//! first-boot setup-code flow followed by an installer-token login on a box with no bundle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Out, bin, free_port, signal, sitegate, spawn_run, wait_exit};
use sitegate::grants::fleet;

fn trust_key() -> (ring::signature::Ed25519KeyPair, String) {
    let k = fleet::keypair_from_seed(&[42u8; 32]).unwrap();
    let pk = fleet::public_key_b64(&k);
    (k, pk)
}

fn provision(config: &Path, state: &Path, site: &str, extra: &[&str]) -> Out {
    let (_, pk) = trust_key();
    let trust = format!("fleet-a={pk}");
    let mut args = vec![
        "provision",
        "--config",
        config.to_str().unwrap(),
        "--site",
        site,
        "--gateway",
        "gw-1",
        "--state-dir",
        state.to_str().unwrap(),
        "--trust",
        &trust,
        "--api-listen",
        "127.0.0.1:0",
        "--tls-name",
        "plant-room.local",
        "--non-interactive",
    ];
    args.extend_from_slice(extra);
    sitegate(&args)
}

/// Starts `sitegate sim` and returns it with its address (parsed from its first line).
fn start_sim(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(bin())
        .arg("sim")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(4)
        .unwrap_or_else(|| panic!("unexpected sim output `{line}`"))
        .to_string();
    (child, addr)
}

#[test]
fn a_blank_box_is_provisioned_finds_a_generator_and_an_hvac_unit_and_tests_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/sitegate.toml");
    let state = dir.path().join("state");
    let out = provision(&config, &state, "s-1", &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for want in [
        "site:               s-1",
        "gateway:            gw-1",
        "trusted keys:       fleet-a",
        "device public key:",
        "TLS sha256:",
        "systemctl enable --now sitegate",
        "sitegate scan",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing `{want}`: {}",
            out.stdout
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state dir is owner-only");
    assert!(state.join("tls/cert.pem").exists());
    let ok = sitegate(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    // The certificate carries the extra name, and the audit trail the provisioning.
    let san = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(state.join("tls/cert.pem"))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout);
    assert!(
        san.contains("DNS:plant-room.local") && san.contains("DNS:localhost"),
        "{san}"
    );
    let store = sitegate::store::Store::open_in(&state).unwrap();
    let recs = store
        .with_conn(|c| {
            sitegate::audit::query(
                c,
                &sitegate::audit::Query {
                    kind: Some("provisioned".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].detail["site"], "s-1");

    // A simulated bus: a generator at 3 and an HVAC indoor unit at 7.
    let (mut sim, addr) = start_sim(&["--tcp", "127.0.0.1:0", "--generator", "3", "--hvac", "7"]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[links]]\nname = \"bus\"\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout_ms = 500\n"
    ));
    std::fs::write(&config, &text).unwrap();
    let scan = sitegate(&[
        "scan",
        "--link",
        "bus",
        "--config",
        config.to_str().unwrap(),
        "--range",
        "1-10",
        "--timeout-ms",
        "150",
    ]);
    assert_eq!(scan.code, 0, "{}{}", scan.stdout, scan.stderr);
    assert!(
        scan.stdout.contains("2 unit(s) answered"),
        "{}",
        scan.stdout
    );
    assert!(
        scan.stdout.contains("slave = 3\nprofile = \"dse-gencomm\""),
        "{}",
        scan.stdout
    );
    assert!(
        scan.stdout
            .contains("slave = 7\nprofile = \"coolmaster-va\""),
        "{}",
        scan.stdout
    );
    // The installer pastes the proposals into the config.
    let proposed: String = scan
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text.push_str(&proposed);
    std::fs::write(&config, &text).unwrap();
    let ok = sitegate(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("2 unit(s)"), "{}", ok.stdout);

    let t = sitegate(&["units", "test", "--config", config.to_str().unwrap()]);
    // The simulated generator has no oil temperature sender (it answers the GenComm
    // "unimplemented" sentinel): the one point that is not good, and it fails the test.
    assert_eq!(t.code, 1, "{}{}", t.stdout, t.stderr);
    let not_good: Vec<&str> = t
        .stdout
        .lines()
        .filter(|l| l.starts_with("  ") && !l.contains(" good ") && !l.contains("quality"))
        .collect();
    assert_eq!(not_good.len(), 1, "{}", t.stdout);
    assert!(
        not_good[0].contains("oil_temperature") && not_good[0].contains("unimplemented"),
        "{}",
        t.stdout
    );
    assert!(t.stdout.contains("1 failure(s)"), "{}", t.stdout);
    assert!(
        t.stdout.contains("dse-gencomm, link `bus`, slave 3"),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout.contains("coolmaster-va, link `bus`, slave 7"),
        "{}",
        t.stdout
    );
    for point in [
        "engine_state",
        "battery_voltage",
        "setpoint",
        "room_temperature",
    ] {
        assert!(t.stdout.contains(point), "no `{point}`: {}", t.stdout);
    }
    assert!(t.stdout.contains("°C"), "{}", t.stdout);
    sim.kill().unwrap();
    let _ = sim.wait();
}

#[test]
fn provision_refuses_to_clobber_a_provisioned_box_and_keeps_backups_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sitegate.toml");
    let state = dir.path().join("state");
    let first = provision(&config, &state, "s-1", &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let before = std::fs::read_to_string(&config).unwrap();
    let cert_before = std::fs::read_to_string(state.join("tls/cert.pem")).unwrap();

    let again = provision(&config, &state, "s-2", &[]);
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("already provisioned as site `s-1`"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);

    let forced = provision(&config, &state, "s-2", &["--force"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(forced.stdout.contains("site:               s-2"));
    let backups: Vec<PathBuf> = forced
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("backup:"))
        .map(|p| PathBuf::from(p.trim()))
        .collect();
    assert_eq!(backups.len(), 2, "config and database: {}", forced.stdout);
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), before);
    assert!(backups[1].starts_with(state.join("backups")));
    assert!(std::fs::metadata(&backups[1]).unwrap().len() > 0);
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("\"s-2\"")
    );
    // The box keeps its identity material: pinned clients still match.
    assert_eq!(
        std::fs::read_to_string(state.join("tls/cert.pem")).unwrap(),
        cert_before
    );
}

#[test]
fn provision_fails_with_exit_78_listing_what_is_missing_or_invalid_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sitegate.toml");
    let out = sitegate(&[
        "provision",
        "--config",
        config.to_str().unwrap(),
        "--non-interactive",
    ]);
    assert_eq!(out.code, 78, "{}", out.stderr);
    for flag in ["--site", "--gateway", "--trust"] {
        assert!(out.stderr.contains(flag), "{}", out.stderr);
    }
    let state = dir.path().join("state");
    let bad = provision(&config, &state, "bad site/../x", &[]);
    assert_eq!(bad.code, 78, "{}", bad.stderr);
    let bad_key = sitegate(&[
        "provision",
        "--config",
        config.to_str().unwrap(),
        "--site",
        "s-1",
        "--gateway",
        "gw-1",
        "--trust",
        "k=short",
        "--non-interactive",
    ]);
    assert_eq!(bad_key.code, 78, "{}", bad_key.stderr);
    assert!(!config.exists(), "nothing is written on invalid input");
    assert!(!state.exists());
}

#[test]
fn provision_takes_the_trust_file_format_of_trust_import() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sitegate.toml");
    let state = dir.path().join("state");
    let (_, pk) = trust_key();
    let file = dir.path().join("trust.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"keys":[{{"kid":"fleet-a","public_key":"{pk}"}},{{"kid":"fleet-b","public_key":"{pk}","not_after":"2099-01-01T00:00:00Z"}}]}}"#
        ),
    )
    .unwrap();
    let out = sitegate(&[
        "provision",
        "--config",
        config.to_str().unwrap(),
        "--site",
        "s-1",
        "--gateway",
        "gw-1",
        "--state-dir",
        state.to_str().unwrap(),
        "--trust-file",
        file.to_str().unwrap(),
        "--non-interactive",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("fleet-a, fleet-b"), "{}", out.stdout);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("kid = \"fleet-b\""), "{text}");
}

fn wait_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            if !t.trim().is_empty() {
                return t.trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "`{}` never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_code_provisions_a_blank_box_and_an_installer_token_logs_in_without_a_bundle() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("sitegate.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "# blank box\n[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\nmode = \"plain\"\n",
            state.display()
        ),
    )
    .unwrap();
    let (mut child, logs) = spawn_run(&config, None, &[]);
    let code_file = state.join("setup-code");
    let code = {
        let p = code_file.clone();
        tokio::task::spawn_blocking(move || wait_file(&p, Duration::from_secs(30)))
            .await
            .unwrap()
    };
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let health = |http: reqwest::Client, base: String| async move {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        }
    };
    // Bounded wait for the setup server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(http.clone(), base.clone()).await.is_none() {
        assert!(Instant::now() < deadline, "no setup server: {}", logs.all());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        logs.all().contains(&code),
        "the code is on the console/journal"
    );
    let r = http.get(format!("{base}/units")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);

    let (key, pk) = trust_key();
    let body = |code: &str| {
        serde_json::json!({
            "code": code, "site": "s-9", "gateway": "gw-1", "name": "Plant room",
            "trust": [{"kid": "fleet-a", "public_key": pk}],
        })
    };
    let r = http
        .post(format!("{base}/setup"))
        .json(&body("WRNG-CODE-XXXX"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(
        !std::fs::read_to_string(&config).unwrap().contains("s-9"),
        "a wrong code changes nothing"
    );
    // The right code with a weak trust key (the identity point) is refused and writes nothing.
    let mut weak = body(&code);
    weak["trust"][0]["public_key"] =
        serde_json::json!("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let r = http
        .post(format!("{base}/setup"))
        .json(&weak)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(
        e.to_string().contains("weak_key") && e.to_string().contains("small-order"),
        "{e}"
    );
    assert!(
        !std::fs::read_to_string(&config).unwrap().contains("s-9"),
        "a weak key changes nothing"
    );
    let r = http
        .post(format!("{base}/setup"))
        .json(&body(&code.to_lowercase()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The daemon restarts provisioned.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = health(http.clone(), base.clone()).await {
            if h["status"] == "ok" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never restarted: {}", logs.all());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!code_file.exists(), "a used code is removed");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("# blank box") && text.contains("\"s-9\""),
        "{text}"
    );

    // An installer token signed by the trust key given at setup, on a box with no bundle.
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let desc = serde_json::json!({
        "site": "s-9", "issued_at": (now - time::Duration::minutes(1)).format(fmt).unwrap(),
        "user": {"id": "u-ivo", "email": "ivo@installer.example", "name": "Ivo", "active": true},
        "grant": {"id": "g-ivo", "user": "u-ivo", "role": "technician", "scope": {"site": "s-9"},
                  "expires_at": (now + time::Duration::hours(4)).format(fmt).unwrap()},
    });
    let token = fleet::sign_token_description(&key, "fleet-a", &serde_json::to_vec(&desc).unwrap())
        .unwrap();
    let r = http
        .post(format!("{base}/session"))
        .json(&serde_json::json!({ "token": String::from_utf8(token).unwrap() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let session: serde_json::Value = r.json().await.unwrap();
    let bearer = session["token"].as_str().unwrap().to_string();
    let r = http
        .get(format!("{base}/me"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let me: serde_json::Value = r.json().await.unwrap();
    assert!(me.to_string().contains("u-ivo"), "{me}");

    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.success(), "{st:?}");

    // The wrong code and the setup were audited.
    let store = sitegate::store::Store::open_in(&state).unwrap();
    let recs = store
        .with_conn(|c| {
            sitegate::audit::query(
                c,
                &sitegate::audit::Query {
                    kind: Some("setup".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    let outcomes: Vec<&str> = recs.iter().map(|r| r.outcome.as_str()).collect();
    assert!(outcomes.contains(&"denied"), "{outcomes:?}");
    assert!(outcomes.contains(&"ok"), "{outcomes:?}");
    let rejected = recs.iter().find(|r| r.outcome == "rejected").unwrap();
    assert!(
        rejected.detail["reason"]
            .as_str()
            .unwrap()
            .contains("weak_key"),
        "{:?}",
        rejected.detail
    );
    let denied = recs.iter().find(|r| r.outcome == "denied").unwrap();
    assert!(
        !denied.detail.to_string().contains("WRNG"),
        "a guessed code is never logged"
    );
}

#[test]
fn on_a_terminal_provision_asks_for_what_is_missing_and_asks_again_after_a_bad_answer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sitegate.toml");
    let state = dir.path().join("state");
    let (_, pk) = trust_key();
    // `script` gives the command a terminal; the answers come from its stdin.
    let cmd = format!(
        "'{}' provision --config '{}' --state-dir '{}' --api-listen 127.0.0.1:0",
        bin().display(),
        config.display(),
        state.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        write!(
            stdin,
            "bad site/x\ns-5\ngw-3\nPlant room\nnot-a-key\nfleet-a={pk}\n"
        )
        .unwrap();
    }
    let st = wait_exit(&mut child, Duration::from_secs(30));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(st.success(), "{out}");
    assert!(out.contains("site id"), "{out}");
    assert!(
        out.contains("`bad site/x`"),
        "the bad answer is named: {out}"
    );
    assert!(out.contains("site:               s-5"), "{out}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"s-5\"") && text.contains("\"gw-3\"") && text.contains("Plant room"));
}

/// The records the first-boot setup writes before the box has a site (a wrong code, the setup
/// itself) are queued once it has one, so the cloud receives the audit chain from seq 1 with no
/// gap, each record with the hash the box holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_flows_audit_records_reach_the_cloud_so_the_chain_starts_at_seq_1() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker::Broker::start(dir.path());
    let events_topic = "sitegate/v1/s-9/gw-1/events";
    let cloud = common::mqtt::Collector::start(broker.port, "cloud", events_topic, false, None);
    cloud.wait_subscribed().await;
    let state = dir.path().join("state");
    let config = dir.path().join("sitegate.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\nmode = \"plain\"\n",
            state.display()
        ),
    )
    .unwrap();
    let (mut child, logs) = spawn_run(&config, None, &[]);
    let code = {
        let p = state.join("setup-code");
        tokio::task::spawn_blocking(move || wait_file(&p, Duration::from_secs(30)))
            .await
            .unwrap()
    };
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let (_, pk) = trust_key();
    let body = |code: &str| {
        serde_json::json!({
            "code": code, "site": "s-9", "gateway": "gw-1",
            "trust": [{"kid": "fleet-a", "public_key": pk}],
            "mqtt_url": format!("mqtt://127.0.0.1:{}", broker.port),
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(r) = http
            .post(format!("{base}/setup"))
            .json(&body("WRNG-CODE-XXXX"))
            .send()
            .await
        {
            break r.status().as_u16();
        }
        assert!(Instant::now() < deadline, "no setup server: {}", logs.all());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 403);
    let r = http
        .post(format!("{base}/setup"))
        .json(&body(&code))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Every record up to the setup's own reaches the broker: seq 1, 2, … with no gap.
    let store = sitegate::store::Store::open_in(&state).unwrap();
    let setup_seq = store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT seq FROM audit WHERE kind = 'setup' AND outcome = 'ok'",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .unwrap();
    let received = |cloud: &common::mqtt::Collector| -> std::collections::BTreeMap<i64, String> {
        cloud
            .on(events_topic)
            .iter()
            .map(|m| {
                let j = m.json();
                (
                    j["seq"].as_i64().unwrap(),
                    j["hash"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(1..=setup_seq).all(|s| received(&cloud).contains_key(&s)) {
        assert!(
            Instant::now() < deadline,
            "events received: {:?}\n{}",
            received(&cloud).keys().collect::<Vec<_>>(),
            logs.all()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.success(), "{st:?}");

    let got = received(&cloud);
    assert_eq!(got.keys().next(), Some(&1), "the chain starts at seq 1");
    let held: std::collections::BTreeMap<i64, String> = store
        .with_conn(|c| {
            let mut stmt = c.prepare("SELECT seq, hash FROM audit ORDER BY seq")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .unwrap();
    for (seq, hash) in &got {
        assert_eq!(held.get(seq), Some(hash), "record {seq}");
    }
    let last = *got.keys().last().unwrap();
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "no gap"
    );
    assert!(
        store
            .with_conn(|c| sitegate::audit::verify_chain(c))
            .unwrap()
            .is_ok()
    );
}
