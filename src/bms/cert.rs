//! Issuing Modbus/TCP Security certificates from a site CA (`sitegate modbus-client-cert`).
//!
//! The CA is a directory holding `ca.pem` and `ca.key` (created on first use, key owner-only).
//! A client certificate carries the role extension (OID 1.3.6.1.4.1.50316.802.1, UTF8String),
//! extended key usage `clientAuth` and the client's name as subject CN.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::tls::ROLE_OID_ARCS;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read or write `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A PEM certificate and its PKCS#8 key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The DER encoding of a UTF8String (the role extension's value).
pub fn utf8_string_der(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = vec![0x0C];
    let n = bytes.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= 0xFF {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(bytes);
    out
}

/// A new self-signed site CA for Modbus clients (valid `days`).
pub fn new_ca(name: &str, days: i64) -> Result<Issued, CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "sitegate");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct Request {
    /// Subject CN: the named client of the audit trail.
    pub name: String,
    /// The role string of the extension; `None` issues a certificate WITHOUT the extension
    /// (for tests of the refusal path only; the CLI always sets it).
    pub role: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// A server certificate (SANs = `names`, EKU serverAuth) instead of a client one.
    pub server_names: Option<Vec<String>>,
}

/// Issues a certificate signed by the CA given as PEM cert + key.
pub fn issue(ca: &Issued, req: &Request) -> Result<Issued, CertError> {
    if req.name.is_empty() || req.name.len() > 64 {
        return Err(CertError::Invalid(
            "the name must be 1..=64 characters".into(),
        ));
    }
    if req.not_after <= req.not_before {
        return Err(CertError::Invalid(
            "the validity ends before it starts".into(),
        ));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name.as_str());
    params.distinguished_name = dn;
    params.not_before = req.not_before;
    params.not_after = req.not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    match &req.server_names {
        Some(names) => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for n in names {
                params
                    .subject_alt_names
                    .push(match n.parse::<std::net::IpAddr>() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => {
                            SanType::DnsName(n.clone().try_into().map_err(|_| {
                                CertError::Invalid(format!("`{n}` is not a DNS name"))
                            })?)
                        }
                    });
            }
        }
        None => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    if let Some(role) = &req.role {
        if role.is_empty() || role.len() > 128 {
            return Err(CertError::Invalid(
                "the role must be 1..=128 characters".into(),
            ));
        }
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            &ROLE_OID_ARCS,
            utf8_string_der(role),
        )];
    }
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Loads the CA from `dir`, creating it (key owner-only) when the directory holds none.
pub fn load_or_create_ca(dir: &Path) -> Result<(Issued, bool), CertError> {
    let cert = dir.join(CA_CERT);
    let key = dir.join(CA_KEY);
    if cert.exists() || key.exists() {
        let cert_pem = std::fs::read_to_string(&cert).map_err(io(&cert))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        return Ok((Issued { cert_pem, key_pem }, false));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca = new_ca("sitegate Modbus client CA", 3650)?;
    write_secret(&key, ca.key_pem.as_bytes())?;
    std::fs::write(&cert, ca.cert_pem.as_bytes()).map_err(io(&cert))?;
    Ok((ca, true))
}

/// Writes a private key readable by its owner only.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// `sitegate modbus-client-cert`: issue a Modbus/TCP Security certificate from the site CA.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Directory of the site's Modbus client CA (`ca.pem`, `ca.key`); created when empty.
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// The client's name (certificate subject CN; the audit trail names the client by it).
    #[arg(long)]
    pub name: String,
    /// The role string of the extension (mapped by `[modbus_server.roles]`; by default one of
    /// viewer, control-only, technician). Not used with --server.
    #[arg(long, required_unless_present = "server")]
    pub role: Option<String>,
    /// Days of validity.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
    /// Where to write NAME.pem and NAME.key (default: the current directory).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Issue the listener's SERVER certificate instead, for these DNS names / IP addresses.
    #[arg(long = "server", num_args = 1.., value_name = "NAME")]
    pub server: Option<Vec<String>>,
}

/// Runs the subcommand; returns the exit code.
pub fn run_cli(args: CertArgs) -> i32 {
    match cli(&args) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn cli(args: &CertArgs) -> Result<Vec<String>, CertError> {
    if !(1..=3650).contains(&args.days) {
        return Err(CertError::Invalid("--days must be 1..=3650".into()));
    }
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(CertError::Invalid(
            "--name must be letters, digits, `-`, `_` or `.`".into(),
        ));
    }
    if let (None, Some(role)) = (&args.server, &args.role) {
        if crate::bms::RoleMap::standard().get(role).is_none() {
            // Allowed (a site may map its own role strings), but say so.
            eprintln!(
                "note: `{role}` is not one of viewer, control-only, technician; map it in \
                 [modbus_server.roles]"
            );
        }
    }
    let (ca, created) = load_or_create_ca(&args.ca_dir)?;
    let mut out = Vec::new();
    if created {
        out.push(format!(
            "created CA `{}`",
            args.ca_dir.join(CA_CERT).display()
        ));
    }
    let now = OffsetDateTime::now_utc();
    let issued = issue(
        &ca,
        &Request {
            name: args.name.clone(),
            role: if args.server.is_some() {
                None
            } else {
                args.role.clone()
            },
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(args.days),
            server_names: args.server.clone(),
        },
    )?;
    std::fs::create_dir_all(&args.out_dir).map_err(io(&args.out_dir))?;
    let cert = args.out_dir.join(format!("{}.pem", args.name));
    let key = args.out_dir.join(format!("{}.key", args.name));
    write_secret(&key, issued.key_pem.as_bytes())?;
    std::fs::write(&cert, issued.cert_pem.as_bytes()).map_err(io(&cert))?;
    out.push(format!("certificate: {}", cert.display()));
    out.push(format!("key: {}", key.display()));
    out.push(format!("ca: {}", args.ca_dir.join(CA_CERT).display()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::bms::RoleMap;
    use crate::bms::tls::{RoleError, identity_of};
    use crate::model::Role;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn req(role: Option<&str>) -> Request {
        let now = OffsetDateTime::now_utc();
        Request {
            name: "bms-1".into(),
            role: role.map(str::to_string),
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(30),
            server_names: None,
        }
    }

    #[test]
    fn an_issued_certificate_carries_its_role_and_name_and_maps_to_the_sitegate_role() {
        let ca = new_ca("test CA", 30).unwrap();
        let c = issue(&ca, &req(Some("control-only"))).unwrap();
        let id = identity_of(&der(&c.cert_pem), &RoleMap::standard()).unwrap();
        assert_eq!(id.role, Role::ControlOnly);
        assert_eq!(id.role_name, "control-only");
        assert_eq!(id.client.as_deref(), Some("bms-1"));
    }

    #[test]
    fn a_certificate_without_the_role_or_with_an_unmapped_role_has_no_identity() {
        let ca = new_ca("test CA", 30).unwrap();
        let none = issue(&ca, &req(None)).unwrap();
        assert_eq!(
            identity_of(&der(&none.cert_pem), &RoleMap::standard()),
            Err(RoleError::NoRole)
        );
        let admin = issue(&ca, &req(Some("admin"))).unwrap();
        assert_eq!(
            identity_of(&der(&admin.cert_pem), &RoleMap::standard()),
            Err(RoleError::UnknownRole("admin".into()))
        );
    }

    #[test]
    fn long_role_strings_are_encoded_with_a_long_form_length() {
        let long = "r".repeat(128);
        let d = utf8_string_der(&long);
        assert_eq!(&d[..3], &[0x0C, 0x81, 128]);
        let ca = new_ca("test CA", 30).unwrap();
        let c = issue(&ca, &req(Some(&long))).unwrap();
        let mut m = std::collections::HashMap::new();
        m.insert(long.clone(), Role::Viewer);
        let id = identity_of(&der(&c.cert_pem), &RoleMap::new(m)).unwrap();
        assert_eq!(id.role, Role::Viewer);
    }
}
