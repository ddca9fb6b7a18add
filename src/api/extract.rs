//! Request extractors that speak the API's error contract: the authenticated caller, JSON bodies
//! and query strings whose rejections become stable JSON errors instead of axum's plain text.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::{ApiError, safe};
use super::ports::SessionInfo;
use super::session;
use super::state::ApiState;

/// Longest bearer token accepted before asking the engine (tokens are 43 base64url chars).
const MAX_BEARER_LEN: usize = 256;

/// The peer address of the connection (loopback if unknown, e.g. in router-only tests).
pub fn client_ip(parts_ext: &axum::http::Extensions) -> IpAddr {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The `Authorization: Bearer …` token of a request, if it is well formed.
pub fn bearer(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ApiError::unauthenticated())?;
    let (scheme, token) = v.split_once(' ').ok_or_else(ApiError::unauthenticated)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.len() > MAX_BEARER_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::unauthenticated());
    }
    Ok(Some(token.to_string()))
}

/// The peer address of the connection.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}

/// An authenticated caller: the request carried a bearer token of a live session, or the web
/// page's session cookie (see [`super::session`]).
pub struct Caller {
    pub session: SessionInfo,
    pub token: String,
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        // On the console face the caller is the connection's Unix user, admitted when the
        // connection was accepted; tokens and cookies mean nothing there.
        if state.0.console {
            let peer = parts
                .extensions
                .get::<ConnectInfo<super::console::ConsolePeer>>()
                .ok_or_else(ApiError::unauthenticated)?;
            let session = SessionInfo {
                user: crate::model::UserId::console(peer.0.uid),
                expires_at: state.0.clock.now() + time::Duration::days(1),
            };
            return Ok(Caller {
                session,
                token: String::new(),
            });
        }
        // A bearer token wins; otherwise the web page's session cookie (CSRF-checked).
        let token = match bearer(&parts.headers)? {
            Some(t) => t,
            None => session::cookie_caller_token(parts)?.ok_or_else(ApiError::unauthenticated)?,
        };
        let session = session::authenticate(state, &token).await?;
        Ok(Caller { session, token })
    }
}

/// A JSON body whose rejections follow the error contract: syntax → 400 `malformed_json`,
/// wrong shape (anything but a JSON object included) → 400 `invalid_body`, too large → 413, wrong
/// content type → 415.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        match axum::Json::<Object<T>>::from_request(req, state).await {
            Ok(axum::Json(Object(v))) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(&rej, state.0.limits.max_body_bytes)),
        }
    }
}

/// `T` read from a JSON object and nothing else. serde's derived structs also accept an array of
/// the fields in order (`[]` for a struct whose fields are all optional), which no body the API
/// documents is.
pub(super) struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(PhantomData)).map(Object)
    }
}

pub(super) fn json_rejection(rej: &JsonRejection, limit: usize) -> ApiError {
    match rej {
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("malformed_json", "the request body is not valid JSON")
        }
        JsonRejection::JsonDataError(e) => {
            // serde's message names the field and expectation, never a Rust type path; strip
            // axum's generic prefix.
            let detail = e.body_text();
            let detail = detail
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&detail);
            ApiError::bad_request(
                "invalid_body",
                format!("the request body has the wrong shape: {}", safe(detail)),
            )
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as `Content-Type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::payload_too_large(limit)
        }
        _ => ApiError::bad_request("unreadable_body", "the request body could not be read"),
    }
}

/// Path parameters whose rejection (e.g. a segment that is not UTF-8 once decoded) is a JSON 404:
/// such a path can name no resource.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(_) => Err(ApiError::route_not_found()),
        }
    }
}

/// Query parameters whose rejection is a 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(query_rejection(&rej)),
        }
    }
}

pub(super) fn query_rejection(rej: &QueryRejection) -> ApiError {
    let text = rej.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    ApiError::bad_request(
        "invalid_query",
        format!("invalid query string: {}", safe(detail)),
    )
}
