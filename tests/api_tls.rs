//! The LAN API over TLS: the self-signed certificate made on first start, its fingerprint, a
//! client that pins it, and a configured certificate that replaces it.

mod common;

use rustls::pki_types::CertificateDer;

use common::client::{self, pinned_client};
use common::*;
use sitegate::config::ApiMode;

#[tokio::test]
async fn a_self_signed_certificate_is_made_and_its_fingerprint_can_be_pinned() {
    let h = Harness::start_with(api_config(ApiMode::Tls {
        cert: None,
        key: None,
    }))
    .await;
    let fp = h.serving.tls_fingerprint.clone().unwrap();
    let cert_path = h.dir.path().join("tls/cert.pem");
    let pem = std::fs::read(&cert_path).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: CertificateDer<'static>| c)
        .unwrap();
    assert_eq!(sitegate::tls::fingerprint(der.as_ref()), fp);
    let port = h.serving.addr.port();

    // A client that trusts the certificate verifies it for `localhost` and `127.0.0.1`.
    let trusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let r = trusting
            .get(format!("https://{host}:{port}/api/v1/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }

    // A client that trusts nothing refuses it; a pinning client accepts exactly this one.
    let plain = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(plain.get(h.url("/healthz")).send().await.is_err());
    let r = pinned_client(&fp)
        .get(h.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let wrong = fp.replacen(&fp[..2], if &fp[..2] == "00" { "11" } else { "00" }, 1);
    assert!(
        pinned_client(&wrong)
            .get(h.url("/healthz"))
            .send()
            .await
            .is_err()
    );

    // Plain HTTP on the TLS port gets no API answer.
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/healthz"))
        .send()
        .await;
    assert!(r.map(|r| r.status() != 200).unwrap_or(true));
}

#[tokio::test]
async fn the_certificate_survives_a_restart_so_pins_stay_valid() {
    let h = Harness::start_with(api_config(ApiMode::Tls {
        cert: None,
        key: None,
    }))
    .await;
    let first = h.serving.tls_fingerprint.clone().unwrap();
    let again =
        sitegate::tls::ensure_self_signed(h.dir.path(), &sitegate::tls::default_names()).unwrap();
    assert!(!again.created);
    assert_eq!(again.fingerprint, first);
}

#[tokio::test]
async fn a_configured_certificate_replaces_the_generated_one() {
    install_crypto();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) =
        sitegate::tls::generate(&["gateway.example".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = certs.path().join("site.crt");
    let key_path = certs.path().join("site.key");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let expected = sitegate::tls::load(&cert_path, &key_path)
        .unwrap()
        .fingerprint;

    let h = Harness::start_with(api_config(ApiMode::Tls {
        cert: Some(cert_path),
        key: Some(key_path),
    }))
    .await;
    assert_eq!(
        h.serving.tls_fingerprint.as_deref(),
        Some(expected.as_str())
    );
    assert!(
        !h.dir.path().join("tls").exists(),
        "no self-signed pair was made"
    );
    let r = pinned_client(&expected)
        .get(h.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A 10 MB body against the 64 KiB limit, streamed by curl (with and without
/// `Expect: 100-continue`), Python `requests`, Python `http.client` (chunked) and reqwest, each
/// several times: every one of them reads `413 payload_too_large` and nothing reaches the bus.
/// (Answering while the client was still sending used to reset about half of these.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_streaming_a_10_mb_body_over_tls_reads_the_413() {
    let h = Harness::start_with(api_config(ApiMode::Tls {
        cert: None,
        key: None,
    }))
    .await;
    let fp = h.serving.tls_fingerprint.clone().unwrap();
    let cacert = h.dir.path().join("tls/cert.pem");
    let http = pinned_client(&fp);
    let r = http
        .post(h.url("/session"))
        .json(&serde_json::json!({"email": "control@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let big = vec![b' '; 10 * 1024 * 1024];
    let file = h.dir.path().join("big.json");
    std::fs::write(&file, &big).unwrap();
    let url = h.url("/units/hvac-1/points/setpoint");

    for round in 0..5 {
        let runs = {
            let (url, cacert, token, file) =
                (url.clone(), cacert.clone(), token.clone(), file.clone());
            tokio::task::spawn_blocking(move || {
                vec![
                    (
                        "curl",
                        client::curl_put_file(&url, &cacert, &token, &file, true),
                    ),
                    (
                        "curl without Expect",
                        client::curl_put_file(&url, &cacert, &token, &file, false),
                    ),
                    (
                        "python requests",
                        client::python_put_file(&url, &cacert, &token, &file, false),
                    ),
                    (
                        "python http.client chunked",
                        client::python_put_file(&url, &cacert, &token, &file, true),
                    ),
                ]
            })
            .await
            .unwrap()
        };
        for (name, out) in runs {
            assert!(out.exit_ok, "round {round}, {name}: {out:?}");
            assert_eq!(out.status, 413, "round {round}, {name}: {out:?}");
            let v: serde_json::Value = serde_json::from_str(&out.body)
                .unwrap_or_else(|e| panic!("round {round}, {name}: {e}: {out:?}"));
            assert_eq!(v["error"], "payload_too_large", "round {round}, {name}");
        }
        let r = http
            .put(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}, reqwest: {e:?}"));
        assert_eq!(r.status(), 413, "round {round}, reqwest");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "payload_too_large", "round {round}, reqwest");
    }
    assert_eq!(
        h.units.bus_writes.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
