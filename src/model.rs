//! Domain vocabulary shared by every module: identifiers, roles, capabilities and scopes.
//!
//! Everything here is parsed once at the edge (config, signed bundles, API paths) and is valid by
//! construction afterwards. Nothing here does I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest identifier accepted anywhere (site, gateway, unit, user, grant, group, link ids).
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier is longer than {MAX_ID_LEN} characters")]
    TooLong,
    #[error("identifier `{0}` may only contain ASCII letters, digits, `-`, `_` and `.`")]
    BadChar(String),
}

/// Checks the identifier grammar used by every id type: 1–64 of `[A-Za-z0-9._-]`, not starting
/// with `.`. The grammar keeps ids safe inside MQTT topics, URL paths and file names.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(IdError::BadChar(s.chars().take(MAX_ID_LEN).collect()))
    }
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// The site this box serves (one box, one site).
    SiteId
);
id_type!(
    /// This box's gateway id within the site.
    GatewayId
);
id_type!(
    /// A unit (generator, HVAC indoor unit) in the site inventory.
    UnitId
);
id_type!(
    /// A group of units (a floor, a plant room).
    GroupId
);
id_type!(
    /// A user as named by the cloud (or by a local delegation).
    UserId
);
impl UserId {
    /// The principal of a local console connection: the Unix user `uid` on the box itself (see
    /// `api::console`). Its `:` and `=` are outside the id grammar, so no bundle, token or
    /// delegation can ever name it.
    pub fn console(uid: u32) -> UserId {
        UserId(format!("console:uid={uid}"))
    }

    /// Is this a console principal (made by [`UserId::console`])?
    pub fn is_console(&self) -> bool {
        self.0.starts_with("console:uid=")
    }
}

id_type!(
    /// A grant id; revocations name these.
    GrantId
);
id_type!(
    /// A Modbus link (bus) name from the config.
    LinkId
);
id_type!(
    /// A service business (a dealer or installer company) users may belong to.
    BusinessId
);

/// A unicast Modbus slave (unit) id, 1 to 247. Address 0 is the broadcast address (every device
/// on the bus acts on a write and none answers) and 248 to 255 are reserved, so neither can be
/// held here: a request built from a `SlaveId` always goes to exactly one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SlaveId(u8);

/// Why a number is not a unicast Modbus slave id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a unicast Modbus slave id (1 to 247; 0 is broadcast)")]
pub struct SlaveIdError(pub i64);

impl SlaveId {
    /// Lowest unicast id.
    pub const MIN: SlaveId = SlaveId(1);
    /// Highest unicast id.
    pub const MAX: SlaveId = SlaveId(247);

    /// The id, if `id` is a unicast slave id (1 to 247).
    pub fn new(id: u8) -> Result<SlaveId, SlaveIdError> {
        if (Self::MIN.0..=Self::MAX.0).contains(&id) {
            Ok(SlaveId(id))
        } else {
            Err(SlaveIdError(i64::from(id)))
        }
    }

    /// The id as it goes on the wire.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Every unicast id from `from` to `to`, both included.
    pub fn range(from: SlaveId, to: SlaveId) -> impl Iterator<Item = SlaveId> {
        (from.0..=to.0).map(SlaveId)
    }
}

impl TryFrom<i64> for SlaveId {
    type Error = SlaveIdError;
    fn try_from(v: i64) -> Result<SlaveId, SlaveIdError> {
        u8::try_from(v)
            .map_err(|_| SlaveIdError(v))
            .and_then(SlaveId::new)
    }
}

impl fmt::Display for SlaveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SlaveId {
    type Err = String;
    fn from_str(s: &str) -> Result<SlaveId, String> {
        let n: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?;
        SlaveId::try_from(n).map_err(|e| e.to_string())
    }
}

/// A verb the code checks. Roles are named sets of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    View,
    Control,
    Diagnose,
    Configure,
    ManageUsers,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::View,
        Capability::Control,
        Capability::Diagnose,
        Capability::Configure,
        Capability::ManageUsers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::View => "view",
            Capability::Control => "control",
            Capability::Diagnose => "diagnose",
            Capability::Configure => "configure",
            Capability::ManageUsers => "manage_users",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Capability::View => 1,
            Capability::Control => 2,
            Capability::Diagnose => 4,
            Capability::Configure => 8,
            Capability::ManageUsers => 16,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown capability `{s}`"))
    }
}

/// A set of capabilities as a bit set (copyable, allocation-free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapSet(u8);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);
    pub const ALL: CapSet = CapSet(31);

    pub const fn of(caps: &[Capability]) -> CapSet {
        let mut bits = 0;
        let mut i = 0;
        while i < caps.len() {
            bits |= caps[i].bit();
            i += 1;
        }
        CapSet(bits)
    }
    pub fn contains(self, c: Capability) -> bool {
        self.0 & c.bit() != 0
    }
    pub fn intersect(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }
    pub fn insert(&mut self, c: Capability) {
        self.0 |= c.bit();
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl Serialize for CapSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for CapSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let caps = Vec::<Capability>::deserialize(d)?;
        let mut set = CapSet::EMPTY;
        for c in caps {
            set.insert(c);
        }
        Ok(set)
    }
}

/// A named set of capabilities, ordered for delegation ceilings:
/// none < viewer < control-only < technician < admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "viewer")]
    Viewer,
    #[serde(rename = "control-only")]
    ControlOnly,
    #[serde(rename = "technician")]
    Technician,
    #[serde(rename = "admin")]
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::None,
        Role::Viewer,
        Role::ControlOnly,
        Role::Technician,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Viewer => "viewer",
            Role::ControlOnly => "control-only",
            Role::Technician => "technician",
            Role::Admin => "admin",
        }
    }

    /// The capabilities the role grants before the package ceiling is applied.
    pub fn capabilities(self) -> CapSet {
        use Capability::*;
        match self {
            Role::None => CapSet::EMPTY,
            Role::Viewer => CapSet::of(&[View]),
            Role::ControlOnly => CapSet::of(&[View, Control]),
            Role::Technician => CapSet::of(&[View, Control, Diagnose, Configure, ManageUsers]),
            Role::Admin => CapSet::ALL,
        }
    }

    /// The highest role a holder of this role may delegate (`None` for roles without
    /// `manage_users`, which may not delegate at all).
    pub fn delegation_ceiling(self) -> Option<Role> {
        match self {
            Role::None | Role::Viewer | Role::ControlOnly => None,
            Role::Technician => Some(Role::ControlOnly),
            Role::Admin => Some(Role::Admin),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`"))
    }
}

/// What a grant covers: the whole site, a group of units, or one unit.
///
/// Wire form (bundle JSON): `{"site":"s-1"}`, `{"group":"g-1"}` or `{"unit":"u-1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scope {
    Site(SiteId),
    Group(GroupId),
    Unit(UnitId),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Site(s) => write!(f, "site:{s}"),
            Scope::Group(g) => write!(f, "group:{g}"),
            Scope::Unit(u) => write!(f, "unit:{u}"),
        }
    }
}

/// Site management mode from the signed site policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Management {
    /// Managed by a service business: only cloud-issued grants may delegate; everything else is a
    /// pending request for the cloud.
    Pro,
    /// The owner manages access: delegations take effect at once, signed by the box.
    Independent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_grammar() {
        assert!(UnitId::new("gen-1").is_ok());
        assert_eq!(UnitId::new(""), Err(IdError::Empty));
        assert!(UnitId::new("a/b").is_err());
        assert!(UnitId::new("+").is_err());
        assert!(UnitId::new(".hidden").is_err());
        assert!(UnitId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn a_slave_id_is_never_the_broadcast_address_or_a_reserved_one() {
        assert_eq!(SlaveId::try_from(1).map(SlaveId::get), Ok(1));
        assert_eq!(SlaveId::try_from(247).map(SlaveId::get), Ok(247));
        for bad in [0, 248, 255, 256, -1] {
            assert_eq!(SlaveId::try_from(bad), Err(SlaveIdError(bad)));
        }
        assert_eq!(
            SlaveIdError(0).to_string(),
            "0 is not a unicast Modbus slave id (1 to 247; 0 is broadcast)"
        );
        assert_eq!(SlaveId::range(SlaveId::MIN, SlaveId::MAX).count(), 247);
    }

    #[test]
    fn roles_are_ordered_for_ceilings() {
        assert!(Role::None < Role::Viewer);
        assert!(Role::Viewer < Role::ControlOnly);
        assert!(Role::ControlOnly < Role::Technician);
        assert!(Role::Technician < Role::Admin);
    }

    #[test]
    fn role_capabilities_match_the_design_table() {
        use Capability::*;
        assert!(Role::None.capabilities().is_empty());
        assert!(Role::Viewer.capabilities().contains(View));
        assert!(!Role::Viewer.capabilities().contains(Control));
        assert!(Role::ControlOnly.capabilities().contains(Control));
        assert!(!Role::ControlOnly.capabilities().contains(Diagnose));
        assert!(Role::Technician.capabilities().contains(Configure));
        assert_eq!(Role::Admin.capabilities(), CapSet::ALL);
    }

    #[test]
    fn scope_wire_form() {
        let s: Scope = serde_json::from_str(r#"{"unit":"hvac-1"}"#).unwrap();
        assert_eq!(s, Scope::Unit(UnitId::new("hvac-1").unwrap()));
        assert!(serde_json::from_str::<Scope>(r#"{"unit":"a","site":"b"}"#).is_err());
        let r: Role = serde_json::from_str(r#""control-only""#).unwrap();
        assert_eq!(r, Role::ControlOnly);
    }
}
