//! The local web app: one page and its static assets, served on the API's listener, plus the
//! cookie session the page uses.
//!
//! The page is one more client of the JSON API: it logs in through [`login`] (which runs the
//! API's own login, [`super::session::login`], and puts the session token into an `HttpOnly; Secure; SameSite=Strict` cookie
//! instead of handing it to script), then calls the same `/api/v1` routes, authorized exactly as
//! a bearer client is. A request that authenticates by cookie and changes state must carry the
//! session's CSRF token in `X-CSRF-Token` (see [`super::session::cookie_caller_token`]); bearer
//! clients are unchanged.
//!
//! Assets are embedded in the binary and served under content-hashed names with a one-year
//! `immutable` cache; the page itself is never cached. Every page response carries a strict
//! Content-Security-Policy (no inline script, no `eval`, nothing from another origin).

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Caller, ClientIp};
use super::session::{self, LoginBody, csrf_token, set_cookie};
use super::state::ApiState;
use super::views::{Sorted, WebSession, WithStatus};

pub use super::session::{CSRF_HEADER, SESSION_COOKIE};

/// The policy of the page and its assets.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &[u8] = include_bytes!("assets/app.js");
const APP_CSS: &[u8] = include_bytes!("assets/app.css");
const ICON_SVG: &[u8] = include_bytes!("assets/icon.svg");
// The same, gzip-compressed by build.rs (empty when the build machine had no gzip).
const APP_JS_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/app.js.gz"));
const APP_CSS_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/app.css.gz"));
const ICON_SVG_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/icon.svg.gz"));

/// One embedded asset under its content-hashed name.
struct Asset {
    name: String,
    content_type: &'static str,
    body: &'static [u8],
    /// The body gzip-compressed, when that is smaller.
    gzip: Option<&'static [u8]>,
}

fn hashed(
    stem: &str,
    ext: &str,
    body: &'static [u8],
    gzip: &'static [u8],
    content_type: &'static str,
) -> Asset {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let short = hex::encode(&digest.as_ref()[..6]);
    Asset {
        name: format!("{stem}.{short}.{ext}"),
        content_type,
        body,
        gzip: (!gzip.is_empty() && gzip.len() < body.len()).then_some(gzip),
    }
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    vec![
        hashed(
            "app",
            "js",
            APP_JS,
            APP_JS_GZ,
            "text/javascript; charset=utf-8",
        ),
        hashed("app", "css", APP_CSS, APP_CSS_GZ, "text/css; charset=utf-8"),
        hashed("icon", "svg", ICON_SVG, ICON_SVG_GZ, "image/svg+xml"),
    ]
});

/// Whether an `Accept-Encoding` header accepts gzip (`gzip` or `*`, not with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

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
    let mut r = page_routes();
    r.push(("/web/session", get(session_info).post(login).delete(logout)));
    r
}

/// The page and its assets alone, for any router (the first-boot setup server serves them too:
/// on a blank box the page shows the setup form).
pub fn page_routes<S: Clone + Send + Sync + 'static>() -> Vec<(&'static str, MethodRouter<S>)> {
    vec![("/", get(index)), ("/assets/{name}", get(asset))]
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

async fn asset(ApiPath(name): ApiPath<String>, headers: HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::route_not_found().into_response();
    };
    let mut resp = match a.gzip.filter(|_| accepts_gzip(&headers)) {
        Some(gz) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gz,
        )
            .into_response(),
        None => ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response(),
    };
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    page_headers(&mut resp, "public, max-age=31536000, immutable");
    resp
}

/// `POST /web/session`: the API's login (same body, same throttles, same errors); the token goes
/// into the cookie and only the CSRF token and expiry are returned to script.
async fn login(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    session::check_origin(&headers)?;
    let clock_now = state.0.clock.now();
    let out = session::login(&state, ip, body).await?;
    let max_age = crate::clock::parse_rfc3339(&out.expires_at)
        .map(|e| (e - clock_now).whole_seconds().max(0))
        .unwrap_or(0);
    let cookie = set_cookie(&out.token, max_age).ok_or_else(ApiError::internal)?;
    let body = WebSession {
        user: out.user,
        expires_at: out.expires_at,
        csrf_token: csrf_token(&out.token),
    };
    let mut resp = WithStatus(StatusCode::CREATED, body).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `GET /web/session`: whether the cookie names a live session, and its CSRF token (readable only
/// by this origin: no CORS header is ever sent for it).
async fn session_info(caller: Caller) -> Sorted<WebSession> {
    Sorted(WebSession {
        user: caller.session.user,
        expires_at: crate::clock::rfc3339(caller.session.expires_at),
        csrf_token: csrf_token(&caller.token),
    })
}

/// `DELETE /web/session`: ends the session (CSRF-checked like every state change) and clears the
/// cookie.
async fn logout(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    session::logout(&state, &caller.token).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(c) = set_cookie("", 0) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn gzip_is_served_only_to_clients_that_accept_it() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip, deflate, br, zstd"));
        assert!(h("br;q=1.0, GZIP;q=0.5"));
        assert!(h("*"));
        assert!(!h("br, zstd"));
        assert!(!h("gzip;q=0, br"));
        assert!(!h("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_precompressed_assets_unpack_to_the_served_ones() {
        // The build machine of this test has gzip (the build script used it).
        let js = ASSETS.iter().find(|a| a.name.starts_with("app.")).unwrap();
        for a in ASSETS.iter() {
            let Some(gz) = a.gzip else {
                continue;
            };
            let mut child = std::process::Command::new("gzip")
                .arg("-dc")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            std::io::Write::write_all(&mut stdin, gz).unwrap();
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.stdout, a.body, "{}", a.name);
        }
        let gz = js.gzip.expect("app.js is precompressed");
        assert!(
            gz.len() * 3 < js.body.len(),
            "{} -> {}",
            js.body.len(),
            gz.len()
        );
    }
}
