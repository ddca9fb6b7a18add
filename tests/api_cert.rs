//! `sitegate api-cert` with the real binary: `--renew --name` replaces the self-made certificate
//! (new fingerprint, the names in it); a configured certificate is never replaced.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should fail the test loudly"
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::daemon::bin;

fn api_cert(config: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["api-cert", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fp(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("sha256 fingerprint: "))
        .unwrap()
        .to_string()
}

#[test]
fn renew_with_names_changes_the_fingerprint_and_a_configured_certificate_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("sitegate.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n\n[api]\nlisten = \"0.0.0.0:8443\"\n",
            state.display()
        ),
    )
    .unwrap();
    let (code, out, err) = api_cert(&config, &[]);
    assert_eq!(code, 0, "{err}");
    let first = fp(&out);
    // Without --renew the existing certificate (which names the box) is kept.
    let (code, out, _) = api_cert(&config, &[]);
    assert_eq!(code, 0);
    assert_eq!(fp(&out), first);
    let (code, out, err) = api_cert(&config, &["--renew", "--name", "gate.site.example"]);
    assert_eq!(code, 0, "{err}");
    let renewed = fp(&out);
    assert_ne!(renewed, first);
    let pem = std::fs::read(state.join("tls/cert.pem")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.as_ref().to_vec())
        .unwrap();
    let (names, ours) = sitegate::tls::cert_names(&der).unwrap();
    assert!(ours);
    assert!(
        names.contains(&"gate.site.example".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&sitegate::tls::hostname().unwrap()),
        "{names:?}"
    );

    // The same pair named in [api] as a configured certificate: never replaced.
    let cert = dir.path().join("own.pem");
    let key = dir.path().join("own.key");
    std::fs::copy(state.join("tls/cert.pem"), &cert).unwrap();
    std::fs::copy(state.join("tls/key.pem"), &key).unwrap();
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n\n[api]\nlisten = \"0.0.0.0:8443\"\ncert = \"{}\"\nkey = \"{}\"\n",
            state.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let (code, _, err) = api_cert(&config, &["--renew", "--name", "other.example"]);
    assert_eq!(code, 1);
    assert!(err.contains("never replaces it"), "{err}");
    let (code, out, _) = api_cert(&config, &[]);
    assert_eq!(code, 0);
    assert_eq!(fp(&out), renewed);
    assert_eq!(std::fs::read(&cert).unwrap(), pem);
}
