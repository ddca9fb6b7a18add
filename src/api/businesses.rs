//! Routes of the site owner's control over service businesses (`/api/v1/businesses…`).
//!
//! Every route asks [`super::ports::BusinessPort`], which checks that the caller is the site
//! owner before it looks at the business named; anyone else gets `403 forbidden` whatever the
//! name (the real reason goes to the audit record and the denial metric).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath as Path, Caller};
use crate::business::{BusinessError, Change, MAX_NOTE_CHARS};

type ApiResult<T> = Result<T, ApiError>;

/// Body of `PUT /businesses/{business}/suspension`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendBody {
    /// Why (shown to the cloud and in the audit trail), at most 500 characters.
    #[serde(default)]
    pub note: Option<String>,
}

fn business_error(state: &ApiState, e: BusinessError) -> ApiError {
    match e {
        BusinessError::NotOwner { reason } => {
            state.0.metrics.observe_denial("suspend_business", reason);
            ApiError::forbidden("only the site owner may manage service businesses")
        }
        BusinessError::UnknownBusiness => {
            ApiError::not_found("business_not_found", "no user of this site belongs to it")
        }
        BusinessError::NotSuspended => {
            ApiError::not_found("not_suspended", "the business is not suspended")
        }
        BusinessError::NoteTooLong => ApiError::unprocessable(
            "note_too_long",
            format!("`note` is longer than {MAX_NOTE_CHARS} characters"),
        ),
        BusinessError::Store(_) => ApiError::internal(),
    }
}

pub async fn list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Value>> {
    let list = state
        .0
        .ports
        .businesses
        .list(&caller.session.user)
        .await
        .map_err(|e| business_error(&state, e))?;
    Ok(Json(json!({ "businesses": list })))
}

pub async fn suspend(
    State(state): State<ApiState>,
    caller: Caller,
    Path(business): Path<String>,
    ApiJson(body): ApiJson<SuspendBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let change = state
        .0
        .ports
        .businesses
        .suspend(&caller.session.user, &business, body.note)
        .await
        .map_err(|e| business_error(&state, e))?;
    let (status, s) = match change {
        Change::Done(s) => (StatusCode::CREATED, s),
        Change::Unchanged(s) => (StatusCode::OK, s),
    };
    Ok((
        status,
        Json(json!({ "status": "suspended", "suspension": s })),
    ))
}

pub async fn restore(
    State(state): State<ApiState>,
    caller: Caller,
    Path(business): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = state
        .0
        .ports
        .businesses
        .restore(&caller.session.user, &business)
        .await
        .map_err(|e| business_error(&state, e))?;
    Ok(Json(
        json!({ "status": "restored", "business": s.business, "suspended_at": crate::clock::rfc3339(s.suspended_at) }),
    ))
}
