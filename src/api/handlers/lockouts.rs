//! `GET /lockouts` and `DELETE /lockouts/{key}`: login throttles and lockouts (the auth engine
//! checks the `admin` role on the whole site, or the site owner).

use axum::extract::State;
use axum::http::StatusCode;

use super::ApiResult;
use crate::api::extract::{ApiPath as Path, Caller};
use crate::api::ports::AuthError;
use crate::api::state::ApiState;
use crate::api::views::{LockoutList, Sorted};

/// Longest lockout key looked up (`email:`/`device:` + a hash, or `ip:` + an address).
const MAX_KEY: usize = 128;

/// `GET /lockouts`: current login throttles and lockouts.
pub async fn list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Sorted<LockoutList>> {
    let lockouts = state.0.ports.auth.lockouts(&caller.session.user).await?;
    Ok(Sorted(LockoutList { lockouts }))
}

/// `DELETE /lockouts/{key}`: clears one lockout (audited as `lockout_cleared`).
pub async fn clear(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    if key.len() > MAX_KEY {
        return Err(AuthError::NoSuchLockout(String::new()).into());
    }
    state
        .0
        .ports
        .auth
        .clear_lockout(&caller.session.user, &key)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
