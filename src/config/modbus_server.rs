//! The `[modbus_server]` config section: raw form, validation (with key paths) and the validated
//! settings the Modbus server face ([`crate::bms`]) is built from.
//!
//! It lives with the rest of the config so that the config never imports the server it configures:
//! `bms` imports this module (and re-exports it as `bms::config`), never the reverse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{Role, UnitId};

/// Certificate role string → sitegate role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMap(HashMap<String, Role>);

impl RoleMap {
    /// The default map: the role names themselves (`viewer`, `control-only`, `technician`).
    pub fn standard() -> RoleMap {
        RoleMap(
            [Role::Viewer, Role::ControlOnly, Role::Technician]
                .into_iter()
                .map(|r| (r.as_str().to_string(), r))
                .collect(),
        )
    }
    pub fn new(map: HashMap<String, Role>) -> RoleMap {
        RoleMap(map)
    }
    /// The role a certificate's role string maps to (exact, case-sensitive match).
    pub fn get(&self, name: &str) -> Option<Role> {
        self.0.get(name).copied()
    }
}

/// The files the Modbus/TLS listener is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that issues BMS client certificates (PEM, one or more certificates).
    pub ca: PathBuf,
    /// Certificate revocation lists issued by that CA (PEM).
    pub crls: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBms {
    pub tls: Option<RawTls>,
    pub plain: Option<RawPlain>,
    #[serde(default)]
    pub units: Vec<RawExposed>,
    /// Certificate role string → sitegate role; absent = the role names themselves.
    pub roles: Option<BTreeMap<String, String>>,
    /// A cached value younger than this answers a read without bus traffic.
    #[serde(default = "default_max_age")]
    pub max_age_ms: u64,
    /// How long a read that needs the bus may wait for it.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_handshake")]
    pub handshake_timeout_ms: u64,
    /// Open connections at most (TLS and plain together); more are closed at connect.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
}

fn default_max_connections() -> u64 {
    32
}

fn default_max_age() -> u64 {
    2000
}
fn default_read_timeout() -> u64 {
    3000
}
fn default_handshake() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default = "default_tls_listen")]
    pub listen: String,
    /// The CA that issues BMS client certificates.
    pub ca: PathBuf,
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// The server certificate and key; absent = the LAN API's certificate in `state/tls`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn default_tls_listen() -> String {
    "0.0.0.0:802".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlain {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_plain_listen")]
    pub listen: String,
    #[serde(default)]
    pub allow: Vec<RawAllow>,
}

fn default_plain_listen() -> String {
    "0.0.0.0:502".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    pub source: String,
    pub role: String,
    pub client: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExposed {
    pub unit: String,
    pub unit_id: u8,
}

/// The validated section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmsConfig {
    pub tls: Option<TlsListener>,
    pub plain: Option<PlainListener>,
    /// Modbus unit id → sitegate unit.
    pub units: Vec<(u8, UnitId)>,
    pub roles: RoleMap,
    pub max_age: Duration,
    pub read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub files: TlsFiles,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainListener {
    pub listen: SocketAddr,
    pub allow: Vec<PlainAllow>,
}

/// A legacy client allowed by its source address, with its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainAllow {
    pub source: IpAddr,
    pub role: Role,
    pub client: Option<String>,
}

/// Roles a Modbus client may hold (never `admin`: managing users has no Modbus form).
fn parse_role(s: &str) -> Option<Role> {
    match s {
        "viewer" => Some(Role::Viewer),
        "control-only" => Some(Role::ControlOnly),
        "technician" => Some(Role::Technician),
        _ => None,
    }
}

const ROLE_NAMES: &str = "viewer, control-only, technician";

impl RawBms {
    /// Validates the section; every problem is `(key path, message)`. `tls_dir` is where the
    /// LAN API's certificate lives (the default server certificate).
    pub fn validate(
        self,
        base: &Path,
        tls_dir: &Path,
        known_units: &[UnitId],
    ) -> Result<BmsConfig, Vec<(String, String)>> {
        let mut p: Vec<(String, String)> = Vec::new();
        let resolve = |f: &Path| {
            if f.is_absolute() {
                f.to_path_buf()
            } else {
                base.join(f)
            }
        };
        let tls = self.tls.as_ref().and_then(|t| {
            let listen = t
                .listen
                .parse::<SocketAddr>()
                .map_err(|_| {
                    p.push((
                        "modbus_server.tls.listen".into(),
                        format!("`{}` is not an ip:port address", t.listen),
                    ))
                })
                .ok()?;
            if t.cert.is_some() != t.key.is_some() {
                p.push((
                    "modbus_server.tls.cert".into(),
                    "`cert` and `key` must be given together".into(),
                ));
            }
            Some(TlsListener {
                listen,
                files: TlsFiles {
                    cert: t
                        .cert
                        .as_deref()
                        .map_or_else(|| tls_dir.join(crate::tls::CERT_FILE), &resolve),
                    key: t
                        .key
                        .as_deref()
                        .map_or_else(|| tls_dir.join(crate::tls::KEY_FILE), &resolve),
                    ca: resolve(&t.ca),
                    crls: t.crl.iter().map(|c| resolve(c)).collect(),
                },
            })
        });
        let plain = match &self.plain {
            Some(pl) if pl.enabled => {
                let listen = pl.listen.parse::<SocketAddr>().map_err(|_| {
                    p.push((
                        "modbus_server.plain.listen".into(),
                        format!("`{}` is not an ip:port address", pl.listen),
                    ))
                });
                if pl.allow.is_empty() {
                    p.push((
                        "modbus_server.plain.allow".into(),
                        "a plain listener needs at least one allowed source address".into(),
                    ));
                }
                let mut allow = Vec::new();
                let mut seen = HashSet::new();
                for (i, a) in pl.allow.iter().enumerate() {
                    let path = format!("modbus_server.plain.allow[{i}]");
                    let source = a.source.parse::<IpAddr>().map_err(|_| {
                        p.push((
                            format!("{path}.source"),
                            format!("`{}` is not an IP address", a.source),
                        ))
                    });
                    let role = parse_role(&a.role);
                    if role.is_none() {
                        p.push((
                            format!("{path}.role"),
                            format!("`{}` is not one of {ROLE_NAMES}", a.role),
                        ));
                    }
                    if let (Ok(source), Some(role)) = (source, role) {
                        if source.is_unspecified() {
                            p.push((
                                format!("{path}.source"),
                                "the unspecified address would allow anyone".into(),
                            ));
                        } else if !seen.insert(source) {
                            p.push((
                                format!("{path}.source"),
                                format!("`{source}` is listed twice"),
                            ));
                        }
                        allow.push(PlainAllow {
                            source,
                            role,
                            client: a.client.clone(),
                        });
                    }
                }
                listen.ok().map(|listen| PlainListener { listen, allow })
            }
            _ => None,
        };
        let mut units = Vec::new();
        let mut ids = HashSet::new();
        for (i, u) in self.units.iter().enumerate() {
            let path = format!("modbus_server.units[{i}]");
            if u.unit_id == 0 {
                p.push((
                    format!("{path}.unit_id"),
                    "0 is the broadcast id; use 1..=255".into(),
                ));
            } else if !ids.insert(u.unit_id) {
                p.push((
                    format!("{path}.unit_id"),
                    format!("unit id {} is used twice", u.unit_id),
                ));
            }
            match UnitId::new(u.unit.clone()) {
                Ok(id) if known_units.contains(&id) => units.push((u.unit_id, id)),
                _ => p.push((
                    format!("{path}.unit"),
                    format!("`{}` is not a configured unit", u.unit),
                )),
            }
        }
        if units.is_empty() && p.is_empty() {
            p.push((
                "modbus_server.units".into(),
                "list at least one unit to expose".into(),
            ));
        }
        if tls.is_none() && plain.is_none() && p.is_empty() {
            p.push((
                "modbus_server".into(),
                "neither `tls` nor an enabled `plain` listener is configured".into(),
            ));
        }
        let roles = match &self.roles {
            None => RoleMap::standard(),
            Some(m) => {
                let mut out = HashMap::new();
                for (k, v) in m {
                    match parse_role(v) {
                        Some(r) => {
                            out.insert(k.clone(), r);
                        }
                        None => p.push((
                            format!("modbus_server.roles.{k}"),
                            format!("`{v}` is not one of {ROLE_NAMES}"),
                        )),
                    }
                }
                RoleMap::new(out)
            }
        };
        for (key, v, lo, hi) in [
            ("max_age_ms", self.max_age_ms, 0, 3_600_000),
            ("read_timeout_ms", self.read_timeout_ms, 100, 60_000),
            (
                "handshake_timeout_ms",
                self.handshake_timeout_ms,
                100,
                60_000,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                p.push((
                    format!("modbus_server.{key}"),
                    format!("must be between {lo} and {hi}"),
                ));
            }
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(BmsConfig {
            tls,
            plain,
            units,
            roles,
            max_age: Duration::from_millis(self.max_age_ms),
            read_timeout: Duration::from_millis(self.read_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_connections: usize::try_from(self.max_connections).unwrap_or(32),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn check(text: &str) -> Result<BmsConfig, Vec<(String, String)>> {
        let raw: RawBms = toml::from_str(text).unwrap();
        raw.validate(
            Path::new("/etc/sitegate"),
            Path::new("/var/lib/sitegate/tls"),
            &[UnitId::new("ac-1").unwrap()],
        )
    }

    fn paths(r: Result<BmsConfig, Vec<(String, String)>>) -> Vec<String> {
        r.err().unwrap().into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn a_tls_section_resolves_paths_and_defaults_to_the_api_certificate() {
        let c = check(
            "[tls]\nlisten = \"127.0.0.1:802\"\nca = \"bms-ca.pem\"\ncrl = [\"bms.crl\"]\n\
             [[units]]\nunit = \"ac-1\"\nunit_id = 3\n",
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.files.ca, Path::new("/etc/sitegate/bms-ca.pem"));
        assert_eq!(t.files.crls, vec![PathBuf::from("/etc/sitegate/bms.crl")]);
        assert_eq!(t.files.cert, Path::new("/var/lib/sitegate/tls/cert.pem"));
        assert!(c.plain.is_none());
        assert_eq!(c.units, vec![(3, UnitId::new("ac-1").unwrap())]);
        assert_eq!(c.roles.get("viewer"), Some(Role::Viewer));
        assert_eq!(c.roles.get("admin"), None);
        assert_eq!(c.max_age, Duration::from_millis(2000));
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let p = paths(check(
            "max_age_ms = 99999999\n[tls]\nlisten = \"nowhere\"\nca = \"a.pem\"\ncert = \"c.pem\"\n\
             [plain]\nenabled = true\n\
             [[plain.allow]]\nsource = \"0.0.0.0\"\nrole = \"viewer\"\n\
             [[plain.allow]]\nsource = \"10.0.0.x\"\nrole = \"admin\"\n\
             [roles]\nOperator = \"root\"\n\
             [[units]]\nunit = \"ac-9\"\nunit_id = 0\n",
        ));
        for want in [
            "modbus_server.max_age_ms",
            "modbus_server.tls.listen",
            "modbus_server.plain.allow[0].source",
            "modbus_server.plain.allow[1].source",
            "modbus_server.plain.allow[1].role",
            "modbus_server.roles.Operator",
            "modbus_server.units[0].unit",
            "modbus_server.units[0].unit_id",
        ] {
            assert!(p.contains(&want.to_string()), "{want} missing in {p:?}");
        }
    }

    #[test]
    fn the_plain_listener_is_off_unless_enabled_and_needs_allowed_sources() {
        let c = check(
            "[plain]\nlisten = \"0.0.0.0:502\"\n[[plain.allow]]\nsource = \"10.0.0.5\"\nrole = \"viewer\"\n\
             [[units]]\nunit = \"ac-1\"\nunit_id = 1\n",
        );
        // Not enabled, and no TLS either: nothing would listen.
        assert_eq!(paths(c), vec!["modbus_server".to_string()]);
        let p = paths(check(
            "[plain]\nenabled = true\n[[units]]\nunit = \"ac-1\"\nunit_id = 1\n",
        ));
        assert_eq!(p, vec!["modbus_server.plain.allow".to_string()]);
    }
}
