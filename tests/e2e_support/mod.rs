//! A whole site in one process for end-to-end tests and benches: the real daemon
//! (`sitegate::app::Daemon`), Modbus simulators on loopback, and signed grant bundles minted with a
//! fixed-seed fleet key; the standard members of the test site, installer tokens, and one HTTP
//! helper (`call`, `get`, `post`, `delete` → [`Resp`]) for every end-to-end API test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test helpers fail the test loudly; not every user needs every helper"
)]

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sitegate::app::Daemon;
use sitegate::clock::{ManualClock, SharedClock, SystemClock, rfc3339};
use sitegate::config::Config;
use sitegate::grants::{Kind, fleet};
use sitegate::notify::Notifier;
use sitegate::sim::{SimHandle, SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

#[allow(
    clippy::duplicate_mod,
    reason = "a test that also has `mod common` loads the file twice; it holds only constants and a pure function"
)]
#[path = "../common/signing.rs"]
mod signing;

pub use signing::PASSWORD;
use signing::TestFleet;

pub const SITE: &str = "s-1";

/// This fleet's signing key (its own seed: a separate fleet from `tests/common/fleet.rs`'s).
const FLEET: TestFleet = TestFleet::new("fleet-e2e", 42);
pub const KID: &str = FLEET.kid;

/// The fleet signing key (fixed seed, so every run signs the same way).
pub fn fleet_key() -> ring::signature::Ed25519KeyPair {
    FLEET.key()
}

/// A key the box does not trust.
pub fn forged_key() -> ring::signature::Ed25519KeyPair {
    TestFleet::new("forged", 66).key()
}

/// One user with one grant: `(user id, email, role, scope json, grant id)`.
pub struct Member {
    pub user: &'static str,
    pub role: &'static str,
    pub scope: Value,
    pub grant: &'static str,
}

pub fn email(user: &str) -> String {
    format!("{user}@example.com")
}

/// The signed bundle with `seq`, `members` and `revoked` grant ids.
pub fn bundle(seq: u64, members: &[Member], revoked: &[&str]) -> Vec<u8> {
    bundle_signed_by(seq, members, revoked, &fleet_key())
}

pub fn bundle_signed_by(
    seq: u64,
    members: &[Member],
    revoked: &[&str],
    key: &ring::signature::Ed25519KeyPair,
) -> Vec<u8> {
    bundle_with_user_fields(seq, members, revoked, key, &[])
}

/// Like [`bundle_signed_by`], with extra fields merged into named users (e.g. `business`,
/// `owner`).
pub fn bundle_with_user_fields(
    seq: u64,
    members: &[Member],
    revoked: &[&str],
    key: &ring::signature::Ed25519KeyPair,
    user_fields: &[(&str, Value)],
) -> Vec<u8> {
    bundle_with_fields(seq, members, revoked, key, user_fields, &json!({}))
}

/// Like [`bundle_with_user_fields`], with extra top-level payload fields (e.g.
/// `requests_denied`).
pub fn bundle_with_fields(
    seq: u64,
    members: &[Member],
    revoked: &[&str],
    key: &ring::signature::Ed25519KeyPair,
    user_fields: &[(&str, Value)],
    top: &Value,
) -> Vec<u8> {
    // Low iteration count: the tests measure authorization, not PBKDF2. A fixed salt, as the
    // cloud sends the same verifier until the password changes (a new one ends sessions).
    let verifier =
        sitegate::grants::password::hash_password_with_salt(PASSWORD.as_bytes(), 1_000, &[5; 16])
            .unwrap();
    let issued = time::OffsetDateTime::now_utc() - time::Duration::minutes(10)
        + time::Duration::seconds(seq as i64);
    let mut users = Vec::new();
    let mut grants = Vec::new();
    for m in members {
        if !users.iter().any(|u: &Value| u["id"] == m.user) {
            let mut u = json!({"id": m.user, "email": email(m.user), "name": m.user,
                "active": true, "password": verifier});
            for (who, fields) in user_fields {
                if *who == m.user {
                    for (k, v) in fields.as_object().unwrap() {
                        u[k] = v.clone();
                    }
                }
            }
            users.push(u);
        }
        if !revoked.contains(&m.grant) {
            grants.push(
                json!({"id": m.grant, "user": m.user, "role": m.role, "scope": m.scope,
                "not_before": "2026-01-01T00:00:00Z", "expires_at": "2036-01-01T00:00:00Z"}),
            );
        }
    }
    let b = json!({"site": SITE, "seq": seq, "issued_at": rfc3339(issued),
        "policy": {"management": "independent",
                   "features": ["view", "control", "diagnose", "configure", "manage_users"]},
        "users": users, "grants": grants, "revoked": revoked});
    let mut b = b;
    for (k, v) in top.as_object().unwrap() {
        b[k] = v.clone();
    }
    fleet::sign(Kind::Bundle, KID, key, &serde_json::to_vec(&b).unwrap())
}

/// The config text of a site with `links` (name, address) and `units`
/// (id, link, slave, profile, group), plain HTTP on 127.0.0.1:0, plus `extra` TOML.
pub fn config_text(
    state: &Path,
    links: &[(String, std::net::SocketAddr)],
    units: &[(String, String, u8, &str, &str)],
    poll_ms: u64,
    mode: &str,
    extra: &str,
) -> String {
    let mut t = format!(
        r#"
[site]
id = "{SITE}"
gateway = "gw-1"

[state]
dir = "{state}"

[api]
listen = "127.0.0.1:0"
mode = "{mode}"
rate_limit_per_sec = 100000
rate_limit_burst = 100000

[auth]
session_ttl_secs = 3600
throttle_base_ms = 1
throttle_max_ms = 2

[[grants.trust]]
kid = "{KID}"
public_key = "{pk}"
"#,
        state = state.display(),
        pk = fleet::public_key_b64(&fleet_key()),
    );
    for (name, addr) in links {
        t.push_str(&format!(
            "\n[[links]]\nname = \"{name}\"\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout_ms = 1000\nretries = 0\n"
        ));
    }
    for (id, link, slave, profile, group) in units {
        t.push_str(&format!(
            "\n[[units]]\nid = \"{id}\"\nlink = \"{link}\"\nslave = {slave}\nprofile = \"{profile}\"\ngroup = \"{group}\"\npoll_interval_ms = {poll_ms}\n"
        ));
    }
    t.push_str(extra);
    t
}

/// The standard test site: one simulator with `gen-1` (slave 1, generator), `hvac-1` (slave 2,
/// group offices), `hvac-2` (slave 3, group secret) and `hvac-3` (slave 4, group offices, profile
/// `open-hvac`).
pub struct Site {
    pub daemon: Daemon,
    pub sim: SimHandle,
    pub clock: Arc<ManualClock>,
    pub base: String,
    pub http: reqwest::Client,
    pub sim_stop: CancellationToken,
    pub cfg: Config,
    pub config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub const GEN_SLAVE: u8 = 1;
pub const HVAC1_SLAVE: u8 = 2;
pub const HVAC2_SLAVE: u8 = 3;
pub const HVAC3_SLAVE: u8 = 4;

pub async fn start_sim(units: Vec<SimUnit>) -> (SimHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let sim = SimServer::start_tcp("127.0.0.1:0".parse().unwrap(), units, stop.clone())
        .await
        .unwrap();
    (sim, stop)
}

pub fn parse_config(text: &str, dir: &Path) -> Config {
    match Config::parse(text, dir, &|_| true) {
        Ok(c) => c,
        Err(e) => panic!("config: {e}\n{text}"),
    }
}

impl Site {
    /// Starts the standard site with `mode` (`plain` or `tls`) and `extra` config.
    pub async fn start(mode: &str, extra: &str) -> Site {
        Self::start_with_clock(mode, extra, true).await
    }

    pub async fn start_with_clock(mode: &str, extra: &str, manual: bool) -> Site {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let (sim, sim_stop) = start_sim(vec![
            SimUnit::generator(GEN_SLAVE),
            SimUnit::hvac(HVAC1_SLAVE),
            SimUnit::hvac(HVAC2_SLAVE),
            SimUnit::hvac(HVAC3_SLAVE),
        ])
        .await;
        let links = vec![("bus".to_string(), sim.addr.unwrap())];
        let units = vec![
            (
                "gen-1".to_string(),
                "bus".to_string(),
                GEN_SLAVE,
                "dse-gencomm",
                "plant-room",
            ),
            (
                "hvac-1".to_string(),
                "bus".to_string(),
                HVAC1_SLAVE,
                "coolmaster-va",
                "offices",
            ),
            (
                "hvac-2".to_string(),
                "bus".to_string(),
                HVAC2_SLAVE,
                "coolmaster-va",
                "secret",
            ),
        ];
        // `open-hvac`: coolmaster-va with its configure point (wall_controller_lock) readable by anyone
        // who can view, so a write without `configure` meets 403 instead of scope hiding.
        let profiles = dir.path().join("profiles");
        std::fs::create_dir_all(&profiles).unwrap();
        let cm = include_str!("../../config/profiles/coolmaster-va.toml")
            .replace("name = \"coolmaster-va\"", "name = \"open-hvac\"")
            .replace(
                "read = \"diagnose\"\nwrite = \"configure\"",
                "write = \"configure\"",
            );
        std::fs::write(profiles.join("open-hvac.toml"), cm).unwrap();
        let mut units = units;
        units.push((
            "hvac-3".to_string(),
            "bus".to_string(),
            HVAC3_SLAVE,
            "open-hvac",
            "offices",
        ));
        let extra = format!("\n[profiles]\ndir = \"{}\"\n{extra}", profiles.display());
        let text = config_text(&dir.path().join("state"), &links, &units, 500, mode, &extra);
        let cfg = parse_config(&text, dir.path());
        // The same config as a file, for the CLI tools run against this site.
        let config_path = dir.path().join("sitegate.toml");
        std::fs::write(&config_path, &text).unwrap();
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
        let shared: SharedClock = if manual {
            clock.clone()
        } else {
            Arc::new(SystemClock)
        };
        let daemon = Daemon::start(cfg.clone(), shared, Notifier::from_env(&|_| None))
            .await
            .unwrap();
        let scheme = if mode == "tls" { "https" } else { "http" };
        let base = format!("{scheme}://{}/api/v1", daemon.api_addr);
        Site {
            daemon,
            sim,
            clock,
            base,
            http: reqwest::Client::new(),
            sim_stop,
            cfg,
            config_path,
            _dir: dir,
        }
    }

    /// Stops the daemon and starts it again on the same state directory and simulator.
    pub async fn restart(self) -> Site {
        let Site {
            daemon,
            sim,
            clock,
            http,
            sim_stop,
            cfg,
            config_path,
            _dir,
            ..
        } = self;
        daemon.stop(false).await;
        let daemon = Daemon::start(cfg.clone(), clock.clone(), Notifier::from_env(&|_| None))
            .await
            .unwrap();
        let scheme = if matches!(cfg.api.mode, sitegate::config::ApiMode::Plain) {
            "http"
        } else {
            "https"
        };
        let base = format!("{scheme}://{}/api/v1", daemon.api_addr);
        Site {
            daemon,
            sim,
            clock,
            base,
            http,
            sim_stop,
            cfg,
            config_path,
            _dir,
        }
    }

    /// Applies a signed bundle through the grants engine (on the blocking pool).
    pub async fn apply(&self, bytes: Vec<u8>) {
        let r = self.daemon.site.as_ref().unwrap().clone();
        tokio::task::spawn_blocking(move || r.apply_envelope(Some(Kind::Bundle), &bytes, "test"))
            .await
            .unwrap()
            .unwrap();
    }

    /// The standard site over plain HTTP with bundle 1 of `members` applied.
    pub async fn start_with_members(members: &[Member]) -> Site {
        let s = Site::start("plain", "").await;
        s.apply(bundle(1, members, &[])).await;
        s
    }

    /// Logs in as `user`; returns the bearer token.
    pub async fn login(&self, user: &str) -> String {
        let r = self
            .http
            .post(format!("{}/session", self.base))
            .json(&json!({"email": email(user), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "login {user}: {body}");
        body["token"].as_str().unwrap().to_string()
    }

    pub async fn stop(self) {
        self.daemon.stop(true).await;
        self.sim_stop.cancel();
    }
}

/// The members of the standard test site: `vera` (viewer on the site), `carl` (control-only on
/// `hvac-1` and `gen-1`), `tess` (technician on the site) and `ada` (admin on the site).
pub fn role_members() -> Vec<Member> {
    vec![
        Member {
            user: "vera",
            role: "viewer",
            scope: json!({"site": SITE}),
            grant: "g-viewer",
        },
        Member {
            user: "carl",
            role: "control-only",
            scope: json!({"unit": "hvac-1"}),
            grant: "g-carl-hvac",
        },
        Member {
            user: "carl",
            role: "control-only",
            scope: json!({"unit": "gen-1"}),
            grant: "g-carl-gen",
        },
        Member {
            user: "tess",
            role: "technician",
            scope: json!({"site": SITE}),
            grant: "g-tech",
        },
        Member {
            user: "ada",
            role: "admin",
            scope: json!({"site": SITE}),
            grant: "g-admin",
        },
    ]
}

/// A fleet-signed installer token (`kind:"token"` envelope) for `user`, technician on the whole
/// site until `valid` from now, issued a minute ago.
pub fn installer_token(user: Value, grant_id: &str, valid: time::Duration) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc();
    let id = user["id"].clone();
    let payload = json!({
        "site": SITE,
        "issued_at": rfc3339(now - time::Duration::minutes(1)),
        "user": user,
        "grant": {"id": grant_id, "user": id, "role": "technician", "scope": {"site": SITE},
                  "expires_at": rfc3339(now + valid)},
    });
    fleet::sign(
        Kind::Token,
        KID,
        &fleet_key(),
        &serde_json::to_vec(&payload).unwrap(),
    )
}

/// An API answer: status and body (JSON, or the text as a JSON string when it is not JSON).
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

/// Calls `path` (under `/api/v1`) with a bearer token and an optional JSON body.
pub async fn call(
    s: &Site,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Resp {
    let mut r = s
        .http
        .request(method, format!("{}{path}", s.base))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Resp { status, body }
}

pub async fn get(s: &Site, path: &str, token: &str) -> Resp {
    call(s, reqwest::Method::GET, path, token, None).await
}

pub async fn post(s: &Site, path: &str, token: &str, body: Value) -> Resp {
    call(s, reqwest::Method::POST, path, token, Some(body)).await
}

pub async fn delete(s: &Site, path: &str, token: &str) -> Resp {
    call(s, reqwest::Method::DELETE, path, token, None).await
}

/// `POST /session` with `body` (a password or a token login): the status and the JSON answer
/// (`null` when the answer is not JSON).
pub async fn session(s: &Site, body: &Value) -> (u16, Value) {
    let r = s
        .http
        .post(format!("{}/session", s.base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The audit records of `kind` in `store`, newest first (at most 10).
pub fn audit_of_kind(store: &sitegate::store::Store, kind: &str) -> Vec<sitegate::audit::Record> {
    store
        .with_conn(|c| {
            sitegate::audit::query(
                c,
                &sitegate::audit::Query {
                    kind: Some(kind.into()),
                    limit: 10,
                    ..Default::default()
                },
            )
        })
        .unwrap()
}

/// Logs in with an installer token envelope; returns the bearer token.
pub async fn token_login(s: &Site, envelope: &[u8]) -> String {
    let token = std::str::from_utf8(envelope).unwrap();
    let r = s
        .http
        .post(format!("{}/session", s.base))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

/// rustls needs a process-wide crypto provider before reqwest builds a client.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resident set size of this process in KiB (`VmRSS` from /proc/self/status).
pub fn vm_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
