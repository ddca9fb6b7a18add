//! The local web app: one page and its static assets, served on the API's listener, plus the
//! cookie session the page uses.
//!
//! The page is one more client of the JSON API: it logs in through [`login`] (which wraps the
//! API's own login and puts the session token into an `HttpOnly; Secure; SameSite=Strict` cookie
//! instead of handing it to script), then calls the same `/api/v1` routes, authorized exactly as
//! a bearer client is. A request that authenticates by cookie and changes state must carry the
//! session's CSRF token in `X-CSRF-Token` (see [`cookie_caller_token`]); bearer clients are
//! unchanged.
//!
//! Assets are embedded in the binary and served under content-hashed names with a one-year
//! `immutable` cache; the page itself is never cached. Every page response carries a strict
//! Content-Security-Policy (no inline script, no `eval`, nothing from another origin).

use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use base64::Engine;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Caller, ClientIp};
use super::handlers;

/// The session cookie. The `__Host-` prefix makes the browser refuse it unless it is `Secure`,
/// has `Path=/` and no `Domain`, so no sibling host can plant or shadow it.
pub const SESSION_COOKIE: &str = "__Host-sitegate_session";
/// The header that carries the CSRF token on state-changing cookie requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The policy of the page and its assets.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &[u8] = include_bytes!("assets/app.js");
const APP_CSS: &[u8] = include_bytes!("assets/app.css");
const ICON_SVG: &[u8] = include_bytes!("assets/icon.svg");

/// One embedded asset under its content-hashed name.
struct Asset {
    name: String,
    content_type: &'static str,
    body: &'static [u8],
}

fn hashed(stem: &str, ext: &str, body: &'static [u8], content_type: &'static str) -> Asset {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let short = hex::encode(&digest.as_ref()[..6]);
    Asset {
        name: format!("{stem}.{short}.{ext}"),
        content_type,
        body,
    }
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    vec![
        hashed("app", "js", APP_JS, "text/javascript; charset=utf-8"),
        hashed("app", "css", APP_CSS, "text/css; charset=utf-8"),
        hashed("icon", "svg", ICON_SVG, "image/svg+xml"),
    ]
});

/// The page with the hashed asset names filled in.
static INDEX: LazyLock<String> = LazyLock::new(|| {
    let mut html = INDEX_HTML.to_string();
    for (placeholder, i) in [("{{app.js}}", 0), ("{{app.css}}", 1), ("{{icon.svg}}", 2)] {
        if let Some(a) = ASSETS.get(i) {
            html = html.replace(placeholder, &format!("/assets/{}", a.name));
        }
    }
    html
});

/// The web routes (outside `/api/v1`, so they are not part of the OpenAPI document).
pub fn routes() -> Vec<(&'static str, MethodRouter<ApiState>)> {
    vec![
        ("/", get(index)),
        ("/assets/{name}", get(asset)),
        ("/web/session", get(session_info).post(login).delete(logout)),
    ]
}

fn page_headers(resp: &mut Response, cache: &'static str) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}

async fn index() -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX.as_str(),
    )
        .into_response();
    page_headers(&mut resp, "no-cache");
    resp
}

async fn asset(ApiPath(name): ApiPath<String>) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::route_not_found().into_response();
    };
    let mut resp = ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response();
    page_headers(&mut resp, "public, max-age=31536000, immutable");
    resp
}

/// The CSRF token of a session: a hash of its secret token, so it needs no storage, dies with
/// the session, and cannot be computed without the cookie (which script cannot read).
pub fn csrf_token(session_token: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"sitegate web csrf v1\0");
    ctx.update(session_token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.finish().as_ref())
}

/// The session token from the cookie, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// Methods that change nothing and so need no CSRF token.
fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// For a request without a bearer token: the session token of its cookie. A state-changing
/// request must also come from this origin (when the browser says where it comes from) and carry
/// the session's CSRF token; otherwise `403 csrf_failed`.
pub fn cookie_caller_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    let Some(token) = session_cookie(&parts.headers) else {
        return Ok(None);
    };
    if !is_safe(&parts.method) {
        check_origin(&parts.headers)?;
        let expected = csrf_token(&token);
        let given = parts
            .headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(given.ct_eq(expected.as_bytes())) {
            return Err(csrf_failed());
        }
    }
    Ok(Some(token))
}

fn csrf_failed() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_failed",
        "this request did not come from the box's own page; reload the page and try again",
    )
}

/// An `Origin` header, when present, must name this host.
fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let ok = origin.to_str().ok().is_some_and(|o| {
        !host.is_empty()
            && (o.strip_prefix("https://") == Some(host) || o.strip_prefix("http://") == Some(host))
    });
    if ok { Ok(()) } else { Err(csrf_failed()) }
}

fn set_cookie(token: &str, max_age_secs: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict"
    ))
    .ok()
}

/// `POST /web/session`: the API's login (same body, same throttles, same errors); the token goes
/// into the cookie and only the CSRF token and expiry are returned to script.
async fn login(
    state: State<ApiState>,
    ip: ClientIp,
    headers: HeaderMap,
    body: ApiJson<handlers::LoginBody>,
) -> Result<Response, ApiError> {
    check_origin(&headers)?;
    let clock_now = state.0.0.clock.now();
    let (status, Json(out)) = handlers::login(state, ip, body).await?;
    let out = serde_json::to_value(&out).map_err(|_| ApiError::internal())?;
    let token = out["token"].as_str().ok_or_else(ApiError::internal)?;
    let expires = out["expires_at"].clone();
    let max_age = out["expires_at"]
        .as_str()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|e| (e - clock_now).whole_seconds().max(0))
        .unwrap_or(0);
    let cookie = set_cookie(token, max_age).ok_or_else(ApiError::internal)?;
    let mut resp = (
        status,
        Json(json!({
            "user": out["user"],
            "expires_at": expires,
            "csrf_token": csrf_token(token),
        })),
    )
        .into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `GET /web/session`: whether the cookie names a live session, and its CSRF token (readable only
/// by this origin: no CORS header is ever sent for it).
async fn session_info(state: State<ApiState>, caller: Caller) -> Json<Value> {
    let _ = state;
    Json(json!({
        "user": caller.session.user,
        "expires_at": crate::clock::rfc3339(caller.session.expires_at),
        "csrf_token": csrf_token(&caller.token),
    }))
}

/// `DELETE /web/session`: ends the session (CSRF-checked like every state change) and clears the
/// cookie.
async fn logout(state: State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    let status = handlers::logout(state, caller).await?;
    let mut resp = status.into_response();
    if let Some(c) = set_cookie("", 0) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder()
            .method(method)
            .uri("/api/v1/units");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_cookie_get_needs_no_csrf_token_but_a_cookie_put_without_it_is_refused() {
        let cookie = format!("a=b; {SESSION_COOKIE}=tok123");
        let p = parts(Method::GET, &[("cookie", &cookie)]);
        assert_eq!(cookie_caller_token(&p).unwrap().as_deref(), Some("tok123"));
        let p = parts(Method::PUT, &[("cookie", &cookie)]);
        let e = cookie_caller_token(&p).unwrap_err();
        assert_eq!(e.code, "csrf_failed");
        let p = parts(Method::PUT, &[("cookie", &cookie), (CSRF_HEADER, "wrong")]);
        assert_eq!(cookie_caller_token(&p).unwrap_err().code, "csrf_failed");
        let good = csrf_token("tok123");
        let p = parts(Method::PUT, &[("cookie", &cookie), (CSRF_HEADER, &good)]);
        assert_eq!(cookie_caller_token(&p).unwrap().as_deref(), Some("tok123"));
    }

    #[test]
    fn a_cookie_post_from_another_origin_is_refused_even_with_the_token() {
        let cookie = format!("{SESSION_COOKIE}=tok123");
        let good = csrf_token("tok123");
        let p = parts(
            Method::POST,
            &[
                ("cookie", &cookie),
                (CSRF_HEADER, &good),
                ("host", "box:8443"),
                ("origin", "https://evil.example"),
            ],
        );
        assert_eq!(cookie_caller_token(&p).unwrap_err().code, "csrf_failed");
        let p = parts(
            Method::POST,
            &[
                ("cookie", &cookie),
                (CSRF_HEADER, &good),
                ("host", "box:8443"),
                ("origin", "https://box:8443"),
            ],
        );
        assert_eq!(cookie_caller_token(&p).unwrap().as_deref(), Some("tok123"));
    }

    #[test]
    fn the_csrf_token_differs_per_session_and_never_equals_the_session_token() {
        assert_ne!(csrf_token("a"), csrf_token("b"));
        assert_ne!(csrf_token("a"), "a");
    }

    #[test]
    fn the_page_names_every_asset_by_its_hash_and_has_no_inline_script() {
        for a in ASSETS.iter() {
            assert!(INDEX.contains(&format!("/assets/{}", a.name)), "{}", a.name);
        }
        assert!(!INDEX.contains("{{"));
        let lower = INDEX.to_lowercase();
        assert_eq!(lower.matches("<script").count(), 1);
        assert!(lower.contains("<script src=\"/assets/app."));
        for (i, _) in lower.match_indices(" on") {
            let rest = &lower[i + 3..];
            let name_len = rest.bytes().take_while(|b| b.is_ascii_lowercase()).count();
            assert!(
                !rest[name_len..].starts_with('='),
                "inline event handler at {i}"
            );
        }
        assert!(!lower.contains("style="), "no inline styles");
    }
}
