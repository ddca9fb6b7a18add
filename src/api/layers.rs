//! Request hardening middleware: metrics and security headers, CORS (off unless origins are
//! configured), the per-client token-bucket rate limit, the body size check and the request
//! timeout. Each answers with the JSON error contract.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::ApiState;
use super::error::ApiError;
use super::extract::client_ip;

/// Most clients tracked by the rate limiter; beyond it, idle (full) buckets are dropped first.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Records metrics for every response and adds the security headers.
pub async fn observe_and_secure(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = bounded_method(req.method());
    let mut resp = next.run(req).await;
    state
        .0
        .metrics
        .observe_http(&route, method, resp.status().as_u16(), started.elapsed());
    let h = resp.headers_mut();
    // The web page and its assets set their own policy and caching; everything else is JSON.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
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

/// A token bucket per client address.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; `Err(wait)` when the bucket is empty.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED_CLIENTS && !map.contains_key(&ip) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
            if map.len() >= MAX_TRACKED_CLIENTS {
                // Every tracked client is active: refuse newcomers rather than grow without bound.
                return Err(Duration::from_secs(1));
            }
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }
}

/// Refuses a request with 429 and `Retry-After` when its client's bucket is empty.
pub async fn rate_limit(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let ip = client_ip(req.extensions());
    match state.0.rate.check(ip, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            state.0.metrics.rate_limited.inc(&[]);
            ApiError::rate_limited(wait).into_response()
        }
    }
}

/// Refuses a declared body larger than the limit before reading it (chunked bodies are cut by
/// `DefaultBodyLimit` in the JSON extractor).
pub async fn body_size(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let limit = state.0.limits.max_body_bytes;
    if declared_length(req.headers()).is_some_and(|n| n > limit as u64) {
        return ApiError::payload_too_large(limit).into_response();
    }
    next.run(req).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_the_rate() {
        let rl = RateLimiter::new(10, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(ip, t0).is_ok());
        }
        let wait = rl.check(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(rl.check(other, t0).is_ok(), "buckets are per address");
        assert!(rl.check(ip, t0 + Duration::from_millis(100)).is_ok());
        assert!(rl.check(ip, t0 + Duration::from_millis(100)).is_err());
    }
}
