//! Provisioning: from a blank box to a configured one.
//!
//! `sitegate provision` (and the first-boot setup endpoint, which calls the same code) sets the
//! site and gateway ids, imports the cloud trust keys, makes the device key and the TLS
//! certificate, and writes the config. It refuses to re-provision a provisioned box unless forced,
//! and then keeps a backup of the old config and database first. The config is rewritten with
//! `toml_edit`, so an installer's comments, links and units survive; the result is validated
//! before anything is written.

use std::path::{Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::{Config, ConfigError, RawTrustKey};
use crate::model::{GatewayId, SiteId};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "this box is already provisioned as site `{site}` gateway `{gateway}`; \
         re-run with --force to replace it (the old config and database are backed up first)"
    )]
    AlreadyProvisioned { site: String, gateway: String },
    #[error("missing {0}")]
    Missing(String),
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("existing config `{path}` cannot be edited: {message}")]
    BadExisting { path: PathBuf, message: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the installer supplies.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub site: String,
    pub gateway: String,
    pub name: Option<String>,
    /// State directory; default: keep the config's, or `/var/lib/sitegate`.
    pub state_dir: Option<PathBuf>,
    /// Cloud trust anchors.
    pub trust: Vec<RawTrustKey>,
    /// LAN API address; default: keep the config's.
    pub api_listen: Option<String>,
    /// MQTT broker url; default: keep the config's.
    pub mqtt_url: Option<String>,
    pub force: bool,
}

/// What changed on disk.
#[derive(Debug, Clone)]
pub struct Written {
    pub config: Config,
    pub config_path: PathBuf,
    /// Backups made before overwriting (config file, database copy).
    pub backups: Vec<PathBuf>,
}

/// Parses `kid=base64url-key` as given on the command line.
pub fn parse_trust_arg(s: &str) -> Result<RawTrustKey, ProvisionError> {
    let (kid, key) = s.split_once('=').ok_or_else(|| ProvisionError::Invalid {
        what: "trust key",
        message: format!("`{s}` is not KID=PUBLIC_KEY"),
    })?;
    Ok(RawTrustKey {
        kid: kid.trim().to_string(),
        public_key: key.trim().to_string(),
    })
}

/// Reads the `[site]` of an existing config, if any (a provisioned box).
pub fn existing_site(config_path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(config_path).ok()?;
    let doc = text.parse::<DocumentMut>().ok()?;
    let site = doc.get("site")?.as_table()?;
    Some((
        site.get("id")?.as_str()?.to_string(),
        site.get("gateway")?.as_str()?.to_string(),
    ))
}

/// Validates the request, backs up what it replaces, and writes the new config atomically.
/// `profile_exists` is the profile registry's membership test (for validating units kept from an
/// existing config).
pub fn write_config(
    config_path: &Path,
    req: &Request,
    profile_exists: &dyn Fn(&str) -> bool,
    now: time::OffsetDateTime,
) -> Result<Written, ProvisionError> {
    SiteId::new(req.site.clone()).map_err(|e| ProvisionError::Invalid {
        what: "site id",
        message: e.to_string(),
    })?;
    GatewayId::new(req.gateway.clone()).map_err(|e| ProvisionError::Invalid {
        what: "gateway id",
        message: e.to_string(),
    })?;
    if req.trust.is_empty() {
        return Err(ProvisionError::Missing(
            "cloud trust key (--trust KID=PUBLIC_KEY or --trust-file FILE)".into(),
        ));
    }

    let existing = match std::fs::read_to_string(config_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(config_path)(e)),
    };
    if let (Some((site, gateway)), false) = (existing_site(config_path), req.force) {
        return Err(ProvisionError::AlreadyProvisioned { site, gateway });
    }
    let mut doc = match &existing {
        Some(t) => t
            .parse::<DocumentMut>()
            .map_err(|e| ProvisionError::BadExisting {
                path: config_path.to_path_buf(),
                message: e.to_string(),
            })?,
        None => DocumentMut::new(),
    };

    let mut site = Table::new();
    site.insert("id", value(req.site.as_str()));
    site.insert("gateway", value(req.gateway.as_str()));
    if let Some(n) = &req.name {
        site.insert("name", value(n.as_str()));
    }
    doc.insert("site", Item::Table(site));

    if let Some(dir) = &req.state_dir {
        set_in(
            &mut doc,
            "state",
            "dir",
            value(dir.to_string_lossy().as_ref()),
        );
    }
    if let Some(listen) = &req.api_listen {
        set_in(&mut doc, "api", "listen", value(listen.as_str()));
    }
    if let Some(url) = &req.mqtt_url {
        set_in(&mut doc, "mqtt", "url", value(url.as_str()));
    }
    let mut trust = ArrayOfTables::new();
    for k in &req.trust {
        let mut t = Table::new();
        t.insert("kid", value(k.kid.as_str()));
        t.insert("public_key", value(k.public_key.as_str()));
        trust.push(t);
    }
    set_in(&mut doc, "grants", "trust", Item::ArrayOfTables(trust));

    let text = doc.to_string();
    let base = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // Validate before anything is written or backed up.
    let mut config = Config::parse(&text, &base, profile_exists).map_err(|mut e| {
        e.file = Some(config_path.to_path_buf());
        e
    })?;
    config.source = Some(config_path.to_path_buf());

    let mut backups = Vec::new();
    let stamp = stamp(now);
    if let Some(old) = &existing {
        let bak = unused_path(&format!("{}.bak-{stamp}", config_path.display()), "");
        crate::util::write_private(&bak, old.as_bytes()).map_err(io_err(&bak))?;
        backups.push(bak);
        let db = config.state_dir.join(crate::store::DB_FILE);
        if db.exists() {
            backups.push(backup_database(&db, &config.state_dir, &stamp)?);
        }
    }
    if let Some(parent) = config_path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    crate::util::write_public(config_path, text.as_bytes()).map_err(io_err(config_path))?;
    Ok(Written {
        config,
        config_path: config_path.to_path_buf(),
        backups,
    })
}

/// Sets `table.key = v`, creating the table when absent (keeps the table's other keys and its
/// comments).
fn set_in(doc: &mut DocumentMut, table: &str, key: &str, v: Item) {
    let mut t = match doc.remove(table) {
        Some(Item::Table(t)) => t,
        _ => Table::new(),
    };
    t.insert(key, v);
    doc.insert(table, Item::Table(t));
}

fn stamp(now: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    now.format(&f).unwrap_or_else(|_| "backup".into())
}

/// `{base}{ext}`, or `{base}-2{ext}`, `{base}-3{ext}`, … when taken: two provisionings within
/// the same second (a LAN setup followed at once by `provision --force`) keep both backups
/// instead of failing (`VACUUM INTO` refuses an existing file) or overwriting one.
fn unused_path(base: &str, ext: &str) -> PathBuf {
    let first = PathBuf::from(format!("{base}{ext}"));
    if !first.exists() {
        return first;
    }
    (2u32..)
        .map(|n| PathBuf::from(format!("{base}-{n}{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Copies the live database consistently (SQLite `VACUUM INTO`) to `state/backups/`.
pub fn backup_database(
    db: &Path,
    state_dir: &Path,
    stamp: &str,
) -> Result<PathBuf, ProvisionError> {
    let dir = state_dir.join("backups");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let out = unused_path(
        &dir.join(format!("sitegate-{stamp}")).to_string_lossy(),
        ".db",
    );
    let conn = rusqlite::Connection::open(db).map_err(|e| {
        ProvisionError::Other(format!("cannot open `{}` for backup: {e}", db.display()))
    })?;
    conn.execute("VACUUM INTO ?1", [out.to_string_lossy().as_ref()])
        .map_err(|e| ProvisionError::Other(format!("database backup failed: {e}")))?;
    Ok(out)
}

/// What `provision` did, for the summary.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub written: Written,
    pub device_public_key: String,
    pub tls_cert: PathBuf,
    pub tls_fingerprint: String,
}

impl ProvisionError {
    /// Process exit code: 78 for invalid input or config, 1 for a refusal or a failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProvisionError::Missing(_)
            | ProvisionError::Invalid { .. }
            | ProvisionError::BadExisting { .. }
            | ProvisionError::Config(_) => crate::config::EX_CONFIG,
            ProvisionError::AlreadyProvisioned { .. }
            | ProvisionError::Io { .. }
            | ProvisionError::Other(_) => 1,
        }
    }
}

/// Reads a trust file in the `sitegate trust import` format into config trust keys (and the
/// anchors themselves, which may carry `not_after`).
pub fn read_trust_file(
    path: &Path,
) -> Result<(Vec<RawTrustKey>, Vec<crate::grants::trust::AnchorKey>), ProvisionError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let anchors =
        crate::grants::trust::parse_import_file(&bytes).map_err(|e| ProvisionError::Invalid {
            what: "trust file",
            message: format!("`{}`: {e}", path.display()),
        })?;
    let raw = anchors
        .iter()
        .map(|a| RawTrustKey {
            kid: a.kid.clone(),
            public_key: a.public_key.to_b64(),
        })
        .collect();
    Ok((raw, anchors))
}

/// Provisions the box: config, state dir (0700), database, device key, TLS certificate, audit.
pub fn provision(
    config_path: &Path,
    req: &Request,
    anchors: &[crate::grants::trust::AnchorKey],
    tls_names: &[String],
) -> Result<Provisioned, ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    // Validate the extra names before anything is written.
    for n in tls_names {
        if n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(ProvisionError::Invalid {
                what: "tls name",
                message: format!("`{n}` is not a DNS name or IP address"),
            });
        }
    }
    // Units kept from an existing config may name profiles from its `[profiles] dir`.
    let profiles = crate::config_load::profile_names(
        crate::config_load::profiles_dir_of(config_path).as_deref(),
    );
    let now = time::OffsetDateTime::now_utc();
    let written = write_config(config_path, req, &|p| profiles.contains(p), now)?;
    let state = written.config.state_dir.clone();
    std::fs::create_dir_all(&state).map_err(io_err(&state))?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(&state))?;
    let store = crate::store::Store::open_in(&state)
        .map_err(|e| ProvisionError::Other(format!("cannot open the database: {e}")))?;
    // Keys with an expiry go to the trust store too, so that `not_after` is kept.
    let dated: Vec<_> = anchors
        .iter()
        .filter(|a| a.not_after.is_some())
        .cloned()
        .collect();
    if !dated.is_empty() {
        store
            .with_conn(|c| {
                crate::grants::trust::import(c, &dated, now).map_err(|e| match e {
                    crate::grants::GrantError::Store(s) => s,
                    other => crate::store::StoreError::Corrupt(other.to_string()),
                })
            })
            .map_err(|e| ProvisionError::Other(format!("cannot import trust keys: {e}")))?;
    }
    let device = crate::delegation::DeviceKey::load_or_create(&state)
        .map_err(|e| ProvisionError::Other(format!("device key: {e}")))?;
    let device_public_key = crate::util_b64::encode(device.public_key());
    let (tls_cert, tls_fingerprint) = match &written.config.api.mode {
        crate::config::ApiMode::Tls {
            cert: Some(c),
            key: Some(k),
        } => {
            let m = crate::tls::load(c, k)
                .map_err(|e| ProvisionError::Other(format!("TLS certificate: {e}")))?;
            (m.cert_path, m.fingerprint)
        }
        crate::config::ApiMode::Plain => (
            PathBuf::new(),
            "none (the LAN API is plain HTTP on loopback)".to_string(),
        ),
        crate::config::ApiMode::Tls { .. } => {
            let mut names = crate::tls::default_names();
            names.extend(tls_names.iter().cloned());
            let m = crate::tls::ensure_self_signed(&state, &names)
                .map_err(|e| ProvisionError::Other(format!("TLS certificate: {e}")))?;
            (m.cert_path, m.fingerprint)
        }
    };
    let site = written.config.site.clone();
    let audit = crate::audit::Audit::new(
        store,
        std::sync::Arc::new(crate::clock::SystemClock),
        site.as_ref().map(|s| format!("{}/events", s.topic_root())),
    );
    audit
        .record_blocking(
            &crate::audit::Event::new("provisioned", "ok")
                .actor("installer:cli")
                .detail(serde_json::json!({
                    "site": req.site,
                    "gateway": req.gateway,
                    "trust": req.trust.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
                    "forced": req.force,
                    "backups": written.backups.len(),
                })),
        )
        .map_err(|e| ProvisionError::Other(format!("cannot write the audit record: {e}")))?;
    Ok(Provisioned {
        written,
        device_public_key,
        tls_cert,
        tls_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dir: &Path) -> Request {
        Request {
            site: "s-1".into(),
            gateway: "gw-1".into(),
            name: Some("Plant".into()),
            state_dir: Some(dir.join("state")),
            trust: vec![RawTrustKey {
                kid: "fleet-a".into(),
                public_key: crate::grants::fleet::public_key_b64(
                    &crate::grants::fleet::keypair_from_seed(&[7u8; 32]).unwrap(),
                ),
            }],
            api_listen: Some("127.0.0.1:0".into()),
            mqtt_url: None,
            force: false,
        }
    }

    #[test]
    fn provisioning_keeps_existing_units_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sitegate.toml");
        std::fs::write(
            &path,
            "# installer notes\n[[links]]\nname = \"bus\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n\n[[units]]\nid = \"gen-1\"\nlink = \"bus\"\nslave = 3\nprofile = \"p\"\n",
        )
        .unwrap();
        let w = write_config(
            &path,
            &req(dir.path()),
            &|_| true,
            time::OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(w.config.units.len(), 1);
        assert_eq!(w.config.site.as_ref().unwrap().id.as_str(), "s-1");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# installer notes"));
        assert_eq!(
            w.backups.len(),
            1,
            "the unprovisioned config is backed up too"
        );
    }

    #[test]
    fn a_provisioned_box_is_not_clobbered_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sitegate.toml");
        write_config(
            &path,
            &req(dir.path()),
            &|_| true,
            time::OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap();
        let before = std::fs::read_to_string(&path).unwrap();
        let mut again = req(dir.path());
        again.site = "s-2".into();
        let e =
            write_config(&path, &again, &|_| true, time::OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert!(
            matches!(e, ProvisionError::AlreadyProvisioned { .. }),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);

        again.force = true;
        let w = write_config(&path, &again, &|_| true, time::OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(w.config.site.unwrap().id.as_str(), "s-2");
        let bak = std::fs::read_to_string(&w.backups[0]).unwrap();
        assert_eq!(bak, before, "the replaced config is kept as a backup");
    }

    #[test]
    fn two_forced_provisionings_in_the_same_second_keep_both_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sitegate.toml");
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let first = write_config(&path, &req(dir.path()), &|_| true, now).unwrap();
        let db = first.config.state_dir.join(crate::store::DB_FILE);
        std::fs::create_dir_all(&first.config.state_dir).unwrap();
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let mut again = req(dir.path());
        again.force = true;
        let second = write_config(&path, &again, &|_| true, now).unwrap();
        let third = write_config(&path, &again, &|_| true, now).unwrap();
        let names = |w: &Written| -> Vec<String> {
            w.backups
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(&second),
            [
                "sitegate.toml.bak-19700101T000000Z",
                "sitegate-19700101T000000Z.db"
            ]
        );
        assert_eq!(
            names(&third),
            [
                "sitegate.toml.bak-19700101T000000Z-2",
                "sitegate-19700101T000000Z-2.db"
            ]
        );
        for w in [&second, &third] {
            assert!(w.backups.iter().all(|p| p.exists()));
        }
    }

    #[test]
    fn invalid_input_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sitegate.toml");
        let mut r = req(dir.path());
        r.trust[0].public_key = "short".into();
        let e = write_config(&path, &r, &|_| true, time::OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert!(e.to_string().contains("grants.trust[0].public_key"), "{e}");
        assert!(!path.exists());
        r = req(dir.path());
        r.site = "bad/site".into();
        assert!(write_config(&path, &r, &|_| true, time::OffsetDateTime::UNIX_EPOCH).is_err());
        assert!(!path.exists());
    }
}
