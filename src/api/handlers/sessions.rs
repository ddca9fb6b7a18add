//! `POST /session`, `DELETE /session` and `GET /me`: the caller's session and access.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, Caller, ClientIp};
use crate::api::session::{self, LoginBody};
use crate::api::state::ApiState;
use crate::api::views::{MeOut, MeSession, MeUser, SessionOut, SiteCaps, Sorted, UnitCaps};
use crate::clock::rfc3339;

/// `POST /session`: a bearer session for a password or an installer token.
pub async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginBody>,
) -> ApiResult<(StatusCode, Json<SessionOut>)> {
    let out = session::login(&state, ip, body).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// `DELETE /session`.
pub async fn logout(State(state): State<ApiState>, caller: Caller) -> ApiResult<StatusCode> {
    session::logout(&state, &caller.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /me`: who the caller is and what they may do, per unit and at site level.
pub async fn me(State(state): State<ApiState>, caller: Caller) -> ApiResult<Sorted<MeOut>> {
    let Some(me) = state.0.ports.authz.me(&caller.session.user) else {
        return Err(ApiError::forbidden(
            "this account has no access on this site",
        ));
    };
    Ok(Sorted(MeOut {
        user: MeUser {
            id: me.user,
            email: me.email,
            name: me.name,
            business: me.business,
            business_suspended: me.business_suspended,
            owner: me.owner,
        },
        session: MeSession {
            expires_at: rfc3339(caller.session.expires_at),
        },
        management: me.management,
        site: SiteCaps {
            capabilities: me.site,
        },
        units: me
            .units
            .into_iter()
            .map(|(unit, capabilities)| UnitCaps { unit, capabilities })
            .collect(),
        grants: me.grants,
    }))
}
