//! First boot over the LAN: an unprovisioned box (no `[site]` in its config) serves only this
//! setup endpoint, over TLS with a freshly made self-signed certificate.
//!
//! `POST /api/v1/setup` takes the site and gateway ids and the cloud trust keys, protected by a
//! one-time setup code that the box prints on its console and in the journal (and writes to
//! `<state_dir>/setup-code`, mode 0600). A right code provisions the box through the same code
//! as `sitegate provision` and the daemon restarts itself on the new config; wrong codes are
//! audited, and after [`MAX_ATTEMPTS`] the code is replaced by a new one. Everything else answers
//! `503 not_provisioned`. This module never provisions without the code, and never logs a code
//! that was guessed.

use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Serving};
use crate::audit::{Audit, Event};
use crate::config::{Config, RawTrustKey};
use crate::provision::{self, Request};

/// Wrong codes accepted before the code is replaced.
pub const MAX_ATTEMPTS: u32 = 5;
/// File in the state directory that holds the current code (for installers with a shell).
pub const CODE_FILE: &str = "setup-code";
/// Largest setup request body.
const MAX_BODY: usize = 64 * 1024;

/// Alphabet without look-alike characters (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// A new 12-character code (about 59 bits), shown as `XXXX-XXXX-XXXX`.
pub fn new_code() -> String {
    let raw = crate::util::random_bytes::<12>();
    let chars: String = raw
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!("{}-{}-{}", &chars[..4], &chars[4..8], &chars[8..])
}

fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

struct Shared {
    cfg: Config,
    audit: Audit,
    code: Mutex<(String, u32)>,
    done: CancellationToken,
    /// SHA-256 of the served certificate, once the listener is up (for the installer to pin).
    fingerprint: std::sync::OnceLock<String>,
}

impl Shared {
    fn announce(&self, code: &str) {
        let path = self.cfg.state_dir.join(CODE_FILE);
        if let Err(e) = crate::util::write_private(&path, format!("{code}\n").as_bytes()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the setup code file");
        }
        // The code is meant to be read off the console and the journal by the installer.
        eprintln!("sitegate is not provisioned. Setup code: {code}");
        tracing::warn!(
            setup_code = %code,
            "not provisioned: serving only POST /api/v1/setup"
        );
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupBody {
    code: String,
    site: String,
    gateway: String,
    #[serde(default)]
    name: Option<String>,
    trust: Vec<RawTrustKey>,
    #[serde(default)]
    mqtt_url: Option<String>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": code, "message": message.into() })),
    )
        .into_response()
}

async fn setup(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let body: SetupBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
    };
    let ok = {
        let mut code = s.code.lock().unwrap_or_else(|e| e.into_inner());
        let given = normalize(&body.code);
        let want = normalize(&code.0);
        let ok = bool::from(given.as_bytes().ct_eq(want.as_bytes()));
        if !ok {
            code.1 += 1;
            if code.1 >= MAX_ATTEMPTS {
                *code = (new_code(), 0);
                s.announce(&code.0);
            }
        }
        ok
    };
    if !ok {
        let _ = s
            .audit
            .record(
                Event::new("setup", "denied")
                    .actor(format!("ip:{}", peer.ip()))
                    .detail(json!({ "reason": "wrong_code" })),
            )
            .await;
        return error(
            StatusCode::FORBIDDEN,
            "wrong_setup_code",
            "the setup code is not right",
        );
    }
    let Some(config_path) = s.cfg.source.clone() else {
        return error(
            StatusCode::CONFLICT,
            "no_config_file",
            "the daemon was started without a config file to write",
        );
    };
    let req = Request {
        site: body.site.clone(),
        gateway: body.gateway.clone(),
        name: body.name,
        state_dir: None,
        trust: body.trust,
        api_listen: None,
        mqtt_url: body.mqtt_url,
        force: false,
    };
    let profiles = crate::config_load::profile_names(s.cfg.profiles_dir.as_deref());
    let written = tokio::task::spawn_blocking(move || {
        provision::write_config(
            &config_path,
            &req,
            &|p| profiles.contains(p),
            time::OffsetDateTime::now_utc(),
        )
    })
    .await;
    match written {
        Ok(Ok(w)) => {
            let _ = s
                .audit
                .record(
                    Event::new("setup", "ok")
                        .actor(format!("ip:{}", peer.ip()))
                        .detail(json!({ "site": body.site, "gateway": body.gateway })),
                )
                .await;
            let _ = std::fs::remove_file(s.cfg.state_dir.join(CODE_FILE));
            tracing::info!(site = %body.site, gateway = %body.gateway, "provisioned over the LAN");
            // Restart on the new config once this response is on its way.
            let done = s.done.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                done.cancel();
            });
            (
                StatusCode::OK,
                Json(json!({
                    "site": body.site,
                    "gateway": body.gateway,
                    "config": w.config_path,
                    "restarting": true,
                })),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            let _ = s
                .audit
                .record(
                    Event::new("setup", "rejected")
                        .actor(format!("ip:{}", peer.ip()))
                        .detail(json!({ "reason": e.to_string() })),
                )
                .await;
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_setup",
                e.to_string(),
            )
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "setup failed",
        ),
    }
}

async fn not_provisioned() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_provisioned",
        "this box is not provisioned yet: POST /api/v1/setup with the setup code",
    )
}

/// `GET /api/v1/healthz` before provisioning: says so, with the certificate's fingerprint (the
/// same certificate is served after setup, so the installer pins it now and compares it with
/// what the browser shows). The fingerprint is public (any TLS client sees the certificate).
async fn health(State(s): State<Arc<Shared>>) -> Response {
    let fp = s.fingerprint.get().cloned();
    Json(json!({ "status": "setup", "provisioned": false, "tls_fingerprint": fp })).into_response()
}

/// Serves the setup endpoint until setup succeeds (then cancels `done`, which restarts the
/// daemon on the new config) or the daemon stops.
pub async fn serve(
    cfg: &Config,
    audit: Audit,
    done: CancellationToken,
    _tasks: &TaskTracker,
    listener: Option<std::net::TcpListener>,
) -> Result<Serving, api::ServeError> {
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        audit,
        code: Mutex::new((new_code(), 0)),
        done: done.clone(),
        fingerprint: std::sync::OnceLock::new(),
    });
    {
        let code = shared.code.lock().unwrap_or_else(|e| e.into_inner());
        shared.announce(&code.0);
    }
    let read_time = cfg.api.request_timeout;
    let mut router = Router::new()
        .route("/api/v1/setup", post(setup))
        .route("/api/v1/healthz", get(health));
    // The web page and its assets: on a blank box the page shows the first-boot form.
    for (path, handler) in api::web::page_routes() {
        router = router.route(path, handler);
    }
    let router = router
        .fallback(not_provisioned)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        // Bounds the body and answers an oversized one with a 413 the client can read.
        .layer(axum::middleware::from_fn(move |req, next| {
            api::limit_body(MAX_BODY, read_time, req, next)
        }))
        .with_state(shared.clone());
    let serving = api::serve_router_on(
        router,
        &cfg.api,
        &cfg.state_dir,
        done.child_token(),
        listener,
    )
    .await?;
    if let Some(fp) = &serving.tls_fingerprint {
        let _ = shared.fingerprint.set(fp.clone());
    }
    Ok(serving)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_and_compare_without_dashes_or_case() {
        let c = new_code();
        assert_eq!(c.len(), 14);
        assert_eq!(
            normalize(&c),
            normalize(&c.to_lowercase().replace('-', " "))
        );
        assert_ne!(new_code(), c);
    }
}
