//! Reads the broker credentials named by the config: the rustls client configuration (CA roots,
//! optional client certificate for mutual TLS) and the password file. Everything is read once at
//! start, so an unreadable or malformed file fails the start with its path instead of failing
//! every reconnect. Never logs or returns file contents.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::MqttError;
use crate::config::Mqtt;

/// Largest credential file read (a CA bundle of the whole web PKI is about 220 KiB).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, MqttError> {
    let err = |reason: String| MqttError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let bytes = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MqttError::File {
            what,
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(MqttError::File {
            what,
            path: path.to_path_buf(),
            reason: "no PEM certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, MqttError> {
    let what = "client key";
    let bytes = read_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| MqttError::File {
        what,
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into()
            }
            other => format!("not a PEM private key: {other}"),
        },
    })
}

/// Builds the rustls configuration of the daemon's broker connection (see
/// [`tls_client_config`]).
pub(super) fn client_config(cfg: &Mqtt) -> Result<ClientConfig, MqttError> {
    tls_client_config(
        cfg.ca_file.as_deref(),
        cfg.client_cert.as_deref(),
        cfg.client_key.as_deref(),
    )
}

/// Builds a rustls client configuration with ring as the crypto provider: roots from `ca_file`
/// (or the system trust store when none is given), and the client certificate when both
/// `client_cert` and `client_key` are given. Used by the daemon and by `sitegate fleet publish`.
pub fn tls_client_config(
    ca_file: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<ClientConfig, MqttError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path, "CA file")? {
                roots.add(cert).map_err(|e| MqttError::File {
                    what: "CA file",
                    path: path.to_path_buf(),
                    reason: format!("unusable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(MqttError::Tls(
                    "no `mqtt.ca_file` configured and no system trust roots found".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (client_cert, client_key) {
        (Some(cert_path), Some(key_path)) => {
            let certs = read_certs(cert_path, "client certificate")?;
            let key = read_key(key_path)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                MqttError::Tls(format!(
                    "client certificate `{}` and key `{}` are not a usable pair: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Reads the broker password: the file's content without a trailing newline.
pub fn read_password(path: &Path) -> Result<String, MqttError> {
    let what = "password file";
    let bytes = read_file(path, what)?;
    let text = String::from_utf8(bytes).map_err(|_| MqttError::File {
        what,
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })?;
    let pw = text.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        return Err(MqttError::File {
            what,
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    Ok(pw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> Mqtt {
        Mqtt {
            host: "127.0.0.1".into(),
            port: 8883,
            tls: true,
            client_id: "c".into(),
            username: None,
            password_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive: Duration::from_secs(30),
            telemetry_interval: Duration::from_secs(60),
            telemetry_backlog_max: 100,
            reconnect_max: Duration::from_secs(60),
            reconnect_min: Duration::from_millis(100),
            reconnect_stable: Duration::from_secs(1),
            backfill_rate: 500,
        }
    }

    #[test]
    fn an_unreadable_ca_file_is_reported_with_its_path() {
        let mut c = cfg();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        let e = client_config(&c).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(e.starts_with("cannot read CA file"), "{e}");
    }

    #[test]
    fn a_key_file_without_a_key_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, "not a key\n").unwrap();
        let mut c = cfg();
        c.ca_file = Some(ca_path.clone());
        c.client_cert = Some(ca_path);
        c.client_key = Some(key_path.clone());
        let e = client_config(&c).unwrap_err().to_string();
        assert!(e.contains(&key_path.display().to_string()), "{e}");
        assert!(e.contains("no PEM private key"), "{e}");
    }

    #[test]
    fn a_password_file_loses_its_trailing_newline_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_password(&p).unwrap_err().to_string().contains("empty"));
    }
}
