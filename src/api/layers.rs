//! Request hardening middleware: metrics, the security headers (tower-http's
//! `SetResponseHeaderLayer`), CORS (off unless origins are configured), the per-client
//! token-bucket rate limit, the body size check (which reads an oversized body to its end before
//! answering 413, so every client sees the answer) and the request timeout. Each answers with the
//! JSON error contract.
//!
//! CORS, the body limit and the timeout stay hand-written: tower-http's `CorsLayer` answers a
//! preflight from a foreign origin with a 200 where the API documents a JSON 403, its
//! `RequestBodyLimitLayer` answers 413 while the client is still sending (the client then sees a
//! reset, not the status) in plain text, and its `TimeoutLayer` answers an empty 408 where the
//! API documents `504 request_timeout`. See docs/architecture.md.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower_http::set_header::SetResponseHeaderLayer;

use super::error::ApiError;
use super::extract::client_ip;
use super::state::ApiState;

/// The security headers of every response, as `(name, value, replace)`: `replace` false leaves a
/// value the route set itself (the web page and its assets set their own policy and caching;
/// everything else is JSON and never cached).
pub const SECURITY_HEADERS: [(header::HeaderName, &str, bool); 5] = [
    (header::CACHE_CONTROL, "no-store", false),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff", true),
    (header::X_FRAME_OPTIONS, "DENY", true),
    (header::REFERRER_POLICY, "no-referrer", true),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
        false,
    ),
];

/// Adds [`SECURITY_HEADERS`] to every response of `router`.
pub fn secure<S: Clone + Send + Sync + 'static>(mut router: Router<S>) -> Router<S> {
    for (name, value, replace) in SECURITY_HEADERS {
        let value = HeaderValue::from_static(value);
        router = if replace {
            router.layer(SetResponseHeaderLayer::overriding(name, value))
        } else {
            router.layer(SetResponseHeaderLayer::if_not_present(name, value))
        };
    }
    router
}

/// Records the metrics of every response.
pub async fn observe(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = bounded_method(req.method());
    let resp = next.run(req).await;
    state
        .0
        .metrics
        .observe_http(&route, method, resp.status().as_u16(), started.elapsed());
    resp
}

/// Metric label for a method, from a bounded set.
fn bounded_method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// CORS: with no configured origins, no CORS header is ever sent (browsers then refuse
/// cross-origin reads). With origins, only an exact match is echoed; preflights are answered here.
pub async fn cors(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let origins = &state.0.cors_origins;
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .filter(|o| !origins.is_empty() && origins.iter().any(|a| a == *o))
        .cloned();
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(origin) = allowed else {
            return ApiError::forbidden("cross-origin requests from this origin are not allowed")
                .into_response();
        };
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        return resp;
    }
    let mut resp = next.run(req).await;
    if let Some(origin) = allowed {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// Refuses a request with 429 and `Retry-After` when its client's bucket is empty.
pub async fn rate_limit(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let ip = client_ip(req.extensions());
    match state.0.rate.check(ip, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            state.0.metrics.observe_rate_limited();
            ApiError::rate_limited(wait).into_response()
        }
    }
}

/// Most bytes of an oversized body read and discarded so that the client, still sending, gets
/// the 413 instead of a connection reset. A body declared larger than this is answered at once
/// and the connection closed.
pub const MAX_DISCARD_BYTES: u64 = 32 * 1024 * 1024;
/// Most time spent discarding an oversized body before answering anyway.
const DISCARD_TIME: Duration = Duration::from_secs(10);
/// Longest `POST /session` body accepted whatever `api.max_body_bytes` says: the longest token
/// the handler accepts with every character escaped as `\uXXXX` (6 bytes each), plus room for
/// the field name (itself possibly escaped) and whitespace.
pub const MAX_LOGIN_BODY: usize = 6 * super::session::MAX_TOKEN + 1024;

/// Body limit of the API: `api.max_body_bytes`, raised to [`MAX_LOGIN_BODY`] for the login.
pub async fn body_size(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let mut limit = state.0.limits.max_body_bytes;
    if req.method() == Method::POST && req.uri().path() == "/api/v1/session" {
        limit = limit.max(MAX_LOGIN_BODY);
    }
    limit_body(limit, state.0.limits.request_timeout, req, next).await
}

/// Reads the whole body (at most `limit` bytes, within `read_time`) before the handler runs.
///
/// An oversized body is answered `413 payload_too_large` only after the rest of it has been
/// read and discarded (up to [`MAX_DISCARD_BYTES`] and [`DISCARD_TIME`]): a server that answers
/// and closes while the client is still sending makes the client's kernel see a reset, and most
/// clients then report a broken pipe instead of the status. A client that asked
/// `Expect: 100-continue` is answered at once (it sends nothing until told to).
pub async fn limit_body(limit: usize, read_time: Duration, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit64 = limit as u64;
    if declared_length(&parts.headers).is_some_and(|n| n > limit64) {
        let waits_for_continue = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let drained = !waits_for_continue
            && declared_length(&parts.headers).is_some_and(|n| n <= MAX_DISCARD_BYTES)
            && discard(body, 0).await;
        return too_large(limit, drained);
    }
    match tokio::time::timeout(read_time, read_bounded(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(BodyError::TooLarge { drained })) => too_large(limit, drained),
        Ok(Err(BodyError::Unreadable)) => {
            ApiError::bad_request("unreadable_body", "the request body could not be read")
                .into_response()
        }
        Err(_) => ApiError::timeout(
            "request_timeout",
            "the request took too long and was abandoned",
        )
        .into_response(),
    }
}

enum BodyError {
    /// Longer than the limit; `drained` when the rest was read to its end.
    TooLarge {
        drained: bool,
    },
    Unreadable,
}

/// Collects at most `limit` bytes; past it, discards the rest.
async fn read_bounded(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            let seen = (buf.len() + data.len()) as u64;
            return Err(BodyError::TooLarge {
                drained: discard(body, seen).await,
            });
        }
        buf.extend_from_slice(data);
    }
    Ok(Bytes::from(buf))
}

/// Reads and drops the rest of `body` (`seen` bytes already read); true when it reached the end
/// within [`MAX_DISCARD_BYTES`] and [`DISCARD_TIME`].
async fn discard(mut body: Body, seen: u64) -> bool {
    let run = async move {
        let mut seen = seen;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > MAX_DISCARD_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DISCARD_TIME, run)
        .await
        .unwrap_or(false)
}

/// The 413; when the body was not read to its end the connection is closed after the answer
/// (its unread rest cannot be told apart from a next request).
fn too_large(limit: usize, drained: bool) -> Response {
    let mut resp = ApiError::payload_too_large(limit).into_response();
    if !drained {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn declared_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Bounds the whole request. Dropping the handler never cancels a Modbus write mid-flight: the
/// link task owns the transaction and finishes it.
pub async fn timeout(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.0.limits.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::timeout(
            "request_timeout",
            "the request took too long and was abandoned",
        )
        .into_response(),
    }
}
