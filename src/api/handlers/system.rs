//! Health, metrics, the OpenAPI document and the fallbacks for unknown routes and methods.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ClientIp, bearer};
use crate::api::guard::allows;
use crate::api::openapi::OPENAPI_JSON;
use crate::api::ports::Target;
use crate::api::session;
use crate::api::state::ApiState;
use crate::api::views::{Health, Sorted};
use crate::clock::unix_ms;
use crate::model::Capability;

pub async fn no_route() -> ApiError {
    ApiError::route_not_found()
}

pub async fn wrong_method() -> ApiError {
    ApiError::method_not_allowed()
}

/// `GET /healthz`.
pub async fn healthz() -> Sorted<Health> {
    Sorted(Health { status: "ok" })
}

/// Prometheus text. Open to loopback clients (a local agent scraping the box); from the LAN it
/// needs a bearer token with `diagnose` at site level.
pub async fn metrics(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !ip.is_loopback() {
        let token = bearer(&headers)?.ok_or_else(ApiError::unauthenticated)?;
        let session = session::authenticate(&state, &token).await?;
        if !allows(&state, &session.user, Capability::Diagnose, &Target::Site) {
            return Err(ApiError::forbidden(
                "metrics need `diagnose` on the whole site",
            ));
        }
    }
    let body = state.0.metrics.render(unix_ms(state.0.clock.now()));
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response())
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
