//! Delegation on the box: holders of `manage_users` create, list and revoke local grants within
//! their own scope and ceiling; any user may ask for access.
//!
//! Owns the `local_grants` and `access_requests` tables and the device key
//! (`<state_dir>/device.pk8`, Ed25519 PKCS#8, mode 0600). In an `independent` site a delegation
//! takes effect at once: the box signs it with the device key, stores it, reports it on the
//! `…/requests` topic and swaps a new authorization index in. In a `pro` site only holders of
//! cloud-issued grants may delegate, and even then the delegation is only a pending request for
//! the cloud. Stored local grants are re-verified against the device key on every load.
//!
//! It must never create a grant above the delegator's ceiling or own role on any unit of the
//! scope, outside the delegator's scope, or outliving the delegator's own grant; every refusal is
//! audited. A delegation whose delegator loses the access stops working with it (see `authz`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use ring::signature::Ed25519KeyPair;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::access::{AccessState, Grant, Origin};
use crate::audit::{Audit, Event};
use crate::authz::owner::LocalWriter;
use crate::authz::{DenyReason, Index, Target};
use crate::clock::{SharedClock, from_unix_ms, unix_ms};
use crate::model::{Capability, GrantId, Management, Role, Scope, UnitId, UserId};
use crate::outbox::{self, Class};
use crate::store::{Store, StoreError};

/// File name of the device key inside the state directory.
pub const DEVICE_KEY_FILE: &str = "device.pk8";
/// Domain separation for local-grant signatures (never valid as any other kind of signature).
const SIG_DOMAIN: &[u8] = b"sitegate/v1/local_grant\n";
/// Longest note on an access request.
pub const MAX_NOTE_CHARS: usize = 500;
/// Most pending access requests one user may have open (protects the store and the cloud).
pub const MAX_OPEN_REQUESTS_PER_USER: i64 = 20;
/// How long an access request (or a pro-site delegation) stays pending without an answer from
/// the cloud; then it is `expired` (and no longer counts against the per-user cap).
pub const REQUEST_TTL: time::Duration = time::Duration::days(30);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    /// The actor may not manage users on the scope — or the scope is not part of this site:
    /// both answer alike (the reason goes only to the audit trail), so nobody can probe for
    /// units or groups.
    #[error("not allowed to manage users on `{scope}`")]
    Forbidden { scope: String, reason: DenyReason },
    #[error("`none` cannot be delegated: local grants only ever add access")]
    NoneNotDelegable,
    #[error("role `{requested}` is above your delegation ceiling `{ceiling}`")]
    AboveCeiling { requested: Role, ceiling: Role },
    #[error("role `{requested}` is above your own role on unit `{unit}`")]
    AboveOwnRole { requested: Role, unit: UnitId },
    #[error("no user with this email on this site")]
    UnknownUser(String),
    #[error("you cannot delegate to `{0}` (yourself or someone you received this access from)")]
    CircularDelegation(String),
    #[error("an expiry is required because your own access expires at {0}")]
    ExpiryRequired(String),
    #[error("expiry must not be later than your own access, which expires at {0}")]
    ExpiryTooLate(String),
    #[error("expiry must be in the future and after `not_before`")]
    ExpiryInvalid,
    #[error(
        "this site is managed by a service provider: only holders of cloud-issued access may delegate"
    )]
    NotCloudGrant,
    #[error("delegation `{0}` not found")]
    NotFound(String),
    #[error("note is longer than {MAX_NOTE_CHARS} characters")]
    NoteTooLong,
    /// The requester already has the most open access requests allowed; the API answers 409
    /// (a conflict with the requests already open), like the other state conflicts.
    #[error("too many open access requests")]
    TooManyRequests,
    #[error("device key: {0}")]
    Key(String),
    #[error("storage failed: {0}")]
    Store(String),
}

impl DelegationError {
    /// Stable machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            DelegationError::Forbidden { .. } => "forbidden",
            DelegationError::NoneNotDelegable => "none_not_delegable",
            DelegationError::AboveCeiling { .. } => "above_ceiling",
            DelegationError::AboveOwnRole { .. } => "above_own_role",
            DelegationError::UnknownUser(_) => "unknown_user",
            DelegationError::CircularDelegation(_) => "circular_delegation",
            DelegationError::ExpiryRequired(_) => "expiry_required",
            DelegationError::ExpiryTooLate(_) => "expiry_too_late",
            DelegationError::ExpiryInvalid => "expiry_invalid",
            DelegationError::NotCloudGrant => "not_cloud_grant",
            DelegationError::NotFound(_) => "not_found",
            DelegationError::NoteTooLong => "note_too_long",
            DelegationError::TooManyRequests => "too_many_requests",
            DelegationError::Key(_) | DelegationError::Store(_) => "internal",
        }
    }
}

impl From<StoreError> for DelegationError {
    fn from(e: StoreError) -> Self {
        DelegationError::Store(e.to_string())
    }
}

/// The box's own Ed25519 signing key.
pub struct DeviceKey {
    pair: Ed25519KeyPair,
    /// The checked public key (see `grants::ed25519`).
    public: crate::grants::PublicKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public", &crate::util_b64::encode(self.public_key()))
            .finish()
    }
}

impl DeviceKey {
    /// Loads `<state_dir>/device.pk8`, generating it (PKCS#8 v2, mode 0600) if absent.
    pub fn load_or_create(state_dir: &Path) -> Result<DeviceKey, DelegationError> {
        let path = state_dir.join(DEVICE_KEY_FILE);
        let err =
            |e: &dyn std::fmt::Display| DelegationError::Key(format!("`{}`: {e}", path.display()));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(crate::util::rng())
                    .map_err(|_| err(&"key generation failed"))?;
                crate::util::write_private(&path, doc.as_ref()).map_err(|e| err(&e))?;
                tracing::info!(path = %path.display(), "generated the device key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(err(&e)),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| err(&e))?;
        let public = crate::grants::PublicKey::of_key_pair(&pair)
            .map_err(|e| err(&format_args!("{}: the public key {e}", e.reason())))?;
        Ok(DeviceKey { pair, public })
    }

    pub fn public_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut msg = SIG_DOMAIN.to_vec();
        msg.extend_from_slice(payload);
        self.pair.sign(&msg).as_ref().to_vec()
    }

    fn verify(&self, payload: &[u8], sig: &[u8]) -> bool {
        let mut msg = SIG_DOMAIN.to_vec();
        msg.extend_from_slice(payload);
        self.public.verify(&msg, sig).is_ok()
    }
}

/// What a delegator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DelegationRequest {
    pub user: UserId,
    pub role: Role,
    pub scope: Scope,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// The signed form of a local grant (what the device key signs, byte for byte as stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    v: u8,
    id: GrantId,
    user: UserId,
    role: Role,
    scope: Scope,
    #[serde(with = "time::serde::rfc3339::option")]
    not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    delegator: UserId,
    parent: GrantId,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// A local grant as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalGrant {
    pub id: GrantId,
    pub user: UserId,
    pub role: Role,
    pub scope: Scope,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub delegator: UserId,
    pub parent: GrantId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revoked_by: Option<String>,
}

impl LocalGrant {
    pub fn to_grant(&self) -> Grant {
        Grant {
            id: self.id.clone(),
            user: self.user.clone(),
            role: self.role,
            scope: self.scope.clone(),
            not_before: self.not_before,
            expires_at: self.expires_at,
            origin: Origin::Local {
                delegator: self.delegator.clone(),
                parent: self.parent.clone(),
            },
        }
    }
}

/// A request waiting for the cloud: a delegation in a `pro` site, or "please give me access".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRequest {
    pub id: String,
    /// `delegation` or `access`.
    pub kind: String,
    pub requester: UserId,
    pub user: UserId,
    pub role: Role,
    pub scope: Scope,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub note: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// `pending`, `granted` (a bundle holds a matching grant), `denied` (the bundle's
    /// `requests_denied` names it) or `expired` (pending for [`REQUEST_TTL`]).
    pub status: String,
    /// When it stopped being pending.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub resolved_at: Option<OffsetDateTime>,
}

impl PendingRequest {
    /// The status at `now`: a pending request older than [`REQUEST_TTL`] is `expired` even
    /// before the next sweep stores it.
    fn status_at(&self, now: OffsetDateTime) -> &str {
        if self.status == "pending" && self.created_at + REQUEST_TTL <= now {
            "expired"
        } else {
            &self.status
        }
    }
}

/// What [`Delegations::create`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Created {
    /// In force now (independent site).
    Effective(LocalGrant),
    /// Waiting for the cloud (pro site).
    Pending(PendingRequest),
}

/// What a user may see of delegations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Listing {
    pub grants: Vec<LocalGrant>,
    pub requests: Vec<PendingRequest>,
}

/// The delegation service. Cheap to clone.
#[derive(Clone)]
pub struct Delegations {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    audit: Audit,
    /// The access-state owner's one writer of local delegations; reads go to its owner.
    local: LocalWriter,
    clock: SharedClock,
    key: DeviceKey,
    /// `sitegate/v1/{site}/{gateway}/requests`, or `None` before provisioning.
    requests_topic: Option<String>,
}

impl Delegations {
    /// Opens the service: loads (or creates) the device key, re-verifies every stored local grant
    /// and hands the valid ones to the access-state owner through `local`, its writer of local
    /// delegations.
    pub fn new(
        store: Store,
        audit: Audit,
        local: LocalWriter,
        clock: SharedClock,
        state_dir: &Path,
        requests_topic: Option<String>,
    ) -> Result<Delegations, DelegationError> {
        let key = DeviceKey::load_or_create(state_dir)?;
        let d = Delegations {
            inner: Arc::new(Inner {
                store,
                audit,
                local,
                clock,
                key,
                requests_topic,
            }),
        };
        d.reload()?;
        Ok(d)
    }

    /// The device public key (raw 32 bytes), for provisioning reports.
    pub fn device_public_key(&self) -> Vec<u8> {
        self.inner.key.public_key().to_vec()
    }

    /// Reads every stored local grant, verifies its signature and hands the whole set to the
    /// access-state owner, which publishes a new index. A row whose signature fails is ignored
    /// and audited.
    pub fn reload(&self) -> Result<(), DelegationError> {
        let rows = self.inner.store.with_conn(|c| load_rows(c))?;
        let mut grants = Vec::new();
        let mut revoked = HashSet::new();
        for (id, payload, sig, revoked_ms, revoked_by) in rows {
            match self.check_row(&payload, &sig) {
                Some(mut g) => {
                    g.revoked_at = revoked_ms.map(from_unix_ms);
                    g.revoked_by = revoked_by;
                    if g.revoked_at.is_some() {
                        revoked.insert(g.id.clone());
                    }
                    grants.push(g.to_grant());
                }
                None => {
                    tracing::error!(grant = %id, "stored local grant fails its signature; ignored");
                    let ev = Event::new("local_grant_rejected", "rejected")
                        .actor("system")
                        .detail(json!({"grant": id, "reason": "bad_signature"}));
                    let _ = self.inner.audit.record_blocking(&ev);
                }
            }
        }
        self.inner.local.set_local(grants, revoked);
        Ok(())
    }

    fn check_row(&self, payload: &str, sig: &str) -> Option<LocalGrant> {
        let sig = crate::util_b64::decode(sig).ok()?;
        if !self.inner.key.verify(payload.as_bytes(), &sig) {
            return None;
        }
        let p: Payload = serde_json::from_str(payload).ok()?;
        Some(LocalGrant {
            id: p.id,
            user: p.user,
            role: p.role,
            scope: p.scope,
            not_before: p.not_before,
            expires_at: p.expires_at,
            delegator: p.delegator,
            parent: p.parent,
            created_at: p.created_at,
            revoked_at: None,
            revoked_by: None,
        })
    }

    /// Whether a scope names something of this site (a foreign site id names nothing here).
    fn in_site(ix: &Index, scope: &Scope) -> bool {
        match scope {
            Scope::Site(s) => ix.site().is_none_or(|mine| mine == s),
            Scope::Group(g) => ix.has_group(g),
            Scope::Unit(u) => ix.has_unit(u),
        }
    }

    /// The checks that depend only on the delegator, the role and the scope, AUTHORIZATION
    /// FIRST: `manage_users` on the whole scope, where an unknown unit or group (or another
    /// site) is refused exactly like a scope the actor may not manage. Then: `none` is refused
    /// (local grants only add), the role's ceiling, and the actor's own role on every unit.
    /// Returns the delegator's applicable grant on the scope.
    fn check_delegator(
        ix: &Index,
        actor: &UserId,
        role: Role,
        scope: &Scope,
        now: OffsetDateTime,
    ) -> Result<crate::authz::Applicable, DelegationError> {
        let target = Target::of_scope(scope);
        let forbidden = |reason| DelegationError::Forbidden {
            scope: scope.to_string(),
            reason,
        };
        // 1. manage_users on the whole scope (role ∩ package); unknown answers as forbidden.
        if !Self::in_site(ix, scope) {
            return Err(forbidden(DenyReason::UnknownGroup));
        }
        if let crate::authz::Decision::Deny(reason) =
            ix.decide(actor, Capability::ManageUsers, &target, now)
        {
            return Err(forbidden(reason));
        }
        let app = ix.applicable(actor, &target, now).map_err(forbidden)?;
        // 2. `none` is cloud-only: a local grant can never restrict anyone.
        if role == Role::None {
            return Err(DelegationError::NoneNotDelegable);
        }
        // 3. the ceiling of the role that applies on the scope.
        let ceiling = app
            .role
            .delegation_ceiling()
            .ok_or(forbidden(DenyReason::RoleLacks))?;
        if role > ceiling {
            return Err(DelegationError::AboveCeiling {
                requested: role,
                ceiling,
            });
        }
        // 4. never above the delegator's own role on any unit of the scope (a more specific
        //    signed grant, e.g. `none` on one unit, lowers what the delegator holds there).
        for unit in ix.units_in(scope) {
            let held = ix
                .effective_caps(actor, &Target::Unit(unit.clone()), now)
                .map(|(r, _)| r);
            match held {
                Ok(r) if r >= role => {}
                Ok(_) | Err(_) => {
                    return Err(DelegationError::AboveOwnRole {
                        requested: role,
                        unit,
                    });
                }
            }
        }
        Ok(app)
    }

    /// Checks a delegation against every rule; on success returns the parent grant id.
    /// Pure: reads only the index.
    pub fn check(
        ix: &Index,
        actor: &UserId,
        req: &DelegationRequest,
        now: OffsetDateTime,
    ) -> Result<GrantId, DelegationError> {
        let eff = ix.effective_now(now);
        let app = Self::check_delegator(ix, actor, req.role, &req.scope, now)?;
        // 5. the delegatee: known, not the delegator, not anyone the access came from.
        if ix.user(&req.user).is_none() {
            return Err(DelegationError::UnknownUser(req.user.to_string()));
        }
        if req.user == *actor || app.chain_users.contains(&req.user) {
            return Err(DelegationError::CircularDelegation(req.user.to_string()));
        }
        // 6. expiry within the delegator's own (the whole chain's).
        if let Some(e) = req.expires_at {
            if e <= eff || req.not_before.is_some_and(|nb| nb >= e) {
                return Err(DelegationError::ExpiryInvalid);
            }
        }
        if let Some(limit) = app.chain_expires_at {
            match req.expires_at {
                None => {
                    return Err(DelegationError::ExpiryRequired(crate::clock::rfc3339(
                        limit,
                    )));
                }
                Some(e) if e > limit => {
                    return Err(DelegationError::ExpiryTooLate(crate::clock::rfc3339(limit)));
                }
                Some(_) => {}
            }
        }
        // 7. pro sites: only cloud-issued access may delegate.
        match ix.management() {
            Management::Pro if !matches!(app.grant.origin, Origin::Cloud | Origin::Token) => {
                Err(DelegationError::NotCloudGrant)
            }
            Management::Pro | Management::Independent => Ok(app.grant.id),
        }
    }

    /// Creates a delegation to the user with `email` (case-insensitive). The delegator is
    /// authorized before the email is looked up: someone who may not delegate this role on this
    /// scope gets the same refusal whether or not the email belongs to a user. An unknown email
    /// is audited without the email itself.
    pub async fn create_for_email(
        &self,
        actor: &UserId,
        email: &str,
        role: Role,
        scope: Scope,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<Created, DelegationError> {
        let ix = self.inner.local.owner().index();
        let user = ix.user_by_email(email).map(|u| u.id.clone());
        let Some(user) = user else {
            let now = self.inner.clock.now();
            let e = match Self::check_delegator(&ix, actor, role, &scope, now) {
                Err(e) => e,
                Ok(_) => DelegationError::UnknownUser(String::new()),
            };
            let ev = Event::new("delegation", "denied")
                .actor(actor.to_string())
                .detail(json!({
                    "role": role.as_str(), "scope": scope.to_string(),
                    "reason": e.code(), "message": e.to_string(),
                }));
            let _ = self.inner.audit.record(ev).await;
            return Err(e);
        };
        let req = DelegationRequest {
            user,
            role,
            scope,
            not_before: None,
            expires_at,
        };
        self.create(actor, req).await
    }

    /// Creates a delegation: in force at once in an independent site, a pending request in a
    /// pro site. Every outcome, including refusals, is audited.
    pub async fn create(
        &self,
        actor: &UserId,
        req: DelegationRequest,
    ) -> Result<Created, DelegationError> {
        let ix = self.inner.local.owner().index();
        let now = self.inner.clock.now();
        let parent = match Self::check(&ix, actor, &req, now) {
            Ok(p) => p,
            Err(e) => {
                let ev = Event::new("delegation", "denied").actor(actor.to_string()).detail(json!({
                    "user": req.user.as_str(), "role": req.role.as_str(),
                    "scope": req.scope.to_string(), "reason": e.code(), "message": e.to_string(),
                }));
                let _ = self.inner.audit.record(ev).await;
                return Err(e);
            }
        };
        match ix.management() {
            Management::Pro => {
                let pending = PendingRequest {
                    id: format!("r-{}", crate::util::random_hex(8)),
                    kind: "delegation".into(),
                    requester: actor.clone(),
                    user: req.user.clone(),
                    role: req.role,
                    scope: req.scope.clone(),
                    expires_at: req.expires_at,
                    note: String::new(),
                    created_at: now,
                    status: "pending".into(),
                    resolved_at: None,
                };
                self.insert_request(&pending).await?;
                Ok(Created::Pending(pending))
            }
            Management::Independent => {
                let payload = Payload {
                    v: 1,
                    id: GrantId::new(format!("l-{}", crate::util::random_hex(8)))
                        .map_err(|e| DelegationError::Store(e.to_string()))?,
                    user: req.user.clone(),
                    role: req.role,
                    scope: req.scope.clone(),
                    not_before: req.not_before,
                    expires_at: req.expires_at,
                    delegator: actor.clone(),
                    parent,
                    created_at: now,
                };
                let text = serde_json::to_string(&payload)
                    .map_err(|e| DelegationError::Store(e.to_string()))?;
                let sig = crate::util_b64::encode(self.inner.key.sign(text.as_bytes()));
                let grant = LocalGrant {
                    id: payload.id.clone(),
                    user: payload.user.clone(),
                    role: payload.role,
                    scope: payload.scope.clone(),
                    not_before: payload.not_before,
                    expires_at: payload.expires_at,
                    delegator: actor.clone(),
                    parent: payload.parent.clone(),
                    created_at: now,
                    revoked_at: None,
                    revoked_by: None,
                };
                let ev = Event::new("delegation", "ok")
                    .actor(actor.to_string())
                    .detail(json!({
                        "grant": grant.id.as_str(), "user": grant.user.as_str(),
                        "role": grant.role.as_str(), "scope": grant.scope.to_string(),
                        "expires_at": grant.expires_at.map(crate::clock::rfc3339),
                    }));
                let upward = json!({
                    "kind": "delegation", "status": "effective", "id": grant.id.as_str(),
                    "grant": text, "sig": sig,
                    "device_key": crate::util_b64::encode(self.inner.key.public_key()),
                });
                let (audit, topic) = (self.inner.audit.clone(), self.inner.requests_topic.clone());
                let (id, user, delegator) = (
                    grant.id.to_string(),
                    grant.user.to_string(),
                    actor.to_string(),
                );
                self.inner
                    .store
                    .call(move |c| {
                        let tx = c.transaction()?;
                        tx.execute(
                            "INSERT INTO local_grants(id, payload, sig, user, delegator, created_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![id, text, sig, user, delegator, unix_ms(now)],
                        )?;
                        audit.record_in(&tx, &ev)?;
                        if let Some(t) = topic {
                            let body = serde_json::to_vec(&upward).unwrap_or_default();
                            outbox::enqueue(&tx, Class::Request, &id, &t, &body, true, false)?;
                        }
                        tx.commit()?;
                        Ok(())
                    })
                    .await?;
                self.reload()?;
                Ok(Created::Effective(grant))
            }
        }
    }

    /// "Please give me access": any logged-in user; becomes a pending request for the cloud.
    pub async fn access_request(
        &self,
        actor: &UserId,
        scope: Scope,
        role: Role,
        note: &str,
    ) -> Result<PendingRequest, DelegationError> {
        let ix = self.inner.local.owner().index();
        if ix.user(actor).is_none_or(|u| !u.active) {
            return Err(DelegationError::UnknownUser(actor.to_string()));
        }
        // The scope is not checked against the inventory: an unknown unit or group is accepted
        // exactly like one the actor cannot see (the cloud, which knows the inventory, resolves
        // the request), so the answer never tells whether a unit or group exists.
        if note.chars().count() > MAX_NOTE_CHARS {
            return Err(DelegationError::NoteTooLong);
        }
        let who = actor.to_string();
        let lapse = unix_ms(self.inner.clock.now() - REQUEST_TTL);
        let open: i64 = self
            .inner
            .store
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM access_requests
                     WHERE requester = ?1 AND status = 'pending' AND created_ms > ?2",
                    params![who, lapse],
                    |r| r.get(0),
                )?)
            })
            .await?;
        if open >= MAX_OPEN_REQUESTS_PER_USER {
            return Err(DelegationError::TooManyRequests);
        }
        let pending = PendingRequest {
            id: format!("r-{}", crate::util::random_hex(8)),
            kind: "access".into(),
            requester: actor.clone(),
            user: actor.clone(),
            role,
            scope,
            expires_at: None,
            note: note.chars().filter(|c| !c.is_control()).collect(),
            created_at: self.inner.clock.now(),
            status: "pending".into(),
            resolved_at: None,
        };
        self.insert_request(&pending).await?;
        Ok(pending)
    }

    async fn insert_request(&self, p: &PendingRequest) -> Result<(), DelegationError> {
        let kind: &'static str = if p.kind == "access" {
            "access_request"
        } else {
            "delegation"
        };
        let ev = Event::new(kind, "pending")
            .actor(p.requester.to_string())
            .detail(json!({
                "request": p.id, "user": p.user.as_str(), "role": p.role.as_str(),
                "scope": p.scope.to_string(),
            }));
        let upward = serde_json::to_vec(p).unwrap_or_default();
        let p = p.clone();
        let (audit, topic) = (self.inner.audit.clone(), self.inner.requests_topic.clone());
        self.inner
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let scope = serde_json::to_string(&p.scope).unwrap_or_default();
                tx.execute(
                    "INSERT INTO access_requests(id, kind, requester, user, role, scope, expires_ms, note, created_ms, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending')",
                    params![p.id, p.kind, p.requester.as_str(), p.user.as_str(), p.role.as_str(),
                            scope, p.expires_at.map(unix_ms), p.note, unix_ms(p.created_at)],
                )?;
                audit.record_in(&tx, &ev)?;
                if let Some(t) = topic {
                    outbox::enqueue(&tx, Class::Request, &p.id, &t, &upward, true, false)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The local grants and requests `actor` may see: their own (as delegator, delegatee or
    /// requester), plus everything on scopes where they hold `manage_users`.
    pub async fn list(&self, actor: &UserId) -> Result<Listing, DelegationError> {
        let ix = self.inner.local.owner().index();
        let now = self.inner.clock.now();
        let (rows, reqs) = self
            .inner
            .store
            .call(|c| Ok((load_rows(c)?, load_requests(c)?)))
            .await?;
        let manages = |scope: &Scope| {
            ix.decide(
                actor,
                Capability::ManageUsers,
                &Target::of_scope(scope),
                now,
            )
            .is_allow()
        };
        let mut out = Listing::default();
        for (_, payload, sig, revoked_ms, revoked_by) in rows {
            if let Some(mut g) = self.check_row(&payload, &sig) {
                g.revoked_at = revoked_ms.map(from_unix_ms);
                g.revoked_by = revoked_by;
                if g.delegator == *actor || g.user == *actor || manages(&g.scope) {
                    out.grants.push(g);
                }
            }
        }
        for mut r in reqs {
            if r.requester == *actor || r.user == *actor || manages(&r.scope) {
                r.status = r.status_at(now).to_string();
                out.requests.push(r);
            }
        }
        Ok(out)
    }

    /// Resolves pending requests against an applied access state (blocking): `denied` when the
    /// bundle's `requests_denied` names the request, `granted` when the bundle holds a valid
    /// cloud grant for the request's user at least the requested role on a scope covering the
    /// requested one, `expired` when pending for [`REQUEST_TTL`]. Each resolution is stored,
    /// audited (`access_request_resolved`) and reported on `…/requests`. Returns the resolved
    /// `(id, status)` pairs.
    pub fn resolve_requests(
        &self,
        state: &AccessState,
    ) -> Result<Vec<(String, &'static str)>, DelegationError> {
        let ix = self.inner.local.owner().index();
        let now = ix.effective_now(self.inner.clock.now());
        let reqs = self.inner.store.with_conn(|c| load_pending(c))?;
        let granted = |r: &PendingRequest| {
            state.grants.iter().any(|g| {
                g.user == r.user
                    && g.role >= r.role
                    && matches!(g.origin, Origin::Cloud)
                    && !state.revoked.contains(&g.id)
                    && g.not_before.is_none_or(|nb| nb <= now)
                    && g.expires_at.is_none_or(|e| e > now)
                    && ix.scope_within(&r.scope, &g.scope)
            })
        };
        let mut changes: Vec<(PendingRequest, &'static str)> = Vec::new();
        for r in reqs.into_iter().filter(|r| r.status == "pending") {
            let status = if state.requests_denied.contains(&r.id) {
                "denied"
            } else if granted(&r) {
                "granted"
            } else if r.created_at + REQUEST_TTL <= now {
                "expired"
            } else {
                continue;
            };
            changes.push((r, status));
        }
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let (audit, topic) = (self.inner.audit.clone(), self.inner.requests_topic.clone());
        let done: Vec<(String, &'static str)> =
            changes.iter().map(|(r, s)| (r.id.clone(), *s)).collect();
        self.inner.store.with_conn(move |c| {
            let tx = c.transaction()?;
            for (r, status) in &changes {
                let n = tx.execute(
                    "UPDATE access_requests SET status = ?2, resolved_ms = ?3
                     WHERE id = ?1 AND status = 'pending'",
                    params![r.id, status, unix_ms(now)],
                )?;
                if n == 0 {
                    continue;
                }
                let ev = Event::new("access_request_resolved", status)
                    .actor("system")
                    .detail(json!({
                        "request": r.id, "kind": r.kind, "user": r.user.as_str(),
                        "role": r.role.as_str(), "scope": r.scope.to_string(),
                    }));
                audit.record_in(&tx, &ev)?;
                if let Some(t) = &topic {
                    let msg_id = format!("{}-{status}", r.id);
                    let upward = serde_json::to_vec(&json!({
                        "msg_id": msg_id, "kind": r.kind, "id": r.id, "status": status,
                        "resolved_at": crate::clock::rfc3339(now),
                    }))
                    .unwrap_or_default();
                    outbox::enqueue(&tx, Class::Request, &msg_id, t, &upward, true, false)?;
                }
            }
            tx.commit()?;
            Ok(())
        })?;
        Ok(done)
    }

    /// Revokes a local grant: allowed to its delegator, and to holders of `manage_users` on its
    /// scope whose role there is at least the grant's. Idempotent; audited.
    pub async fn revoke(&self, actor: &UserId, id: &GrantId) -> Result<(), DelegationError> {
        let ix = self.inner.local.owner().index();
        let now = self.inner.clock.now();
        let key = id.to_string();
        let row = self
            .inner
            .store
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT payload, sig, revoked_ms FROM local_grants WHERE id = ?1",
                    [key],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                        ))
                    },
                )
                .optional()?)
            })
            .await?;
        let Some((payload, sig, revoked_ms)) = row else {
            return Err(DelegationError::NotFound(id.to_string()));
        };
        let Some(g) = self.check_row(&payload, &sig) else {
            return Err(DelegationError::NotFound(id.to_string()));
        };
        let target = Target::of_scope(&g.scope);
        let allowed = g.delegator == *actor
            || (ix
                .decide(actor, Capability::ManageUsers, &target, now)
                .is_allow()
                && ix
                    .effective_caps(actor, &target, now)
                    .is_ok_and(|(r, _)| r >= g.role));
        if !allowed {
            let ev = Event::new("delegation_revoked", "denied")
                .actor(actor.to_string())
                .detail(json!({"grant": id.as_str(), "reason": "forbidden"}));
            let _ = self.inner.audit.record(ev).await;
            // Someone who may not manage it must not learn that it exists.
            return Err(DelegationError::NotFound(id.to_string()));
        }
        if revoked_ms.is_some() {
            return Ok(());
        }
        let ev = Event::new("delegation_revoked", "ok")
            .actor(actor.to_string())
            .detail(json!({"grant": id.as_str(), "user": g.user.as_str(), "scope": g.scope.to_string()}));
        let upward = serde_json::to_vec(&json!({
            "kind": "delegation", "status": "revoked", "id": id.as_str(),
            "revoked_by": actor.as_str(), "revoked_at": crate::clock::rfc3339(now),
        }))
        .unwrap_or_default();
        let (audit, topic) = (self.inner.audit.clone(), self.inner.requests_topic.clone());
        let (key, by) = (id.to_string(), actor.to_string());
        self.inner
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "UPDATE local_grants SET revoked_ms = ?2, revoked_by = ?3 WHERE id = ?1 AND revoked_ms IS NULL",
                    params![key, unix_ms(now), by],
                )?;
                audit.record_in(&tx, &ev)?;
                if let Some(t) = topic {
                    let msg_id = format!("{key}-revoked");
                    outbox::enqueue(&tx, Class::Request, &msg_id, &t, &upward, true, false)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.reload()
    }
}

type Row = (String, String, String, Option<i64>, Option<String>);

fn load_rows(c: &Connection) -> Result<Vec<Row>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, payload, sig, revoked_ms, revoked_by FROM local_grants ORDER BY created_ms, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn load_requests(c: &Connection) -> Result<Vec<PendingRequest>, StoreError> {
    query_requests(c, "1 = 1 ORDER BY created_ms DESC LIMIT 1000")
}

/// Every pending request (each user has at most [`MAX_OPEN_REQUESTS_PER_USER`] open).
fn load_pending(c: &Connection) -> Result<Vec<PendingRequest>, StoreError> {
    query_requests(c, "status = 'pending' ORDER BY created_ms")
}

fn query_requests(c: &Connection, filter: &'static str) -> Result<Vec<PendingRequest>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT id, kind, requester, user, role, scope, expires_ms, note, created_ms, status,
                resolved_ms
         FROM access_requests WHERE {filter}"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, i64>(8)?,
            r.get::<_, String>(9)?,
            r.get::<_, Option<i64>>(10)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, kind, requester, user, role, scope, exp, note, created, status, resolved) = row?;
        let parsed = (|| {
            Some(PendingRequest {
                id,
                kind,
                requester: UserId::new(requester).ok()?,
                user: UserId::new(user).ok()?,
                role: role.parse().ok()?,
                scope: serde_json::from_str(&scope).ok()?,
                expires_at: exp.map(from_unix_ms),
                note,
                created_at: from_unix_ms(created),
                status,
                resolved_at: resolved.map(from_unix_ms),
            })
        })();
        if let Some(p) = parsed {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
