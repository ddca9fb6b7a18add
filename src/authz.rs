//! The authorization decision: may this user use this capability on this target, right now?
//!
//! Owns the immutable decision [`Index`] (built from the applied [`AccessState`] with its
//! installer-token grants, the box's local delegations, the suspensions and the unit inventory)
//! and the [`Authz`] handle that holds the current one. Readers load it without locking. The one
//! writer is [`owner::Access`], the owner of the access state: it rebuilds the whole index on
//! every change and swaps it in as one value.
//!
//! [`Index::decide`] is a plain synchronous function: no locks, no I/O, no async, no clock reads
//! (the caller passes `now`). It must never allow by default: every path that is not an explicit
//! allow is a [`Decision::Deny`] with a reason. See `docs/authorization.md` for the model.
//!
//! Precedence: a user's role on a target = max(signed role, local role). The signed role comes
//! from cloud and token grants: the role of the MOST SPECIFIC valid grant covering the target
//! (unit beats group beats site), among equally specific ones the highest; `none` is a role like
//! any other there, so a more specific signed `none` takes a unit away. The local role is the
//! highest of the user's valid local delegations covering the target, each capped at its
//! delegator's role there at decision time: local delegations only ever add, never restrict.
//! Effective capabilities = role ∩ package features. Time is judged at max(now, last_trusted_time).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use time::OffsetDateTime;

use crate::access::{AccessState, Grant, Origin, Policy, User};
use crate::model::{
    BusinessId, CapSet, Capability, GrantId, GroupId, Management, Role, Scope, SiteId, UnitId,
    UserId,
};

/// Longest chain of delegations (cloud grant → local → local …) the index follows. Deeper chains
/// are dropped at build time; this also bounds every recursion in [`Index::decide`].
pub const MAX_CHAIN: usize = 4;

/// What a decision is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One unit of the inventory.
    Unit(UnitId),
    /// A group as a whole (group- and site-scoped grants apply; unit grants do not).
    Group(GroupId),
    /// The site as a whole (only site-scoped grants apply).
    Site,
    /// A point of a unit; `required` is the capability its profile names for this access
    /// (e.g. `diagnose` to read a diagnostic register). Both the asked capability and `required`
    /// must be held.
    Point { unit: UnitId, required: Capability },
}

impl Target {
    /// The target a grant's scope names (site ids are not compared here).
    pub fn of_scope(scope: &Scope) -> Target {
        match scope {
            Scope::Site(_) => Target::Site,
            Scope::Group(g) => Target::Group(g.clone()),
            Scope::Unit(u) => Target::Unit(u.clone()),
        }
    }
}

/// Why a request was denied. Stable codes (see [`DenyReason::code`]) go to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The user is not in the access state.
    UnknownUser,
    /// The user is deactivated.
    UserInactive,
    /// No grant covers the target.
    NoGrant,
    /// The applicable role does not include the capability (this includes `none`).
    RoleLacks,
    /// The role includes it but the site's package does not.
    PackageExcludes,
    /// The only covering grants have expired.
    Expired,
    /// The only covering grants are not valid yet.
    NotYetValid,
    /// The only covering grants are revoked.
    Revoked,
    /// The role's `max_offline` has passed since the last signed bundle.
    OfflineTooLong,
    /// The only covering grants are delegations whose delegator no longer holds the access.
    DelegatorInvalid,
    /// The unit is not in this site's inventory.
    UnknownUnit,
    /// The group is not in this site's inventory.
    UnknownGroup,
    /// The user belongs to a service business the site owner suspended on this box (or the
    /// only covering grants are delegations from such a user).
    BusinessSuspended,
}

impl DenyReason {
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::UnknownUser => "unknown_user",
            DenyReason::UserInactive => "user_inactive",
            DenyReason::NoGrant => "no_grant",
            DenyReason::RoleLacks => "role_lacks",
            DenyReason::PackageExcludes => "package_excludes",
            DenyReason::Expired => "expired",
            DenyReason::NotYetValid => "not_yet_valid",
            DenyReason::Revoked => "revoked",
            DenyReason::OfflineTooLong => "offline_too_long",
            DenyReason::DelegatorInvalid => "delegator_invalid",
            DenyReason::UnknownUnit => "unknown_unit",
            DenyReason::UnknownGroup => "unknown_group",
            DenyReason::BusinessSuspended => "business_suspended",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The outcome of [`Index::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allow(self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// What a user may do with one point, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PointAccess {
    pub viewable: bool,
    pub writable: bool,
}

impl PointAccess {
    /// From the user's effective capabilities on the unit and the point's read capability and
    /// write capability (`None` = read-only point). A point that cannot be seen cannot be written.
    pub fn from_caps(caps: CapSet, read: Capability, write: Option<Capability>) -> PointAccess {
        let viewable = caps.contains(Capability::View) && caps.contains(read);
        let writable = viewable && write.is_some_and(|w| caps.contains(w));
        PointAccess { viewable, writable }
    }
}

/// One unit a user may view, with what they may do there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitView {
    pub unit: UnitId,
    pub group: Option<GroupId>,
    pub role: Role,
    pub caps: CapSet,
}

/// The grant that decides a user's role on a target (for delegation and `GET /me`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicable {
    /// The effective role (a delegation is capped at its delegator's current role).
    pub role: Role,
    pub grant: Grant,
    /// The earliest expiry along the grant's delegation chain.
    pub chain_expires_at: Option<OffsetDateTime>,
    /// The users the grant was delegated through (root delegator first), empty for cloud grants.
    pub chain_users: Vec<UserId>,
    /// Whether the chain's root is a cloud-signed grant (bundle or installer token).
    pub cloud_rooted: bool,
}

/// Everything an index is built from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// This box's site id from the config (falls back to the bundle's).
    pub site: Option<SiteId>,
    pub state: Arc<AccessState>,
    /// Local delegations (`Origin::Local`) in force or revoked.
    pub local: Vec<Grant>,
    /// Local delegations revoked on this box.
    pub local_revoked: HashSet<GrantId>,
    /// The unit inventory from the config: unit and its group.
    pub inventory: Vec<(UnitId, Option<GroupId>)>,
    /// Service businesses the site owner suspended on this box, each with the users that
    /// belonged to it when it was suspended (so a later bundle that moves them elsewhere does
    /// not silently lift it for them).
    pub suspended: Vec<(BusinessId, Vec<UserId>)>,
}

/// A grant as the index holds it.
#[derive(Debug, Clone)]
struct IGrant {
    grant: Grant,
    revoked: bool,
    /// Index of the parent grant (local delegations only).
    parent: Option<u32>,
    /// Index of the delegator's user row (local delegations only).
    delegator: Option<u32>,
}

/// A user's grants of one origin class, by scope level; each list sorted by role, highest first.
#[derive(Debug, Clone, Default)]
struct Levels {
    unit: HashMap<u32, Vec<u32>>,
    group: HashMap<u32, Vec<u32>>,
    site: Vec<u32>,
}

impl Levels {
    /// The lists that cover `key`, most specific first.
    fn covering(&self, key: Key) -> [Option<&Vec<u32>>; 3] {
        match key {
            Key::Unit { unit, group } => [
                self.unit.get(&unit),
                group.and_then(|g| self.group.get(&g)),
                Some(&self.site),
            ],
            Key::Group(g) => [None, self.group.get(&g), Some(&self.site)],
            Key::Site => [None, None, Some(&self.site)],
        }
    }

    fn all(&self) -> impl Iterator<Item = &u32> {
        self.site
            .iter()
            .chain(self.group.values().flatten())
            .chain(self.unit.values().flatten())
    }

    fn sort(&mut self, by_role: impl Fn(&u32, &u32) -> std::cmp::Ordering + Copy) {
        self.site.sort_by(by_role);
        for v in self.unit.values_mut() {
            v.sort_by(by_role);
        }
        for v in self.group.values_mut() {
            v.sort_by(by_role);
        }
    }
}

#[derive(Debug, Clone)]
struct UserRow {
    user: User,
    /// The user's business is suspended (or the user was in it when it was suspended): no grant
    /// of theirs applies, nor any delegation from them.
    suspended: bool,
    /// Cloud-signed grants (bundle and installer tokens): the most specific level decides.
    signed: Levels,
    /// Local delegations: each only ever adds (see [`Index::resolve`]).
    local: Levels,
}

/// The resolved place a target sits in the inventory.
#[derive(Debug, Clone, Copy)]
enum Key {
    Unit { unit: u32, group: Option<u32> },
    Group(u32),
    Site,
}

/// Most delegator lookups one decision makes. Delegations only add, so a delegation left
/// uncounted past this budget can only lower the local role, never the signed one: the bound is
/// deny-safe and keeps a decision's cost fixed even for a dense web of delegations.
pub const MAX_DELEGATOR_LOOKUPS: u32 = 64;

/// Users visited while following delegators (stack-allocated, bounded by [`MAX_CHAIN`]), and
/// the lookups made so far (bounded by [`MAX_DELEGATOR_LOOKUPS`]).
struct Visited {
    users: [u32; MAX_CHAIN + 1],
    len: usize,
    lookups: u32,
}

impl Visited {
    fn new() -> Self {
        Visited {
            users: [0; MAX_CHAIN + 1],
            len: 0,
            lookups: 0,
        }
    }
    fn contains(&self, u: u32) -> bool {
        self.users[..self.len].contains(&u)
    }
}

/// Something dropped while building (a grant that can never apply), for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub grant: GrantId,
    pub reason: String,
}

/// The immutable decision index. Build with [`Index::build`]; share behind [`Authz`].
#[derive(Debug, Clone)]
pub struct Index {
    site: Option<SiteId>,
    seq: u64,
    policy: Policy,
    issued_at: Option<OffsetDateTime>,
    floor: Option<OffsetDateTime>,
    units: HashMap<UnitId, u32>,
    unit_ids: Vec<UnitId>,
    unit_group: Vec<Option<u32>>,
    groups: HashMap<GroupId, u32>,
    group_ids: Vec<GroupId>,
    users: HashMap<UserId, u32>,
    rows: Vec<UserRow>,
    by_email: HashMap<String, u32>,
    grants: Vec<IGrant>,
    grant_ids: HashMap<GrantId, u32>,
    /// Every revoked id (cloud and local), also for grants not in the index.
    revoked: HashSet<GrantId>,
    /// Suspended businesses (see [`Inputs::suspended`]).
    suspended: HashSet<BusinessId>,
    dropped: Vec<Dropped>,
}

impl Default for Index {
    fn default() -> Self {
        Index::build(&Inputs::default())
    }
}

impl Index {
    /// Builds the index. Grants that can never apply (unknown user, unit or group, another site,
    /// a delegation without a valid parent or too deep a chain) are left out and listed in
    /// [`Index::dropped`].
    pub fn build(inputs: &Inputs) -> Index {
        let state = &inputs.state;
        let site = inputs.site.clone().or_else(|| state.site.clone());
        let mut ix = Index {
            site,
            seq: state.seq,
            policy: state.policy.clone(),
            issued_at: state.issued_at,
            floor: state.last_trusted_time,
            units: HashMap::new(),
            unit_ids: Vec::new(),
            unit_group: Vec::new(),
            groups: HashMap::new(),
            group_ids: Vec::new(),
            users: HashMap::new(),
            rows: Vec::new(),
            by_email: HashMap::new(),
            grants: Vec::new(),
            grant_ids: HashMap::new(),
            revoked: state
                .revoked
                .union(&inputs.local_revoked)
                .cloned()
                .collect(),
            suspended: inputs.suspended.iter().map(|(b, _)| b.clone()).collect(),
            dropped: Vec::new(),
        };
        let suspended_users: HashSet<&UserId> = inputs
            .suspended
            .iter()
            .flat_map(|(_, members)| members.iter())
            .collect();
        for (unit, group) in &inputs.inventory {
            if ix.units.contains_key(unit) {
                continue;
            }
            let g = group.as_ref().map(|g| ix.group_index(g));
            ix.units.insert(unit.clone(), ix.unit_ids.len() as u32);
            ix.unit_ids.push(unit.clone());
            ix.unit_group.push(g);
        }
        // Users of the access state (the bundle's, then the installer-token users the engine
        // added; see `grants::engine`).
        for user in state.users.iter() {
            if ix.users.contains_key(&user.id) {
                continue;
            }
            let idx = ix.rows.len() as u32;
            let email = user.email.trim().to_lowercase();
            if !email.is_empty() {
                ix.by_email.entry(email).or_insert(idx);
            }
            ix.users.insert(user.id.clone(), idx);
            let suspended = suspended_users.contains(&user.id)
                || user
                    .business
                    .as_ref()
                    .is_some_and(|b| ix.suspended.contains(b));
            ix.rows.push(UserRow {
                user: user.clone(),
                suspended,
                signed: Levels::default(),
                local: Levels::default(),
            });
        }
        // Grants: cloud and token (both in the access state), then local (a later duplicate id
        // is dropped).
        let all = state.grants.iter().chain(inputs.local.iter());
        for grant in all {
            if ix.grant_ids.contains_key(&grant.id) {
                ix.drop_grant(&grant.id, "duplicate grant id");
                continue;
            }
            if !ix.users.contains_key(&grant.user) {
                ix.drop_grant(&grant.id, "unknown user");
                continue;
            }
            let revoked =
                state.revoked.contains(&grant.id) || inputs.local_revoked.contains(&grant.id);
            ix.grant_ids
                .insert(grant.id.clone(), ix.grants.len() as u32);
            ix.grants.push(IGrant {
                grant: grant.clone(),
                revoked,
                parent: None,
                delegator: None,
            });
        }
        // Link delegations to their parents; drop those that can never work.
        let keep_linked: Vec<bool> = (0..ix.grants.len())
            .map(|i| match ix.link_parent(i) {
                Ok(()) => true,
                Err(why) => {
                    let id = ix.grants[i].grant.id.clone();
                    ix.drop_grant(&id, why);
                    false
                }
            })
            .collect();
        let mut keep = keep_linked;
        // A delegation whose ancestor was dropped is dropped too (chains are short).
        for _ in 0..MAX_CHAIN {
            for i in 0..keep.len() {
                if let Some(p) = ix.grants[i].parent {
                    if keep[i] && !keep[p as usize] {
                        keep[i] = false;
                        let id = ix.grants[i].grant.id.clone();
                        ix.drop_grant(&id, "parent grant dropped");
                    }
                }
            }
        }
        for (i, kept) in keep.iter().enumerate() {
            if !kept {
                continue;
            }
            if let Err(why) = ix.place(i as u32) {
                let id = ix.grants[i].grant.id.clone();
                ix.drop_grant(&id, why);
            }
        }
        ix.policy.features = ix.ceiling(state);
        // INVARIANT: every per-level list is sorted by role, highest first, so the first valid
        // non-delegated grant of a level is that level's answer.
        let grants = &ix.grants;
        let by_role = |a: &u32, b: &u32| {
            grants[*b as usize]
                .grant
                .role
                .cmp(&grants[*a as usize].grant.role)
        };
        for row in &mut ix.rows {
            row.signed.sort(by_role);
            row.local.sort(by_role);
        }
        ix
    }

    /// The package ceiling. Once a bundle was applied it is the bundle's `policy.features`. On a
    /// box that has never applied one (seq 0), the installer tokens' own grants are the whole
    /// access state: the ceiling is the union of the capabilities of their roles, so each token
    /// holder gets exactly their role's capabilities (role ∩ union = role) on their scope, and
    /// nobody else gets anything (there are no cloud grants yet).
    fn ceiling(&self, state: &AccessState) -> CapSet {
        if state.seq != 0 || state.issued_at.is_some() {
            return state.policy.features;
        }
        let mut caps = CapSet::EMPTY;
        for g in &self.grants {
            if g.grant.origin == Origin::Token && !g.revoked {
                for c in g.grant.role.capabilities().iter() {
                    caps.insert(c);
                }
            }
        }
        caps
    }

    fn group_index(&mut self, g: &GroupId) -> u32 {
        if let Some(i) = self.groups.get(g) {
            return *i;
        }
        let i = self.group_ids.len() as u32;
        self.groups.insert(g.clone(), i);
        self.group_ids.push(g.clone());
        i
    }

    fn drop_grant(&mut self, id: &GrantId, reason: &str) {
        self.dropped.push(Dropped {
            grant: id.clone(),
            reason: reason.to_string(),
        });
    }

    /// Resolves a local grant's parent and delegator and checks the chain's shape.
    fn link_parent(&mut self, i: usize) -> Result<(), &'static str> {
        let Origin::Local { delegator, parent } = &self.grants[i].grant.origin else {
            return Ok(());
        };
        let Some(&p) = self.grant_ids.get(parent) else {
            return Err("parent grant unknown");
        };
        let Some(&d) = self.users.get(delegator) else {
            return Err("delegator unknown");
        };
        if self.grants[p as usize].grant.user != *delegator {
            return Err("parent grant belongs to someone else");
        }
        if !self.scope_within(
            &self.grants[i].grant.scope,
            &self.grants[p as usize].grant.scope,
        ) {
            return Err("scope outside the parent grant");
        }
        self.grants[i].parent = Some(p);
        self.grants[i].delegator = Some(d);
        // Walk up: the chain must end at a non-local grant within MAX_CHAIN steps (this also
        // rejects cycles, which a forged or corrupted store could contain).
        let mut cur = p as usize;
        for _ in 0..MAX_CHAIN {
            match &self.grants[cur].grant.origin {
                Origin::Cloud | Origin::Token => return Ok(()),
                Origin::Local { parent, .. } => match self.grant_ids.get(parent) {
                    Some(&next) => cur = next as usize,
                    None => return Err("parent grant unknown"),
                },
            }
        }
        Err("delegation chain too deep or cyclic")
    }

    /// Files a grant under its user and scope level.
    fn place(&mut self, gi: u32) -> Result<(), &'static str> {
        let g = &self.grants[gi as usize].grant;
        let Some(&ui) = self.users.get(&g.user) else {
            return Err("unknown user");
        };
        let is_local = matches!(g.origin, Origin::Local { .. });
        if is_local && g.role == Role::None {
            // Local grants only ever add; a stored `none` delegation (from before this rule)
            // would add nothing.
            return Err("a local `none` grant adds nothing");
        }
        let row = &mut self.rows[ui as usize];
        let levels = if is_local {
            &mut row.local
        } else {
            &mut row.signed
        };
        match &g.scope {
            Scope::Site(s) => {
                if self.site.as_ref().is_some_and(|mine| mine != s) {
                    return Err("grant for another site");
                }
                levels.site.push(gi);
            }
            Scope::Group(grp) => {
                let Some(&x) = self.groups.get(grp) else {
                    return Err("unknown group");
                };
                levels.group.entry(x).or_default().push(gi);
            }
            Scope::Unit(u) => {
                let Some(&x) = self.units.get(u) else {
                    return Err("unknown unit");
                };
                levels.unit.entry(x).or_default().push(gi);
            }
        }
        Ok(())
    }

    /// Whether `inner` ⊆ `outer` in this site's inventory.
    pub fn scope_within(&self, inner: &Scope, outer: &Scope) -> bool {
        match (inner, outer) {
            (_, Scope::Site(s)) => {
                // A site scope covers everything of this site; a foreign site covers nothing.
                self.site.as_ref().is_none_or(|mine| mine == s)
                    && !matches!(inner, Scope::Site(t) if t != s)
            }
            (Scope::Site(_), _) => false,
            (Scope::Group(a), Scope::Group(b)) => a == b,
            (Scope::Group(_), Scope::Unit(_)) => false,
            (Scope::Unit(u), Scope::Group(g)) => self
                .units
                .get(u)
                .and_then(|&i| self.unit_group[i as usize])
                .is_some_and(|gi| self.group_ids[gi as usize] == *g),
            (Scope::Unit(a), Scope::Unit(b)) => a == b,
        }
    }

    /// max(now, last_trusted_time): setting the clock back never revives an expired grant.
    pub fn effective_now(&self, now: OffsetDateTime) -> OffsetDateTime {
        match self.floor {
            Some(f) if f > now => f,
            _ => now,
        }
    }

    /// Whether one grant is valid at `now` (revocation, validity window, offline limit and —
    /// for delegations — the parent chain and the delegator's account).
    fn check_valid(&self, g: &IGrant, now: OffsetDateTime, depth: usize) -> Result<(), DenyReason> {
        if g.revoked {
            return Err(DenyReason::Revoked);
        }
        if g.grant.not_before.is_some_and(|nb| now < nb) {
            return Err(DenyReason::NotYetValid);
        }
        if g.grant.expires_at.is_some_and(|e| now >= e) {
            return Err(DenyReason::Expired);
        }
        if let (Some(limit), Some(issued)) =
            (self.policy.max_offline.get(&g.grant.role), self.issued_at)
        {
            if now - issued > *limit {
                return Err(DenyReason::OfflineTooLong);
            }
        }
        if let (Some(p), Some(d)) = (g.parent, g.delegator) {
            if depth >= MAX_CHAIN || !self.rows[d as usize].user.active {
                return Err(DenyReason::DelegatorInvalid);
            }
            self.check_valid(&self.grants[p as usize], now, depth + 1)
                .map_err(|_| DenyReason::DelegatorInvalid)?;
        }
        Ok(())
    }

    /// The applicable role of user row `ui` on `key`, and the grant that gives it.
    ///
    /// role = max(signed role, local role), where the signed role comes from cloud and token
    /// grants by the most-specific rule (a signed `none` restricts), and the local role is the
    /// highest of the user's valid local delegations covering the target, each worth at most its
    /// delegator's own role there right now. So a local delegation only ever adds: it can never
    /// lower what a user holds from the cloud, a token or another delegation. On a tie the signed
    /// grant is the one reported.
    fn resolve(
        &self,
        ui: u32,
        key: Key,
        now: OffsetDateTime,
        visited: &mut Visited,
    ) -> Result<(Role, u32), DenyReason> {
        let row = &self.rows[ui as usize];
        if !row.user.active {
            return Err(DenyReason::UserInactive);
        }
        if row.suspended {
            // Every grant the user holds (cloud, token, local) is suspended with the business;
            // delegations from them fail through the delegator lookup in `resolve_local`.
            return Err(DenyReason::BusinessSuspended);
        }
        let signed = self.resolve_signed(row, key, now);
        let floor = signed.as_ref().ok().map(|(r, _)| *r);
        let local = self.resolve_local(ui, row, key, now, floor, visited);
        match (signed, local) {
            (Ok(s), Ok(l)) => Ok(if l.0 > s.0 { l } else { s }),
            (Ok(s), Err(_)) => Ok(s),
            (Err(_), Ok(l)) => Ok(l),
            // The signed side's reason, unless it simply had nothing to say.
            (Err(DenyReason::NoGrant), Err(why)) | (Err(why), Err(_)) => Err(why),
        }
    }

    /// The role from cloud and token grants: the most specific level with a valid grant decides,
    /// and within it the highest role. Otherwise the reason of the most specific skipped grant.
    fn resolve_signed(
        &self,
        row: &UserRow,
        key: Key,
        now: OffsetDateTime,
    ) -> Result<(Role, u32), DenyReason> {
        let mut first_skip: Option<DenyReason> = None;
        for level in row.signed.covering(key).into_iter().flatten() {
            // Sorted by role, highest first: the first valid grant is this level's answer.
            for &gi in level {
                match self.check_valid(&self.grants[gi as usize], now, 0) {
                    Ok(()) => return Ok((self.grants[gi as usize].grant.role, gi)),
                    Err(why) => {
                        first_skip.get_or_insert(why);
                    }
                }
            }
        }
        Err(first_skip.unwrap_or(DenyReason::NoGrant))
    }

    /// The role from local delegations: the highest over every valid delegation covering the
    /// target (any level), each capped at its delegator's role on the target at `now`. A
    /// delegation capped to `none` does not apply. Delegations whose role is not above `floor`
    /// (the signed role) cannot change the answer and are not looked at.
    fn resolve_local(
        &self,
        ui: u32,
        row: &UserRow,
        key: Key,
        now: OffsetDateTime,
        floor: Option<Role>,
        visited: &mut Visited,
    ) -> Result<(Role, u32), DenyReason> {
        let mut first_skip: Option<DenyReason> = None;
        let mut best: Option<(Role, u32)> = None;
        for level in row.local.covering(key).into_iter().flatten() {
            for &gi in level {
                let g = &self.grants[gi as usize];
                if best.is_some_and(|(r, _)| r >= g.grant.role)
                    || floor.is_some_and(|f| f >= g.grant.role)
                {
                    // Sorted by role: nothing further in this level can beat `best` or the
                    // signed role.
                    break;
                }
                if let Err(why) = self.check_valid(g, now, 0) {
                    first_skip.get_or_insert(why);
                    continue;
                }
                if visited.lookups >= MAX_DELEGATOR_LOOKUPS {
                    first_skip.get_or_insert(DenyReason::DelegatorInvalid);
                    break;
                }
                visited.lookups += 1;
                let Some(d) = g.delegator else {
                    // Not reachable: only linked delegations are placed as local.
                    first_skip.get_or_insert(DenyReason::DelegatorInvalid);
                    continue;
                };
                if visited.contains(d) || d == ui || visited.len >= MAX_CHAIN {
                    first_skip.get_or_insert(DenyReason::DelegatorInvalid);
                    continue;
                }
                visited.users[visited.len] = ui;
                visited.len += 1;
                let held = self.resolve(d, key, now, visited);
                visited.len -= 1;
                let role = match held {
                    Ok((dr, _)) => g.grant.role.min(dr),
                    Err(DenyReason::BusinessSuspended) => {
                        first_skip.get_or_insert(DenyReason::BusinessSuspended);
                        continue;
                    }
                    Err(_) => Role::None,
                };
                if role == Role::None {
                    first_skip.get_or_insert(DenyReason::DelegatorInvalid);
                    continue;
                }
                if best.is_none_or(|(r, _)| role > r) {
                    best = Some((role, gi));
                }
            }
        }
        match best {
            Some(b) => Ok(b),
            None => Err(first_skip.unwrap_or(DenyReason::NoGrant)),
        }
    }

    fn key_of(&self, target: &Target) -> Result<Key, DenyReason> {
        match target {
            Target::Unit(u) | Target::Point { unit: u, .. } => match self.units.get(u) {
                Some(&unit) => Ok(Key::Unit {
                    unit,
                    group: self.unit_group[unit as usize],
                }),
                None => Err(DenyReason::UnknownUnit),
            },
            Target::Group(g) => self
                .groups
                .get(g)
                .map(|&g| Key::Group(g))
                .ok_or(DenyReason::UnknownGroup),
            Target::Site => Ok(Key::Site),
        }
    }

    /// May `user` use `cap` on `target` at `now`? Default deny.
    pub fn decide(
        &self,
        user: &UserId,
        cap: Capability,
        target: &Target,
        now: OffsetDateTime,
    ) -> Decision {
        let caps = match self.effective_caps(user, target, now) {
            Ok((_, caps)) => caps,
            Err(why) => return Decision::Deny(why),
        };
        self.judge(caps, cap, target)
    }

    /// May a non-user principal holding `role` by credential (a Modbus client certificate's role
    /// extension, a configured source address) use `cap` on `target` at `now`? Default deny.
    ///
    /// The same rule as [`Index::decide`] with the role given instead of resolved from grants:
    /// the target must be in the inventory, and the effective capabilities are the role's ∩ the
    /// site package. When `bound` names a user the index knows (the cloud listed the client in
    /// the bundle), that user's own decision also applies: the role is capped at the user's
    /// applicable role, and a deactivated user, a revoked or expired grant or a cloud `none`
    /// takes the access away at once.
    pub fn decide_with_role(
        &self,
        role: Role,
        bound: Option<&UserId>,
        cap: Capability,
        target: &Target,
        now: OffsetDateTime,
    ) -> Decision {
        if let Err(why) = self.key_of(target) {
            return Decision::Deny(why);
        }
        let role = match bound.filter(|u| self.users.contains_key(*u)) {
            Some(user) => match self.effective_caps(user, target, now) {
                Ok((held, _)) => role.min(held),
                Err(why) => return Decision::Deny(why),
            },
            None => role,
        };
        let role_caps = role.capabilities();
        let caps = EffCaps {
            role: role_caps,
            effective: role_caps.intersect(self.policy.features),
        };
        self.judge(caps, cap, target)
    }

    /// The capability check shared by every decision: the asked capability and, for a point,
    /// the capability its profile requires, each held by the role AND allowed by the package.
    fn judge(&self, caps: EffCaps, cap: Capability, target: &Target) -> Decision {
        let required = match target {
            Target::Point { required, .. } => Some(*required),
            Target::Unit(_) | Target::Group(_) | Target::Site => None,
        };
        let role_caps = caps.role;
        let features = self.policy.features;
        let need = |c: Capability| match (role_caps.contains(c), features.contains(c)) {
            // The role does not include it (covers `none`).
            (false, _) => Err(DenyReason::RoleLacks),
            // The role does, the site's package does not.
            (true, false) => Err(DenyReason::PackageExcludes),
            // Both do.
            (true, true) => Ok(()),
        };
        match (need(cap), required.map(need)) {
            // The asked capability is missing: deny with its reason.
            (Err(why), _) => Decision::Deny(why),
            // A point whose profile requires more than the user holds.
            (Ok(()), Some(Err(why))) => Decision::Deny(why),
            // Everything needed is held.
            (Ok(()), Some(Ok(())) | None) => Decision::Allow,
        }
    }

    /// The applicable role on `target` and the capabilities it gives (role ∩ package).
    pub fn effective_caps(
        &self,
        user: &UserId,
        target: &Target,
        now: OffsetDateTime,
    ) -> Result<(Role, EffCaps), DenyReason> {
        let Some(&ui) = self.users.get(user) else {
            return Err(DenyReason::UnknownUser);
        };
        let key = self.key_of(target)?;
        let now = self.effective_now(now);
        let (role, _) = self.resolve(ui, key, now, &mut Visited::new())?;
        let role_caps = role.capabilities();
        Ok((
            role,
            EffCaps {
                role: role_caps,
                effective: role_caps.intersect(self.policy.features),
            },
        ))
    }

    /// The grant that decides `user`'s role on `target`, with its delegation chain.
    pub fn applicable(
        &self,
        user: &UserId,
        target: &Target,
        now: OffsetDateTime,
    ) -> Result<Applicable, DenyReason> {
        let Some(&ui) = self.users.get(user) else {
            return Err(DenyReason::UnknownUser);
        };
        let key = self.key_of(target)?;
        let now = self.effective_now(now);
        let (role, gi) = self.resolve(ui, key, now, &mut Visited::new())?;
        let mut chain_users = Vec::new();
        let mut expires = None::<OffsetDateTime>;
        let mut cur = Some(gi);
        let mut cloud_rooted = false;
        for _ in 0..=MAX_CHAIN {
            let Some(c) = cur else { break };
            let g = &self.grants[c as usize];
            if let Some(e) = g.grant.expires_at {
                expires = Some(expires.map_or(e, |x| x.min(e)));
            }
            match &g.grant.origin {
                Origin::Local { delegator, .. } => chain_users.insert(0, delegator.clone()),
                Origin::Cloud | Origin::Token => cloud_rooted = true,
            }
            cur = g.parent;
        }
        Ok(Applicable {
            role,
            grant: self.grants[gi as usize].grant.clone(),
            chain_expires_at: expires,
            chain_users,
            cloud_rooted,
        })
    }

    /// The units `user` may view at `now`, in inventory order, with role and capabilities.
    pub fn visible_units(&self, user: &UserId, now: OffsetDateTime) -> Vec<UnitView> {
        let Some(&ui) = self.users.get(user) else {
            return Vec::new();
        };
        let now = self.effective_now(now);
        let mut out = Vec::new();
        for (i, unit) in self.unit_ids.iter().enumerate() {
            let key = Key::Unit {
                unit: i as u32,
                group: self.unit_group[i],
            };
            if let Ok((role, _)) = self.resolve(ui, key, now, &mut Visited::new()) {
                let caps = role.capabilities().intersect(self.policy.features);
                if caps.contains(Capability::View) {
                    out.push(UnitView {
                        unit: unit.clone(),
                        group: self.unit_group[i].map(|g| self.group_ids[g as usize].clone()),
                        role,
                        caps,
                    });
                }
            }
        }
        out
    }

    /// Whether `user` may view / write one point of `unit` whose profile requires `read` to read
    /// it and `write` to write it.
    pub fn point_access(
        &self,
        user: &UserId,
        unit: &UnitId,
        read: Capability,
        write: Option<Capability>,
        now: OffsetDateTime,
    ) -> PointAccess {
        match self.effective_caps(user, &Target::Unit(unit.clone()), now) {
            Ok((_, caps)) => PointAccess::from_caps(caps.effective, read, write),
            Err(_) => PointAccess {
                viewable: false,
                writable: false,
            },
        }
    }

    /// The units a scope covers in this site's inventory.
    pub fn units_in(&self, scope: &Scope) -> Vec<UnitId> {
        self.unit_ids
            .iter()
            .filter(|u| self.scope_within(&Scope::Unit((*u).clone()), scope))
            .cloned()
            .collect()
    }

    pub fn user(&self, id: &UserId) -> Option<&User> {
        self.users.get(id).map(|&i| &self.rows[i as usize].user)
    }

    /// Every grant of `user` the index holds (valid or not), for listings.
    pub fn grants_of<'a>(&'a self, user: &UserId) -> impl Iterator<Item = &'a Grant> + 'a {
        let row = self.users.get(user).map(|&i| &self.rows[i as usize]);
        row.into_iter()
            .flat_map(|r| r.signed.all().chain(r.local.all()))
            .map(move |&gi| &self.grants[gi as usize].grant)
    }

    /// Case-insensitive lookup by email.
    pub fn user_by_email(&self, email: &str) -> Option<&User> {
        self.by_email
            .get(&email.trim().to_lowercase())
            .map(|&i| &self.rows[i as usize].user)
    }

    /// Every user the index knows (bundle users first, then token users).
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.rows.iter().map(|r| &r.user)
    }

    pub fn grant(&self, id: &GrantId) -> Option<&Grant> {
        self.grant_ids
            .get(id)
            .map(|&i| &self.grants[i as usize].grant)
    }

    /// Whether a grant id is revoked (by the cloud or on this box).
    pub fn is_revoked(&self, id: &GrantId) -> bool {
        self.revoked.contains(id)
    }

    pub fn site(&self) -> Option<&SiteId> {
        self.site.as_ref()
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn management(&self) -> Management {
        self.policy.management
    }
    pub fn features(&self) -> CapSet {
        self.policy.features
    }
    pub fn units(&self) -> &[UnitId] {
        &self.unit_ids
    }
    pub fn has_unit(&self, u: &UnitId) -> bool {
        self.units.contains_key(u)
    }
    pub fn has_group(&self, g: &GroupId) -> bool {
        self.groups.contains_key(g)
    }
    /// Whether `user` is the site owner right now: a bundle user flagged `owner`, active, in no
    /// business, and not suspended. Only the owner may suspend or restore a business.
    pub fn is_owner(&self, user: &UserId) -> bool {
        self.users.get(user).is_some_and(|&i| {
            let r = &self.rows[i as usize];
            r.user.owner && r.user.active && r.user.business.is_none() && !r.suspended
        })
    }

    /// Whether `user`'s grants are suspended with a service business.
    pub fn is_suspended(&self, user: &UserId) -> bool {
        self.users
            .get(user)
            .is_some_and(|&i| self.rows[i as usize].suspended)
    }

    /// The businesses users of this index belong to, each with its members (sorted).
    pub fn businesses(&self) -> std::collections::BTreeMap<BusinessId, Vec<UserId>> {
        let mut out: std::collections::BTreeMap<BusinessId, Vec<UserId>> = Default::default();
        for r in &self.rows {
            if let Some(b) = &r.user.business {
                out.entry(b.clone()).or_default().push(r.user.id.clone());
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }

    /// Whether a business is suspended on this box.
    pub fn business_suspended(&self, b: &BusinessId) -> bool {
        self.suspended.contains(b)
    }

    /// Grants left out at build, with why.
    pub fn dropped(&self) -> &[Dropped] {
        &self.dropped
    }
    /// Number of grants placed in the index.
    pub fn grant_count(&self) -> usize {
        self.grants.len()
    }
}

/// The capabilities a role gives on a target, before and after the package ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffCaps {
    /// What the role includes.
    pub role: CapSet,
    /// What the role includes AND the site's package allows: what the user may actually do.
    pub effective: CapSet,
}

/// The shared authorization handle: the current [`Index`] behind an `ArcSwap`.
///
/// Readers (`index`, `decide`) never lock. Only the access-state owner ([`owner::Access`]) swaps
/// a new index in: `Authz::install` is private to this module and its child `owner`.
pub struct Authz {
    current: ArcSwap<Index>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("seq", &self.current.load().seq)
            .finish()
    }
}

impl Authz {
    /// A handle over the index built from `inputs`. Without the owner it never changes (tools
    /// and tests that judge one fixed state); the daemon gets its handle from the owner.
    pub fn new(inputs: Inputs) -> Authz {
        Authz {
            current: ArcSwap::from_pointee(Index::build(&inputs)),
        }
    }

    /// The current index (one atomic load). Hold it across checks that must agree with each other
    /// (the delegation module judges a delegation and its delegator's role on one index); each
    /// [`Authz::decide`] call loads the index current at that moment, so two calls (two checks of
    /// one API request) may see two states when a change lands between them.
    pub fn index(&self) -> Arc<Index> {
        self.current.load_full()
    }

    /// Decides against the current index.
    pub fn decide(
        &self,
        user: &UserId,
        cap: Capability,
        target: &Target,
        now: OffsetDateTime,
    ) -> Decision {
        self.current.load().decide(user, cap, target, now)
    }

    /// Swaps `index` in as one value. Private to this module, so only its child
    /// [`owner`] (the access-state owner) can call it: no other module can publish an index.
    fn install(&self, index: Arc<Index>) {
        self.current.store(index);
    }
}

pub mod owner;

#[cfg(test)]
pub(crate) mod tests;
