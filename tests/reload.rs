//! Live reload with the real binary: SIGHUP (`systemctl reload`) re-reads the config. A good
//! config is applied while the API socket, the sessions and the queued outbox rows stay; a bad
//! one is refused, audited, and the running config keeps serving.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should fail the test loudly"
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{fleet_keygen, free_port, signal, sitegate_ok, spawn_run, wait_exit};
use serde_json::{Value, json};

const UNIT_GEN: &str = r#"
[[units]]
id = "gen-1"
link = "bus"
slave = 3
profile = "dse-gencomm"
poll_interval_ms = 500
"#;

const UNIT_HVAC: &str = r#"
[[units]]
id = "hvac-1"
link = "bus"
slave = 7
profile = "coolmaster-va"
poll_interval_ms = 500
"#;

fn config_text(state: &Path, port: u16, bus_port: u16, pk: &str, units: &str) -> String {
    format!(
        r#"
[site]
id = "s-1"
gateway = "gw-1"

[state]
dir = "{state}"

[api]
listen = "127.0.0.1:{port}"
mode = "plain"

[[grants.trust]]
kid = "fleet-a"
public_key = "{pk}"

[[links]]
name = "bus"
kind = "tcp"
address = "127.0.0.1:{bus_port}"
timeout_ms = 200
{units}"#,
        state = state.display()
    )
}

async fn get(http: &reqwest::Client, url: &str, bearer: &str) -> (u16, Value) {
    let r = http.get(url).bearer_auth(bearer).send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn unit_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn outbox_ids(state: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(state.join("sitegate.db")).unwrap();
    let mut st = c.prepare("SELECT msg_id FROM outbox ORDER BY seq").unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn audit_of(state: &Path, kind: &str) -> Vec<sitegate::audit::Record> {
    let store = sitegate::store::Store::open_in(state).unwrap();
    store
        .with_conn(|c| {
            sitegate::audit::query(
                c,
                &sitegate::audit::Query {
                    kind: Some(kind.into()),
                    limit: 50,
                    ..Default::default()
                },
            )
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_unit_keeps_the_session_and_outbox_and_refuses_a_broken_config() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, pk) = fleet_keygen(d, "fleet-a");
    let (port, bus_port) = (free_port(), free_port());
    let state = d.join("state");
    let config = d.join("sitegate.toml");
    std::fs::write(&config, config_text(&state, port, bus_port, &pk, UNIT_GEN)).unwrap();

    let (mut child, logs) = spawn_run(&config, None, &[]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status().is_success())
    {
        assert!(Instant::now() < deadline, "no answer: {}", logs.all());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A technician logs in with an installer token.
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
    let body: Value = r.json().await.unwrap();
    let bearer = body["token"].as_str().unwrap().to_string();
    let (st, units) = get(&http, &format!("{base}/units"), &bearer).await;
    assert_eq!(st, 200, "{units}");
    assert_eq!(unit_ids(&units), ["gen-1"]);

    // Audit events queued for the cloud (no broker here, so they stay queued).
    let queued = outbox_ids(&state);
    assert!(!queued.is_empty());

    // 1. A unit added to the config, then SIGHUP: it appears, the session still works.
    std::fs::write(
        &config,
        config_text(
            &state,
            port,
            bus_port,
            &pk,
            &format!("{UNIT_GEN}{UNIT_HVAC}"),
        ),
    )
    .unwrap();
    signal(child.id(), "HUP");
    logs.wait_for("configuration reloaded", Duration::from_secs(20));
    let (st, units) = get(&http, &format!("{base}/units"), &bearer).await;
    assert_eq!(st, 200, "{units}\n{}", logs.all());
    assert_eq!(unit_ids(&units), ["gen-1", "hvac-1"]);
    let after = outbox_ids(&state);
    for id in &queued {
        assert!(after.contains(id), "queued message {id} lost by the reload");
    }

    // 2. A broken config (a unit on a link that does not exist), then SIGHUP: refused, the
    // running config keeps serving.
    std::fs::write(
        &config,
        config_text(
            &state,
            port,
            bus_port,
            &pk,
            &format!("{UNIT_GEN}{UNIT_HVAC}\n[[units]]\nid = \"x-1\"\nlink = \"bus9\"\nslave = 9\nprofile = \"dse-gencomm\"\n"),
        ),
    )
    .unwrap();
    signal(child.id(), "HUP");
    logs.wait_for("configuration reload refused", Duration::from_secs(20));
    let (st, units) = get(&http, &format!("{base}/units"), &bearer).await;
    assert_eq!(st, 200, "{units}");
    assert_eq!(unit_ids(&units), ["gen-1", "hvac-1"]);

    // 3. A change only a restart can make (the listen address) is refused the same way.
    std::fs::write(
        &config,
        config_text(&state, free_port(), bus_port, &pk, UNIT_GEN),
    )
    .unwrap();
    signal(child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while logs.all().matches("configuration reload refused").count() < 2 {
        assert!(Instant::now() < deadline, "{}", logs.all());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, units) = get(&http, &format!("{base}/units"), &bearer).await;
    assert_eq!(st, 200, "{units}");
    assert_eq!(unit_ids(&units), ["gen-1", "hvac-1"]);

    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(st.code(), Some(0), "{}", logs.all());

    let reloaded = audit_of(&state, "config_reloaded");
    assert_eq!(reloaded.len(), 1);
    assert_eq!(reloaded[0].detail["changed"]["sections"], json!(["units"]));
    assert_eq!(
        reloaded[0].detail["changed"]["units_added"],
        json!(["hvac-1"])
    );
    let refused = audit_of(&state, "config_reload_refused");
    assert_eq!(refused.len(), 2);
    let problems: Vec<String> = refused
        .iter()
        .flat_map(|r| r.detail["problems"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("units[2].link: no link named `bus9`")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("api.listen changed")),
        "{problems:?}"
    );
    let store = sitegate::store::Store::open_in(&state).unwrap();
    let chain = store
        .with_conn(|c| sitegate::audit::verify_chain(c))
        .unwrap();
    assert!(chain.is_ok(), "{chain:?}");
}

/// A CRL of the Modbus client CA in `ca_dir` revoking the given certificates (PEM files).
fn modbus_crl(ca_dir: &Path, revoked: &[&Path], number: u64) -> String {
    common::pki::crl(
        &ca_dir.join("ca.key"),
        &ca_dir.join("ca.pem"),
        revoked,
        number,
    )
}

/// A BMS over Modbus/TCP Security: rustls with the client certificate `issued/NAME.pem`, then
/// tokio-modbus on the TLS stream, talking to unit id 7.
async fn modbus_tls(
    port: u16,
    d: &Path,
    name: &str,
) -> std::io::Result<tokio_modbus::client::Context> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.join("ca/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = CertificateDer::pem_file_iter(d.join(format!("issued/{name}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(d.join(format!("issued/{name}.key"))).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    Ok(tokio_modbus::client::tcp::attach_slave(
        tls,
        tokio_modbus::prelude::Slave(7),
    ))
}

/// One read of holding register 900 (not in the HVAC's map): the face answers exception 02
/// without touching the bus, so an answer shows the session is authenticated and served.
/// `Ok(Err(code))` is the face's answer; `Err` means the connection is gone.
async fn probe(
    ctx: &mut tokio_modbus::client::Context,
) -> Result<Result<Vec<u16>, tokio_modbus::prelude::ExceptionCode>, String> {
    use tokio_modbus::client::Reader;
    match tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(900, 1)).await {
        Err(_) => Err("no answer within 5 s".into()),
        Ok(Err(e)) => Err(format!("transport: {e}")),
        Ok(Ok(r)) => Ok(r),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_modbus_ca_and_crl_and_a_newly_revoked_bms_certificate_is_refused() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, pk) = fleet_keygen(d, "fleet-a");
    let issue = |name: &str, role: Option<&str>| {
        let (ca, out) = (d.join("ca"), d.join("issued"));
        let mut args = vec![
            "modbus-client-cert",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--name",
            name,
            "--out-dir",
            out.to_str().unwrap(),
        ];
        match role {
            Some(r) => args.extend(["--role", r]),
            None => args.extend(["--server", "127.0.0.1"]),
        }
        sitegate_ok(&args);
    };
    issue("modbus-server", None);
    issue("bms-a", Some("viewer"));
    issue("lost-laptop", Some("viewer"));
    let crl = d.join("ca/ca.crl.pem");
    std::fs::write(&crl, modbus_crl(&d.join("ca"), &[], 1)).unwrap();

    let (port, bus_port, bms_port) = (free_port(), free_port(), free_port());
    let state = d.join("state");
    let config = d.join("sitegate.toml");
    let bms = format!(
        r#"
[modbus_server.tls]
listen = "127.0.0.1:{bms_port}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = ["{crl}"]

[[modbus_server.units]]
unit = "hvac-1"
unit_id = 7
"#,
        ca = d.join("ca/ca.pem").display(),
        cert = d.join("issued/modbus-server.pem").display(),
        key = d.join("issued/modbus-server.key").display(),
        crl = crl.display(),
    );
    std::fs::write(
        &config,
        config_text(&state, port, bus_port, &pk, &format!("{UNIT_HVAC}{bms}")),
    )
    .unwrap();
    let (mut child, logs) = spawn_run(&config, None, &[]);
    logs.wait_for(
        "Modbus/TCP Security listener started",
        Duration::from_secs(30),
    );

    // Both certificates are good: both sessions are served.
    let mut a = modbus_tls(bms_port, d, "bms-a").await.unwrap();
    let mut lost = modbus_tls(bms_port, d, "lost-laptop").await.unwrap();
    let refused_address = Ok(Err(
        tokio_modbus::prelude::ExceptionCode::IllegalDataAddress,
    ));
    assert_eq!(probe(&mut a).await, refused_address);
    assert_eq!(probe(&mut lost).await, refused_address);

    // The laptop is lost: the CA's new CRL revokes it, the config is unchanged, SIGHUP.
    std::fs::write(
        &crl,
        modbus_crl(&d.join("ca"), &[&d.join("issued/lost-laptop.pem")], 2),
    )
    .unwrap();
    signal(child.id(), "HUP");
    logs.wait_for("configuration reloaded", Duration::from_secs(20));
    // A reload restarts the engines the face serves from: every open Modbus connection is
    // closed, the revoked one with the others.
    for (name, ctx) in [("bms-a", &mut a), ("lost-laptop", &mut lost)] {
        let got = probe(ctx).await;
        assert!(
            matches!(&got, Err(e) if e.starts_with("transport: ")),
            "{name}: {got:?}"
        );
    }
    // The revoked certificate is refused at its next handshake (with TLS 1.3 the client learns
    // it when it first reads), and the log says why; the other one connects again.
    let refused = match modbus_tls(bms_port, d, "lost-laptop").await {
        Err(e) => Err(format!("handshake: {e}")),
        Ok(mut ctx) => probe(&mut ctx).await,
    };
    assert!(refused.is_err(), "{refused:?}\n{}", logs.all());
    logs.wait_for(
        "the certificate is revoked by the configured CRL",
        Duration::from_secs(5),
    );
    let mut a = modbus_tls(bms_port, d, "bms-a").await.unwrap();
    assert_eq!(probe(&mut a).await, refused_address);

    // A CRL file left broken refuses the reload: the running listener keeps its lists and its
    // connections (nothing was restarted).
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\nnot base64\n").unwrap();
    // `check-config` says so too, as the operator runs it before reloading.
    let check = common::daemon::sitegate(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(check.code, 78, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stderr.contains("modbus_server.tls: `")
            && check
                .stderr
                .contains("holds no PEM certificate revocation list"),
        "{}",
        check.stderr
    );
    signal(child.id(), "HUP");
    logs.wait_for("configuration reload refused", Duration::from_secs(20));
    assert_eq!(probe(&mut a).await, refused_address, "{}", logs.all());
    let mut again = modbus_tls(bms_port, d, "bms-a").await.unwrap();
    assert_eq!(probe(&mut again).await, refused_address);
    drop((a, again));

    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(st.code(), Some(0), "{}", logs.all());
    let reloaded = audit_of(&state, "config_reloaded");
    assert_eq!(reloaded.len(), 1);
    assert_eq!(reloaded[0].detail["changed"]["sections"], json!([]));
    let refused = audit_of(&state, "config_reload_refused");
    assert_eq!(refused.len(), 1);
    let problems = refused[0].detail["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .starts_with("modbus_server.tls: "),
        "{problems:?}"
    );
}
