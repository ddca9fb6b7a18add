//! Device profiles: named points (register kind, address, type, scale, unit, range, capabilities),
//! multi-register commands and sentinel values, parsed from TOML and validated; plus the registry
//! of built-in and site profiles.
//!
//! A [`Profile`] can only exist when it passed validation, so the engine never meets overlapping
//! points, an address beyond 65535, a bad enum or a min above max. This module does no I/O on a
//! bus and never touches the engine's state. The checks themselves, one per part of the file,
//! are in `profile/checks.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::Capability;

mod checks;
use checks::validate;

/// The profiles compiled into the binary.
pub const BUILTIN: [(&str, &str); 4] = [
    (
        "coolmaster-va",
        include_str!("../../config/profiles/coolmaster-va.toml"),
    ),
    (
        "dse-gencomm",
        include_str!("../../config/profiles/dse-gencomm.toml"),
    ),
    (
        "dse-gencomm-page154",
        include_str!("../../config/profiles/dse-gencomm-page154.toml"),
    ),
    (
        "eastron-sdm630",
        include_str!("../../config/profiles/eastron-sdm630.toml"),
    ),
];

/// Largest profile file accepted.
const MAX_PROFILE_BYTES: u64 = 512 * 1024;

/// A Modbus data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegKind {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl RegKind {
    /// Bit tables (coils, discrete inputs) versus 16-bit register tables.
    pub fn is_bit(self) -> bool {
        matches!(self, RegKind::Coil | RegKind::Discrete)
    }
    /// Largest quantity one read request may ask for (Modbus spec).
    pub fn max_read(self) -> u16 {
        if self.is_bit() { 2000 } else { 125 }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RegKind::Coil => "coil",
            RegKind::Discrete => "discrete",
            RegKind::Input => "input",
            RegKind::Holding => "holding",
        }
    }
    /// Whether the table can be written at all.
    pub fn writable(self) -> bool {
        matches!(self, RegKind::Coil | RegKind::Holding)
    }
}

impl std::str::FromStr for RegKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "coil" | "coils" => Ok(RegKind::Coil),
            "discrete" | "discrete_input" | "discretes" => Ok(RegKind::Discrete),
            "input" | "input_register" | "inputs" => Ok(RegKind::Input),
            "holding" | "holding_register" | "holdings" => Ok(RegKind::Holding),
            other => Err(format!(
                "unknown register kind `{other}` (expected coil, discrete, input or holding)"
            )),
        }
    }
}

/// How a point's raw registers are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    Enum,
}

impl ValueType {
    /// The name used in profiles and the API (`u16`, `enum`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Bool => "bool",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Enum => "enum",
        }
    }

    /// Registers (or bits) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            ValueType::Bool | ValueType::U16 | ValueType::I16 | ValueType::Enum => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
        }
    }
}

/// Order of the two 16-bit words of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// High word at the lower address (Modbus convention, DSE GenComm).
    #[default]
    Big,
    /// Low word at the lower address.
    Little,
}

/// The quality of a cached value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Good,
    /// Not refreshed within its poll budget, or the unit is offline.
    Stale,
    /// Sentinel: the sender or sensor is open circuit / faulty.
    OpenCircuit,
    /// Sentinel: the device does not implement the value.
    Unimplemented,
    /// Sentinel: above the measurable range.
    OverRange,
    /// Sentinel: below the measurable range.
    UnderRange,
    /// Sentinel: the device reports bad data.
    BadData,
    /// The last read of the point failed (exception, timeout).
    Error,
    /// Never read yet.
    Unknown,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Stale => "stale",
            Quality::OpenCircuit => "open_circuit",
            Quality::Unimplemented => "unimplemented",
            Quality::OverRange => "over_range",
            Quality::UnderRange => "under_range",
            Quality::BadData => "bad_data",
            Quality::Error => "error",
            Quality::Unknown => "unknown",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TOML form.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    manufacturer: Option<String>,
    #[serde(default)]
    signature: Vec<RawSignature>,
    /// Sentinels applied to every numeric point of a type (`u16`, `i16`, `u32`, `i32`) that does
    /// not list its own.
    #[serde(default)]
    default_sentinels: BTreeMap<String, Vec<RawSentinel>>,
    /// First virtual address of a multi-unit gateway (CoolMasterNet: 1); the profile's addresses
    /// are those of this VA.
    va_first: Option<i64>,
    /// Registers (and bits) per virtual address (CoolMasterNet: 16).
    va_stride: Option<i64>,
    /// The device's limit of registers per read request (SDM630: 80), below the protocol's.
    max_read_registers: Option<i64>,
    #[serde(default)]
    points: Vec<RawPoint>,
    #[serde(default)]
    commands: Vec<RawCommand>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    kind: String,
    address: i64,
    value: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentinel {
    raw: i64,
    quality: Quality,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    name: String,
    kind: String,
    address: i64,
    #[serde(rename = "type")]
    ty: ValueType,
    #[serde(default)]
    description: String,
    scale: Option<f64>,
    offset: Option<f64>,
    unit: Option<String>,
    #[serde(default)]
    word_order: WordOrder,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Capability needed to read; default `view`.
    read: Option<String>,
    /// Capability needed to write; absent = read-only.
    write: Option<String>,
    deadband: Option<f64>,
    /// Absent: the profile's `default_sentinels` of the point's type; `[]`: none.
    sentinels: Option<Vec<RawSentinel>>,
    /// Bit mask inside a 16-bit register (for packed flags and nibbles); read-only.
    mask: Option<i64>,
    /// For a writable u16 bit-field: the only bits a write may set.
    bits: Option<i64>,
    /// For a bool point: while it reads true the device behind a gateway is not answering, and
    /// every other point of the unit is reported `stale`.
    #[serde(default)]
    unit_fault: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    name: String,
    #[serde(default)]
    description: String,
    capability: String,
    writes: Vec<RawWrite>,
    supported_if: Option<RawSupport>,
    allowed_when: Option<RawCondition>,
    confirm: Option<RawConfirm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupport {
    point: String,
    mask: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    point: String,
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfirm {
    point: String,
    values: Vec<String>,
    within_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrite {
    kind: String,
    address: i64,
    values: Vec<i64>,
}

// ---------------------------------------------------------------------------------------------
// Valid form.
// ---------------------------------------------------------------------------------------------

/// A validated device profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub manufacturer: Option<String>,
    pub signature: Vec<Signature>,
    pub points: Vec<Point>,
    pub commands: Vec<Command>,
    /// Virtual addressing of a multi-unit gateway: `(first VA, registers per VA)`.
    pub va: Option<(u16, u16)>,
    /// The device's limit of registers per read request, when below the protocol's 125.
    pub max_read_registers: Option<u16>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
}

/// A register that identifies the device model during a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    pub kind: RegKind,
    pub address: u16,
    pub value: u16,
}

/// Raw value → quality mapping (checked before scaling).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sentinel {
    pub raw: u32,
    pub quality: Quality,
}

/// One named value of a device.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub name: String,
    pub description: String,
    pub kind: RegKind,
    pub address: u16,
    #[serde(rename = "type")]
    pub ty: ValueType,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
    pub word_order: WordOrder,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Enum labels by raw value.
    pub labels: BTreeMap<u16, String>,
    pub read: Capability,
    pub write: Option<Capability>,
    pub deadband: Option<f64>,
    pub sentinels: Vec<Sentinel>,
    pub mask: Option<u16>,
    /// Bits a write may set (writable bit-field registers).
    pub bits: Option<u16>,
    /// While this bool point reads true, the unit's other points are `stale`.
    pub unit_fault: bool,
}

impl Point {
    /// Registers (or bits) occupied.
    pub fn width(&self) -> u16 {
        self.ty.width()
    }
    /// One past the last address occupied.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width())
    }
    pub fn writable(&self) -> bool {
        self.write.is_some()
    }
}

/// One write of a command: FC16 for registers (FC15 for coils), in the listed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandWrite {
    pub kind: RegKind,
    pub address: u16,
    pub values: Vec<u16>,
}

/// A named action that is not a single point write (e.g. a DSE control key and its complement).
#[derive(Debug, Clone, Serialize)]
pub struct Command {
    pub name: String,
    pub description: String,
    pub capability: Capability,
    pub writes: Vec<CommandWrite>,
    /// Offered only when these bits of a point are set (DSE supported-function flags).
    pub supported_if: Option<CommandSupport>,
    /// Refused unless a point (read just before) shows one of these values (e.g. a start only in
    /// manual mode).
    pub allowed_when: Option<CommandCondition>,
    /// After the writes, a point must show one of these values within a time (the result read
    /// back: engine state, mode).
    pub confirm: Option<CommandConfirm>,
}

/// Bits of a point that must be set for a command to be offered.
#[derive(Debug, Clone, Serialize)]
pub struct CommandSupport {
    pub point: String,
    pub mask: u16,
}

/// A point and the values (enum labels, `true`/`false`, numbers as text) it must show.
#[derive(Debug, Clone, Serialize)]
pub struct CommandCondition {
    pub point: String,
    pub values: Vec<String>,
}

/// The read-back of a command.
#[derive(Debug, Clone, Serialize)]
pub struct CommandConfirm {
    pub point: String,
    pub values: Vec<String>,
    pub within: std::time::Duration,
}

impl CommandCondition {
    /// Whether a decoded value is one of the values.
    pub fn matches(&self, v: &serde_json::Value) -> bool {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.values.contains(&text)
    }
}

impl Profile {
    /// Parses and validates profile TOML; every problem is returned, each with its key path.
    pub fn parse(text: &str) -> Result<Profile, Vec<String>> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            vec![
                e.to_string()
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })?;
        validate(raw)
    }

    /// Looks up a point by name.
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.by_name.get(name).and_then(|&i| self.points.get(i))
    }
    pub fn point_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
    pub fn command(&self, name: &str) -> Option<&Command> {
        self.commands.iter().find(|c| c.name == name)
    }

    /// The address shift of virtual address `va` (profiles with `va_first`/`va_stride`).
    pub fn va_offset(&self, va: u16) -> Result<u16, String> {
        let Some((first, stride)) = self.va else {
            return Err(format!(
                "profile `{}` has no virtual addresses (no `va_first`/`va_stride`)",
                self.name
            ));
        };
        if va < first {
            return Err(format!(
                "VA {va} does not exist in profile `{}` (VAs start at {first})",
                self.name
            ));
        }
        u16::try_from(u32::from(va - first) * u32::from(stride))
            .map_err(|_| format!("VA {va} is beyond the 16-bit address space"))
    }

    /// A copy with every point, command write and signature moved up by `offset` registers (a
    /// unit's base offset or VA); fails when an address would pass 65535.
    pub fn shifted(&self, offset: u16) -> Result<Profile, String> {
        if offset == 0 {
            return Ok(self.clone());
        }
        let mv = |a: u16, width: u16| -> Result<u16, String> {
            let end = u32::from(a) + u32::from(offset) + u32::from(width);
            if end > 65536 {
                return Err(format!(
                    "address {a} + offset {offset} is beyond 65535 in profile `{}`",
                    self.name
                ));
            }
            Ok(a + offset)
        };
        let mut p = self.clone();
        for pt in &mut p.points {
            pt.address = mv(pt.address, pt.width())?;
        }
        for c in &mut p.commands {
            for w in &mut c.writes {
                w.address = mv(w.address, u16::try_from(w.values.len()).unwrap_or(u16::MAX))?;
            }
        }
        for sig in &mut p.signature {
            sig.address = mv(sig.address, 1)?;
        }
        Ok(p)
    }

    /// Largest read of `kind` this device accepts.
    pub fn max_read(&self, kind: RegKind) -> u16 {
        match (kind.is_bit(), self.max_read_registers) {
            (false, Some(m)) => m.min(kind.max_read()),
            _ => kind.max_read(),
        }
    }

    /// Every `(table, address)` the profile reads or writes (points and command writes).
    pub fn footprint(&self) -> Vec<(RegKind, u16, u16)> {
        let mut v: Vec<(RegKind, u16, u16)> = self
            .points
            .iter()
            .map(|p| (p.kind, p.address, p.width()))
            .collect();
        for c in &self.commands {
            for w in &c.writes {
                v.push((
                    w.kind,
                    w.address,
                    u16::try_from(w.values.len()).unwrap_or(u16::MAX),
                ));
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

/// Every profile known to the process: the built-ins plus `*.toml` files of a site directory
/// (a site file with a built-in's name replaces it).
#[derive(Debug, Clone, Default)]
pub struct ProfileRegistry {
    profiles: BTreeMap<String, Arc<Profile>>,
}

impl ProfileRegistry {
    /// Only the built-in profiles.
    pub fn builtin() -> Result<ProfileRegistry, Vec<String>> {
        Self::load(None)
    }

    /// Built-ins plus every `*.toml` in `dir`; all problems of all files are reported together,
    /// each prefixed by its file.
    pub fn load(dir: Option<&Path>) -> Result<ProfileRegistry, Vec<String>> {
        let mut problems = Vec::new();
        let mut profiles = BTreeMap::new();
        for (name, text) in BUILTIN {
            match Profile::parse(text) {
                Ok(p) => {
                    profiles.insert(p.name.clone(), Arc::new(p));
                }
                Err(e) => problems.extend(e.into_iter().map(|m| format!("built-in `{name}`: {m}"))),
            }
        }
        if let Some(dir) = dir {
            match std::fs::read_dir(dir) {
                Err(e) => {
                    problems.push(format!("cannot read profile dir `{}`: {e}", dir.display()))
                }
                Ok(entries) => {
                    let mut files: Vec<_> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    files.sort();
                    for f in files {
                        let shown = f.display().to_string();
                        let text = match std::fs::metadata(&f) {
                            Ok(m) if m.len() > MAX_PROFILE_BYTES => {
                                problems.push(format!(
                                    "`{shown}`: larger than {MAX_PROFILE_BYTES} bytes"
                                ));
                                continue;
                            }
                            _ => match std::fs::read_to_string(&f) {
                                Ok(t) => t,
                                Err(e) => {
                                    problems.push(format!("`{shown}`: cannot read: {e}"));
                                    continue;
                                }
                            },
                        };
                        match Profile::parse(&text) {
                            Ok(p) => {
                                profiles.insert(p.name.clone(), Arc::new(p));
                            }
                            Err(e) => {
                                problems.extend(e.into_iter().map(|m| format!("`{shown}`: {m}")))
                            }
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(ProfileRegistry { profiles })
        } else {
            Err(problems)
        }
    }

    /// A registry of exactly these profiles (tests, tools).
    pub fn from_profiles(list: impl IntoIterator<Item = Profile>) -> ProfileRegistry {
        ProfileRegistry {
            profiles: list
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Profile>> {
        self.profiles.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.profiles.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"t\"\n";

    fn errs(body: &str) -> Vec<String> {
        Profile::parse(&format!("{BASE}{body}")).unwrap_err()
    }

    #[test]
    fn builtin_profiles_parse_and_validate() {
        let reg = ProfileRegistry::builtin().unwrap();
        assert_eq!(
            reg.names(),
            vec![
                "coolmaster-va",
                "dse-gencomm",
                "dse-gencomm-page154",
                "eastron-sdm630"
            ]
        );
        let dse = reg.get("dse-gencomm").unwrap();
        let start = dse.command("start").unwrap();
        assert_eq!(start.writes[0].address, 4104);
        assert_eq!(start.writes[0].values, vec![35705, 29830]);
        let reset = dse.command("reset_alarms").unwrap();
        assert_eq!(reset.writes[0].values, vec![35734, 29801]);
        assert_eq!(reset.capability, Capability::Configure);
        assert!(dse.point("engine_hours").unwrap().ty == ValueType::U32);
        // Every numeric point carries the eight GenComm reserved values of its type.
        let batt = dse.point("battery_voltage").unwrap();
        let raws: Vec<u32> = batt.sentinels.iter().map(|s| s.raw).collect();
        assert_eq!(raws, (0xFFF8..=0xFFFF).rev().collect::<Vec<u32>>());
        assert_eq!(dse.point("engine_hours").unwrap().sentinels.len(), 8);
        assert_eq!(dse.point("number_of_starts").unwrap().sentinels.len(), 8);
        assert!(
            dse.point("supported_functions_0_15")
                .unwrap()
                .sentinels
                .is_empty()
        );
        assert!(dse.point("alarm_low_fuel").unwrap().sentinels.is_empty());
        let hvac = reg.get("coolmaster-va").unwrap();
        assert_eq!(
            hvac.point("setpoint").unwrap().write,
            Some(Capability::Control)
        );
        assert_eq!(hvac.va, Some((1, 16)));
        assert!(hvac.point("room_temperature").unwrap().sentinels.is_empty());
        assert!(hvac.point("indoor_comm_failure").unwrap().unit_fault);
    }

    #[test]
    fn a_command_below_the_write_capability_of_a_point_it_writes_is_refused() {
        let e = errs(
            "[[points]]\nname=\"limit\"\nkind=\"holding\"\naddress=10\ntype=\"u16\"\nwrite=\"configure\"\n\
             [[commands]]\nname=\"reset_alarms\"\ncapability=\"control\"\n\
             writes=[{ kind=\"holding\", address=9, values=[1, 0] }]\n",
        );
        assert_eq!(
            e,
            vec![
                "commands[0] (`reset_alarms`).capability: `control` is below `configure`, which point `limit` needs to write the holding register(s) this command writes at 10"
                    .to_string()
            ]
        );
        // The same command at `configure` (or writing beside the point) is fine.
        assert!(Profile::parse(&format!(
            "{BASE}[[points]]\nname=\"limit\"\nkind=\"holding\"\naddress=10\ntype=\"u16\"\nwrite=\"configure\"\n\
             [[commands]]\nname=\"reset_alarms\"\ncapability=\"configure\"\n\
             writes=[{{ kind=\"holding\", address=9, values=[1, 0] }}]\n\
             [[commands]]\nname=\"beside\"\ncapability=\"control\"\n\
             writes=[{{ kind=\"holding\", address=11, values=[1] }}]\n"
        ))
        .is_ok());
    }

    #[test]
    fn a_point_without_sentinels_takes_the_defaults_of_its_type_and_an_empty_list_opts_out() {
        let p = Profile::parse(&format!(
            "{BASE}[default_sentinels]\nu16=[{{ raw=0xFFFF, quality=\"unimplemented\" }}]\n\
             [[points]]\nname=\"a\"\nkind=\"holding\"\naddress=1\ntype=\"u16\"\n\
             [[points]]\nname=\"b\"\nkind=\"holding\"\naddress=2\ntype=\"u16\"\nsentinels=[]\n\
             [[points]]\nname=\"c\"\nkind=\"holding\"\naddress=3\ntype=\"i16\"\n"
        ))
        .unwrap();
        assert_eq!(p.point("a").unwrap().sentinels.len(), 1);
        assert!(p.point("b").unwrap().sentinels.is_empty());
        assert!(p.point("c").unwrap().sentinels.is_empty());
        let e = errs("[default_sentinels]\nf32=[{ raw=1, quality=\"bad_data\" }]\n");
        assert!(e[0].contains("default_sentinels.f32"), "{e:?}");
    }

    #[test]
    fn a_va_profile_shifts_by_its_stride_and_refuses_a_va_below_the_first() {
        let reg = ProfileRegistry::builtin().unwrap();
        let hvac = reg.get("coolmaster-va").unwrap();
        assert_eq!(hvac.va_offset(1), Ok(0));
        assert_eq!(hvac.va_offset(3), Ok(32));
        assert_eq!(
            hvac.va_offset(0).unwrap_err(),
            "VA 0 does not exist in profile `coolmaster-va` (VAs start at 1)"
        );
        let va3 = hvac.shifted(32).unwrap();
        assert_eq!(va3.point("mode").unwrap().address, 48);
        assert_eq!(va3.point("indoor_comm_failure").unwrap().address, 49);
        assert_eq!(va3.command("reset_filter").unwrap().writes[0].address, 52);
        assert!(hvac.shifted(65530).is_err());
    }

    #[test]
    fn overlapping_points_are_rejected_with_both_names() {
        let e = errs(
            "[[points]]\nname=\"a\"\nkind=\"holding\"\naddress=10\ntype=\"u32\"\n\
             [[points]]\nname=\"b\"\nkind=\"holding\"\naddress=11\ntype=\"u16\"\n",
        );
        assert!(e.iter().any(|m| m.contains("`a` and `b` overlap")), "{e:?}");
    }

    #[test]
    fn masked_points_may_share_a_register_when_bits_are_disjoint() {
        let p = Profile::parse(&format!(
            "{BASE}[[points]]\nname=\"a\"\nkind=\"holding\"\naddress=1\ntype=\"u16\"\nmask=0xF000\n\
             [[points]]\nname=\"b\"\nkind=\"holding\"\naddress=1\ntype=\"u16\"\nmask=0x0F00\n"
        ));
        assert!(p.is_ok(), "{p:?}");
    }

    #[test]
    fn out_of_range_address_unknown_capability_bad_enum_and_min_above_max_are_all_reported() {
        let e = errs(
            "[[points]]\nname=\"a\"\nkind=\"holding\"\naddress=65535\ntype=\"u32\"\n\
             [[points]]\nname=\"b\"\nkind=\"holding\"\naddress=1\ntype=\"u16\"\nwrite=\"superuser\"\n\
             [[points]]\nname=\"c\"\nkind=\"holding\"\naddress=2\ntype=\"enum\"\n\
             [[points]]\nname=\"d\"\nkind=\"holding\"\naddress=3\ntype=\"u16\"\nmin=5.0\nmax=1.0\n\
             [[points]]\nname=\"e\"\nkind=\"holding\"\naddress=4\ntype=\"enum\"\nlabels={x=\"on\"}\n",
        );
        let all = e.join("\n");
        assert!(all.contains("address 65535 is out of range"), "{all}");
        assert!(all.contains("unknown capability `superuser`"), "{all}");
        assert!(all.contains("an enum point needs labels"), "{all}");
        assert!(all.contains("min 5 is greater than max 1"), "{all}");
        assert!(all.contains("key `x` is not a 16-bit"), "{all}");
    }

    #[test]
    fn a_discrete_input_cannot_be_writable() {
        let e = errs(
            "[[points]]\nname=\"a\"\nkind=\"discrete\"\naddress=1\ntype=\"bool\"\nwrite=\"control\"\n",
        );
        assert!(e.iter().any(|m| m.contains("cannot be written")), "{e:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = errs("[[points]]\nname=\"a\"\nkind=\"holding\"\naddress=1\ntype=\"u16\"\nscal=2\n");
        assert!(e.join(" ").contains("unknown field `scal`"), "{e:?}");
    }

    #[test]
    fn registry_loads_a_site_dir_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.toml"),
            "name=\"site-x\"\n[[points]]\nname=\"a\"\nkind=\"input\"\naddress=0\ntype=\"u16\"\n",
        )
        .unwrap();
        let reg = ProfileRegistry::load(Some(dir.path())).unwrap();
        assert!(reg.get("site-x").is_some());
        std::fs::write(dir.path().join("y.toml"), "name=\"Bad Name\"\n").unwrap();
        let e = ProfileRegistry::load(Some(dir.path())).unwrap_err();
        assert!(e[0].contains("y.toml"), "{e:?}");
    }
}
