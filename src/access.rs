//! The site's access state as the box knows it: users, grants, revocations and site policy.
//!
//! `grants` produces an [`AccessState`] from a verified bundle and the admitted installer tokens;
//! `authz` builds its decision index from it, the local delegations and the suspensions. The
//! types here are plain data: no verification or decision logic. The one owner of the access
//! state, and the only writer of the index, is `authz::owner::Access` (see
//! `docs/authorization.md`, "One owner of access state").

use std::collections::{BTreeMap, HashSet};

use time::OffsetDateTime;

use crate::model::{BusinessId, CapSet, GrantId, Management, Role, Scope, SiteId, UserId};

/// A person who may log in locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// Login name; compared case-insensitively (stored lowercase).
    pub email: String,
    pub name: String,
    pub active: bool,
    /// `pbkdf2-sha256$<iterations>$<salt>$<hash>`; `None` = no password login (token only).
    pub password: Option<String>,
    /// The service business the user belongs to (a Pro user of a dealer), `None` for the site's
    /// own people. The site owner can suspend a business's access on this box.
    pub business: Option<BusinessId>,
    /// The site owner: may suspend and restore service businesses on this box. Only a bundle
    /// user without a business can be one (see `docs/grants.md`).
    pub owner: bool,
}

/// Where a grant came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// In a bundle the cloud signed.
    Cloud,
    /// Delegated on this box by `delegator` under their grant `parent`, signed by the device key.
    Local { delegator: UserId, parent: GrantId },
    /// From a cloud-signed installer token.
    Token,
}

/// One role on one scope for one user, valid in `[not_before, expires_at)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: GrantId,
    pub user: UserId,
    pub role: Role,
    pub scope: Scope,
    pub not_before: Option<OffsetDateTime>,
    /// `None` = no expiry.
    pub expires_at: Option<OffsetDateTime>,
    pub origin: Origin,
}

/// The signed site policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub management: Management,
    /// The package ceiling: capabilities the site's subscription includes.
    pub features: CapSet,
    /// How long each role keeps working without a fresh bundle; absent role = no limit.
    pub max_offline: BTreeMap<Role, time::Duration>,
}

impl Default for Policy {
    /// Deny-by-default policy of a box that has no bundle yet: pro management, no features.
    fn default() -> Self {
        Policy {
            management: Management::Pro,
            features: CapSet::EMPTY,
            max_offline: BTreeMap::new(),
        }
    }
}

/// Everything authorization needs, as one immutable value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessState {
    pub site: Option<SiteId>,
    /// Sequence number of the applied bundle (0 = none yet).
    pub seq: u64,
    /// `issued_at` of the applied bundle.
    pub issued_at: Option<OffsetDateTime>,
    /// The clock floor: newest signed time seen. Expiry is judged at max(now, this).
    pub last_trusted_time: Option<OffsetDateTime>,
    pub policy: Policy,
    pub users: Vec<User>,
    pub grants: Vec<Grant>,
    /// Grant ids revoked, irreversibly.
    pub revoked: HashSet<GrantId>,
    /// Pending request ids the applied bundle refuses (`requests_denied`).
    pub requests_denied: HashSet<String>,
}
