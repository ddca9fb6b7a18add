//! The LAN API: HTTP/JSON under `/api/v1`, over TLS by default (see [`crate::tls`]).
//!
//! Owns the routes, the error contract ([`error::ApiError`]), the request hardening (body,
//! header and time limits, per-client rate limit, CORS, security headers) and the serving loop.
//! It reaches the engines only through the traits in [`ports`], and never decides access by
//! itself: every check is a question to [`ports::AuthzPort::decide`]. It must never reveal
//! whether a unit outside the caller's scope exists (such a unit answers exactly like a missing
//! one), and never put internal detail (paths, SQL, type names) into a response.
//!
//! Every route is listed once in [`ROUTES`], which builds the router; `docs/openapi.json` must
//! describe each of them (a test enforces it).

pub mod console;
pub mod error;
mod extract;
mod guard;
mod handlers;
mod layers;
pub mod openapi;
pub mod ports;
mod rate;
mod scan_jobs;
mod session;
mod state;
mod stream;
pub mod views;
pub mod web;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post, put};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ApiMode};
use handlers::{
    access_requests, audit, businesses, commands, diagnostics, grants, lockouts, scans, sessions,
    site_config, system, units,
};

use crate::model::Capability;
use axum::response::{IntoResponse, Response};
pub use error::ApiError;
use error::{
    Answer, CALLER, CONFIG_EDIT_ERRORS, CONFIG_READ_ERRORS, CSRF, Code, DELEGATION_ERRORS,
    EVERY_ROUTE, JSON_BODY, LOCKOUT_ERRORS, LOGIN, PATH, QUERY, READ_ERRORS, WRITE_ERRORS,
};
pub use guard::Access;
use guard::{DIAGNOSE_CAPS, VIEW_CAPS, WRITE_CAPS};
pub use layers::{MAX_DISCARD_BYTES, MAX_LOGIN_BODY, limit_body};
pub use openapi::OPENAPI_JSON;
pub use state::{ApiState, ConfigFile, Limits, Ports};

/// How long in-flight requests get to finish after shutdown is requested.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Most headers accepted in one request.
const MAX_HEADERS: usize = 64;
/// Largest request head (request line + headers) hyper buffers (its minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client gets to send a complete request head (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One route: method, path template (axum and OpenAPI share the `{param}` syntax), the handler
/// that serves it, and every error answer it may give (besides [`error::EVERY_ROUTE`]'s):
/// the sets of [`error`] for the extractors and engine errors it uses, and its own. The router
/// holds the handler to them (see [`declared_only`]); `docs/openapi.json` must list exactly these
/// under the operation's `x-error-codes` and responses (a test enforces it).
pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    handler: fn() -> MethodRouter<ApiState>,
    pub answers: &'static [&'static [Answer]],
    /// Who may use it (the document's `x-access`).
    pub access: Access,
}

impl RouteDef {
    /// Every error answer of the route, [`error::EVERY_ROUTE`]'s included.
    pub fn error_answers(&self) -> impl Iterator<Item = Answer> + '_ {
        self.answers
            .iter()
            .flat_map(|a| a.iter())
            .chain(EVERY_ROUTE)
            .copied()
    }

    fn may_answer(&self, status: u16, code: &str) -> bool {
        // A wrong method is answered by the path's method router, inside this guard.
        self.error_answers().any(|(s, c)| s == status && c == code)
            || (status, code) == (405, "method_not_allowed")
    }
}

/// Holds a route to the error answers it declares. One it does not declare is a bug (the
/// document does not list it): it is logged, and in debug builds — every test and the contract
/// run — answered as `500 internal` so that the test fails; release builds send it as is.
async fn declared_only(def: &'static RouteDef, resp: Response) -> Response {
    let Some(Code(code)) = resp.extensions().get::<Code>().copied() else {
        return resp;
    };
    let status = resp.status().as_u16();
    if def.may_answer(status, code) {
        return resp;
    }
    tracing::error!(
        method = %def.method,
        route = def.path,
        status,
        code,
        "undeclared error answer (not in docs/openapi.json for this route)"
    );
    if cfg!(debug_assertions) {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("undeclared error answer {status} `{code}`"),
        )
        .into_response()
    } else {
        resp
    }
}

/// Every route of the API. The router is built from this table and nothing else.
pub static ROUTES: &[RouteDef] = &[
    RouteDef {
        method: Method::POST,
        path: "/api/v1/session",
        access: Access::Public,
        handler: || post(sessions::login),
        answers: &[JSON_BODY, LOGIN],
    },
    RouteDef {
        method: Method::DELETE,
        path: "/api/v1/session",
        access: Access::Session,
        handler: || delete(sessions::logout),
        answers: &[CALLER, CSRF],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/me",
        access: Access::Session,
        handler: || get(sessions::me),
        answers: &[CALLER, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/units",
        access: Access::Session,
        handler: || get(units::list),
        answers: &[CALLER],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/units/stream",
        access: Access::Session,
        handler: || get(stream::units_stream),
        answers: &[CALLER],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/units/{unit}",
        access: Access::Unit(&VIEW_CAPS),
        handler: || get(units::detail),
        answers: &[CALLER, PATH, QUERY, READ_ERRORS],
    },
    RouteDef {
        method: Method::PUT,
        path: "/api/v1/units/{unit}/points/{point}",
        access: Access::Unit(&WRITE_CAPS),
        handler: || put(commands::write_point),
        answers: &[
            CALLER,
            CSRF,
            PATH,
            JSON_BODY,
            &[(403, "forbidden"), (422, "point_read_only")],
            WRITE_ERRORS,
        ],
    },
    RouteDef {
        method: Method::POST,
        path: "/api/v1/units/{unit}/commands/{command}",
        access: Access::Unit(&WRITE_CAPS),
        handler: || post(commands::run_command),
        answers: &[CALLER, CSRF, PATH, &[(403, "forbidden")], WRITE_ERRORS],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/units/{unit}/diagnostics",
        access: Access::Unit(&DIAGNOSE_CAPS),
        handler: || get(diagnostics::read),
        answers: &[CALLER, PATH, QUERY, &[(403, "forbidden")], READ_ERRORS],
    },
    RouteDef {
        method: Method::POST,
        path: "/api/v1/units/{unit}/test",
        access: Access::Unit(&DIAGNOSE_CAPS),
        handler: || post(diagnostics::test),
        answers: &[CALLER, CSRF, PATH, &[(403, "forbidden")], READ_ERRORS],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/scans",
        access: Access::Site(Capability::Diagnose),
        handler: || get(scans::list),
        answers: &[CALLER, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::POST,
        path: "/api/v1/scans",
        access: Access::Site(Capability::Diagnose),
        handler: || post(scans::start),
        answers: &[
            CALLER,
            CSRF,
            JSON_BODY,
            &[
                (403, "forbidden"),
                (409, "scan_running"),
                (422, "invalid_request"),
            ],
        ],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/scans/{id}",
        access: Access::Site(Capability::Diagnose),
        handler: || get(scans::status),
        answers: &[CALLER, PATH, &[(403, "forbidden"), (404, "scan_not_found")]],
    },
    RouteDef {
        method: Method::DELETE,
        path: "/api/v1/scans/{id}",
        access: Access::Site(Capability::Diagnose),
        handler: || delete(scans::cancel),
        answers: &[
            CALLER,
            CSRF,
            PATH,
            &[(403, "forbidden"), (404, "scan_not_found")],
        ],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/config/links",
        access: Access::Site(Capability::Configure),
        handler: || get(site_config::links),
        answers: &[CALLER, CONFIG_READ_ERRORS],
    },
    RouteDef {
        method: Method::POST,
        path: "/api/v1/config/links",
        access: Access::Site(Capability::Configure),
        handler: || post(site_config::add_link),
        answers: &[CALLER, CSRF, JSON_BODY, CONFIG_EDIT_ERRORS],
    },
    RouteDef {
        method: Method::DELETE,
        path: "/api/v1/config/links/{link}",
        access: Access::Site(Capability::Configure),
        handler: || delete(site_config::remove_link),
        answers: &[
            CALLER,
            CSRF,
            PATH,
            CONFIG_EDIT_ERRORS,
            &[(404, "link_not_found"), (409, "link_in_use")],
        ],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/config/units",
        access: Access::Site(Capability::Configure),
        handler: || get(site_config::units),
        answers: &[CALLER, CONFIG_READ_ERRORS],
    },
    RouteDef {
        method: Method::POST,
        path: "/api/v1/config/units",
        access: Access::Site(Capability::Configure),
        handler: || post(site_config::add_unit),
        answers: &[CALLER, CSRF, JSON_BODY, CONFIG_EDIT_ERRORS],
    },
    RouteDef {
        method: Method::DELETE,
        path: "/api/v1/config/units/{unit}",
        access: Access::Site(Capability::Configure),
        handler: || delete(site_config::remove_unit),
        answers: &[
            CALLER,
            CSRF,
            PATH,
            CONFIG_EDIT_ERRORS,
            &[(404, "unit_not_found")],
        ],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/audit",
        access: Access::SomeUnit(Capability::Diagnose),
        handler: || get(audit::query),
        answers: &[CALLER, QUERY, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/audit/verify",
        access: Access::Site(Capability::Diagnose),
        handler: || get(audit::verify),
        answers: &[CALLER, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/roles",
        access: Access::SomeUnit(Capability::ManageUsers),
        handler: || get(grants::roles),
        answers: &[CALLER, QUERY, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/grants",
        access: Access::Session,
        handler: || get(grants::list),
        answers: &[CALLER],
    },
    RouteDef {
        method: Method::POST,
        path: "/api/v1/grants",
        access: Access::ManagesScope,
        handler: || post(grants::create),
        answers: &[
            CALLER,
            CSRF,
            JSON_BODY,
            &[(422, "invalid_request")],
            DELEGATION_ERRORS,
        ],
    },
    RouteDef {
        method: Method::DELETE,
        path: "/api/v1/grants/{id}",
        access: Access::ManagesScope,
        handler: || delete(grants::revoke),
        answers: &[CALLER, CSRF, PATH, DELEGATION_ERRORS],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/access-requests",
        access: Access::Session,
        handler: || get(access_requests::list),
        answers: &[CALLER],
    },
    RouteDef {
        method: Method::POST,
        path: "/api/v1/access-requests",
        access: Access::Session,
        handler: || post(access_requests::create),
        answers: &[
            CALLER,
            CSRF,
            JSON_BODY,
            &[(422, "invalid_request")],
            DELEGATION_ERRORS,
        ],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/lockouts",
        access: Access::SiteAdminOrOwner,
        handler: || get(lockouts::list),
        answers: &[CALLER, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::DELETE,
        path: "/api/v1/lockouts/{key}",
        access: Access::SiteAdminOrOwner,
        handler: || delete(lockouts::clear),
        answers: &[CALLER, CSRF, PATH, LOCKOUT_ERRORS],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/businesses",
        access: Access::Owner,
        handler: || get(businesses::list),
        answers: &[CALLER, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::PUT,
        path: "/api/v1/businesses/{business}/suspension",
        access: Access::Owner,
        handler: || put(businesses::suspend),
        answers: &[
            CALLER,
            CSRF,
            PATH,
            JSON_BODY,
            &[
                (403, "forbidden"),
                (404, "business_not_found"),
                (422, "note_too_long"),
            ],
        ],
    },
    RouteDef {
        method: Method::DELETE,
        path: "/api/v1/businesses/{business}/suspension",
        access: Access::Owner,
        handler: || delete(businesses::restore),
        answers: &[
            CALLER,
            CSRF,
            PATH,
            &[
                (403, "forbidden"),
                (404, "business_not_found"),
                (404, "not_suspended"),
            ],
        ],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/healthz",
        access: Access::Public,
        handler: || get(system::healthz),
        answers: &[],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/metrics",
        access: Access::LoopbackOrSite(Capability::Diagnose),
        handler: || get(system::metrics),
        answers: &[CALLER, &[(403, "forbidden")]],
    },
    RouteDef {
        method: Method::GET,
        path: "/api/v1/openapi.json",
        access: Access::Public,
        handler: || get(system::openapi),
        answers: &[],
    },
];

/// Builds the router from [`ROUTES`] with every hardening layer.
pub fn router(state: ApiState) -> Router {
    assemble(state, ROUTES.iter(), true)
}

/// The local console's router (`console`): only [`console::CONSOLE_ROUTES`] of [`ROUTES`], with
/// the same layers, on the console face of `lan` (its own authorization port).
pub fn console_router(lan: &ApiState) -> Router {
    let routes = ROUTES.iter().filter(|d| {
        console::CONSOLE_ROUTES
            .iter()
            .any(|(m, p)| *m == d.method && *p == d.path)
    });
    assemble(console::face(lan), routes, false)
}

/// A router of `routes` (with the web page when `web`) and every hardening layer.
fn assemble(state: ApiState, routes: impl Iterator<Item = &'static RouteDef>, web: bool) -> Router {
    let mut r: Router<ApiState> = Router::new();
    for def in routes {
        // Several methods on one path merge into one method router.
        let guarded =
            (def.handler)().layer(axum::middleware::map_response(move |resp: Response| {
                declared_only(def, resp)
            }));
        r = r.route(def.path, guarded);
    }
    // The web page and its assets (not API routes: outside /api/v1 and the OpenAPI document).
    if web {
        for (path, handler) in web::routes() {
            r = r.route(path, handler);
        }
    }
    // `layers::body_size` reads and bounds every body before a handler runs; the extractor
    // limit only has to let through what it passed.
    let limit = state.0.limits.max_body_bytes.max(layers::MAX_LOGIN_BODY);
    let r = r
        .fallback(system::no_route)
        .method_not_allowed_fallback(system::wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::body_size,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::rate_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::cors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::observe,
        ));
    layers::secure(r).with_state(state)
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on `{addr}`: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A running API server.
pub struct Serving {
    /// The address actually bound (resolves port 0).
    pub addr: SocketAddr,
    /// SHA-256 fingerprint of the served certificate (`AB:CD:…`), `None` in plain mode.
    pub tls_fingerprint: Option<String>,
    /// Ends after `shutdown` is cancelled and in-flight requests drained (at most
    /// [`DRAIN_GRACE`]).
    pub task: JoinHandle<std::io::Result<()>>,
    /// The listening socket (a duplicate handle): passing it to the next start keeps the port.
    pub listener: std::net::TcpListener,
}

/// Binds `cfg.listen` (port 0 allowed), sets up TLS (self-signed certificate in
/// `<state_dir>/tls/` unless `cfg.mode` names one; plain only when configured) and serves until
/// `shutdown` is cancelled.
pub async fn serve(
    state: ApiState,
    cfg: &config::Api,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> Result<Serving, ServeError> {
    serve_router(router(state), cfg, state_dir, shutdown).await
}

/// [`serve`] on an already bound listener when one is given (a configuration reload keeps the
/// socket open, so clients connecting meanwhile wait in its backlog instead of being refused).
pub async fn serve_on(
    state: ApiState,
    cfg: &config::Api,
    state_dir: &Path,
    shutdown: CancellationToken,
    listener: Option<std::net::TcpListener>,
) -> Result<Serving, ServeError> {
    serve_router_on(router(state), cfg, state_dir, shutdown, listener).await
}

/// Serves any router with the API's listener, TLS and connection limits (the first-boot setup
/// endpoint uses it with its own router).
pub async fn serve_router(
    app: Router,
    cfg: &config::Api,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> Result<Serving, ServeError> {
    serve_router_on(app, cfg, state_dir, shutdown, None).await
}

/// [`serve_router`] on `listener` if given, else on a new one bound to `cfg.listen`.
pub async fn serve_router_on(
    app: Router,
    cfg: &config::Api,
    state_dir: &Path,
    shutdown: CancellationToken,
    listener: Option<std::net::TcpListener>,
) -> Result<Serving, ServeError> {
    let listener = match listener {
        Some(l) => l,
        None => std::net::TcpListener::bind(cfg.listen).map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?,
    };
    listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    // A second handle on the socket, kept by the daemon for the next start after a reload.
    let kept = listener.try_clone().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(DRAIN_GRACE));
        });
    }
    let (task, tls_fingerprint) = match &cfg.mode {
        ApiMode::Plain => {
            let mut server = axum_server::from_tcp(listener).handle(handle);
            tune(server.http_builder());
            (tokio::spawn(server.serve(app)), None)
        }
        ApiMode::Tls { cert, key } => {
            let material = match (cert, key) {
                (Some(c), Some(k)) => crate::tls::load(c, k)?,
                _ => {
                    let names = crate::tls::default_names();
                    let sd = state_dir.to_path_buf();
                    tokio::task::spawn_blocking(move || crate::tls::ensure_self_signed(&sd, &names))
                        .await
                        .map_err(|_| crate::tls::TlsError::Generate("task failed".into()))??
                }
            };
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(material.server_config);
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                .handshake_timeout(TLS_HANDSHAKE_TIMEOUT);
            let mut server = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(handle);
            tune(server.http_builder());
            (tokio::spawn(server.serve(app)), Some(material.fingerprint))
        }
    };
    match &tls_fingerprint {
        Some(fp) => tracing::info!(%addr, sha256 = %fp, "LAN API listening (TLS)"),
        None => tracing::warn!(%addr, "LAN API listening on plain HTTP (loopback only)"),
    }
    Ok(Serving {
        addr,
        tls_fingerprint,
        task,
        listener: kept,
    })
}

/// Header count, head size and head read time limits (slow or oversized request heads).
fn tune(b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    b.http1()
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b.http2()
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(64)
        .timer(hyper_util::rt::TokioTimer::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, _) in item.as_object().unwrap() {
                if ["get", "put", "post", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    out.insert((method.to_uppercase(), format!("/api/v1{path}")));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_in_the_openapi_document_and_nothing_else_is() {
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let doc = documented();
        let missing: Vec<_> = routes.difference(&doc).collect();
        let extra: Vec<_> = doc.difference(&routes).collect();
        assert!(
            missing.is_empty(),
            "routes missing from docs/openapi.json: {missing:?}"
        );
        assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    }

    /// A route's error answers as the document writes them: status → codes.
    fn declared_codes(def: &RouteDef) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (status, code) in def.error_answers() {
            out.entry(status.to_string())
                .or_default()
                .insert(code.to_string());
        }
        out
    }

    fn op<'a>(doc: &'a serde_json::Value, def: &RouteDef) -> &'a serde_json::Value {
        let path = def.path.strip_prefix("/api/v1").unwrap();
        &doc["paths"][path][def.method.as_str().to_lowercase()]
    }

    #[test]
    fn every_route_documents_exactly_the_error_answers_it_declares() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let mut errs = Vec::new();
        let mut every_code: BTreeSet<String> = error::NO_OPERATION
            .iter()
            .map(|(_, c)| c.to_string())
            .collect();
        for def in ROUTES {
            let op = op(&doc, def);
            let declared = declared_codes(def);
            every_code.extend(declared.values().flatten().cloned());
            let documented: BTreeMap<String, BTreeSet<String>> = op["x-error-codes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(s, codes)| {
                    let codes = codes.as_array().into_iter().flatten();
                    (
                        s.clone(),
                        codes.map(|c| c.as_str().unwrap().to_string()).collect(),
                    )
                })
                .collect();
            if declared != documented {
                errs.push(format!(
                    "{} {}: docs/openapi.json must list \"x-error-codes\": {} (the route's \
                     `answers` in src/api/mod.rs)",
                    def.method,
                    def.path,
                    serde_json::to_string(&declared).unwrap()
                ));
            }
            let statuses: BTreeSet<String> = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(s, _)| s.clone())
                .filter(|s| !s.starts_with('2'))
                .collect();
            let want: BTreeSet<String> = declared.keys().cloned().collect();
            if statuses != want {
                errs.push(format!(
                    "{} {}: the document's error responses are {statuses:?}, the route can \
                     answer {want:?}",
                    def.method, def.path
                ));
            }
        }
        let error_enum: BTreeSet<String> =
            doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
        if error_enum != every_code {
            errs.push(format!(
                "the Error schema's `error` enum must be every code: {}",
                serde_json::to_string(&every_code).unwrap()
            ));
        }
        assert!(errs.is_empty(), "{}", errs.join("\n"));
    }

    #[test]
    fn every_route_documents_who_may_use_it_as_the_route_table_declares() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let mut errs = Vec::new();
        for def in ROUTES {
            let op = op(&doc, def);
            let want = def.access.document();
            if op["x-access"] != want {
                errs.push(format!(
                    "{} {}: docs/openapi.json must state \"x-access\": {want} (the route's \
                     `access` in src/api/mod.rs)",
                    def.method, def.path
                ));
            }
            // The document's security and the 401 follow from who may use the route.
            let security = &op["security"];
            let (want_security, authenticates) = match def.access {
                Access::Public => (serde_json::json!([]), false),
                Access::LoopbackOrSite(_) => (serde_json::json!([{}, {"bearer": []}]), true),
                _ => (serde_json::Value::Null, true),
            };
            if *security != want_security {
                errs.push(format!(
                    "{} {}: security must be {want_security} for {:?}",
                    def.method, def.path, def.access
                ));
            }
            let caller = CALLER.iter().all(|a| def.error_answers().any(|b| b == *a));
            if caller != authenticates {
                errs.push(format!(
                    "{} {}: {:?} {} a session, but the route {} the caller's answers \
                     (error::CALLER)",
                    def.method,
                    def.path,
                    def.access,
                    if authenticates { "needs" } else { "needs no" },
                    if caller {
                        "declares"
                    } else {
                        "does not declare"
                    }
                ));
            }
        }
        assert!(errs.is_empty(), "{}", errs.join("\n"));
    }

    /// Each route's handler signature, read from its source: `(module, function, signature)` in
    /// the order of [`ROUTES`].
    fn handler_signatures() -> Vec<(String, String, String)> {
        let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let table = std::fs::read_to_string(api.join("mod.rs")).unwrap();
        let table = table.split("#[cfg(test)]").next().unwrap();
        let mut out = Vec::new();
        for line in table
            .lines()
            .filter(|l| l.trim_start().starts_with("handler: || "))
        {
            // `handler: || post(grants::create),`
            let call = line.split('(').nth(1).unwrap().trim_end_matches("),");
            let (module, function) = call.split_once("::").unwrap();
            let file = [
                api.join("handlers").join(format!("{module}.rs")),
                api.join(format!("{module}.rs")),
            ]
            .into_iter()
            .find(|f| f.exists())
            .unwrap_or_else(|| panic!("no source for `{call}`"));
            let text = std::fs::read_to_string(file).unwrap();
            let start = text
                .find(&format!("pub async fn {function}("))
                .unwrap_or_else(|| panic!("no `pub async fn {function}` for `{call}`"));
            let sig = &text[start..];
            let sig = &sig[..sig.find(" {\n").unwrap()];
            out.push((module.to_string(), function.to_string(), sig.to_string()));
        }
        out
    }

    #[test]
    fn every_route_that_reads_a_body_or_a_query_documents_it_and_no_other_does() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let sigs = handler_signatures();
        assert_eq!(sigs.len(), ROUTES.len(), "one handler line per route");
        let mut errs = Vec::new();
        for (def, (module, function, sig)) in ROUTES.iter().zip(&sigs) {
            let op = op(&doc, def);
            let documents_body = !op["requestBody"].is_null();
            let documents_query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["in"] == "query");
            for (what, reads, documents) in [
                (
                    "a JSON body (`ApiJson`)",
                    sig.contains("ApiJson<"),
                    documents_body,
                ),
                (
                    "a query (`ApiQuery`)",
                    sig.contains("ApiQuery<"),
                    documents_query,
                ),
            ] {
                if reads != documents {
                    errs.push(format!(
                        "{} {} ({module}::{function}) {} {what}, and docs/openapi.json {} it",
                        def.method,
                        def.path,
                        if reads { "reads" } else { "reads no" },
                        if documents {
                            "documents"
                        } else {
                            "does not document"
                        },
                    ));
                }
            }
            // A body or query the handler reads is answered as the extractor's sets say.
            for (reads, set, name) in [
                (sig.contains("ApiJson<"), JSON_BODY, "JSON_BODY"),
                (sig.contains("ApiQuery<"), QUERY, "QUERY"),
                (sig.contains("Path<"), PATH, "PATH"),
                (sig.contains("caller: Caller"), CALLER, "CALLER"),
            ] {
                let declared = set.iter().all(|a| def.error_answers().any(|b| b == *a));
                if reads && !declared {
                    errs.push(format!(
                        "{} {}: the handler's extractors can answer error::{name}, which the \
                         route's `answers` lack",
                        def.method, def.path
                    ));
                }
            }
        }
        assert!(errs.is_empty(), "{}", errs.join("\n"));
    }

    #[tokio::test]
    async fn an_error_answer_the_route_does_not_declare_is_answered_as_internal_in_tests() {
        use tower::ServiceExt;
        static DEF: RouteDef = RouteDef {
            method: Method::GET,
            path: "/t",
            handler: || get(system::healthz),
            answers: &[CALLER],
            access: Access::Session,
        };
        static OK: RouteDef = RouteDef {
            method: Method::GET,
            path: "/t",
            handler: || get(system::healthz),
            answers: &[&[(403, "forbidden")]],
            access: Access::Session,
        };
        for (def, want) in [(&DEF, 500), (&OK, 403)] {
            // The route's handler refuses with `403 forbidden`.
            let refuses = get(|| async { ApiError::forbidden("x") });
            let app: Router = Router::new().route(
                def.path,
                refuses.layer(axum::middleware::map_response(move |r: Response| {
                    declared_only(def, r)
                })),
            );
            let req = axum::http::Request::get("/t")
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), want);
        }
    }

    #[test]
    fn every_documented_operation_lists_its_error_responses() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|k| k.starts_with('2')),
                    "{method} {path} documents no success response"
                );
                if op.get("security").is_none() {
                    // Authenticated by default: 401 must be documented.
                    assert!(
                        responses.contains_key("401"),
                        "{method} {path} lacks a 401 response"
                    );
                }
            }
        }
    }

    /// Every quality, by its wire name. The match fails to compile when a quality is added, so
    /// the documents below are checked for it too.
    fn every_quality() -> Vec<&'static str> {
        use crate::modbus::Quality as Q;
        let all = [
            Q::Good,
            Q::Stale,
            Q::OpenCircuit,
            Q::Unimplemented,
            Q::OverRange,
            Q::UnderRange,
            Q::BadData,
            Q::Error,
            Q::Unknown,
        ];
        for q in all {
            match q {
                Q::Good
                | Q::Stale
                | Q::OpenCircuit
                | Q::Unimplemented
                | Q::OverRange
                | Q::UnderRange
                | Q::BadData
                | Q::Error
                | Q::Unknown => {}
            }
            let wire = serde_json::to_value(q).unwrap();
            assert_eq!(wire, q.as_str(), "serde and as_str agree");
        }
        all.iter().map(|q| q.as_str()).collect()
    }

    #[test]
    fn the_quality_vocabulary_is_the_same_in_the_openapi_document_and_the_docs() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let documented: Vec<String> = doc["components"]["schemas"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|s| s["properties"]["quality"]["enum"].as_array())
            .flatten()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            documented,
            every_quality(),
            "docs/openapi.json quality enum"
        );
        for (name, text) in [
            ("docs/api.md", include_str!("../../docs/api.md")),
            ("docs/mqtt.md", include_str!("../../docs/mqtt.md")),
            ("docs/modbus.md", include_str!("../../docs/modbus.md")),
        ] {
            for q in every_quality() {
                assert!(
                    text.contains(&format!("`{q}`")),
                    "{name} does not name `{q}`"
                );
            }
        }
    }

    /// The modules of `src/api` (as `api::…` paths) and the modules of `src/api` each one's
    /// code (tests and comments aside) names through `super::` or `crate::api::`.
    fn api_imports() -> std::collections::BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&root.join("api"), &mut files);
        let name_of = |p: &Path| {
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let rel = rel.to_string_lossy().replace('/', "::");
            rel.strip_suffix("::mod").unwrap_or(&rel).to_string()
        };
        let names: BTreeSet<String> = files.iter().map(|p| name_of(p)).collect();
        let mut graph = std::collections::BTreeMap::new();
        for f in &files {
            let name = name_of(f);
            let text = std::fs::read_to_string(f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let parent = name.rsplit_once("::").map_or("", |(p, _)| p).to_string();
            let mut deps = BTreeSet::new();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (prefix, base) in [("super::", parent.as_str()), ("crate::api::", "api")] {
                    for (i, _) in line.match_indices(prefix) {
                        let rest = &line[i + prefix.len()..];
                        let mut target = base.to_string();
                        // The longest module path the text names.
                        for seg in rest.split("::") {
                            let seg: String = seg
                                .chars()
                                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                                .collect();
                            let next = format!("{target}::{seg}");
                            if seg.is_empty() || !names.contains(&next) {
                                break;
                            }
                            target = next;
                        }
                        // `api` itself (mod.rs) counts too: nothing below the router may import it.
                        if target != name && names.contains(&target) {
                            deps.insert(target);
                        }
                    }
                }
            }
            graph.insert(name, deps);
        }
        graph
    }

    #[test]
    fn imports_inside_the_api_run_one_way() {
        let graph = api_imports();
        assert!(graph.len() > 10, "{graph:?}");
        // Depth-first search for a back edge.
        fn visit(
            g: &std::collections::BTreeMap<String, BTreeSet<String>>,
            n: &str,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
            cycles: &mut Vec<String>,
        ) {
            if done.contains(n) {
                return;
            }
            if let Some(i) = path.iter().position(|p| p == n) {
                cycles.push(path[i..].join(" -> ") + " -> " + n);
                return;
            }
            path.push(n.to_string());
            for d in g.get(n).into_iter().flatten() {
                visit(g, d, path, done, cycles);
            }
            path.pop();
            done.insert(n.to_string());
        }
        let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
        for n in graph.keys() {
            visit(&graph, n, &mut Vec::new(), &mut done, &mut cycles);
        }
        assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
        let up: Vec<_> = graph
            .iter()
            .filter(|(_, d)| d.contains("api"))
            .map(|(n, _)| n)
            .collect();
        assert!(up.is_empty(), "{up:?} import the router module (`api`)");
    }

    #[test]
    fn route_paths_are_unique_per_method() {
        let mut seen = BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method.clone(), r.path)),
                "duplicate {}",
                r.path
            );
        }
    }

    /// Whether a JSON-schema `pattern` admits only ASCII: bracket expressions (not negated)
    /// joined by anchors and quantifiers, nothing else.
    fn ascii_only(pattern: &str) -> bool {
        let mut in_class = false;
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if in_class {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    ']' => in_class = false,
                    _ if !c.is_ascii() => return false,
                    _ => {}
                }
            } else {
                match c {
                    '[' if chars.peek() != Some(&'^') => in_class = true,
                    '^' | '$' | '*' | '+' | '?' | '{' | '}' | ',' | '0'..='9' => {}
                    _ => return false,
                }
            }
        }
        !in_class
    }

    /// The longest JSON text a schema admits with every string written as `\\uXXXX` escapes
    /// (12 bytes a character unless the pattern keeps it ASCII, then 6), or `None` when unbounded.
    fn worst_bytes(doc: &serde_json::Value, schema: &serde_json::Value) -> Option<usize> {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            return worst_bytes(doc, &doc["components"]["schemas"][name]);
        }
        if let Some(alts) = schema["oneOf"].as_array() {
            return alts
                .iter()
                .map(|a| worst_bytes(doc, a))
                .try_fold(0, |m, w| w.map(|w| m.max(w)));
        }
        if let Some(values) = schema["enum"].as_array() {
            return Some(
                values
                    .iter()
                    .map(|v| v.to_string().len() * 6)
                    .max()
                    .unwrap_or(0),
            );
        }
        match schema["type"].as_str() {
            Some("object") => {
                let props = schema["properties"].as_object()?;
                let mut n = 2;
                for (k, v) in props {
                    n += k.len() * 6 + 4 + worst_bytes(doc, v)?;
                }
                Some(n)
            }
            Some("string") if schema["format"] == "date-time" => Some(40 * 6),
            Some("string") => {
                let max = usize::try_from(schema["maxLength"].as_u64()?).ok()?;
                let ascii = schema["pattern"].as_str().is_some_and(ascii_only);
                Some(2 + max * if ascii { 6 } else { 12 })
            }
            Some("integer" | "number") => Some(32),
            Some("boolean") => Some(5),
            _ => None,
        }
    }

    #[test]
    fn every_bounded_request_body_the_document_allows_fits_the_default_body_limit_escaped() {
        assert!(ascii_only("^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"));
        assert!(!ascii_only("^[^x]*$"));
        assert!(!ascii_only("^.*$"));
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let limit = usize::try_from(crate::config::RawApi::default().max_body_bytes).unwrap();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                if schema.is_null() {
                    continue;
                }
                // A body with an unbounded member (a point write's `value`) is bounded by the
                // limit alone, and its operation documents the 413.
                if let Some(worst) = worst_bytes(&doc, schema) {
                    checked += 1;
                    assert!(
                        worst <= limit,
                        "{method} {path}: a body the document allows can take {worst} bytes, \
                         more than the {limit}-byte body limit"
                    );
                }
            }
        }
        assert!(checked >= 3, "only {checked} bodies checked");
    }
}
