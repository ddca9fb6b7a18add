//! The authorization questions the handlers ask, and the audit records of unit events. Every
//! answer comes from [`super::ports::AuthzPort::decide`]; this module only phrases the questions
//! (which capability, on which target, what a refusal looks like) so that every route phrases
//! them alike. A denial is counted in the metrics here, once.

use serde_json::{Value, json};

use super::error::ApiError;
use super::ports::{Decision, Target};
use super::state::ApiState;
use crate::audit::Event;
use crate::model::{CapSet, Capability, UnitId, UserId};

/// What a write or command needs at least one of before anything else is looked up.
pub const WRITE_CAPS: [Capability; 2] = [Capability::Control, Capability::Configure];
/// What a unit's diagnostics need, asked before anything else is looked up.
pub const DIAGNOSE_CAPS: [Capability; 1] = [Capability::Diagnose];
/// What reading a unit needs (a unit without it answers like a missing one).
pub const VIEW_CAPS: [Capability; 1] = [Capability::View];

/// Who may use a route: declared in the route table beside the handler, stated by the document
/// as the operation's `x-access` (a test compares them), and asked by the handler through the
/// constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a session.
    Public,
    /// Any live session; what the route shows is filtered by the caller's grants.
    Session,
    /// One of these capabilities on the unit the path names.
    Unit(&'static [Capability]),
    /// The capability on at least one unit (the result is limited to those units).
    SomeUnit(Capability),
    /// `manage_users` on the scope the request names or the grant covers (the delegation
    /// engine decides, with its ceilings).
    ManagesScope,
    /// The site owner.
    Owner,
    /// The capability on the whole site (the route reaches beyond any one unit: a bus, the
    /// whole audit chain).
    Site(Capability),
    /// The `admin` role on the whole site, or the site owner (the auth engine decides).
    SiteAdminOrOwner,
    /// Loopback clients; from the LAN, a session with the capability on the whole site.
    LoopbackOrSite(Capability),
}

impl Access {
    /// The operation's `x-access` in the document.
    pub fn document(self) -> serde_json::Value {
        let caps = |c: &[Capability]| c.iter().map(|c| c.as_str()).collect::<Vec<_>>();
        match self {
            Access::Public => json!({"who": "anyone"}),
            Access::Session => json!({"who": "session"}),
            Access::Unit(c) => json!({"who": "unit", "any_of": caps(c)}),
            Access::SomeUnit(c) => json!({"who": "some_unit", "any_of": caps(&[c])}),
            Access::ManagesScope => json!({"who": "scope", "any_of": ["manage_users"]}),
            Access::Site(c) => json!({"who": "site", "any_of": caps(&[c])}),
            Access::Owner => json!({"who": "owner"}),
            Access::SiteAdminOrOwner => json!({"who": "site_admin_or_owner"}),
            Access::LoopbackOrSite(c) => json!({"who": "loopback_or_site", "any_of": caps(&[c])}),
        }
    }
}

/// Asks the authorization port; `Some(reason)` when denied (counted in the metrics).
pub fn deny_reason(
    state: &ApiState,
    user: &UserId,
    cap: Capability,
    target: &Target,
) -> Option<&'static str> {
    match state.0.ports.authz.decide(user, cap, target) {
        Decision::Allow => None,
        Decision::Deny(reason) => {
            state.0.metrics.observe_denial(cap.as_str(), reason.code());
            Some(reason.code())
        }
    }
}

/// A site-wide route's check: `Ok` when `user` holds `cap` on the whole site; otherwise the
/// refusal is audited (`kind`, outcome `denied`, detail `{<key>: <action>, "reason": …}`) and
/// answered `403 forbidden` with `message`.
pub async fn require_on_site(
    state: &ApiState,
    user: &UserId,
    cap: Capability,
    kind: &'static str,
    (key, action): (&'static str, &'static str),
    message: &'static str,
) -> Result<(), ApiError> {
    let Some(reason) = deny_reason(state, user, cap, &Target::Site) else {
        return Ok(());
    };
    let ev = Event::new(kind, "denied")
        .actor(user.as_str())
        .detail(json!({ key: action, "reason": reason }));
    let _ = state.0.audit.record(ev).await;
    Err(ApiError::forbidden(message))
}

/// Asks the authorization port; counts a denial.
pub fn allows(state: &ApiState, user: &UserId, cap: Capability, target: &Target) -> bool {
    deny_reason(state, user, cap, target).is_none()
}

/// The caller's effective capabilities on a target, one decision per capability (not counted:
/// this describes, it refuses nothing).
pub fn caps_on(state: &ApiState, user: &UserId, target: &Target) -> CapSet {
    let mut caps = CapSet::EMPTY;
    for c in Capability::ALL {
        if state.0.ports.authz.decide(user, c, target).is_allow() {
            caps.insert(c);
        }
    }
    caps
}

/// Parses the unit path segment and checks that the caller may view it. A malformed id, an
/// unknown unit and a unit outside the caller's scope all answer the same 404.
pub fn visible_unit(state: &ApiState, user: &UserId, raw: &str) -> Result<UnitId, ApiError> {
    let Ok(unit) = UnitId::new(raw) else {
        return Err(ApiError::unit_not_found());
    };
    if state.0.ports.units.unit(&unit).is_none() {
        return Err(ApiError::unit_not_found());
    }
    if VIEW_CAPS
        .iter()
        .any(|&c| allows(state, user, c, &Target::Unit(unit.clone())))
    {
        Ok(unit)
    } else {
        Err(ApiError::unit_not_found())
    }
}

/// For routes that change a unit or read its diagnostics: AUTHORIZATION FIRST. The caller must
/// hold one of `caps` on the unit before anything about the unit, its points or its commands is
/// looked up. A malformed id, an unknown unit, a unit outside the caller's scope and a unit the
/// caller may see but not use this way all give `Err(reason)`, which the route answers with one
/// `403 forbidden` (the reason goes to the audit record and the denial metric), so nobody can
/// probe for units.
pub fn usable_unit(
    state: &ApiState,
    user: &UserId,
    raw: &str,
    caps: &[Capability],
) -> Result<UnitId, &'static str> {
    let Ok(unit) = UnitId::new(raw) else {
        return Err("unknown_unit");
    };
    let target = Target::Unit(unit.clone());
    let mut first: Option<(Capability, &'static str)> = None;
    for &cap in caps {
        match state.0.ports.authz.decide(user, cap, &target) {
            Decision::Allow => {
                // The units port and the index are built from the same config; a unit one of
                // them lacks answers like any unknown unit.
                return match state.0.ports.units.unit(&unit) {
                    Some(_) => Ok(unit),
                    None => Err("unknown_unit"),
                };
            }
            Decision::Deny(reason) => {
                first.get_or_insert((cap, reason.code()));
            }
        }
    }
    let (cap, reason) = first.unwrap_or((Capability::View, "role_lacks"));
    state.0.metrics.observe_denial(cap.as_str(), reason);
    Err(reason)
}

/// Records an event about a unit. `unit` is the id as the caller sent it when the request was
/// refused before the unit was resolved (every field is bounded by the audit trail itself).
pub async fn audit_unit_event(
    state: &ApiState,
    kind: &'static str,
    user: &UserId,
    unit: Option<&str>,
    outcome: &'static str,
    detail: Value,
) {
    let mut ev = Event::new(kind, outcome)
        .actor(user.as_str())
        .detail(detail);
    if let Some(u) = unit {
        ev = ev.unit(u);
    }
    let _ = state.0.audit.record(ev).await;
}

/// A client-supplied value as recorded in the audit trail: as is when small, otherwise only its
/// size (the trail and its MQTT copy must not carry arbitrary client payloads).
pub fn bounded(v: &Value) -> Value {
    const MAX_AUDITED_VALUE: usize = 128;
    let text = v.to_string();
    if text.len() <= MAX_AUDITED_VALUE {
        v.clone()
    } else {
        json!({ "omitted_bytes": text.len() })
    }
}

/// Bounds an interactive device read by `limit`: past it, or when the engine times out itself,
/// `504 device_timeout` naming the bound; any other failure as its error maps.
pub async fn interactive_read<T>(
    limit: std::time::Duration,
    read: impl std::future::Future<Output = Result<T, super::ports::ReadError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(limit, read).await {
        Err(_) | Ok(Err(super::ports::ReadError::Timeout)) => Err(ApiError::device_timeout(limit)),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(v)) => Ok(v),
    }
}
