//! The engines behind the LAN API's ports: each adapter implements one `api::ports` trait over
//! the real engine (`auth`, `authz`, `delegation`, `modbus`, `grants`, `business`). Mapping only:
//! no policy is decided here. The engines' errors pass through unchanged (the API maps each to its
//! status once, in `api::error`), except the Modbus engine's, which meet the bus outcome here in
//! the units port's `WriteFailure` and `ReadError`. [`GrantApplier`] is the one path by which the
//! daemon applies a signed envelope and swaps the authorization index (it is also the MQTT
//! [`crate::mqtt::GrantSink`]).

use std::net::IpAddr;
use std::sync::Arc;

use crate::access::Origin;
use crate::authz::owner::{Access, TokenAdmission};
use std::time::Duration;

use crate::api::ports::{
    self, AccessRequest, AuthPort, AuthzPort, BoxFut, BusinessPort, CommandInfo, CommandOutcome,
    DelegateRequest, DelegationOutcome, DelegationPort, Diagnostics, EnumLabel, GrantInfo,
    LinkStats, Me, PendingRequest, PointInfo, ReadError, Reading, RegisterKind, ScanDone,
    ScanFailure, ScanFound, ScanProgress, SessionInfo, UnitProfile, UnitSummary, UnitsPort,
    WriteFailure,
};
use crate::auth::{self, Auth, AuthError, TokenVerifier};
use crate::authz::{Authz, Decision, Target};
use crate::business::{BusinessError, BusinessInfo, Businesses, Change, Suspension};
use crate::clock::SharedClock;
use crate::delegation::{self, Delegations};
use crate::grants::{ApplyOutcome, GrantEngine, Kind, Rejection};
use crate::modbus::{self, ModbusEngine};
use crate::model::{CapSet, Capability, GrantId, LinkId, SlaveId, UnitId, UserId};
use crate::mqtt::PointSample;

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// [`AuthPort`] over [`Auth`].
pub struct AuthAdapter(pub Auth);

fn session(new: auth::NewSession) -> (String, SessionInfo) {
    (
        new.token,
        SessionInfo {
            user: new.info.user,
            expires_at: new.info.expires,
        },
    )
}

impl AuthPort for AuthAdapter {
    fn login_password<'a>(
        &'a self,
        email: &'a str,
        password: &'a str,
        client_ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), AuthError>> {
        Box::pin(async move {
            self.0
                .login_password(email, password, client_ip)
                .await
                .map(session)
        })
    }

    fn login_password_on_device<'a>(
        &'a self,
        email: &'a str,
        password: &'a str,
        client_ip: IpAddr,
        device: Option<&'a str>,
    ) -> BoxFut<'a, Result<ports::DeviceLogin, AuthError>> {
        Box::pin(async move {
            self.0
                .login_password_on_device(email, password, client_ip, device)
                .await
                .map(|new| {
                    let device = new.device.clone();
                    let (token, info) = session(new);
                    (token, info, device)
                })
        })
    }

    fn login_token<'a>(
        &'a self,
        envelope: &'a [u8],
        client_ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), AuthError>> {
        Box::pin(async move { self.0.login_token(envelope, client_ip).await.map(session) })
    }

    fn authenticate<'a>(&'a self, bearer: &'a str) -> BoxFut<'a, Result<SessionInfo, AuthError>> {
        Box::pin(async move {
            self.0.authenticate(bearer).await.map(|s| SessionInfo {
                user: s.user,
                expires_at: s.expires,
            })
        })
    }

    fn logout<'a>(&'a self, bearer: &'a str) -> BoxFut<'a, Result<(), AuthError>> {
        Box::pin(self.0.logout(bearer))
    }

    fn lockouts<'a>(
        &'a self,
        actor: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<ports::Lockout>, AuthError>> {
        Box::pin(self.0.lockouts(actor))
    }

    fn clear_lockout<'a>(
        &'a self,
        actor: &'a UserId,
        key: &'a str,
    ) -> BoxFut<'a, Result<(), AuthError>> {
        Box::pin(self.0.clear_lockout(actor, key))
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

/// [`AuthzPort`] over the current [`Authz`] index, judged at the injected clock.
pub struct AuthzAdapter {
    pub authz: Arc<Authz>,
    pub clock: SharedClock,
}

fn origin_str(o: &Origin) -> &'static str {
    match o {
        Origin::Cloud => "cloud",
        Origin::Local { .. } => "local",
        Origin::Token => "token",
    }
}

/// A grant as the API shows it.
pub fn grant_info(g: &crate::access::Grant, email: Option<String>) -> GrantInfo {
    GrantInfo {
        id: g.id.clone(),
        user: g.user.clone(),
        email,
        role: g.role,
        scope: g.scope.clone(),
        not_before: g.not_before,
        expires_at: g.expires_at,
        origin: origin_str(&g.origin),
        delegator: match &g.origin {
            Origin::Local { delegator, .. } => Some(delegator.clone()),
            Origin::Cloud | Origin::Token => None,
        },
    }
}

impl AuthzPort for AuthzAdapter {
    fn decide(&self, user: &UserId, capability: Capability, target: &Target) -> Decision {
        self.authz
            .index()
            .decide(user, capability, target, self.clock.now())
    }

    fn visible_units(&self, user: &UserId) -> Vec<(UnitId, CapSet)> {
        self.authz
            .index()
            .visible_units(user, self.clock.now())
            .into_iter()
            .map(|v| (v.unit, v.caps))
            .collect()
    }

    fn me(&self, user: &UserId) -> Option<Me> {
        let ix = self.authz.index();
        let now = self.clock.now();
        let u = ix.user(user).filter(|u| u.active)?;
        let site = ix
            .effective_caps(user, &Target::Site, now)
            .map(|(_, c)| c.effective)
            .unwrap_or(CapSet::EMPTY);
        let units = ix
            .visible_units(user, now)
            .into_iter()
            .map(|v| (v.unit, v.caps))
            .collect();
        let eff = ix.effective_now(now);
        let grants = ix
            .grants_of(user)
            .filter(|g| {
                !ix.is_revoked(&g.id)
                    && g.not_before.is_none_or(|nb| nb <= eff)
                    && g.expires_at.is_none_or(|e| e > eff)
            })
            .map(|g| grant_info(g, Some(u.email.clone())))
            .collect();
        Some(Me {
            user: u.id.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            site,
            units,
            grants,
            management: (ix.seq() > 0).then(|| ix.management()),
            business: u.business.clone(),
            business_suspended: ix.is_suspended(user),
            owner: ix.is_owner(user),
        })
    }

    fn roles(&self) -> Vec<GrantInfo> {
        let ix = self.authz.index();
        let eff = ix.effective_now(self.clock.now());
        let mut out: Vec<GrantInfo> = ix
            .users()
            .filter(|u| u.active)
            .flat_map(|u| {
                ix.grants_of(&u.id)
                    .filter(|g| {
                        !ix.is_revoked(&g.id)
                            && g.not_before.is_none_or(|nb| nb <= eff)
                            && g.expires_at.is_none_or(|e| e > eff)
                    })
                    .map(|g| grant_info(g, Some(u.email.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| (&a.email, &a.id).cmp(&(&b.email, &b.id)));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Delegation
// ---------------------------------------------------------------------------------------------

/// [`DelegationPort`] over [`Delegations`].
pub struct DelegationAdapter {
    pub delegations: Delegations,
    pub authz: Arc<Authz>,
}

fn local_info(g: &delegation::LocalGrant, email: Option<String>) -> GrantInfo {
    grant_info(&g.to_grant(), email)
}

impl DelegationPort for DelegationAdapter {
    fn list<'a>(
        &'a self,
        actor: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<GrantInfo>, delegation::DelegationError>> {
        Box::pin(async move {
            let listing = self.delegations.list(actor).await?;
            let ix = self.authz.index();
            Ok(listing
                .grants
                .iter()
                .filter(|g| g.revoked_at.is_none())
                .map(|g| local_info(g, ix.user(&g.user).map(|u| u.email.clone())))
                .collect())
        })
    }

    fn create<'a>(
        &'a self,
        actor: &'a UserId,
        request: DelegateRequest,
    ) -> BoxFut<'a, Result<DelegationOutcome, delegation::DelegationError>> {
        Box::pin(async move {
            // The API refuses a password before it gets here: accounts come from the cloud.
            // Authorization comes before the email lookup (inside `create_for_email`), so an
            // unknown email never answers differently from a forbidden scope.
            match self
                .delegations
                .create_for_email(
                    actor,
                    &request.email,
                    request.role,
                    request.scope,
                    request.expires_at,
                )
                .await?
            {
                delegation::Created::Effective(g) => Ok(DelegationOutcome::Applied(Some(
                    local_info(&g, Some(request.email.clone())),
                ))),
                delegation::Created::Pending(p) => {
                    Ok(DelegationOutcome::Pending { request_id: p.id })
                }
            }
        })
    }

    fn revoke<'a>(
        &'a self,
        actor: &'a UserId,
        grant: &'a GrantId,
    ) -> BoxFut<'a, Result<DelegationOutcome, delegation::DelegationError>> {
        Box::pin(async move {
            self.delegations.revoke(actor, grant).await?;
            Ok(DelegationOutcome::Applied(None))
        })
    }

    fn list_requests<'a>(
        &'a self,
        actor: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<PendingRequest>, delegation::DelegationError>> {
        Box::pin(async move { Ok(self.delegations.list(actor).await?.requests) })
    }

    fn request_access<'a>(
        &'a self,
        actor: &'a UserId,
        request: AccessRequest,
    ) -> BoxFut<'a, Result<String, delegation::DelegationError>> {
        Box::pin(async move {
            let note = request.message.unwrap_or_default();
            self.delegations
                .access_request(actor, request.scope, request.role, &note)
                .await
                .map(|p| p.id)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Grants: MQTT inbound and installer tokens
// ---------------------------------------------------------------------------------------------

/// The MQTT face of the access-state owner: what arrives on `…/grants` and `…/keys` is applied
/// through [`Access::apply`] (which publishes the new index before returning) and answered with
/// the state document for `…/grants/state`.
#[derive(Clone)]
pub struct GrantApplier {
    access: Access,
}

impl GrantApplier {
    pub fn new(access: Access) -> Self {
        GrantApplier { access }
    }

    /// Applies a signed envelope (blocking: call from `spawn_blocking`) and publishes the new
    /// authorization index before returning.
    pub fn apply(
        &self,
        kind: Option<Kind>,
        bytes: &[u8],
        source: &str,
    ) -> Result<ApplyOutcome, Rejection> {
        self.access.apply(kind, bytes, source)
    }

    fn state_json(&self) -> serde_json::Value {
        self.access
            .grants()
            .map(GrantEngine::state_json)
            .unwrap_or_default()
    }
}

impl crate::mqtt::GrantSink for GrantApplier {
    fn apply(&self, kind: crate::mqtt::InboundKind, bytes: Vec<u8>) -> serde_json::Value {
        let hint = match kind {
            crate::mqtt::InboundKind::Grants => Kind::Bundle,
            crate::mqtt::InboundKind::Keys => Kind::Keys,
        };
        let outcome = match GrantApplier::apply(self, Some(hint), &bytes, "mqtt") {
            Ok(o) => serde_json::json!({ "kind": kind.as_str(), "outcome": outcome_str(&o) }),
            Err(r) => serde_json::json!({
                "kind": kind.as_str(),
                "outcome": "rejected",
                "reason": r.reason.as_str(),
                "message": r.message,
            }),
        };
        let mut state = self.state_json();
        if let Some(o) = state.as_object_mut() {
            o.insert("last_message".into(), outcome);
        }
        state
    }
}

fn outcome_str(o: &ApplyOutcome) -> &'static str {
    match o {
        ApplyOutcome::Applied { .. } => "applied",
        ApplyOutcome::Duplicate { .. } => "duplicate",
        ApplyOutcome::KeysApplied { .. } => "keys_applied",
        ApplyOutcome::KeysDuplicate { .. } => "keys_duplicate",
        ApplyOutcome::TokenAdmitted { .. } => "token_admitted",
        ApplyOutcome::PartPending { .. } => "part_pending",
    }
}

/// [`TokenVerifier`] over the access-state owner: the grants engine verifies (trusted keys, site,
/// revocations, expiry); the owner admits (the envelope kept, the index published) through its
/// one [`TokenAdmission`].
pub struct GrantsTokens(pub TokenAdmission);

impl TokenVerifier for GrantsTokens {
    fn verify(
        &self,
        envelope: &[u8],
    ) -> Result<(crate::access::User, crate::access::Grant), String> {
        let Some(grants) = self.0.owner().grants() else {
            return Err("no grants engine on this box".to_string());
        };
        grants
            .verify_token(envelope)
            .map(|t| (t.user, t.grant))
            .map_err(|r| format!("{}: {}", r.reason.as_str(), r.message))
    }

    fn admit(
        &self,
        envelope: &[u8],
    ) -> Result<(crate::access::User, crate::access::Grant), String> {
        self.0
            .admit_login_token(envelope)
            .map(|t| (t.user, t.grant))
            .map_err(|r| format!("{}: {}", r.reason.as_str(), r.message))
    }
}

// ---------------------------------------------------------------------------------------------
// Units (Modbus engine)
// ---------------------------------------------------------------------------------------------

/// [`UnitsPort`] over the Modbus engine.
pub struct UnitsAdapter(pub ModbusEngine);

/// A cached point value as telemetry (the engine already applied the point's deadband).
pub fn point_sample(name: &str, v: &modbus::PointValue) -> PointSample {
    PointSample {
        name: name.to_string(),
        value: v.value.clone(),
        quality: v.quality,
        deadband: None,
    }
}

/// A profile point as the API describes it.
fn point_info(pt: &modbus::profile::Point) -> PointInfo {
    PointInfo {
        name: pt.name.clone(),
        label: if pt.description.is_empty() {
            pt.name.clone()
        } else {
            pt.description.clone()
        },
        unit: pt.unit.clone(),
        kind: pt.ty.as_str().to_string(),
        read: pt.read,
        write: pt.write,
        min: pt.min,
        max: pt.max,
        enum_labels: pt
            .labels
            .iter()
            .map(|(v, l)| EnumLabel {
                value: i64::from(*v),
                label: l.clone(),
            })
            .collect(),
    }
}

fn summary(u: modbus::UnitInfo, last_seen: Option<time::OffsetDateTime>) -> UnitSummary {
    UnitSummary {
        id: u.id,
        name: u.name,
        profile: u.profile,
        group: u.group,
        link: u.link,
        online: u.online.unwrap_or(false),
        last_seen,
        poll_interval_ms: Some(u64::try_from(u.poll_interval.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn readings(s: &modbus::UnitSnapshot) -> Vec<Reading> {
    s.points
        .iter()
        .map(|(name, v)| Reading {
            point: name.clone(),
            value: v.value.clone(),
            quality: v.quality,
            read_at: v
                .at_ms
                .and_then(|ms| i64::try_from(ms).ok())
                .map(crate::clock::from_unix_ms),
        })
        .collect()
}

impl UnitsAdapter {
    fn last_seen(&self, unit: &UnitId) -> Option<time::OffsetDateTime> {
        self.0
            .last_seen_ms(unit)
            .and_then(|ms| i64::try_from(ms).ok())
            .map(crate::clock::from_unix_ms)
    }
}

/// A failed read. Only a raw read chose its registers, so only there is a device's refusal
/// (exceptions 1–3) an answer about the request (`raw`); elsewhere it is a device exception.
fn read_error(e: modbus::EngineError, raw: bool) -> ReadError {
    use modbus::{EngineError as E, ModbusError as M};
    match e {
        E::UnknownUnit(_) => ReadError::UnknownUnit,
        E::Modbus(M::Timeout) => ReadError::Timeout,
        E::Modbus(M::Exception(c @ 1..=3)) if raw => {
            ReadError::Refused(modbus::link::exception_name(c).to_string())
        }
        E::Modbus(M::Exception(c)) => {
            ReadError::Exception(modbus::link::exception_name(c).to_string())
        }
        other => ReadError::Transport(other.to_string()),
    }
}

/// A write or command the engine refused before the bus. `command`: an unknown unit is
/// reported as the thing the caller named (a point or a command).
fn write_error(e: modbus::WriteError, command: bool) -> WriteFailure {
    use modbus::WriteError as W;
    match e {
        W::Invalid { .. } => WriteFailure::Validation(e.to_string()),
        W::UnknownPoint(_) => WriteFailure::UnknownPoint,
        W::UnknownCommand(_) => WriteFailure::UnknownCommand,
        W::UnknownUnit(_) if command => WriteFailure::UnknownCommand,
        W::UnknownUnit(_) => WriteFailure::UnknownPoint,
        W::Busy(_) => WriteFailure::Busy(e.to_string()),
        W::ShuttingDown => WriteFailure::Transport(e.to_string()),
        W::NotSupported(m) => WriteFailure::NotSupported(m),
        W::NotPossible(m) => WriteFailure::NotPossible(m),
    }
}

/// Maps a write that reached the bus; only a verified write is a success.
fn write_status(o: &modbus::WriteOutcome) -> Result<(), WriteFailure> {
    match &o.status {
        modbus::WriteStatus::Ok => Ok(()),
        modbus::WriteStatus::Mismatch => Err(WriteFailure::Mismatch(format!(
            "wrote {}, read back {}",
            o.written,
            o.read_back.clone().unwrap_or(serde_json::Value::Null)
        ))),
        modbus::WriteStatus::Unverified { reason } => Err(WriteFailure::Mismatch(format!(
            "written but not verified: {reason}"
        ))),
        modbus::WriteStatus::Exception { name, .. } => Err(WriteFailure::Exception(name.clone())),
        modbus::WriteStatus::Timeout => Err(WriteFailure::Timeout),
        modbus::WriteStatus::Failed { reason } => Err(WriteFailure::Transport(reason.clone())),
    }
}

fn percentile_ms(l: &modbus::LinkStats, q: f64) -> Option<f64> {
    let total: u64 = l.latency_buckets_ms.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, (_, n)) in l.latency_buckets_ms.iter().enumerate() {
        seen += n;
        if seen >= want {
            // Upper bound of the bucket; the overflow bucket reports the last finite bound.
            let idx = i.min(modbus::link::LATENCY_BUCKETS_MS.len().saturating_sub(1));
            return modbus::link::LATENCY_BUCKETS_MS.get(idx).map(|b| *b as f64);
        }
    }
    None
}

/// Link counters as the API shows them.
pub fn link_stats(l: &modbus::LinkStats) -> LinkStats {
    LinkStats {
        link: l.link.clone(),
        kind: l.kind.to_string(),
        connected: l.connected,
        requests: l.requests,
        errors: l.errors,
        timeouts: l.timeouts,
        exceptions: l.exceptions,
        retries: 0,
        queue_depth: l.queued,
        latency_p50_ms: percentile_ms(l, 0.5),
        latency_p99_ms: percentile_ms(l, 0.99),
        last_error: l.last_error.clone(),
    }
}

impl UnitsPort for UnitsAdapter {
    fn units(&self) -> Vec<UnitSummary> {
        self.0
            .units()
            .into_iter()
            .map(|u| {
                let seen = self.last_seen(&u.id);
                summary(u, seen)
            })
            .collect()
    }

    fn unit(&self, unit: &UnitId) -> Option<UnitSummary> {
        let u = self.0.unit_info(unit)?;
        Some(summary(u, self.last_seen(unit)))
    }

    fn point(&self, unit: &UnitId, point: &str) -> Option<PointInfo> {
        let p = self.0.profile_of(unit)?;
        p.points.iter().find(|pt| pt.name == point).map(point_info)
    }

    fn profile(&self, unit: &UnitId) -> Option<UnitProfile> {
        let p = self.0.profile_of(unit)?;
        Some(UnitProfile {
            points: p.points.iter().map(point_info).collect(),
            // A command is offered only when the controller reports it supported (profiles
            // with `supported_if`; not yet read = not offered).
            commands: p
                .commands
                .iter()
                .filter(|c| self.0.command_offered(unit, &c.name) == Some(true))
                .map(|c| CommandInfo {
                    name: c.name.clone(),
                    label: if c.description.is_empty() {
                        c.name.clone()
                    } else {
                        c.description.clone()
                    },
                    capability: c.capability,
                })
                .collect(),
        })
    }

    fn snapshot(&self, unit: &UnitId) -> Option<Vec<Reading>> {
        self.0.snapshot(unit).map(|s| readings(&s))
    }

    fn read_fresh<'a>(
        &'a self,
        unit: &'a UnitId,
        timeout: Duration,
    ) -> BoxFut<'a, Result<Vec<Reading>, ReadError>> {
        Box::pin(async move {
            self.0
                .read_fresh(unit, timeout)
                .await
                .map(|s| readings(&s))
                .map_err(|e| read_error(e, false))
        })
    }

    fn write_point<'a>(
        &'a self,
        unit: &'a UnitId,
        point: &'a str,
        value: serde_json::Value,
    ) -> BoxFut<'a, Result<ports::WriteOutcome, WriteFailure>> {
        Box::pin(async move {
            let o = self
                .0
                .write_point(unit, point, value)
                .await
                .map_err(|e| write_error(e, false))?;
            write_status(&o)?;
            Ok(ports::WriteOutcome {
                written: o.written.clone(),
                read_back: o.read_back.clone().unwrap_or(serde_json::Value::Null),
                at: time::OffsetDateTime::now_utc(),
            })
        })
    }

    fn run_command<'a>(
        &'a self,
        unit: &'a UnitId,
        command: &'a str,
    ) -> BoxFut<'a, Result<CommandOutcome, WriteFailure>> {
        Box::pin(async move {
            let o = self
                .0
                .run_command(unit, command)
                .await
                .map_err(|e| write_error(e, true))?;
            write_status(&o)?;
            Ok(CommandOutcome {
                command: command.to_string(),
                at: time::OffsetDateTime::now_utc(),
            })
        })
    }

    fn diagnostics(&self, unit: &UnitId) -> Option<Diagnostics> {
        let u = self.0.units().into_iter().find(|u| u.id == *unit)?;
        let snap = self.0.snapshot(unit);
        let link = self
            .0
            .link_stats()
            .into_iter()
            .find(|l| l.link == u.link.as_str())
            .map(|l| link_stats(&l))
            .unwrap_or_default();
        let errors = snap.as_ref().map_or(0, |s| {
            s.points
                .values()
                .filter(|v| v.quality == modbus::Quality::Error)
                .count()
        });
        Some(Diagnostics {
            unit: u.id.clone(),
            slave: u.slave,
            online: u.online.unwrap_or(false),
            consecutive_failures: u32::try_from(errors).unwrap_or(u32::MAX),
            last_success: self.last_seen(unit),
            last_error: link.last_error.clone(),
            link,
        })
    }

    fn links(&self) -> Vec<LinkId> {
        self.0.link_names()
    }

    fn scan<'a>(
        &'a self,
        link: &'a LinkId,
        from: u8,
        to: u8,
        per_id: Duration,
        cancel: &'a tokio_util::sync::CancellationToken,
        progress: ScanProgress<'a>,
    ) -> BoxFut<'a, Result<ScanDone, ScanFailure>> {
        Box::pin(async move {
            let (Ok(from), Ok(to)) = (SlaveId::new(from), SlaveId::new(to)) else {
                return Err(ScanFailure::Link("slave ids are 1..=247".into()));
            };
            // The configured unit at each slave id of this link, to name it in the result.
            let configured: Vec<(u8, UnitId)> = self
                .0
                .units()
                .into_iter()
                .filter(|u| u.link == *link)
                .map(|u| (u.slave, u.id))
                .collect();
            let found = |f: &modbus::scan::Found| ScanFound {
                slave: f.slave.get(),
                identity: f.identity.iter().map(|(_, v)| v.clone()).collect(),
                profile: f.profile.as_ref().map(|(p, _)| p.clone()),
                matched_by: f.profile.as_ref().map(|(_, how)| (*how).to_string()),
                unit: configured
                    .iter()
                    .find(|(s, _)| *s == f.slave.get())
                    .map(|(_, u)| u.clone()),
            };
            let mut each = |probed: usize, total: usize, so_far: &[modbus::scan::Found]| {
                let list: Vec<ScanFound> = so_far.iter().map(found).collect();
                progress(probed, total, &list);
            };
            let done = self
                .0
                .scan(link, from, to, per_id, cancel, &mut each)
                .await
                .map_err(|e| match e {
                    modbus::ScanError::UnknownLink => ScanFailure::UnknownLink,
                    modbus::ScanError::Link(m) => ScanFailure::Link(m),
                    modbus::ScanError::ShuttingDown => ScanFailure::Unavailable,
                })?;
            Ok(ScanDone {
                found: done.found.iter().map(found).collect(),
                probed: done.probed,
                cancelled: done.cancelled,
            })
        })
    }

    fn read_raw<'a>(
        &'a self,
        unit: &'a UnitId,
        kind: RegisterKind,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> BoxFut<'a, Result<Vec<u16>, ReadError>> {
        Box::pin(async move {
            let kind = match kind {
                RegisterKind::Coil => modbus::RegKind::Coil,
                RegisterKind::Discrete => modbus::RegKind::Discrete,
                RegisterKind::Input => modbus::RegKind::Input,
                RegisterKind::Holding => modbus::RegKind::Holding,
            };
            let values = tokio::time::timeout(timeout, self.0.raw_read(unit, kind, address, count))
                .await
                .map_err(|_| ReadError::Timeout)?
                .map_err(|e| read_error(e, true))?;
            Ok(match values {
                modbus::RawValues::Words(w) => w,
                modbus::RawValues::Bits(b) => b.into_iter().map(u16::from).collect(),
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Service businesses
// ---------------------------------------------------------------------------------------------

/// [`BusinessPort`] over [`Businesses`] (which checks that the actor is the site owner).
impl BusinessPort for Businesses {
    fn list<'a>(
        &'a self,
        actor: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<BusinessInfo>, BusinessError>> {
        Box::pin(Businesses::list(self, actor))
    }

    fn suspend<'a>(
        &'a self,
        actor: &'a UserId,
        business: &'a str,
        note: Option<String>,
    ) -> BoxFut<'a, Result<Change, BusinessError>> {
        Box::pin(Businesses::suspend(self, actor, business, note))
    }

    fn restore<'a>(
        &'a self,
        actor: &'a UserId,
        business: &'a str,
    ) -> BoxFut<'a, Result<Suspension, BusinessError>> {
        Box::pin(Businesses::restore(self, actor, business))
    }
}
