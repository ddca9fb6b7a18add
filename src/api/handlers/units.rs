//! `GET /units` and `GET /units/{unit}`: the units the caller may view, with their values.

use axum::extract::State;
use serde::Deserialize;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiPath as Path, ApiQuery, Caller};
use crate::api::guard::{caps_on, interactive_read, visible_unit};
use crate::api::ports::Target;
use crate::api::state::ApiState;
use crate::api::views::{Sorted, UnitList, UnitListed, UnitView, unit_view};
use crate::model::Capability;

/// `GET /units`: every unit on which the caller holds `view`.
pub async fn list(State(state): State<ApiState>, caller: Caller) -> Sorted<UnitList> {
    let visible = state.0.ports.authz.visible_units(&caller.session.user);
    let units = state
        .0
        .ports
        .units
        .units()
        .into_iter()
        .filter_map(|summary| {
            let caps = visible.iter().find(|(u, _)| *u == summary.id)?.1;
            caps.contains(Capability::View).then_some(UnitListed {
                summary,
                capabilities: caps,
            })
        })
        .collect();
    Sorted(UnitList { units })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    #[serde(default)]
    fresh: bool,
}

/// `GET /units/{unit}`: cached values, or fresh ones with `?fresh=true`.
pub async fn detail(
    State(state): State<ApiState>,
    caller: Caller,
    Path(unit): Path<String>,
    ApiQuery(q): ApiQuery<DetailQuery>,
) -> ApiResult<Sorted<UnitView>> {
    let user = &caller.session.user;
    let unit = visible_unit(&state, user, &unit)?;
    let units = &state.0.ports.units;
    let summary = units.unit(&unit).ok_or_else(ApiError::unit_not_found)?;
    let profile = units.profile(&unit).unwrap_or_default();
    let readings = if q.fresh {
        let limit = state.0.limits.fresh_read_timeout;
        interactive_read(limit, units.read_fresh(&unit, limit)).await?
    } else {
        units.snapshot(&unit).unwrap_or_default()
    };
    let caps = caps_on(&state, user, &Target::Unit(unit));
    let mut view = unit_view(summary, &profile, &readings, caps, state.0.clock.now());
    view.fresh = Some(q.fresh);
    Ok(Sorted(view))
}
