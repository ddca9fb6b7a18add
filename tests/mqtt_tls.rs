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
