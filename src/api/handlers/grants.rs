//! `GET /grants`, `POST /grants`, `DELETE /grants/{id}`: local grants (delegation). The
//! delegation engine authorizes (`manage_users` on the scope, ceilings); a refusal is counted as
//! a denial of `manage_users` here.

use axum::extract::State;
use axum::http::StatusCode;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path, Caller};
use crate::api::ports::Target;
use crate::api::ports::{DelegateRequest, DelegationError, DelegationOutcome};
use crate::api::session::{MAX_EMAIL, MAX_PASSWORD};
use crate::api::state::ApiState;
use crate::api::views::{GrantChange, GrantList, RoleList, Sorted, WithStatus};
use crate::model::{Capability, GrantId};

/// Longest display name accepted in a delegation (the name itself comes from the bundle).
const MAX_NAME_CHARS: usize = 200;

/// The API error of a delegation refusal; a `403` is counted as a denial of `manage_users`.
pub(super) fn refused(state: &ApiState, e: DelegationError) -> ApiError {
    let err = ApiError::from(e);
    if err.status == StatusCode::FORBIDDEN {
        state.0.metrics.observe_denial("manage_users", err.code);
    }
    err
}

/// `GET /grants`: the local grants the caller manages.
pub async fn list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Sorted<GrantList>> {
    let grants = state
        .0
        .ports
        .delegation
        .list(&caller.session.user)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(Sorted(GrantList { grants }))
}

/// Checks a delegation request before the engine sees it (`422 invalid_request`). Lengths count
/// characters, as the document's `maxLength` does.
pub fn check_delegation(req: &DelegateRequest) -> Result<(), ApiError> {
    let email_len = req.email.chars().count();
    if email_len == 0 || email_len > MAX_EMAIL || !req.email.contains('@') {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "`email` must be an email address",
        ));
    }
    if req
        .password
        .as_ref()
        .is_some_and(|p| p.chars().count() > MAX_PASSWORD)
        || req
            .name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "`name` or `password` is too long",
        ));
    }
    // Delegation names an existing user of the site (from the cloud's bundle); accounts are
    // created by the cloud, so a password in the request is refused, not ignored.
    if req.password.is_some() {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "accounts are created by the cloud; delegate to an existing user by email",
        ));
    }
    Ok(())
}

/// `POST /grants`: delegates a local grant to an existing user of the site.
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<DelegateRequest>,
) -> ApiResult<WithStatus<GrantChange>> {
    check_delegation(&req)?;
    let out = state
        .0
        .ports
        .delegation
        .create(&caller.session.user, req)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(match out {
        DelegationOutcome::Applied(grant) => {
            WithStatus(StatusCode::CREATED, GrantChange::Active { grant })
        }
        DelegationOutcome::Pending { request_id } => {
            WithStatus(StatusCode::ACCEPTED, GrantChange::Pending { request_id })
        }
    })
}

/// `DELETE /grants/{id}`: revokes a grant the caller manages.
pub async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<WithStatus<GrantChange>> {
    let Ok(id) = GrantId::new(id) else {
        return Err(ApiError::grant_not_found());
    };
    let out = state
        .0
        .ports
        .delegation
        .revoke(&caller.session.user, &id)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(match out {
        DelegationOutcome::Applied(_) => {
            WithStatus(StatusCode::OK, GrantChange::Revoked { grant: id })
        }
        DelegationOutcome::Pending { request_id } => {
            WithStatus(StatusCode::ACCEPTED, GrantChange::Pending { request_id })
        }
    })
}

/// `GET /roles`: who has which role where on this box, until when, and from where (`cloud`,
/// `token`, `local` with the delegator): every grant in force whose scope the caller holds
/// `manage_users` on. `403` for a caller who manages users nowhere.
pub async fn roles(State(state): State<ApiState>, caller: Caller) -> ApiResult<Sorted<RoleList>> {
    let user = &caller.session.user;
    let authz = &state.0.ports.authz;
    let manages_somewhere = authz
        .decide(user, Capability::ManageUsers, &Target::Site)
        .is_allow()
        || authz
            .visible_units(user)
            .iter()
            .any(|(_, caps)| caps.contains(Capability::ManageUsers));
    if !manages_somewhere {
        state
            .0
            .metrics
            .observe_denial("manage_users", "no_manage_users_scope");
        return Err(ApiError::forbidden(
            "listing roles needs `manage_users` on at least one unit",
        ));
    }
    let roles = authz
        .roles()
        .into_iter()
        .filter(|g| {
            // Described, not refused: a grant outside the caller's scopes is left out.
            authz
                .decide(user, Capability::ManageUsers, &Target::of_scope(&g.scope))
                .is_allow()
        })
        .collect();
    Ok(Sorted(RoleList { roles }))
}
