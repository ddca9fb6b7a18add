//! Route handlers. Each one authenticates (except health, OpenAPI and login), asks the
//! authorization port, calls one engine port, audits commands, and maps engine errors to the
//! error contract.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath as Path, ApiQuery, Caller, ClientIp, bearer, safe};
use super::ports::{
    AccessRequest, DelegateRequest, DelegationError, DelegationOutcome, LoginError, PointInfo,
    ReadError, Reading, RegisterKind, SessionInfo, Target, WriteError,
};
use crate::audit::{self, Event};
use crate::clock::{rfc3339, unix_ms};
use crate::model::{Capability, GrantId, UnitId, UserId};

/// Longest email, password and token accepted at login. A token is printable ASCII and at most
/// 10 KiB, so that even written entirely as `\uXXXX` escapes (6 bytes a character) its login body
/// fits the default 64 KiB body limit: the documented maximum is never a 413.
const MAX_EMAIL: usize = 254;
const MAX_PASSWORD: usize = 1024;
pub(super) const MAX_TOKEN: usize = 10 * 1024;
/// Longest free-text message of an access request.
const MAX_MESSAGE: usize = 500;
/// Audit page size bounds.
const DEFAULT_AUDIT_PAGE: u32 = 50;
const MAX_AUDIT_PAGE: u32 = 200;

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------------------------------------
// Fallbacks
// ---------------------------------------------------------------------------------------------

pub async fn no_route() -> ApiError {
    ApiError::route_not_found()
}

pub async fn wrong_method() -> ApiError {
    ApiError::method_not_allowed()
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: Option<String>,
    password: Option<String>,
    /// An installer token envelope, as a JSON string.
    token: Option<String>,
    /// The device cookie of an earlier password login (password logins only).
    device: Option<String>,
}

#[derive(Serialize)]
pub struct SessionOut {
    token: String,
    token_type: &'static str,
    user: UserId,
    expires_at: String,
    /// A device cookie to present at this client's next password login.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
}

fn session_out(token: String, s: SessionInfo) -> SessionOut {
    SessionOut {
        token,
        token_type: "Bearer",
        user: s.user,
        expires_at: rfc3339(s.expires_at),
        device: None,
    }
}

pub async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginBody>,
) -> ApiResult<(StatusCode, Json<SessionOut>)> {
    let auth = &state.0.ports.auth;
    let res = match body {
        LoginBody {
            email: Some(email),
            password: Some(password),
            token: None,
            device,
        } => {
            if email.len() > MAX_EMAIL || password.len() > MAX_PASSWORD {
                return Err(invalid_credentials());
            }
            auth.login_password_on_device(email.trim(), &password, ip, device.as_deref())
                .await
        }
        LoginBody {
            email: None,
            password: None,
            token: Some(token),
            device: None,
        } => {
            if token.len() > MAX_TOKEN
                || !token
                    .bytes()
                    .all(|b| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e))
            {
                return Err(invalid_credentials());
            }
            auth.login_token(token.as_bytes(), ip)
                .await
                .map(|(t, s)| (t, s, None))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "send either `email` and `password`, or `token`",
            ));
        }
    };
    match res {
        Ok((token, session, device)) => {
            let mut out = session_out(token, session);
            out.device = device;
            Ok((StatusCode::CREATED, Json(out)))
        }
        Err(LoginError::Invalid) => Err(invalid_credentials()),
        // Throttling and lockout answer alike, so a lockout does not confirm that an account
        // exists.
        Err(LoginError::Throttled { retry_after } | LoginError::Locked { retry_after }) => {
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "login_throttled",
                "too many failed logins; retry later",
            )
            .with_retry_after(retry_after))
        }
        Err(LoginError::Unavailable) => Err(ApiError::internal()),
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "email, password or token not accepted",
    )
}

pub async fn logout(State(state): State<ApiState>, caller: Caller) -> ApiResult<StatusCode> {
    match state.0.ports.auth.logout(&caller.token).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(super::ports::AuthError::Unavailable) => Err(ApiError::internal()),
        Err(_) => Err(ApiError::unauthenticated()),
    }
}

// ---------------------------------------------------------------------------------------------
// Me and units
// ---------------------------------------------------------------------------------------------

pub async fn me(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Value>> {
    let user = &caller.session.user;
    let Some(me) = state.0.ports.authz.me(user) else {
        return Err(ApiError::forbidden(
            "this account has no access on this site",
        ));
    };
    let units: Vec<Value> = me
        .units
        .iter()
        .map(|(u, caps)| json!({ "unit": u, "capabilities": caps }))
        .collect();
    Ok(Json(json!({
        "user": {
            "id": me.user, "email": me.email, "name": me.name, "business": me.business,
            "business_suspended": me.business_suspended, "owner": me.owner,
        },
        "session": { "expires_at": rfc3339(caller.session.expires_at) },
        "management": me.management,
        "site": { "capabilities": me.site },
        "units": units,
        "grants": me.grants,
    })))
}

pub async fn list_units(State(state): State<ApiState>, caller: Caller) -> Json<Value> {
    let visible = state.0.ports.authz.visible_units(&caller.session.user);
    let all = state.0.ports.units.units();
    let units: Vec<Value> = all
        .into_iter()
        .filter_map(|s| {
            let caps = visible.iter().find(|(u, _)| *u == s.id)?.1;
            if !caps.contains(Capability::View) {
                return None;
            }
            let mut v = serde_json::to_value(&s).ok()?;
            if let Some(o) = v.as_object_mut() {
                o.insert("capabilities".into(), json!(caps));
            }
            Some(v)
        })
        .collect();
    Json(json!({ "units": units }))
}

/// Parses the unit path segment and checks that the caller may view it. A malformed id, an
/// unknown unit and a unit outside the caller's scope all answer the same 404.
fn visible_unit(state: &ApiState, user: &UserId, raw: &str) -> ApiResult<UnitId> {
    let Ok(unit) = UnitId::new(raw) else {
        return Err(ApiError::unit_not_found());
    };
    if state.0.ports.units.unit(&unit).is_none() {
        return Err(ApiError::unit_not_found());
    }
    if decide(state, user, Capability::View, &Target::Unit(unit.clone())) {
        Ok(unit)
    } else {
        Err(ApiError::unit_not_found())
    }
}

/// For routes that change a unit or read its diagnostics: AUTHORIZATION FIRST. The caller must
/// hold one of `caps` on the unit before anything about the unit, its points or its commands is
/// looked up. A malformed id, an unknown unit, a unit outside the caller's scope and a unit the
/// caller may see but not use this way all answer the same `403 forbidden` (the real reason goes
/// to the audit record and the denial metric), so nobody can probe for units.
fn usable_unit(
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
            super::ports::Decision::Allow => {
                // The units port and the index are built from the same config; a unit one of
                // them lacks answers like any unknown unit.
                return match state.0.ports.units.unit(&unit) {
                    Some(_) => Ok(unit),
                    None => Err("unknown_unit"),
                };
            }
            super::ports::Decision::Deny(reason) => {
                first.get_or_insert((cap, reason));
            }
        }
    }
    let (cap, reason) = first.unwrap_or((Capability::View, "role_lacks"));
    state.0.metrics.observe_denial(cap.as_str(), reason);
    Err(reason)
}

/// The one answer for a unit the caller may not change (see [`usable_unit`]).
fn may_not_change_unit() -> ApiError {
    ApiError::forbidden("your access does not allow this on that unit")
}

/// The one answer for a unit whose diagnostics the caller may not read (see [`usable_unit`]).
fn may_not_diagnose_unit() -> ApiError {
    ApiError::forbidden("reading diagnostics needs `diagnose` on that unit")
}

/// What a write or command needs at least one of before anything else is looked up.
const WRITE_CAPS: [Capability; 2] = [Capability::Control, Capability::Configure];

/// Asks the authorization port; counts a denial.
fn decide(state: &ApiState, user: &UserId, cap: Capability, target: &Target) -> bool {
    deny_reason(state, user, cap, target).is_none()
}

/// Asks the authorization port; `Some(reason)` when denied (counted in the metrics).
fn deny_reason(
    state: &ApiState,
    user: &UserId,
    cap: Capability,
    target: &Target,
) -> Option<&'static str> {
    match state.0.ports.authz.decide(user, cap, target) {
        super::ports::Decision::Allow => None,
        super::ports::Decision::Deny(reason) => {
            state.0.metrics.observe_denial(cap.as_str(), reason);
            Some(reason)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    #[serde(default)]
    fresh: bool,
}

pub async fn unit_detail(
    State(state): State<ApiState>,
    caller: Caller,
    Path(unit): Path<String>,
    ApiQuery(q): ApiQuery<DetailQuery>,
) -> ApiResult<Json<Value>> {
    let user = &caller.session.user;
    let unit = visible_unit(&state, user, &unit)?;
    let units = &state.0.ports.units;
    let summary = units.unit(&unit).ok_or_else(ApiError::unit_not_found)?;
    let profile = units.profile(&unit).unwrap_or_default();
    let readings = if q.fresh {
        let limit = state.0.limits.fresh_read_timeout;
        match tokio::time::timeout(limit, units.read_fresh(&unit, limit)).await {
            Err(_) | Ok(Err(ReadError::Timeout)) => {
                return Err(ApiError::timeout(
                    "device_timeout",
                    format!("the unit did not answer within {} ms", limit.as_millis()),
                ));
            }
            Ok(Err(ReadError::UnknownUnit)) => return Err(ApiError::unit_not_found()),
            Ok(Err(e)) => return Err(device_error(&e.to_string())),
            Ok(Ok(r)) => r,
        }
    } else {
        units.snapshot(&unit).unwrap_or_default()
    };
    let target = Target::Unit(unit.clone());
    let caps = caps_on(&state, user, &target);
    let now = state.0.clock.now();
    let mut out =
        unit_json(&summary, &profile, &readings, caps, now).ok_or_else(ApiError::internal)?;
    if let Some(o) = out.as_object_mut() {
        o.insert("fresh".into(), json!(q.fresh));
    }
    Ok(Json(out))
}

/// One unit as `GET /units/{unit}` and each message of the live stream show it: its summary, the
/// caller's capabilities on it, the points the caller may read (with their values) and the
/// profile's commands with whether the caller may run them.
pub(super) fn unit_json(
    summary: &super::ports::UnitSummary,
    profile: &super::ports::UnitProfile,
    readings: &[Reading],
    caps: crate::model::CapSet,
    now: time::OffsetDateTime,
) -> Option<Value> {
    let points: Vec<Value> = profile
        .points
        .iter()
        .filter(|p| caps.contains(p.read))
        .map(|p| point_json(p, readings.iter().find(|r| r.point == p.name), now, caps))
        .collect();
    let commands: Vec<Value> = profile
        .commands
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "label": c.label,
                "capability": c.capability,
                "allowed": caps.contains(c.capability),
            })
        })
        .collect();
    let mut out = serde_json::to_value(summary).ok()?;
    let o = out.as_object_mut()?;
    o.insert("capabilities".into(), json!(caps));
    o.insert("points".into(), json!(points));
    o.insert("commands".into(), json!(commands));
    Some(out)
}

/// The caller's effective capabilities on a target, one decision per capability.
pub(super) fn caps_on(state: &ApiState, user: &UserId, target: &Target) -> crate::model::CapSet {
    let mut caps = crate::model::CapSet::EMPTY;
    for c in Capability::ALL {
        if state.0.ports.authz.decide(user, c, target).is_allow() {
            caps.insert(c);
        }
    }
    caps
}

pub(super) fn point_json(
    p: &PointInfo,
    r: Option<&Reading>,
    now: time::OffsetDateTime,
    caps: crate::model::CapSet,
) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "writable".into(),
            json!(p.write.is_some_and(|w| caps.contains(w))),
        );
        match r {
            Some(r) => {
                o.insert("value".into(), r.value.clone());
                o.insert("quality".into(), json!(r.quality));
                o.insert("read_at".into(), json!(r.read_at.map(rfc3339)));
                o.insert(
                    "age_ms".into(),
                    json!(r.read_at.map(|t| (unix_ms(now) - unix_ms(t)).max(0))),
                );
            }
            None => {
                o.insert("value".into(), Value::Null);
                o.insert("quality".into(), json!("unknown"));
                o.insert("read_at".into(), Value::Null);
                o.insert("age_ms".into(), Value::Null);
            }
        }
    }
    v
}

fn device_error(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "device_error",
        format!("the unit reported an error: {}", safe(detail)),
    )
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBody {
    value: Value,
}

/// Records a command outcome in the audit trail (the record is also queued for MQTT).
async fn audit_command(
    state: &ApiState,
    user: &UserId,
    unit: &UnitId,
    outcome: &'static str,
    detail: Value,
) {
    audit_unit_event(state, "command", user, Some(unit.as_str()), outcome, detail).await;
}

/// Records an event about a unit. `unit` is the id as the caller sent it when the request was
/// refused before the unit was resolved (every field is bounded by the audit trail itself).
async fn audit_unit_event(
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
fn bounded(v: &Value) -> Value {
    const MAX_AUDITED_VALUE: usize = 128;
    let text = v.to_string();
    if text.len() <= MAX_AUDITED_VALUE {
        v.clone()
    } else {
        json!({ "omitted_bytes": text.len() })
    }
}

fn write_error(e: &WriteError) -> ApiError {
    match e {
        WriteError::Validation(m) => ApiError::unprocessable("invalid_value", safe(m)),
        WriteError::UnknownPoint => ApiError::not_found("point_not_found", "no such point"),
        WriteError::Timeout => {
            ApiError::timeout("device_timeout", "the unit did not answer in time")
        }
        WriteError::Mismatch(m) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "readback_mismatch",
            format!("the unit did not keep the value: {}", safe(m)),
        ),
        WriteError::Exception(m) | WriteError::Transport(m) => device_error(m),
        WriteError::Busy(m) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "link_busy",
            format!("{}; nothing was sent to the unit", safe(m)),
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        WriteError::NotSupported(m) => {
            ApiError::new(StatusCode::CONFLICT, "command_not_supported", safe(m))
        }
        WriteError::NotPossible(m) => {
            ApiError::new(StatusCode::CONFLICT, "not_possible_in_mode", safe(m))
        }
    }
}

fn write_outcome_label(e: &WriteError) -> &'static str {
    match e {
        WriteError::Validation(_)
        | WriteError::UnknownPoint
        | WriteError::NotSupported(_)
        | WriteError::NotPossible(_) => "rejected",
        _ => "failed",
    }
}

pub async fn write_point(
    State(state): State<ApiState>,
    caller: Caller,
    Path((unit, point)): Path<(String, String)>,
    ApiJson(body): ApiJson<WriteBody>,
) -> ApiResult<Json<Value>> {
    let user = &caller.session.user;
    let unit = match usable_unit(&state, user, &unit, &WRITE_CAPS) {
        Ok(u) => u,
        Err(reason) => {
            let detail = json!({ "action": "write", "point": point, "reason": reason });
            audit_unit_event(&state, "command", user, Some(&unit), "denied", detail).await;
            return Err(may_not_change_unit());
        }
    };
    let target = Target::Unit(unit.clone());
    let profile = state.0.ports.units.profile(&unit).unwrap_or_default();
    // A point the caller may not even read answers like a missing one.
    let Some(p) = profile
        .points
        .iter()
        .find(|p| p.name == point)
        .filter(|p| state.0.ports.authz.decide(user, p.read, &target).is_allow())
    else {
        return Err(ApiError::not_found("point_not_found", "no such point"));
    };
    let Some(cap) = p.write else {
        return Err(ApiError::unprocessable(
            "point_read_only",
            format!("point `{}` cannot be written", p.name),
        ));
    };
    let detail = |extra: Value| {
        let mut d = json!({ "action": "write", "point": p.name, "value": bounded(&body.value) });
        if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        d
    };
    if let Some(reason) = deny_reason(&state, user, cap, &target) {
        audit_command(
            &state,
            user,
            &unit,
            "denied",
            detail(json!({ "reason": reason, "capability": cap })),
        )
        .await;
        return Err(ApiError::forbidden(format!(
            "your access to this unit does not include `{cap}`"
        )));
    }
    match state
        .0
        .ports
        .units
        .write_point(&unit, &p.name, body.value.clone())
        .await
    {
        Ok(out) => {
            audit_command(
                &state,
                user,
                &unit,
                "ok",
                detail(json!({ "read_back": out.read_back })),
            )
            .await;
            Ok(Json(json!({
                "unit": unit,
                "point": p.name,
                "written": out.written,
                "read_back": out.read_back,
                "at": rfc3339(out.at),
            })))
        }
        Err(e) => {
            audit_command(
                &state,
                user,
                &unit,
                write_outcome_label(&e),
                detail(json!({ "error": e.to_string() })),
            )
            .await;
            Err(write_error(&e))
        }
    }
}

pub async fn run_command(
    State(state): State<ApiState>,
    caller: Caller,
    Path((unit, command)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let user = &caller.session.user;
    let unit = match usable_unit(&state, user, &unit, &WRITE_CAPS) {
        Ok(u) => u,
        Err(reason) => {
            let detail = json!({ "action": "command", "command": command, "reason": reason });
            audit_unit_event(&state, "command", user, Some(&unit), "denied", detail).await;
            return Err(may_not_change_unit());
        }
    };
    let target = Target::Unit(unit.clone());
    let profile = state.0.ports.units.profile(&unit).unwrap_or_default();
    let Some(c) = profile.commands.iter().find(|c| c.name == command) else {
        return Err(ApiError::not_found("command_not_found", "no such command"));
    };
    if let Some(reason) = deny_reason(&state, user, c.capability, &target) {
        audit_command(
            &state,
            user,
            &unit,
            "denied",
            json!({ "action": "command", "command": c.name, "reason": reason, "capability": c.capability }),
        )
        .await;
        return Err(ApiError::forbidden(format!(
            "your access to this unit does not include `{}`",
            c.capability
        )));
    }
    match state.0.ports.units.run_command(&unit, &c.name).await {
        Ok(out) => {
            audit_command(
                &state,
                user,
                &unit,
                "ok",
                json!({ "action": "command", "command": c.name }),
            )
            .await;
            Ok(Json(
                json!({ "unit": unit, "command": out.command, "at": rfc3339(out.at) }),
            ))
        }
        Err(e) => {
            audit_command(
                &state,
                user,
                &unit,
                write_outcome_label(&e),
                json!({ "action": "command", "command": c.name, "error": e.to_string() }),
            )
            .await;
            Err(match e {
                WriteError::UnknownPoint => {
                    ApiError::not_found("command_not_found", "no such command")
                }
                other => write_error(&other),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagQuery {
    kind: Option<RegisterKind>,
    address: Option<u16>,
    count: Option<u16>,
}

pub async fn diagnostics(
    State(state): State<ApiState>,
    caller: Caller,
    Path(unit): Path<String>,
    ApiQuery(q): ApiQuery<DiagQuery>,
) -> ApiResult<Json<Value>> {
    let user = &caller.session.user;
    let unit = match usable_unit(&state, user, &unit, &[Capability::Diagnose]) {
        Ok(u) => u,
        Err(reason) => {
            let detail = json!({ "reason": reason });
            audit_unit_event(&state, "diagnostics", user, Some(&unit), "denied", detail).await;
            return Err(may_not_diagnose_unit());
        }
    };
    let units = &state.0.ports.units;
    let diag = units.diagnostics(&unit).ok_or_else(may_not_diagnose_unit)?;
    let raw = match (q.kind, q.address, q.count) {
        (None, None, None) => None,
        (Some(kind), Some(address), count) => {
            let count = count.unwrap_or(1);
            let max = match kind {
                RegisterKind::Coil | RegisterKind::Discrete => 2000,
                RegisterKind::Input | RegisterKind::Holding => 125,
            };
            if count == 0 || count > max {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("`count` must be between 1 and {max} for this register kind"),
                ));
            }
            if u32::from(address) + u32::from(count) > 65_536 {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "`address` + `count` passes the end of the register space",
                ));
            }
            let limit = state.0.limits.fresh_read_timeout;
            let values = match tokio::time::timeout(
                limit,
                units.read_raw(&unit, kind, address, count, limit),
            )
            .await
            {
                Err(_) | Ok(Err(ReadError::Timeout)) => {
                    return Err(ApiError::timeout(
                        "device_timeout",
                        format!("the unit did not answer within {} ms", limit.as_millis()),
                    ));
                }
                Ok(Err(ReadError::UnknownUnit)) => return Err(ApiError::unit_not_found()),
                // The client chose the registers: a device refusing them (an address it does not
                // have) is an answer about the request, not a failing device.
                Ok(Err(ReadError::Refused(m))) => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "device_refused",
                        format!("the unit refused the read: {}", safe(&m)),
                    ));
                }
                Ok(Err(e)) => return Err(device_error(&e.to_string())),
                Ok(Ok(v)) => v,
            };
            Some(json!({ "kind": kind, "address": address, "count": count, "values": values }))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "a raw read needs both `kind` and `address` (and optionally `count`)",
            ));
        }
    };
    let mut out = serde_json::to_value(&diag).map_err(|_| ApiError::internal())?;
    if let (Some(o), Some(raw)) = (out.as_object_mut(), raw) {
        o.insert("raw".into(), raw);
    }
    Ok(Json(out))
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
    /// Only records with a `seq` below this (the `next_before` of the previous page).
    before: Option<i64>,
    kind: Option<String>,
    actor: Option<String>,
    unit: Option<String>,
}

pub async fn audit_query(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let user = &caller.session.user;
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_PAGE);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_AUDIT_PAGE}"),
        ));
    }
    for s in [&q.kind, &q.actor, &q.unit].into_iter().flatten() {
        if s.chars().count() > 64 {
            return Err(ApiError::bad_request(
                "invalid_query",
                "filter value too long",
            ));
        }
    }
    // Per unit: only records of units the caller may diagnose. Records about no unit (logins,
    // grants, delegations — they may name any unit or user) only for a caller who may diagnose
    // the whole site with no unit withheld. A `?unit=` filter naming a unit the caller may not
    // diagnose, or no unit at all, gives the same empty page.
    let authz = &state.0.ports.authz;
    let allowed: Vec<String> = authz
        .visible_units(user)
        .into_iter()
        .filter(|(_, caps)| caps.contains(Capability::Diagnose))
        .map(|(u, _)| u.to_string())
        .collect();
    let inventory = state.0.ports.units.units();
    let whole_site = authz
        .decide(user, Capability::Diagnose, &Target::Site)
        .is_allow()
        && inventory
            .iter()
            .all(|u| allowed.iter().any(|a| a == u.id.as_str()));
    if allowed.is_empty() && !whole_site {
        state
            .0
            .metrics
            .observe_denial("diagnose", "no_diagnose_scope");
        return Err(ApiError::forbidden(
            "reading the audit log needs `diagnose` on at least one unit",
        ));
    }
    let units: Option<Vec<String>> = match &q.unit {
        Some(u) => Some(allowed.into_iter().filter(|a| a == u).collect()),
        // Every unit and the records about none.
        None if whole_site => None,
        None => Some(allowed),
    };
    let query = audit::Query {
        units,
        kind: q.kind,
        actor: q.actor,
        before_seq: q.before,
        since_ms: None,
        limit,
    };
    let records = state
        .0
        .audit
        .store()
        .call(move |conn| audit::query(conn, &query))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit query failed");
            ApiError::internal()
        })?;
    let next_before = if records.len() == limit as usize {
        records.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(Json(
        json!({ "records": records, "next_before": next_before }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Delegation
// ---------------------------------------------------------------------------------------------

fn delegation_error(state: &ApiState, e: DelegationError) -> ApiError {
    match e {
        DelegationError::Forbidden(code) => {
            state.0.metrics.observe_denial("manage_users", code);
            let message = match code {
                "above_ceiling" => "the role is above what your role may delegate",
                "above_own_role" => "the role is above your own on part of the scope",
                "not_cloud_grant" => {
                    "on a site managed by a service provider only cloud-issued access may delegate"
                }
                _ => "you may not manage access on this scope",
            };
            ApiError::new(StatusCode::FORBIDDEN, code, message)
        }
        DelegationError::NotFound => ApiError::not_found("grant_not_found", "no such grant"),
        DelegationError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", safe(&m)),
        DelegationError::Invalid { code, message } => ApiError::unprocessable(code, safe(&message)),
        DelegationError::Unavailable => ApiError::internal(),
    }
}

pub async fn list_grants(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Value>> {
    let grants = state
        .0
        .ports
        .delegation
        .list(&caller.session.user)
        .await
        .map_err(|e| delegation_error(&state, e))?;
    Ok(Json(json!({ "grants": grants })))
}

pub async fn create_grant(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<DelegateRequest>,
) -> ApiResult<Response> {
    if req.email.is_empty() || req.email.len() > MAX_EMAIL || !req.email.contains('@') {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "`email` must be an email address",
        ));
    }
    if req
        .password
        .as_ref()
        .is_some_and(|p| p.len() > MAX_PASSWORD)
        || req.name.as_ref().is_some_and(|n| n.chars().count() > 200)
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "`name` or `password` is too long",
        ));
    }
    let out = state
        .0
        .ports
        .delegation
        .create(&caller.session.user, req)
        .await
        .map_err(|e| delegation_error(&state, e))?;
    Ok(match out {
        DelegationOutcome::Applied(grant) => (
            StatusCode::CREATED,
            Json(json!({ "status": "active", "grant": grant })),
        )
            .into_response(),
        DelegationOutcome::Pending { request_id } => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "pending", "request_id": request_id })),
        )
            .into_response(),
    })
}

pub async fn revoke_grant(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let Ok(id) = GrantId::new(id) else {
        return Err(ApiError::not_found("grant_not_found", "no such grant"));
    };
    let out = state
        .0
        .ports
        .delegation
        .revoke(&caller.session.user, &id)
        .await
        .map_err(|e| delegation_error(&state, e))?;
    Ok(match out {
        DelegationOutcome::Applied(_) => (
            StatusCode::OK,
            Json(json!({ "status": "revoked", "grant": id })),
        )
            .into_response(),
        DelegationOutcome::Pending { request_id } => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "pending", "request_id": request_id })),
        )
            .into_response(),
    })
}

fn lockout_api_error(e: super::ports::LockoutError) -> ApiError {
    match e {
        super::ports::LockoutError::Forbidden => {
            ApiError::forbidden("managing lockouts needs `manage_users` on the whole site")
        }
        super::ports::LockoutError::NotFound => {
            ApiError::not_found("lockout_not_found", "no such lockout")
        }
        super::ports::LockoutError::Unavailable => ApiError::internal(),
    }
}

/// `GET /lockouts`: current login throttles and lockouts (site admins).
pub async fn list_lockouts(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let list = state
        .0
        .ports
        .auth
        .lockouts(&caller.session.user)
        .await
        .map_err(lockout_api_error)?;
    Ok(Json(json!({ "lockouts": list })))
}

/// `DELETE /lockouts/{key}`: clears one lockout (site admins; audited as `lockout_cleared`).
pub async fn clear_lockout(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    if key.len() > 128 {
        return Err(lockout_api_error(super::ports::LockoutError::NotFound));
    }
    state
        .0
        .ports
        .auth
        .clear_lockout(&caller.session.user, &key)
        .await
        .map_err(lockout_api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /access-requests`: the caller's own requests and those on scopes they manage.
pub async fn list_access_requests(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let requests = state
        .0
        .ports
        .delegation
        .list_requests(&caller.session.user)
        .await
        .map_err(|e| delegation_error(&state, e))?;
    Ok(Json(json!({ "requests": requests })))
}

pub async fn access_request(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<AccessRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if req
        .message
        .as_ref()
        .is_some_and(|m| m.chars().count() > MAX_MESSAGE)
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("`message` is longer than {MAX_MESSAGE} characters"),
        ));
    }
    let id = state
        .0
        .ports
        .delegation
        .request_access(&caller.session.user, req)
        .await
        .map_err(|e| delegation_error(&state, e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "pending", "request_id": id })),
    ))
}

// ---------------------------------------------------------------------------------------------
// Health, metrics, OpenAPI
// ---------------------------------------------------------------------------------------------

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Prometheus text. Open to loopback clients (a local agent scraping the box); from the LAN it
/// needs a bearer token with `diagnose` at site level.
pub async fn metrics(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !ip.is_loopback() {
        let token = bearer(&headers)?.ok_or_else(ApiError::unauthenticated)?;
        let session = match state.0.ports.auth.authenticate(&token).await {
            Ok(s) => s,
            Err(super::ports::AuthError::Unavailable) => return Err(ApiError::internal()),
            Err(_) => return Err(ApiError::unauthenticated()),
        };
        if !decide(&state, &session.user, Capability::Diagnose, &Target::Site) {
            return Err(ApiError::forbidden(
                "metrics need `diagnose` on the whole site",
            ));
        }
    }
    let body = state.0.metrics.render(unix_ms(state.0.clock.now()));
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response())
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::OPENAPI_JSON,
    )
        .into_response()
}
