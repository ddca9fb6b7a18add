//! `/config/links` and `/config/units`: commissioning a box from the page. They list what the
//! config file declares and add or remove a link or a unit in it, so that a technician with a
//! phone can add the link a scan needs and the units it finds, without editing the file.
//!
//! Every route needs `configure` on the whole site (a link reaches every id on its bus, a new
//! unit is beyond any grant's unit scope). A change is made by [`crate::config_edit`] — with
//! `toml_edit`, validated as `check-config` validates, written atomically — and then applied by
//! the daemon's own reload (the one SIGHUP performs), which this route only asks for: the answer
//! is `202 Accepted` once the file is written, and the units appear in `GET /units` when the
//! reload is done (sessions live in the database and carry over). Every change, refusal and
//! denial is audited (kind `config_changed`, with who, what, before and after).

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path, Caller};
use crate::api::guard::{bounded, require_on_site};
use crate::api::state::ApiState;
use crate::api::views::{ConfigChange, ConfigLinks, ConfigUnits, Sorted, WithStatus};
use crate::audit::Event;
use crate::config_edit::{self, Change, EditError, Entry, NewLink, NewUnit};
use crate::model::{Capability, UserId};

async fn audit(state: &ApiState, user: &UserId, outcome: &'static str, detail: Value) {
    let ev = Event::new("config_changed", outcome)
        .actor(user.as_str())
        .detail(detail);
    let _ = state.0.audit.record(ev).await;
}

/// The routes need `configure` on the site; a refusal is audited.
async fn authorize(state: &ApiState, user: &UserId, action: &'static str) -> Result<(), ApiError> {
    require_on_site(
        state,
        user,
        Capability::Configure,
        "config_changed",
        ("change", action),
        "commissioning links and units needs `configure` on the whole site",
    )
    .await
}

/// The config as the file declares it now (validated as `check-config` validates).
async fn read(state: &ApiState) -> Result<crate::config::Config, ApiError> {
    let Some(file) = state.0.config_file.clone() else {
        return Err(ApiError::config_unavailable());
    };
    tokio::task::spawn_blocking(move || config_edit::read(&file.path))
        .await
        .unwrap_or_else(|e| Err(EditError::Unavailable(format!("task failed: {e}"))))
        .map_err(ApiError::from)
}

/// `GET /config/links`: the links the config file declares, with the units on each.
pub async fn links(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Sorted<ConfigLinks>> {
    authorize(&state, &caller.session.user, "list_links").await?;
    let cfg = read(&state).await?;
    Ok(Sorted(ConfigLinks {
        links: config_edit::links(&cfg),
    }))
}

/// `GET /config/units`: the units the config file declares.
pub async fn units(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Sorted<ConfigUnits>> {
    authorize(&state, &caller.session.user, "list_units").await?;
    let cfg = read(&state).await?;
    Ok(Sorted(ConfigUnits {
        units: config_edit::units(&cfg),
    }))
}

/// `POST /config/links`: adds a `[[links]]` entry.
pub async fn add_link(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<NewLink>,
) -> ApiResult<WithStatus<ConfigChange>> {
    let asked = serde_json::to_value(&req).unwrap_or(Value::Null);
    change(&state, &caller.session.user, Change::AddLink(req), asked).await
}

/// `DELETE /config/links/{link}`: removes a link no unit uses (409 `link_in_use` otherwise).
pub async fn remove_link(
    State(state): State<ApiState>,
    caller: Caller,
    Path(link): Path<String>,
) -> ApiResult<WithStatus<ConfigChange>> {
    let asked = json!({ "link": link });
    change(
        &state,
        &caller.session.user,
        Change::RemoveLink(link),
        asked,
    )
    .await
}

/// `POST /config/units`: adds a `[[units]]` entry.
pub async fn add_unit(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<NewUnit>,
) -> ApiResult<WithStatus<ConfigChange>> {
    let asked = serde_json::to_value(&req).unwrap_or(Value::Null);
    change(&state, &caller.session.user, Change::AddUnit(req), asked).await
}

/// `DELETE /config/units/{unit}`: removes a unit.
pub async fn remove_unit(
    State(state): State<ApiState>,
    caller: Caller,
    Path(unit): Path<String>,
) -> ApiResult<WithStatus<ConfigChange>> {
    let asked = json!({ "unit": unit });
    change(
        &state,
        &caller.session.user,
        Change::RemoveUnit(unit),
        asked,
    )
    .await
}

/// Authorizes, edits the file, audits, and asks the run loop for a reload.
async fn change(
    state: &ApiState,
    user: &UserId,
    change: Change,
    asked: Value,
) -> ApiResult<WithStatus<ConfigChange>> {
    let name = change.name();
    authorize(state, user, name).await?;
    let Some(file) = state.0.config_file.clone() else {
        let e = ApiError::config_unavailable();
        audit(
            state,
            user,
            "refused",
            json!({ "change": name, "request": bounded(&asked), "error": e.code }),
        )
        .await;
        return Err(e);
    };
    let path = file.path.clone();
    let edited = tokio::task::spawn_blocking(move || config_edit::apply(&path, &change))
        .await
        .unwrap_or_else(|e| Err(EditError::Unavailable(format!("task failed: {e}"))));
    match edited {
        Ok(edited) => {
            audit(
                state,
                user,
                "ok",
                json!({
                    "change": name,
                    "config": file.path.display().to_string(),
                    "before": edited.before,
                    "after": edited.after,
                }),
            )
            .await;
            file.reload.notify_one();
            let entry = edited.after.or(edited.before);
            let (link, unit) = match entry {
                Some(Entry::Link(l)) => (Some(l), None),
                Some(Entry::Unit(u)) => (None, Some(u)),
                None => (None, None),
            };
            Ok(WithStatus(
                StatusCode::ACCEPTED,
                ConfigChange {
                    change: name,
                    link,
                    unit,
                },
            ))
        }
        Err(e) => {
            let answer = ApiError::from(e);
            audit(
                state,
                user,
                "refused",
                json!({
                    "change": name,
                    "request": bounded(&asked),
                    "error": answer.code,
                    "message": answer.message,
                }),
            )
            .await;
            Err(answer)
        }
    }
}
