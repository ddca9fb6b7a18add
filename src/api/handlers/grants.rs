//! `GET /grants`, `POST /grants`, `DELETE /grants/{id}`: local grants (delegation). The
//! delegation engine authorizes (`manage_users` on the scope, ceilings); a refusal is counted as
//! a denial of `manage_users` here.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path, ApiQuery, Caller};
use crate::api::ports::Target;
use crate::api::ports::{DelegateRequest, DelegationError, DelegationOutcome, GrantInfo};
use crate::api::session::{MAX_EMAIL, MAX_PASSWORD};
use crate::api::state::ApiState;
use crate::api::views::{GrantChange, GrantList, RoleList, Sorted, WithStatus};
use crate::model::{Capability, GrantId, Scope};

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

/// `GET /roles` page size bounds.
pub const DEFAULT_ROLES_PAGE: u32 = 100;
pub const MAX_ROLES_PAGE: u32 = 500;
/// Longest `user` or `unit` filter (characters).
const MAX_ROLES_FILTER_CHARS: usize = 64;
/// Longest `after` accepted (characters). A `next_after` is at most an email (254), two ids
/// (64 each), an origin and three spaces.
const MAX_CURSOR_CHARS: usize = 512;

/// A source of roles, as the `origin` filter names it.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum OriginFilter {
    Cloud,
    Token,
    Local,
}

impl OriginFilter {
    fn as_str(self) -> &'static str {
        match self {
            OriginFilter::Cloud => "cloud",
            OriginFilter::Token => "token",
            OriginFilter::Local => "local",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesQuery {
    limit: Option<u32>,
    /// Only roles after this position in the listing order (the `next_after` of the previous
    /// page).
    after: Option<String>,
    /// Case-insensitive substring of the grantee's email or user id.
    user: Option<String>,
    origin: Option<OriginFilter>,
    /// Only grants whose scope covers this unit (the site, the unit's group, the unit).
    unit: Option<String>,
}

/// Where a role stands in the listing: `"<email> <user id> <grant id> <origin>"`, compared as
/// text. INVARIANT: no field contains a space or a control character (the bundle refuses such
/// emails; ids are `[A-Za-z0-9._-]`), so the key is unique per role in force (one email per user,
/// a grant id is unique per user and origin) and orders like the tuple (email, user, grant,
/// origin): the order is total, and a page that starts strictly after the previous page's last
/// key never skips or repeats a role, even when roles are added or removed between two pages.
/// Any text is a position in this order, so every `after` is accepted.
pub fn role_key(g: &GrantInfo) -> String {
    format!(
        "{} {} {} {}",
        g.email.as_deref().unwrap_or_default(),
        g.user,
        g.id,
        g.origin
    )
}

/// A checked `GET /roles` query.
pub struct RolesFilter {
    pub limit: usize,
    after: Option<String>,
    user: Option<String>,
    origin: Option<OriginFilter>,
    unit: Option<String>,
}

/// Checks the query before anything is read (`400 invalid_query`, as `GET /audit` does).
pub fn check_roles_query(q: RolesQuery) -> Result<RolesFilter, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_ROLES_PAGE);
    if !(1..=MAX_ROLES_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_ROLES_PAGE}"),
        ));
    }
    for s in [&q.user, &q.unit].into_iter().flatten() {
        if s.chars().count() > MAX_ROLES_FILTER_CHARS {
            return Err(ApiError::bad_request(
                "invalid_query",
                "filter value too long",
            ));
        }
    }
    if q.after
        .as_ref()
        .is_some_and(|a| a.chars().count() > MAX_CURSOR_CHARS)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`after` is longer than {MAX_CURSOR_CHARS} characters"),
        ));
    }
    Ok(RolesFilter {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        after: q.after,
        user: q.user.map(|u| u.to_lowercase()).filter(|u| !u.is_empty()),
        origin: q.origin,
        unit: q.unit,
    })
}

/// One page of `roles` (already limited to what the caller may see): sorted by [`role_key`], the
/// roles after the cursor that pass the filters, and the cursor of the next page (`None` on the
/// last page). `units` is the inventory (for the `unit` filter: an unknown unit matches nothing).
pub fn roles_page(
    roles: Vec<GrantInfo>,
    f: &RolesFilter,
    units: &[crate::api::ports::UnitSummary],
) -> (Vec<GrantInfo>, Option<String>) {
    let unit = f
        .unit
        .as_ref()
        .map(|id| units.iter().find(|u| u.id.as_str() == id.as_str()));
    let mut keyed: Vec<(String, GrantInfo)> = roles
        .into_iter()
        .filter(|g| f.origin.is_none_or(|o| g.origin == o.as_str()))
        .filter(|g| {
            f.user.as_ref().is_none_or(|needle| {
                g.user.as_str().to_lowercase().contains(needle.as_str())
                    || g.email
                        .as_ref()
                        .is_some_and(|e| e.to_lowercase().contains(needle.as_str()))
            })
        })
        .filter(|g| match unit {
            None => true,
            Some(None) => false,
            Some(Some(u)) => match &g.scope {
                Scope::Site(_) => true,
                Scope::Group(group) => u.group.as_ref() == Some(group),
                Scope::Unit(id) => *id == u.id,
            },
        })
        .map(|g| (role_key(&g), g))
        .filter(|(k, _)| f.after.as_ref().is_none_or(|a| k.as_str() > a.as_str()))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let more = keyed.len() > f.limit;
    keyed.truncate(f.limit);
    let next = if more {
        keyed.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    (keyed.into_iter().map(|(_, g)| g).collect(), next)
}

/// `GET /roles`: who has which role where on this box, until when, and from where (`cloud`,
/// `token`, `local` with the delegator): the grants in force whose scope the caller holds
/// `manage_users` on, a page at a time in a fixed order ([`role_key`]), filtered by user, origin
/// and unit. `403` for a caller who manages users nowhere.
pub async fn roles(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RolesQuery>,
) -> ApiResult<Sorted<RoleList>> {
    let filter = check_roles_query(q)?;
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
    let visible = authz
        .roles()
        .into_iter()
        .filter(|g| {
            // Described, not refused: a grant outside the caller's scopes is left out.
            authz
                .decide(user, Capability::ManageUsers, &Target::of_scope(&g.scope))
                .is_allow()
        })
        .collect();
    let inventory = state.0.ports.units.units();
    let (roles, next_after) = roles_page(visible, &filter, &inventory);
    Ok(Sorted(RoleList { roles, next_after }))
}
