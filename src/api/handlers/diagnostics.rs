//! `GET /units/{unit}/diagnostics`: unit and link counters, and raw register reads;
//! `POST /units/{unit}/test`: every point read now, each judged by its quality. Both need
//! `diagnose` on the unit, asked before anything about the unit is looked up.

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiPath as Path, ApiQuery, Caller};
use crate::api::guard::{DIAGNOSE_CAPS, audit_unit_event, caps_on, interactive_read, usable_unit};
use crate::api::ports::{RegisterKind, Target};
use crate::api::state::ApiState;
use crate::api::views::{DiagnosticsOut, RawRead, Sorted, TestedPoint, UnitTestOut};
use crate::clock::rfc3339;
use crate::modbus::Quality;

/// Most coils or discrete inputs in one raw read (the Modbus limit).
const MAX_RAW_BITS: u16 = 2000;
/// Most registers in one raw read (the Modbus limit).
const MAX_RAW_REGISTERS: u16 = 125;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagQuery {
    kind: Option<RegisterKind>,
    address: Option<u16>,
    count: Option<u16>,
}

/// The one answer for a unit whose diagnostics the caller may not read (see [`usable_unit`]).
fn may_not_diagnose_unit() -> ApiError {
    ApiError::forbidden("reading diagnostics needs `diagnose` on that unit")
}

/// The raw read a query asks for, if any: `kind` and `address` together (`count` only with
/// them), at most [`MAX_RAW_REGISTERS`] registers or [`MAX_RAW_BITS`] bits, inside the register
/// space; otherwise `400 invalid_query`.
pub fn raw_read(q: &DiagQuery) -> Result<Option<(RegisterKind, u16, u16)>, ApiError> {
    match (q.kind, q.address, q.count) {
        (None, None, None) => Ok(None),
        (Some(kind), Some(address), count) => {
            let count = count.unwrap_or(1);
            let max = match kind {
                RegisterKind::Coil | RegisterKind::Discrete => MAX_RAW_BITS,
                RegisterKind::Input | RegisterKind::Holding => MAX_RAW_REGISTERS,
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
            Ok(Some((kind, address, count)))
        }
        _ => Err(ApiError::bad_request(
            "invalid_query",
            "a raw read needs both `kind` and `address` (and optionally `count`)",
        )),
    }
}

/// `GET /units/{unit}/diagnostics[?kind=…&address=…&count=…]`.
pub async fn read(
    State(state): State<ApiState>,
    caller: Caller,
    Path(unit): Path<String>,
    ApiQuery(q): ApiQuery<DiagQuery>,
) -> ApiResult<Sorted<DiagnosticsOut>> {
    let user = &caller.session.user;
    let unit = match usable_unit(&state, user, &unit, &DIAGNOSE_CAPS) {
        Ok(u) => u,
        Err(reason) => {
            let detail = json!({ "reason": reason });
            audit_unit_event(&state, "diagnostics", user, Some(&unit), "denied", detail).await;
            return Err(may_not_diagnose_unit());
        }
    };
    let units = &state.0.ports.units;
    let diagnostics = units.diagnostics(&unit).ok_or_else(may_not_diagnose_unit)?;
    let raw = match raw_read(&q)? {
        None => None,
        Some((kind, address, count)) => {
            let limit = state.0.limits.fresh_read_timeout;
            let values =
                interactive_read(limit, units.read_raw(&unit, kind, address, count, limit)).await?;
            Some(RawRead {
                kind,
                address,
                count,
                values,
            })
        }
    };
    Ok(Sorted(DiagnosticsOut { diagnostics, raw }))
}

/// `POST /units/{unit}/test`: reads every point the caller may read now (interactive priority,
/// through the link's own task), and passes when each reads with quality `good` (a sentinel such
/// as `unimplemented` or `open_circuit` fails: wiring or profile work before the installer
/// leaves). Never writes. Audited with the number of failures.
pub async fn test(
    State(state): State<ApiState>,
    caller: Caller,
    Path(unit): Path<String>,
) -> ApiResult<Sorted<UnitTestOut>> {
    let user = &caller.session.user;
    let unit = match usable_unit(&state, user, &unit, &DIAGNOSE_CAPS) {
        Ok(u) => u,
        Err(reason) => {
            let detail = json!({ "reason": reason });
            audit_unit_event(&state, "unit_test", user, Some(&unit), "denied", detail).await;
            return Err(ApiError::forbidden(
                "testing a unit needs `diagnose` on that unit",
            ));
        }
    };
    let units = &state.0.ports.units;
    let profile = units.profile(&unit).unwrap_or_default();
    let caps = caps_on(&state, user, &Target::Unit(unit.clone()));
    let limit = state.0.limits.fresh_read_timeout;
    let started = std::time::Instant::now();
    let readings = match interactive_read(limit, units.read_fresh(&unit, limit)).await {
        Ok(r) => r,
        Err(e) => {
            let detail = json!({ "error": e.code });
            audit_unit_event(
                &state,
                "unit_test",
                user,
                Some(unit.as_str()),
                "failed",
                detail,
            )
            .await;
            return Err(e);
        }
    };
    let points: Vec<TestedPoint> = profile
        .points
        .iter()
        .filter(|p| caps.contains(p.read))
        .map(|p| {
            let r = readings.iter().find(|r| r.point == p.name);
            TestedPoint {
                point: p.name.clone(),
                label: p.label.clone(),
                unit: p.unit.clone(),
                value: r.map_or(serde_json::Value::Null, |r| r.value.clone()),
                quality: r.map_or(Quality::Unknown, |r| r.quality),
            }
        })
        .collect();
    let failures = points.iter().filter(|p| p.quality != Quality::Good).count();
    let passed = failures == 0 && !points.is_empty();
    let detail = json!({ "points": points.len(), "failures": failures });
    let outcome = if passed { "ok" } else { "failed" };
    audit_unit_event(
        &state,
        "unit_test",
        user,
        Some(unit.as_str()),
        outcome,
        detail,
    )
    .await;
    Ok(Sorted(UnitTestOut {
        unit,
        passed,
        failures,
        points,
        at: rfc3339(state.0.clock.now()),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
}
