//! `GET /access-requests` and `POST /access-requests`: requests for access sent upward.

use axum::extract::State;
use axum::http::StatusCode;

use super::ApiResult;
use super::grants::refused;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, Caller};
use crate::api::ports::AccessRequest;
use crate::api::state::ApiState;
use crate::api::views::{GrantChange, RequestList, Sorted, WithStatus};

/// Longest free-text message of an access request.
const MAX_MESSAGE: usize = 500;

/// `GET /access-requests`: the caller's own requests and those on scopes they manage.
pub async fn list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Sorted<RequestList>> {
    let requests = state
        .0
        .ports
        .delegation
        .list_requests(&caller.session.user)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(Sorted(RequestList { requests }))
}

/// Checks an access request before the engine sees it (`422 invalid_request`).
pub fn check_request(req: &AccessRequest) -> Result<(), ApiError> {
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
    Ok(())
}

/// `POST /access-requests`: records a request and sends it upward (202 `pending`).
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<AccessRequest>,
) -> ApiResult<WithStatus<GrantChange>> {
    check_request(&req)?;
    let request_id = state
        .0
        .ports
        .delegation
        .request_access(&caller.session.user, req)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(WithStatus(
        StatusCode::ACCEPTED,
        GrantChange::Pending { request_id },
    ))
}
