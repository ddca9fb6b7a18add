//! HTTP clients for the API tests: a TLS client that pins the server certificate by its SHA-256
//! fingerprint (as an installer app does after provisioning printed it), and raw requests that
//! reqwest can't make deterministically.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    dead_code,
    reason = "test helper; each test binary uses a different subset"
)]

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts exactly the certificate whose SHA-256 fingerprint is `fp` (what an installer app does
/// after provisioning printed the fingerprint), and still checks the handshake signatures.
#[derive(Debug)]
pub struct Pinned {
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

/// A reqwest client that accepts only the certificate with fingerprint `fp`.
pub fn pinned_client(fp: &str) -> reqwest::Client {
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

/// Sends a PUT of a 10 MB body on a raw socket (declared length, no `Expect`), writing all of it,
/// then reads the answer: the server reads and discards the body and answers 413 after it.
#[expect(clippy::unwrap_used, reason = "test helper")]
pub async fn put_declaring_10_mb(addr: std::net::SocketAddr, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let len = 10 * 1024 * 1024;
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let sent = sock.write_all(&vec![b' '; len]).await;
    assert!(
        sent.is_ok(),
        "the server reset the connection mid-body: {sent:?}"
    );
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sock.read_to_end(&mut buf),
    )
    .await;
    String::from_utf8_lossy(&buf).to_string()
}

/// What a third-party client reported for one request: its exit status, the HTTP status it saw
/// (0 when it saw none) and the response body.
#[derive(Debug)]
pub struct Outcome {
    pub exit_ok: bool,
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

/// Runs a program and splits its stdout into the body and a last line holding the status code.
fn run_client(cmd: &mut std::process::Command) -> Outcome {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stdout = stdout.trim_end();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", stdout));
    Outcome {
        exit_ok: out.status.success(),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// `curl --data-binary @file` PUT over TLS trusting `cacert`. With `expect_continue` false the
/// `Expect` header is suppressed, so curl streams the whole body without waiting for the server.
pub fn curl_put_file(
    url: &str,
    cacert: &std::path::Path,
    token: &str,
    file: &std::path::Path,
    expect_continue: bool,
) -> Outcome {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-X", "PUT", "--cacert"])
        .arg(cacert)
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-H", "content-type: application/json"])
        .args(["-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.display()));
    if !expect_continue {
        cmd.args(["-H", "Expect:"]);
    }
    run_client(cmd.arg(url))
}

/// Python's `requests` streaming a file (declared length) and `http.client` sending a generator
/// with chunked transfer encoding, both over TLS trusting `cacert`.
pub fn python_put_file(
    url: &str,
    cacert: &std::path::Path,
    token: &str,
    file: &std::path::Path,
    chunked: bool,
) -> Outcome {
    const SCRIPT: &str = r#"
import sys
url, cacert, token, path, mode = sys.argv[1:6]
headers = {"authorization": "Bearer " + token, "content-type": "application/json"}
if mode == "requests":
    import requests
    with open(path, "rb") as f:
        r = requests.put(url, data=f, headers=headers, verify=cacert, timeout=60)
    print(r.text)
    print(r.status_code)
else:
    import http.client, ssl, urllib.parse
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=cacert)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
    def chunks():
        with open(path, "rb") as f:
            while True:
                b = f.read(65536)
                if not b:
                    return
                yield b
    conn.request("PUT", u.path, body=chunks(), headers=headers, encode_chunked=True)
    r = conn.getresponse()
    print(r.read().decode())
    print(r.status)
"#;
    let mode = if chunked { "chunked" } else { "requests" };
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", SCRIPT, url])
        .arg(cacert)
        .arg(token)
        .arg(file)
        .arg(mode);
    run_client(&mut cmd)
}
