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

/// Longest email, password and token accepted at login.
const MAX_EMAIL: usize = 254;
const MAX_PASSWORD: usize = 1024;
const MAX_TOKEN: usize = 16 * 1024;
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
}

#[derive(Serialize)]
pub struct SessionOut {
    token: String,
    token_type: &'static str,
    user: UserId,
    expires_at: String,
}

fn session_out(token: String, s: SessionInfo) -> SessionOut {
    SessionOut {
        token,
        token_type: "Bearer",
        user: s.user,
        expires_at: rfc3339(s.expires_at),
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
        } => {
            if email.len() > MAX_EMAIL || password.len() > MAX_PASSWORD {
                return Err(invalid_credentials());
            }
            auth.login_password(email.trim(), &password, ip).await
        }
        LoginBody {
            email: None,
            password: None,
            token: Some(token),
        } => {
            if token.len() > MAX_TOKEN {
                return Err(invalid_credentials());
            }
            auth.login_token(token.as_bytes(), ip).await
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "send either `email` and `password`, or `token`",
            ));
        }
    };
    match res {
        Ok((token, session)) => Ok((StatusCode::CREATED, Json(session_out(token, session)))),
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
        "user": { "id": me.user, "email": me.email, "name": me.name },
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
    let mut out = serde_json::to_value(&summary).map_err(|_| ApiError::internal())?;
    if let Some(o) = out.as_object_mut() {
        o.insert("capabilities".into(), json!(caps));
        o.insert("fresh".into(), json!(q.fresh));
        o.insert("points".into(), json!(points));
        o.insert("commands".into(), json!(commands));
    }
    Ok(Json(out))
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
    let _ = state
        .0
        .audit
        .record(
            Event::new("command", outcome)
                .actor(user.as_str())
                .unit(unit.as_str())
                .detail(detail),
        )
        .await;
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
    }
}

fn write_outcome_label(e: &WriteError) -> &'static str {
    match e {
        WriteError::Validation(_) | WriteError::UnknownPoint => "rejected",
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
    let unit = visible_unit(&state, user, &unit)?;
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
    let unit = visible_unit(&state, user, &unit)?;
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
    let unit = visible_unit(&state, user, &unit)?;
    let target = Target::Unit(unit.clone());
    if !decide(&state, user, Capability::Diagnose, &target) {
        return Err(ApiError::forbidden(
            "your access to this unit does not include `diagnose`",
        ));
    }
    let units = &state.0.ports.units;
    let diag = units
        .diagnostics(&unit)
        .ok_or_else(ApiError::unit_not_found)?;
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
        if s.len() > 64 {
            return Err(ApiError::bad_request(
                "invalid_query",
                "filter value too long",
            ));
        }
    }
    // Site-wide diagnose sees every record (including those about no unit: logins, grants);
    // otherwise only records of units the caller may diagnose.
    let units: Option<Vec<String>> = if state
        .0
        .ports
        .authz
        .decide(user, Capability::Diagnose, &Target::Site)
        .is_allow()
    {
        q.unit.clone().map(|u| vec![u])
    } else {
        let mut allowed: Vec<String> = state
            .0
            .ports
            .authz
            .visible_units(user)
            .into_iter()
            .filter(|(_, caps)| caps.contains(Capability::Diagnose))
            .map(|(u, _)| u.to_string())
            .collect();
        if allowed.is_empty() {
            state
                .0
                .metrics
                .observe_denial("diagnose", "no_diagnose_scope");
            return Err(ApiError::forbidden(
                "reading the audit log needs `diagnose` on at least one unit",
            ));
        }
        if let Some(u) = &q.unit {
            allowed.retain(|a| a == u);
        }
        Some(allowed)
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
        DelegationError::Forbidden(reason) => {
            state.0.metrics.observe_denial("manage_users", reason);
            ApiError::forbidden(format!("not allowed: {reason}"))
        }
        DelegationError::NotFound => ApiError::not_found("grant_not_found", "no such grant"),
        DelegationError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", safe(&m)),
        DelegationError::Invalid(m) => ApiError::unprocessable("invalid_request", safe(&m)),
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
