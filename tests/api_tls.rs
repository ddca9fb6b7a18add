//! The LAN API over TLS: the self-signed certificate made on first start, its fingerprint, a
//! client that pins it, and a configured certificate that replaces it.

mod common;

use std::sync::Arc;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sitegate::config::ApiMode;

/// Accepts exactly the certificate whose SHA-256 fingerprint is `fp` (what an installer app does
/// after provisioning printed the fingerprint), and still checks the handshake signatures.
#[derive(Debug)]
struct Pinned {
    fp: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if sitegate::tls::fingerprint(end_entity.as_ref()) == self.fp {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint does not match the pin".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[expect(clippy::unwrap_used, reason = "test helper")]
fn pinned_client(fp: &str) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fp: fp.to_string(),
            provider,
        }))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

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
