//! Routes of the site owner's control over service businesses (`/api/v1/businesses…`).
//!
//! Every route asks [`crate::api::ports::BusinessPort`], which checks that the caller is the site
//! owner before it looks at the business named; anyone else gets `403 forbidden` whatever the
//! name (the real reason goes to the audit record and the denial metric).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path, Caller};
use crate::api::state::ApiState;
use crate::api::views::{BusinessList, Sorted, SuspensionChange, WithStatus};
use crate::business::{BusinessError, Change};

/// Body of `PUT /businesses/{business}/suspension`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendBody {
    /// Why (shown to the cloud and in the audit trail), at most 500 characters.
    #[serde(default)]
    pub note: Option<String>,
}

/// The API error of a refusal; one by a caller who is not the owner is counted as a denial.
fn refused(state: &ApiState, e: BusinessError) -> ApiError {
    if let BusinessError::NotOwner { reason } = &e {
        state.0.metrics.observe_denial("suspend_business", reason);
    }
    e.into()
}

/// `GET /businesses`.
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<Sorted<BusinessList>> {
    let businesses = state
        .0
        .ports
        .businesses
        .list(&caller.session.user)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(Sorted(BusinessList { businesses }))
}

/// `PUT /businesses/{business}/suspension`: 201 when suspended now, 200 when it already was.
pub async fn suspend(
    State(state): State<ApiState>,
    caller: Caller,
    Path(business): Path<String>,
    ApiJson(body): ApiJson<SuspendBody>,
) -> ApiResult<WithStatus<SuspensionChange>> {
    let change = state
        .0
        .ports
        .businesses
        .suspend(&caller.session.user, &business, body.note)
        .await
        .map_err(|e| refused(&state, e))?;
    let (status, suspension) = match change {
        Change::Done(s) => (StatusCode::CREATED, s),
        Change::Unchanged(s) => (StatusCode::OK, s),
    };
    Ok(WithStatus(
        status,
        SuspensionChange::Suspended { suspension },
    ))
}

/// `DELETE /businesses/{business}/suspension`.
pub async fn restore(
    State(state): State<ApiState>,
    caller: Caller,
    Path(business): Path<String>,
) -> ApiResult<Sorted<SuspensionChange>> {
    let s = state
        .0
        .ports
        .businesses
        .restore(&caller.session.user, &business)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(Sorted(SuspensionChange::Restored {
        business: s.business,
        suspended_at: crate::clock::rfc3339(s.suspended_at),
    }))
}
