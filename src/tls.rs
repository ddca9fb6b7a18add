//! TLS material of the LAN API: the self-signed certificate made at provisioning (or first start),
//! a configured certificate that replaces it, and the SHA-256 fingerprint an installer pins.
//!
//! Owns `<state_dir>/tls/{cert.pem,key.pem}`. The private key is written with mode 0600 and is
//! never logged or returned to a caller; only the certificate's fingerprint leaves this module.
//! It creates them when both are missing, re-makes its own self-signed certificate when the box's
//! names (host name, `<host>.local`, LAN addresses) are no longer all in it (the new fingerprint
//! is logged; pinned clients must pin it again), and renews it on request (`api-cert --renew`).
//! A certificate it did not make itself is never replaced.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Subdirectory of the state directory holding the generated certificate.
pub const TLS_DIR: &str = "tls";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("`{0}` holds no PEM private key")]
    NoKey(PathBuf),
    #[error(
        "only one of `{0}` and its key exists; restore the other or remove both to make a new pair"
    )]
    HalfPair(PathBuf),
    #[error(
        "`{0}` was not made by sitegate; it is never replaced (remove it, or configure it in [api])"
    )]
    NotOurs(PathBuf),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("the certificate and key are not usable together: {0}")]
    Config(String),
}

/// A certificate ready to serve.
pub struct TlsMaterial {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// SHA-256 of the leaf certificate's DER, as `AB:CD:…`.
    pub fingerprint: String,
    /// Whether this call created the pair.
    pub created: bool,
    pub server_config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_path", &self.cert_path)
            .field("fingerprint", &self.fingerprint)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// SHA-256 fingerprint of a DER certificate, upper-case hex pairs joined by `:`.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The box's host name (from the kernel), if it has a usable one.
pub fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| h.to_string())
}

/// The box's LAN addresses: every interface address except loopback and IPv6 link-local
/// (which needs a zone and cannot name a server in a certificate), sorted.
pub fn lan_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Names for a new certificate: the host name (and `<host>.local` for mDNS), `localhost`,
/// `127.0.0.1`, `::1` and the box's LAN addresses.
pub fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Some(h) = hostname() {
        if !h.ends_with(".local") && !h.contains('.') {
            names.push(format!("{h}.local"));
        }
        names.push(h);
    }
    names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    names.extend(lan_addresses().iter().map(IpAddr::to_string));
    names
}

/// Subject alternative names of a DER certificate (DNS names and IP addresses as text), and
/// whether this module made it (self-signed, organization `sitegate`). `None` if unparsable.
pub fn cert_names(der: &[u8]) -> Option<(Vec<String>, bool)> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let ours = cert.subject() == cert.issuer()
        && cert
            .subject()
            .iter_organization()
            .any(|o| o.as_str().ok() == Some("sitegate"));
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => {
                        let a: [u8; 4] = <[u8; 4]>::try_from(*b).ok()?;
                        names.push(IpAddr::from(a).to_string());
                    }
                    16 => {
                        let a: [u8; 16] = <[u8; 16]>::try_from(*b).ok()?;
                        names.push(IpAddr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some((names, ours))
}

/// The first certificate of a PEM file, as DER.
fn first_cert_der(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| TlsError::NoCertificate(path.to_path_buf()))
}

/// Replaces the self-signed pair in `<state_dir>/tls/` with a new one for `names` (made if
/// missing). Refuses a pair this module did not make: a certificate put there by hand is never
/// replaced.
pub fn renew(state_dir: &Path, names: &[String]) -> Result<TlsMaterial, TlsError> {
    let dir = state_dir.join(TLS_DIR);
    let cert_path = dir.join(CERT_FILE);
    if cert_path.exists() {
        let der = first_cert_der(&cert_path)?;
        if !cert_names(&der).is_some_and(|(_, ours)| ours) {
            return Err(TlsError::NotOurs(cert_path));
        }
    }
    write_pair(&dir, names)?;
    let mut m = load(&cert_path, &dir.join(KEY_FILE))?;
    m.created = true;
    Ok(m)
}

/// Makes a new pair in `dir` (mode 0700), key first.
fn write_pair(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    let (cert_pem, key_pem) = generate(names)?;
    // Key first: a crash between the two leaves a pair that does not match, which `load`
    // reports rather than serving.
    crate::util::write_private(&key_path, key_pem.as_bytes()).map_err(|source| {
        TlsError::Write {
            path: key_path.clone(),
            source,
        }
    })?;
    crate::util::write_public(&cert_path, cert_pem.as_bytes()).map_err(|source| TlsError::Write {
        path: cert_path.clone(),
        source,
    })
}

/// Makes a self-signed ECDSA P-256 certificate and key in `<state_dir>/tls/` if both are missing,
/// then loads whatever is there. `names` are the subject alternative names (DNS names or IP
/// addresses); see [`default_names`]; extra names (the box's LAN address) are appended by the
/// caller.
pub fn ensure_self_signed(state_dir: &Path, names: &[String]) -> Result<TlsMaterial, TlsError> {
    let dir = state_dir.join(TLS_DIR);
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let (has_cert, has_key) = (cert_path.exists(), key_path.exists());
    let created = match (has_cert, has_key) {
        (true, true) => {
            // Our own certificate no longer naming the box (a new host name or LAN address) is
            // re-made with the current names; any other certificate is left alone.
            let der = first_cert_der(&cert_path)?;
            match cert_names(&der) {
                Some((have, true)) if names.iter().any(|n| !have.contains(n)) => {
                    let missing: Vec<&String> =
                        names.iter().filter(|n| !have.contains(n)).collect();
                    let mut all = have.clone();
                    all.extend(missing.iter().map(|n| (*n).clone()));
                    // Keep names given earlier (`api-cert --name`) along with the new ones.
                    write_pair(&dir, &all)?;
                    tracing::warn!(
                        old_sha256 = %fingerprint(&der),
                        missing = ?missing,
                        "the LAN API certificate did not name this box any more; made a new one (clients must pin its new fingerprint)"
                    );
                    true
                }
                _ => false,
            }
        }
        (false, false) => {
            write_pair(&dir, names)?;
            true
        }
        _ => return Err(TlsError::HalfPair(cert_path)),
    };
    let mut m = load(&cert_path, &key_path)?;
    m.created = created;
    if created {
        tracing::info!(sha256 = %m.fingerprint, cert = %cert_path.display(), "made the LAN API certificate");
    }
    Ok(m)
}

/// A new self-signed certificate (PEM) and its PKCS#8 key (PEM).
pub fn generate(names: &[String]) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!(
            "sitegate {}",
            hostname().unwrap_or_else(|| "controller".into())
        ),
    );
    dn.push(rcgen::DnType::OrganizationName, "sitegate");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * 20);
    for n in names {
        let san = match n.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                n.clone()
                    .try_into()
                    .map_err(|_| TlsError::Generate(format!("`{n}` is not a DNS name")))?,
            ),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Loads a PEM certificate chain and key into a rustls server config (ring provider, TLS 1.2
/// and 1.3, HTTP/1.1 ALPN).
pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsMaterial, TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(|source| TlsError::Read {
        path: cert_path.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key_path).map_err(|source| TlsError::Read {
        path: key_path.to_path_buf(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    };
    let fingerprint = fingerprint(leaf.as_ref());
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsError::NoKey(key_path.to_path_buf()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        fingerprint,
        created: false,
        server_config: Arc::new(config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn self_signed_pair_is_made_once_with_a_private_key_and_a_stable_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = ensure_self_signed(dir.path(), &names).unwrap();
        assert!(a.created);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        assert!(
            a.fingerprint
                .chars()
                .all(|c| c == ':' || c.is_ascii_hexdigit())
        );
        let mode = std::fs::metadata(&a.key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = ensure_self_signed(dir.path(), &names).unwrap();
        assert!(!b.created);
        assert_eq!(a.fingerprint, b.fingerprint);
    }

    #[test]
    fn a_half_pair_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_self_signed(dir.path(), &["localhost".into()]).unwrap();
        std::fs::remove_file(&a.key_path).unwrap();
        let e = ensure_self_signed(dir.path(), &["localhost".into()]).unwrap_err();
        assert!(matches!(e, TlsError::HalfPair(_)), "{e}");
    }

    #[test]
    fn garbage_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        std::fs::write(&c, "not pem").unwrap();
        std::fs::write(&k, "not pem").unwrap();
        assert!(matches!(
            load(&c, &k).unwrap_err(),
            TlsError::NoCertificate(_)
        ));
    }

    fn sans(m: &TlsMaterial) -> Vec<String> {
        let der = first_cert_der(&m.cert_path).unwrap();
        let (names, ours) = cert_names(&der).unwrap();
        assert!(ours);
        names
    }

    #[test]
    fn the_default_certificate_names_the_host_its_mdns_name_and_its_lan_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let m = ensure_self_signed(dir.path(), &default_names()).unwrap();
        let names = sans(&m);
        let host = hostname().unwrap();
        assert!(names.contains(&host), "{names:?}");
        if !host.contains('.') {
            assert!(names.contains(&format!("{host}.local")), "{names:?}");
        }
        for ip in lan_addresses() {
            assert!(!ip.is_loopback());
            assert!(names.contains(&ip.to_string()), "{ip} not in {names:?}");
        }
        // The test host has a non-loopback address when it has any interface besides lo.
        let any_lan = if_addrs::get_if_addrs()
            .unwrap()
            .iter()
            .any(|i| !i.ip().is_loopback() && i.ip().is_ipv4());
        if any_lan {
            assert!(
                names
                    .iter()
                    .filter_map(|n| n.parse::<IpAddr>().ok())
                    .any(|ip| !ip.is_loopback()),
                "{names:?}"
            );
        }
    }

    #[test]
    fn a_self_made_certificate_missing_a_name_is_made_again_keeping_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_self_signed(dir.path(), &["localhost".into()]).unwrap();
        let b = ensure_self_signed(dir.path(), &["localhost".into(), "192.0.2.7".into()]).unwrap();
        assert!(b.created);
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(sans(&b), ["localhost", "192.0.2.7"]);
        // Asking for fewer names keeps it.
        let c = ensure_self_signed(dir.path(), &["localhost".into()]).unwrap();
        assert!(!c.created);
        assert_eq!(b.fingerprint, c.fingerprint);
    }

    #[test]
    fn renew_makes_a_new_certificate_with_the_given_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_self_signed(dir.path(), &["localhost".into()]).unwrap();
        let b = renew(dir.path(), &["box.example".into(), "10.1.2.3".into()]).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(sans(&b), ["box.example", "10.1.2.3"]);
        let mode = std::fs::metadata(&b.key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_certificate_sitegate_did_not_make_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join(TLS_DIR);
        std::fs::create_dir_all(&tls).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["installer.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(tls.join(CERT_FILE), cert.pem()).unwrap();
        std::fs::write(tls.join(KEY_FILE), key.serialize_pem()).unwrap();
        let before = fingerprint(cert.der());
        let m = ensure_self_signed(dir.path(), &default_names()).unwrap();
        assert!(!m.created);
        assert_eq!(m.fingerprint, before);
        let e = renew(dir.path(), &["x.example".into()]).unwrap_err();
        assert!(matches!(e, TlsError::NotOurs(_)), "{e}");
        assert_eq!(
            fingerprint(&first_cert_der(&tls.join(CERT_FILE)).unwrap()),
            before
        );
    }
}
