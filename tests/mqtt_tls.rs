//! TLS with client certificates (made by the test) and username/password against mosquitto.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::broker::Broker;
use common::mqtt::{Collector, mqtt_config, site, wait_for};
use common::pki::Pki;
use serde_json::{Value, json};
use sitegate::audit::Audit;
use sitegate::clock::SystemClock;
use sitegate::config::Mqtt;
use sitegate::mqtt::{GrantSink, InboundKind, MqttClient, MqttError, MqttHandle};
use sitegate::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ROOT: &str = "sitegate/v1/s-1/gw-1";

struct NoSink;
impl GrantSink for NoSink {
    fn apply(&self, _: InboundKind, _: Vec<u8>) -> Value {
        json!({})
    }
}

fn start(
    dir: &std::path::Path,
    cfg: &Mqtt,
    shutdown: &CancellationToken,
) -> Result<(MqttHandle, Store), MqttError> {
    let store = Store::open_in(dir).unwrap();
    let audit = Audit::new(
        store.clone(),
        Arc::new(SystemClock),
        Some(format!("{ROOT}/events")),
    );
    let h = MqttClient::start(
        cfg,
        &site(),
        store.clone(),
        audit,
        Arc::new(NoSink),
        shutdown.clone(),
        &TaskTracker::new(),
    )?;
    Ok((h, store))
}

fn tls_config(port: u16, pki: &Pki, with_client_cert: bool) -> Mqtt {
    let mut c = mqtt_config(port, "sitegate-tls");
    c.host = "127.0.0.1".into();
    c.tls = true;
    c.ca_file = Some(pki.ca.clone());
    if with_client_cert {
        c.client_cert = Some(pki.client_cert.clone());
        c.client_key = Some(pki.client_key.clone());
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_connects_and_publishes_status() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "pki");
    let b = Broker::start_with(dir.path(), &pki.mosquitto_mtls());
    let shutdown = CancellationToken::new();
    let (h, _store) = start(dir.path(), &tls_config(b.port, &pki, true), &shutdown).unwrap();
    wait_for(
        "the box to connect over mutual TLS",
        Duration::from_secs(15),
        || h.connected(),
    )
    .await;
    let sub = Collector::start(
        b.port,
        "cloud-tls",
        &format!("{ROOT}/status"),
        false,
        Some(pki.client_config()),
    );
    let m = sub
        .wait_message(&format!("{ROOT}/status"), Duration::from_secs(10), |m| {
            m.retain
        })
        .await;
    assert_eq!(m.json()["online"], true);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_broker_turns_the_box_away() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "pki");
    let b = Broker::start_with(dir.path(), &pki.mosquitto_mtls());
    let shutdown = CancellationToken::new();
    let (h, _store) = start(dir.path(), &tls_config(b.port, &pki, false), &shutdown).unwrap();
    // The broker logs the failed handshake; the box never counts as connected.
    wait_for(
        "the broker to refuse the handshake",
        Duration::from_secs(15),
        || {
            let log = b.log();
            log.contains("OpenSSL Error") || log.contains("certificate")
        },
    )
    .await;
    assert!(!h.connected());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "pki");
    let rogue = Pki::new(dir.path(), "rogue");
    let b = Broker::start_with(dir.path(), &rogue.mosquitto_mtls());
    let shutdown = CancellationToken::new();
    let (h, _store) = start(dir.path(), &tls_config(b.port, &pki, true), &shutdown).unwrap();
    wait_for(
        "the broker to see the handshake fail",
        Duration::from_secs(15),
        || b.log().contains("OpenSSL Error") || b.log().contains("Client <unknown> disconnected"),
    )
    .await;
    assert!(!h.connected());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_client_key_fails_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "pki");
    let mut cfg = tls_config(1, &pki, true);
    cfg.client_key = Some(dir.path().join("missing.key"));
    let shutdown = CancellationToken::new();
    let err = start(dir.path(), &cfg, &shutdown)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.key"), "{err}");
    assert!(err.starts_with("cannot read client key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_audited_once_and_retried_until_the_broker_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let st = std::process::Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwd)
        .args(["sitegate", "other-password"])
        .status()
        .unwrap();
    assert!(st.success());
    let b = Broker::start_with(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
    );
    let pw_file = dir.path().join("mqtt-password");
    std::fs::write(&pw_file, "s3cret-pass\n").unwrap();
    let mut cfg = mqtt_config(b.port, "sitegate-auth");
    cfg.username = Some("sitegate".into());
    cfg.password_file = Some(pw_file);
    let shutdown = CancellationToken::new();
    let (h, store) = start(dir.path(), &cfg, &shutdown).unwrap();
    let refused = || -> i64 {
        store
            .with_conn(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM audit WHERE kind = 'mqtt_refused'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap()
    };
    wait_for("the refusal to be audited", Duration::from_secs(15), || {
        refused() >= 1
    })
    .await;
    // Let it retry a few times (the broker logs each attempt), then accept the password.
    wait_for("three refused attempts", Duration::from_secs(20), || {
        b.log().matches("not authorised").count() >= 3
    })
    .await;
    assert!(!h.connected());
    assert_eq!(refused(), 1, "one audit record per streak of refusals");
    let st = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwd)
        .args(["sitegate", "s3cret-pass"])
        .status()
        .unwrap();
    assert!(st.success());
    b.reload();
    wait_for(
        "the box to connect once the broker accepts it",
        Duration::from_secs(20),
        || h.connected(),
    )
    .await;
    // The password never reaches the log of the broker, nor the audit trail.
    let audit_text: String = store
        .with_conn(|c| {
            Ok(
                c.query_row("SELECT group_concat(detail, ' ') FROM audit", [], |r| {
                    r.get::<_, Option<String>>(0)
                })?
                .unwrap_or_default(),
            )
        })
        .unwrap();
    assert!(!audit_text.contains("s3cret"));
    shutdown.cancel();
}

/// `sitegate fleet publish --broker mqtts://…`: against a broker that requires a client
/// certificate, with the CA file and the client certificate the bundle is retained on
/// `…/grants` byte for byte; without the client certificate, or trusting another CA, the tool
/// fails with exit code 1 and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_publish_over_mutual_tls_retains_the_bundle_and_needs_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "pki");
    let rogue = Pki::new(dir.path(), "rogue");
    let b = Broker::start_with(dir.path(), &pki.mosquitto_mtls());
    let envelope = dir.path().join("bundle.env");
    let payload = b"{\"kind\":\"bundle\",\"payload\":\"opaque to the publisher\"}".to_vec();
    std::fs::write(&envelope, &payload).unwrap();
    let broker = format!("mqtts://127.0.0.1:{}", b.port);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let run = |tls: &[String]| {
        let mut args: Vec<String> = [
            "fleet",
            "publish",
            "--broker",
            &broker,
            "--site",
            "s-1",
            "--gateway",
            "gw-1",
            "--in",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(path(&envelope));
        args.extend(tls.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        common::daemon::sitegate(&refs)
    };
    let ca = ["--ca-file".to_string(), path(&pki.ca)];
    let client = [
        "--client-cert".to_string(),
        path(&pki.client_cert),
        "--client-key".to_string(),
        path(&pki.client_key),
    ];

    let no_cert = run(&ca);
    assert_eq!(no_cert.code, 1, "{}", no_cert.stderr);
    assert!(
        no_cert.stderr.starts_with("error: mqtt:"),
        "{}",
        no_cert.stderr
    );

    let mut other_ca = vec!["--ca-file".to_string(), path(&rogue.ca)];
    other_ca.extend(client.iter().cloned());
    let untrusted = run(&other_ca);
    assert_eq!(untrusted.code, 1, "{}", untrusted.stderr);
    assert!(
        untrusted.stderr.starts_with("error: mqtt:"),
        "{}",
        untrusted.stderr
    );

    let plain_with_tls = common::daemon::sitegate(&[
        "fleet",
        "publish",
        "--broker",
        &format!("mqtt://127.0.0.1:{}", b.port),
        "--site",
        "s-1",
        "--gateway",
        "gw-1",
        "--in",
        &path(&envelope),
        "--ca-file",
        &path(&pki.ca),
    ]);
    assert_eq!(plain_with_tls.code, 1, "{}", plain_with_tls.stderr);
    assert!(
        plain_with_tls.stderr.contains("need an `mqtts://` broker"),
        "{}",
        plain_with_tls.stderr
    );

    let mut full = ca.to_vec();
    full.extend(client.iter().cloned());
    let ok = run(&full);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(
        ok.stdout.trim(),
        format!(
            "published the bundle ({} bytes) on `{ROOT}/grants`",
            payload.len()
        )
    );
    let cloud = Collector::start(
        b.port,
        "cloud-fleet-tls",
        &format!("{ROOT}/grants"),
        false,
        Some(pki.client_config()),
    );
    let m = cloud
        .wait_message(&format!("{ROOT}/grants"), Duration::from_secs(10), |m| {
            m.retain
        })
        .await;
    assert_eq!(m.payload, payload);
}
