//! Commissioning edits of the config file: adding and removing `[[links]]` and `[[units]]`
//! (the work behind `/api/v1/config/…`).
//!
//! Each change is made with `toml_edit` on the file as it is, so the installer's comments and
//! formatting survive; the result is written to a temporary file beside the config (same mode and
//! owner) and validated there with exactly what `check-config` runs ([`crate::config_load::load`]:
//! the config's checks and the device profiles). Only a valid result is renamed over the config;
//! an invalid one is removed and the config is left byte for byte as it was. Edits made in this
//! process run one at a time (a read-modify-write of one file).
//!
//! This module never applies a change to the running daemon: the caller asks for the same reload
//! that SIGHUP performs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::{Config, LinkKind, Parity, Problem};

/// One edit of the file at a time in this process.
static EDITS: Mutex<()> = Mutex::new(());

/// Why an edit was not made. The config file is untouched in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The changed config fails validation; every problem with its key path.
    #[error("{}", problems_text(.0))]
    Invalid(Vec<Problem>),
    #[error("no link named `{0}` in the config")]
    LinkNotFound(String),
    #[error("no unit with id `{0}` in the config")]
    UnitNotFound(String),
    /// Units still name the link.
    #[error("link `{link}` is used by unit(s) {}; remove them first", quoted(.units))]
    LinkInUse { link: String, units: Vec<String> },
    /// The file cannot be read, parsed or written (the detail is for the log, not the client).
    #[error("the config file cannot be edited: {0}")]
    Unavailable(String),
}

fn problems_text(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a link talks (the config's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KindName {
    Tcp,
    Rtu,
    RtuOverTcp,
}

impl KindName {
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Tcp => "tcp",
            KindName::Rtu => "rtu",
            KindName::RtuOverTcp => "rtu-over-tcp",
        }
    }
}

/// A serial link's parity (the config's `parity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParityName {
    None,
    Even,
    Odd,
}

impl ParityName {
    fn as_str(self) -> &'static str {
        match self {
            ParityName::None => "none",
            ParityName::Even => "even",
            ParityName::Odd => "odd",
        }
    }
}

/// A `[[links]]` entry to add: the keys the config takes, unset ones left to its defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    pub name: String,
    pub kind: KindName,
    /// `host:port` for `tcp` and `rtu-over-tcp`.
    pub address: Option<String>,
    /// Serial device for `rtu`.
    pub device: Option<String>,
    pub baud: Option<u32>,
    pub parity: Option<ParityName>,
    pub data_bits: Option<u8>,
    pub stop_bits: Option<u8>,
    pub timeout_ms: Option<u32>,
    pub retries: Option<u32>,
}

/// A `[[units]]` entry to add.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewUnit {
    pub id: String,
    pub name: Option<String>,
    pub link: String,
    /// Checked by the config (1..=247), so that the answer names the key path like
    /// `check-config` does.
    pub slave: i64,
    /// A built-in profile or one from `[profiles] dir`.
    pub profile: String,
    pub group: Option<String>,
}

/// One change of the file.
#[derive(Debug, Clone)]
pub enum Change {
    AddLink(NewLink),
    RemoveLink(String),
    AddUnit(NewUnit),
    RemoveUnit(String),
}

impl Change {
    /// The change's name in answers and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Change::AddLink(_) => "link_added",
            Change::RemoveLink(_) => "link_removed",
            Change::AddUnit(_) => "unit_added",
            Change::RemoveUnit(_) => "unit_removed",
        }
    }
}

/// A link as the config declares it (validated), with the units that use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkEntry {
    pub name: String,
    pub kind: KindName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parity: Option<ParityName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_bits: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_bits: Option<u8>,
    pub timeout_ms: u64,
    pub retries: u32,
    pub units: Vec<String>,
}

/// A unit as the config declares it (validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitEntry {
    pub id: String,
    pub name: String,
    pub link: String,
    pub slave: u8,
    pub profile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The links of a valid config.
pub fn links(cfg: &Config) -> Vec<LinkEntry> {
    cfg.links
        .iter()
        .map(|l| {
            let units = cfg
                .units
                .iter()
                .filter(|u| u.link == l.name)
                .map(|u| u.id.to_string())
                .collect();
            let millis = u64::try_from(l.timeout.as_millis()).unwrap_or(u64::MAX);
            let mut e = LinkEntry {
                name: l.name.to_string(),
                kind: KindName::Tcp,
                address: None,
                device: None,
                baud: None,
                parity: None,
                data_bits: None,
                stop_bits: None,
                timeout_ms: millis,
                retries: l.retries,
                units,
            };
            match &l.kind {
                LinkKind::Tcp { address } => e.address = Some(address.clone()),
                LinkKind::RtuOverTcp { address } => {
                    e.kind = KindName::RtuOverTcp;
                    e.address = Some(address.clone());
                }
                LinkKind::Rtu {
                    device,
                    baud,
                    parity,
                    data_bits,
                    stop_bits,
                } => {
                    e.kind = KindName::Rtu;
                    e.device = Some(device.display().to_string());
                    e.baud = Some(*baud);
                    e.parity = Some(match parity {
                        Parity::None => ParityName::None,
                        Parity::Even => ParityName::Even,
                        Parity::Odd => ParityName::Odd,
                    });
                    e.data_bits = Some(*data_bits);
                    e.stop_bits = Some(*stop_bits);
                }
            }
            e
        })
        .collect()
}

/// The units of a valid config.
pub fn units(cfg: &Config) -> Vec<UnitEntry> {
    cfg.units
        .iter()
        .map(|u| UnitEntry {
            id: u.id.to_string(),
            name: u.name.clone(),
            link: u.link.to_string(),
            slave: u.slave.get(),
            profile: u.profile.clone(),
            group: u.group.as_ref().map(ToString::to_string),
        })
        .collect()
}

/// What an edit did: the entry before and after (one of them absent), and the config now in the
/// file.
#[derive(Debug, Clone)]
pub struct Edited {
    pub before: Option<Entry>,
    pub after: Option<Entry>,
    pub config: Config,
}

/// A link or a unit, as the config declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Link(LinkEntry),
    Unit(UnitEntry),
}

/// Reads and validates the config at `path` as `check-config` does.
pub fn read(path: &Path) -> Result<Config, EditError> {
    crate::config_load::load(path).map_err(|e| {
        EditError::Unavailable(format!(
            "the config file is not valid ({})",
            problems_text(&e.problems)
        ))
    })
}

/// Applies `change` to the config file at `path`: edits, validates, then replaces the file
/// atomically. Blocking (file I/O and the profile directory): call from `spawn_blocking`.
pub fn apply(path: &Path, change: &Change) -> Result<Edited, EditError> {
    let _one_at_a_time = EDITS.lock().unwrap_or_else(|p| p.into_inner());
    let text = std::fs::read_to_string(path)
        .map_err(|e| EditError::Unavailable(format!("cannot read: {e}")))?;
    let mut doc = text
        .parse::<DocumentMut>()
        .map_err(|e| EditError::Unavailable(format!("cannot parse: {e}")))?;
    // The entries as the file declares them now (a file that is invalid already is edited all
    // the same: its problems are then reported with the change's).
    let current = read(path).ok();
    let find_link = |name: &str| {
        current
            .as_ref()
            .and_then(|c| links(c).into_iter().find(|l| l.name == name))
    };
    let find_unit = |id: &str| {
        current
            .as_ref()
            .and_then(|c| units(c).into_iter().find(|u| u.id == id))
    };
    let before = match change {
        Change::AddLink(l) => {
            push(&mut doc, "links", link_table(l));
            None
        }
        Change::AddUnit(u) => {
            push(&mut doc, "units", unit_table(u));
            None
        }
        Change::RemoveLink(name) => {
            let users: Vec<String> = raw_entries(&doc, "units")
                .filter(|t| t.get("link").and_then(Item::as_str) == Some(name))
                .filter_map(|t| t.get("id").and_then(Item::as_str).map(str::to_string))
                .collect();
            if !users.is_empty() {
                return Err(EditError::LinkInUse {
                    link: name.clone(),
                    units: users,
                });
            }
            if !remove(&mut doc, "links", "name", name) {
                return Err(EditError::LinkNotFound(name.clone()));
            }
            find_link(name).map(Entry::Link)
        }
        Change::RemoveUnit(id) => {
            if !remove(&mut doc, "units", "id", id) {
                return Err(EditError::UnitNotFound(id.clone()));
            }
            find_unit(id).map(Entry::Unit)
        }
    };
    let config = write_validated(path, doc.to_string().as_bytes())?;
    let after = match change {
        Change::AddLink(l) => links(&config)
            .into_iter()
            .find(|e| e.name == l.name)
            .map(Entry::Link),
        Change::AddUnit(u) => units(&config)
            .into_iter()
            .find(|e| e.id == u.id)
            .map(Entry::Unit),
        Change::RemoveLink(_) | Change::RemoveUnit(_) => None,
    };
    Ok(Edited {
        before,
        after,
        config,
    })
}

fn link_table(l: &NewLink) -> Table {
    let mut t = Table::new();
    t.insert("name", value(l.name.as_str()));
    t.insert("kind", value(l.kind.as_str()));
    if let Some(a) = &l.address {
        t.insert("address", value(a.as_str()));
    }
    if let Some(d) = &l.device {
        t.insert("device", value(d.as_str()));
    }
    if let Some(b) = l.baud {
        t.insert("baud", value(i64::from(b)));
    }
    if let Some(p) = l.parity {
        t.insert("parity", value(p.as_str()));
    }
    if let Some(b) = l.data_bits {
        t.insert("data_bits", value(i64::from(b)));
    }
    if let Some(b) = l.stop_bits {
        t.insert("stop_bits", value(i64::from(b)));
    }
    if let Some(ms) = l.timeout_ms {
        t.insert("timeout_ms", value(i64::from(ms)));
    }
    if let Some(r) = l.retries {
        t.insert("retries", value(i64::from(r)));
    }
    t
}

fn unit_table(u: &NewUnit) -> Table {
    let mut t = Table::new();
    t.insert("id", value(u.id.as_str()));
    if let Some(n) = &u.name {
        t.insert("name", value(n.as_str()));
    }
    t.insert("link", value(u.link.as_str()));
    t.insert("slave", value(u.slave));
    t.insert("profile", value(u.profile.as_str()));
    if let Some(g) = &u.group {
        t.insert("group", value(g.as_str()));
    }
    t
}

/// Appends a table to the array of tables `key` (created when absent). A new table is written
/// after the array's last one, so entries keep their order and their comments.
fn push(doc: &mut DocumentMut, key: &str, t: Table) {
    match doc.get_mut(key).and_then(Item::as_array_of_tables_mut) {
        Some(arr) => arr.push(t),
        None => {
            let mut arr = ArrayOfTables::new();
            arr.push(t);
            doc.insert(key, Item::ArrayOfTables(arr));
        }
    }
}

fn raw_entries<'a>(doc: &'a DocumentMut, key: &str) -> impl Iterator<Item = &'a Table> {
    doc.get(key)
        .and_then(Item::as_array_of_tables)
        .into_iter()
        .flat_map(|a| a.iter())
}

/// Removes every entry of `key` whose `field` is `name`; whether there was one.
fn remove(doc: &mut DocumentMut, key: &str, field: &str, name: &str) -> bool {
    let Some(arr) = doc.get_mut(key).and_then(Item::as_array_of_tables_mut) else {
        return false;
    };
    let before = arr.len();
    arr.retain(|t| t.get(field).and_then(Item::as_str) != Some(name));
    arr.len() != before
}

/// Writes `bytes` beside `path` with its mode and owner, validates that file as `check-config`
/// does, and renames it over `path` when valid; removes it otherwise.
fn write_validated(path: &Path, bytes: &[u8]) -> Result<Config, EditError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let unavailable =
        |what: &str, e: std::io::Error| EditError::Unavailable(format!("{what}: {e}"));
    let meta = std::fs::metadata(path).map_err(|e| unavailable("cannot read", e))?;
    let tmp = temp_path(path);
    let result = (|| {
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| unavailable("cannot write beside the config", e))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| unavailable("cannot write beside the config", e))?;
        }
        if let Err(e) = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid())) {
            // Only root may give a file away; a daemon that owns the config keeps it its own.
            let own = std::fs::metadata(&tmp).map_err(|e| unavailable("cannot read", e))?;
            if (own.uid(), own.gid()) != (meta.uid(), meta.gid()) {
                return Err(unavailable("cannot keep the config's owner", e));
            }
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| unavailable("cannot keep the config's mode", e))?;
        let config = crate::config_load::load(&tmp).map_err(|e| EditError::Invalid(e.problems))?;
        std::fs::rename(&tmp, path).map_err(|e| unavailable("cannot replace the config", e))?;
        if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(config)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let mut config = result?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// A fresh name beside the config (same directory, so that relative paths resolve alike and the
/// rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    path.with_file_name(format!(".{name}.edit-{}", crate::util::random_hex(6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"# site notes: plant room B
[site]
id = "s-1"
gateway = "gw-1"

[state]
dir = "state"

# the generator bus
[[links]]
name = "bus"
kind = "tcp"
address = "127.0.0.1:5020"

[[units]]
id = "gen-1"   # keep this comment
link = "bus"
slave = 3
profile = "dse-gencomm"
"#;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sitegate.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn link(name: &str) -> NewLink {
        NewLink {
            name: name.into(),
            kind: KindName::Tcp,
            address: Some("127.0.0.1:5021".into()),
            device: None,
            baud: None,
            parity: None,
            data_bits: None,
            stop_bits: None,
            timeout_ms: None,
            retries: None,
        }
    }

    fn unit(id: &str, link: &str, slave: i64, profile: &str) -> NewUnit {
        NewUnit {
            id: id.into(),
            name: Some(format!("{id} name")),
            link: link.into(),
            slave,
            profile: profile.into(),
            group: None,
        }
    }

    #[test]
    fn adding_a_link_and_a_unit_keeps_every_comment_and_the_entries_order() {
        let (_d, path) = file(BASE);
        let e = apply(&path, &Change::AddLink(link("bus2"))).unwrap();
        assert_eq!(e.before, None);
        assert_eq!(e.config.links.len(), 2);
        apply(
            &path,
            &Change::AddUnit(unit("hvac-1", "bus2", 7, "coolmaster-va")),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            BASE.replace(
                "\n[[units]]",
                "\n[[links]]\nname = \"bus2\"\nkind = \"tcp\"\naddress = \"127.0.0.1:5021\"\n\n[[units]]"
            ) + "\n[[units]]\nid = \"hvac-1\"\nname = \"hvac-1 name\"\nlink = \"bus2\"\nslave = 7\nprofile = \"coolmaster-va\"\n"
        );
    }

    #[test]
    fn an_invalid_change_leaves_the_file_byte_identical_and_names_the_key_path() {
        let (dir, path) = file(BASE);
        for (u, want) in [
            (
                unit("hvac-1", "bus", 7, "no-such"),
                "units[1].profile: no profile named `no-such`",
            ),
            (
                unit("gen-1", "bus", 9, "dse-gencomm"),
                "units[1].id: duplicate unit id `gen-1`",
            ),
        ] {
            let err = apply(&path, &Change::AddUnit(u)).unwrap_err();
            assert_eq!(err.to_string(), want);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), BASE);
        }
        let err = apply(&path, &Change::AddUnit(unit("x", "bus", 0, "dse-gencomm"))).unwrap_err();
        let EditError::Invalid(p) = err else {
            panic!("{err}")
        };
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "units[1].slave");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["sitegate.toml"]);
    }

    #[test]
    fn a_link_in_use_is_not_removed_and_a_free_one_is() {
        let (_d, path) = file(BASE);
        assert_eq!(
            apply(&path, &Change::RemoveLink("bus".into())).unwrap_err(),
            EditError::LinkInUse {
                link: "bus".into(),
                units: vec!["gen-1".into()]
            }
        );
        assert_eq!(
            apply(&path, &Change::RemoveLink("nope".into())).unwrap_err(),
            EditError::LinkNotFound("nope".into())
        );
        let e = apply(&path, &Change::RemoveUnit("gen-1".into())).unwrap();
        assert_eq!(
            e.before,
            Some(Entry::Unit(UnitEntry {
                id: "gen-1".into(),
                name: "gen-1".into(),
                link: "bus".into(),
                slave: 3,
                profile: "dse-gencomm".into(),
                group: None,
            }))
        );
        let e = apply(&path, &Change::RemoveLink("bus".into())).unwrap();
        assert!(matches!(e.before, Some(Entry::Link(ref l)) if l.name == "bus"));
        assert!(e.config.links.is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# site notes: plant room B\n"), "{text}");
    }

    #[test]
    fn the_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, path) = file(BASE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        apply(&path, &Change::AddLink(link("bus2"))).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
