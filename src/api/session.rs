//! Sessions as both kinds of client hold them: the bearer login and logout of the JSON API, and
//! the web page's session cookie with its CSRF check.
//!
//! The JSON routes (`/api/v1/session`), the web routes (`/web/session`) and the caller extractor
//! all use this module; it uses none of them, so the three stay free of import cycles. It never
//! decides access: a session only says who the caller is.

use std::net::IpAddr;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::ports::{AuthError, SessionInfo};
use super::state::ApiState;
use super::views::SessionOut;
use crate::clock::rfc3339;

/// Longest email, password and token accepted at login. A token is printable ASCII and at most
/// 10 KiB, so that even written entirely as `\uXXXX` escapes (6 bytes a character) its login body
/// fits the default 64 KiB body limit: the documented maximum is never a 413.
pub const MAX_EMAIL: usize = 254;
pub const MAX_PASSWORD: usize = 1024;
pub const MAX_TOKEN: usize = 10 * 1024;

/// The session cookie. The `__Host-` prefix makes the browser refuse it unless it is `Secure`,
/// has `Path=/` and no `Domain`, so no sibling host can plant or shadow it.
pub const SESSION_COOKIE: &str = "__Host-sitegate_session";
/// The header that carries the CSRF token on state-changing cookie requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Body of `POST /session` and `POST /web/session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: Option<String>,
    password: Option<String>,
    /// An installer token envelope, as a JSON string.
    token: Option<String>,
    /// The device cookie of an earlier password login (password logins only).
    device: Option<String>,
}

/// Longest device cookie accepted at login (the box issues shorter ones).
pub const MAX_DEVICE: usize = 128;

/// What a login body asks for, once its shape and bounds are checked.
pub enum Credentials {
    Password {
        email: String,
        password: String,
        device: Option<String>,
    },
    Token(String),
}

/// Checks a login body before anything is asked of the auth engine: exactly one of the two
/// shapes (else `400 invalid_body`), and every value within the documented bounds (else
/// `401 invalid_credentials`, like any refused login). Lengths count characters, as the
/// document's `maxLength` does.
pub fn credentials(body: LoginBody) -> Result<Credentials, ApiError> {
    match body {
        LoginBody {
            email: Some(email),
            password: Some(password),
            token: None,
            device,
        } => {
            if email.chars().count() > MAX_EMAIL
                || password.chars().count() > MAX_PASSWORD
                || device
                    .as_ref()
                    .is_some_and(|d| d.chars().count() > MAX_DEVICE)
            {
                return Err(AuthError::InvalidCredentials.into());
            }
            Ok(Credentials::Password {
                email,
                password,
                device,
            })
        }
        LoginBody {
            email: None,
            password: None,
            token: Some(token),
            device: None,
        } => {
            if token.len() > MAX_TOKEN
                || !token
                    .bytes()
                    .all(|b| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e))
            {
                return Err(AuthError::InvalidCredentials.into());
            }
            Ok(Credentials::Token(token))
        }
        _ => Err(ApiError::bad_request(
            "invalid_body",
            "send either `email` and `password`, or `token`",
        )),
    }
}

/// Logs in with a password or an installer token; the session as `POST /session` returns it.
pub async fn login(state: &ApiState, ip: IpAddr, body: LoginBody) -> Result<SessionOut, ApiError> {
    let auth = &state.0.ports.auth;
    let (token, session, device) = match credentials(body)? {
        Credentials::Password {
            email,
            password,
            device,
        } => {
            auth.login_password_on_device(email.trim(), &password, ip, device.as_deref())
                .await?
        }
        Credentials::Token(token) => {
            let (token, session) = auth.login_token(token.as_bytes(), ip).await?;
            (token, session, None)
        }
    };
    Ok(session_out(token, session, device))
}

fn session_out(token: String, s: SessionInfo, device: Option<String>) -> SessionOut {
    SessionOut {
        token,
        token_type: "Bearer",
        user: s.user,
        expires_at: rfc3339(s.expires_at),
        device,
    }
}

/// Ends the session of `token`.
pub async fn logout(state: &ApiState, token: &str) -> Result<(), ApiError> {
    match state.0.ports.auth.logout(token).await {
        Ok(()) => Ok(()),
        Err(e @ (AuthError::Store(_) | AuthError::TokenUnavailable)) => Err(e.into()),
        // Whatever else the engine says, the token names no session.
        Err(_) => Err(ApiError::unauthenticated()),
    }
}

/// The session a bearer token names, as judged now by the auth engine.
pub async fn authenticate(state: &ApiState, token: &str) -> Result<SessionInfo, ApiError> {
    Ok(state.0.ports.auth.authenticate(token).await?)
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
pub fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
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

/// The `Set-Cookie` value that stores (or, with an empty token and age 0, clears) the session.
pub fn set_cookie(token: &str, max_age_secs: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict"
    ))
    .ok()
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
}
