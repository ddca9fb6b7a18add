//! `PUT /units/{unit}/points/{point}` and `POST /units/{unit}/commands/{command}`: changes to a
//! unit. Authorization comes first (see [`usable_unit`]); every outcome, refusals included, is
//! audited as a `command` event.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path, Caller};
use crate::api::guard::{WRITE_CAPS, audit_unit_event, bounded, deny_reason, usable_unit};
use crate::api::ports::{Target, WriteFailure};
use crate::api::state::ApiState;
use crate::api::views::{CommandOut, Sorted, WriteOut};
use crate::clock::rfc3339;
use crate::model::{UnitId, UserId};

/// Body of a point write.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBody {
    value: Value,
}

/// The one answer for a unit the caller may not change (see [`usable_unit`]).
fn may_not_change_unit() -> ApiError {
    ApiError::forbidden("your access does not allow this on that unit")
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

/// The audit outcome of a failed write: refused before the bus, or failed on it.
fn outcome_label(e: &WriteFailure) -> &'static str {
    match e {
        WriteFailure::Validation(_)
        | WriteFailure::UnknownPoint
        | WriteFailure::UnknownCommand
        | WriteFailure::NotSupported(_)
        | WriteFailure::NotPossible(_) => "rejected",
        WriteFailure::Timeout
        | WriteFailure::Exception(_)
        | WriteFailure::Mismatch(_)
        | WriteFailure::Transport(_)
        | WriteFailure::Busy(_) => "failed",
    }
}

/// `PUT /units/{unit}/points/{point}`: validates, writes and reads back one point.
pub async fn write_point(
    State(state): State<ApiState>,
    caller: Caller,
    Path((unit, point)): Path<(String, String)>,
    ApiJson(body): ApiJson<WriteBody>,
) -> ApiResult<Sorted<WriteOut>> {
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
    // A point the caller may not even read answers like a missing one.
    let Some(p) = state
        .0
        .ports
        .units
        .point(&unit, &point)
        .filter(|p| state.0.ports.authz.decide(user, p.read, &target).is_allow())
    else {
        return Err(WriteFailure::UnknownPoint.into());
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
        let extra = json!({ "reason": reason, "capability": cap });
        audit_command(&state, user, &unit, "denied", detail(extra)).await;
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
            let extra = json!({ "read_back": out.read_back });
            audit_command(&state, user, &unit, "ok", detail(extra)).await;
            Ok(Sorted(WriteOut {
                unit,
                point: p.name.clone(),
                written: out.written,
                read_back: out.read_back,
                at: rfc3339(out.at),
            }))
        }
        Err(e) => {
            let extra = json!({ "error": e.to_string() });
            audit_command(&state, user, &unit, outcome_label(&e), detail(extra)).await;
            Err(e.into())
        }
    }
}

/// `POST /units/{unit}/commands/{command}`: runs one profile command.
pub async fn run_command(
    State(state): State<ApiState>,
    caller: Caller,
    Path((unit, command)): Path<(String, String)>,
) -> ApiResult<Sorted<CommandOut>> {
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
        return Err(WriteFailure::UnknownCommand.into());
    };
    if let Some(reason) = deny_reason(&state, user, c.capability, &target) {
        let detail = json!({ "action": "command", "command": c.name, "reason": reason, "capability": c.capability });
        audit_command(&state, user, &unit, "denied", detail).await;
        return Err(ApiError::forbidden(format!(
            "your access to this unit does not include `{}`",
            c.capability
        )));
    }
    match state.0.ports.units.run_command(&unit, &c.name).await {
        Ok(out) => {
            let detail = json!({ "action": "command", "command": c.name });
            audit_command(&state, user, &unit, "ok", detail).await;
            Ok(Sorted(CommandOut {
                unit,
                command: out.command,
                at: rfc3339(out.at),
            }))
        }
        Err(e) => {
            let detail = json!({ "action": "command", "command": c.name, "error": e.to_string() });
            audit_command(&state, user, &unit, outcome_label(&e), detail).await;
            Err(e.into())
        }
    }
}
