//! A fleet of real `sitegate` daemons on one mosquitto, for tests/fleet.rs (short setting) and
//! its bench run (long setting): each box its own site (`f-000`, `f-001`, …), config, state
//! directory and SQLite, its LAN API on its own loopback port, no Modbus units; bundles for every
//! site signed with a fixed-seed fleet key; and a cloud-side view of what the boxes published.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a test failure"
)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sitegate::grants::fleet;

use super::daemon::{Lines, free_port, signal, spawn_run, wait_exit};
use super::mqtt::Received;
use super::signing::TestFleet;

pub use super::signing::PASSWORD;

/// This fleet's signing key (its own seed: a separate fleet from `tests/e2e_support`'s).
const FLEET: TestFleet = TestFleet::new("fleet-sim", 77);
pub const KID: &str = FLEET.kid;
pub const GATEWAY: &str = "gw-1";

/// The fleet signing key (fixed seed: every run signs the same way).
pub fn fleet_key() -> ring::signature::Ed25519KeyPair {
    FLEET.key()
}

pub fn site_id(i: usize) -> String {
    format!("f-{i:03}")
}

pub fn root(site: &str) -> String {
    format!("sitegate/v1/{site}/{GATEWAY}")
}

/// The bundle of `site` with `seq`: one user `tech` with grant `g-tech` (technician on the site)
/// unless `g-tech` is revoked.
pub fn bundle(site: &str, seq: u64, revoke: bool) -> Vec<u8> {
    let verifier =
        sitegate::grants::password::hash_password_with_salt(PASSWORD.as_bytes(), 1_000, &[5; 16])
            .unwrap();
    let issued = time::OffsetDateTime::now_utc() - time::Duration::minutes(10)
        + time::Duration::seconds(seq as i64);
    let grants = if revoke {
        json!([])
    } else {
        json!([{"id": "g-tech", "user": "tech", "role": "technician", "scope": {"site": site}}])
    };
    let desc = json!({"site": site, "seq": seq, "issued_at": sitegate::clock::rfc3339(issued),
        "policy": {"management": "independent",
                   "features": ["view", "control", "diagnose", "configure", "manage_users"]},
        "users": [{"id": "tech", "email": "tech@example.com", "name": "Tech", "active": true,
                   "password": verifier}],
        "grants": grants,
        "revoked": if revoke { json!(["g-tech"]) } else { json!([]) }});
    fleet::sign_bundle_description(&fleet_key(), KID, &serde_json::to_vec(&desc).unwrap()).unwrap()
}

/// One box: a `sitegate run` child process.
pub struct FleetBox {
    pub site: String,
    pub dir: PathBuf,
    pub api_port: u16,
    pub child: Option<Child>,
    pub lines: Lines,
}

impl FleetBox {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.api_port)
    }
    /// Stops the daemon (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let status = wait_exit(&mut c, Duration::from_secs(30));
            assert!(status.success(), "{} exited with {status}", self.site);
        }
    }
}

impl Drop for FleetBox {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes the config of box `i` and starts it.
pub fn start_box(dir: &Path, i: usize, broker_port: u16, reconnect_max_secs: u64) -> FleetBox {
    let site = site_id(i);
    let dir = dir.join(&site);
    std::fs::create_dir_all(&dir).unwrap();
    let api_port = free_port();
    let text = format!(
        r#"
[site]
id = "{site}"
gateway = "{GATEWAY}"

[state]
dir = "{state}"

[api]
listen = "127.0.0.1:{api_port}"
mode = "plain"
rate_limit_per_sec = 100000
rate_limit_burst = 100000

[auth]
session_ttl_secs = 3600
throttle_base_ms = 1
throttle_max_ms = 2

[[grants.trust]]
kid = "{KID}"
public_key = "{pk}"

[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "sitegate-{site}"
reconnect_max_secs = {reconnect_max_secs}
"#,
        state = dir.join("state").display(),
        pk = fleet::public_key_b64(&fleet_key()),
    );
    let config = dir.join("sitegate.toml");
    std::fs::write(&config, text).unwrap();
    let (child, lines) = spawn_run(&config, None, &[("RUST_LOG", "warn")]);
    FleetBox {
        site,
        dir,
        api_port,
        child: Some(child),
        lines,
    }
}

/// `(topic, bundle)` for every site, to publish retained.
pub fn bundles_for(sites: &[String], seq: u64, revoke: bool) -> Vec<(String, Vec<u8>)> {
    sites
        .iter()
        .map(|s| (format!("{}/grants", root(s)), bundle(s, seq, revoke)))
        .collect()
}

/// The site a topic `sitegate/v1/{site}/…` belongs to.
pub fn site_of(topic: &str) -> Option<&str> {
    topic.strip_prefix("sitegate/v1/")?.split('/').next()
}

/// Per site, the first time (of `times`, the instants messages were seen) a state document on
/// `…/grants/state` shows `seq` applied.
pub fn applied_seq(msgs: &[Received], seq: u64) -> HashSet<String> {
    msgs.iter()
        .filter(|m| m.topic.ends_with("/grants/state"))
        .filter(|m| m.json()["seq"] == seq)
        .filter_map(|m| site_of(&m.topic).map(str::to_string))
        .collect()
}

/// Per site, the distinct audit records (by their chain hash) received on `…/events` with `kind`
/// and `outcome`.
pub fn events_by_site(msgs: &[Received], kind: &str, outcome: &str) -> HashMap<String, usize> {
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for m in msgs.iter().filter(|m| m.topic.ends_with("/events")) {
        let j = m.json();
        if j["kind"] == kind && j["outcome"] == outcome {
            if let (Some(site), Some(h)) = (site_of(&m.topic), j["hash"].as_str()) {
                seen.entry(site.to_string())
                    .or_default()
                    .insert(h.to_string());
            }
        }
    }
    seen.into_iter().map(|(s, h)| (s, h.len())).collect()
}

/// Polls `f` every 50 ms until it returns `Some`; panics with `what` after `limit`.
pub async fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A failed login on `b`: exactly one audit record `login`/`failed`, published on `…/events`.
/// A throttled attempt (429, audited as `login`/`locked`) is retried after a short pause.
pub async fn failed_login(http: &reqwest::Client, b: &FleetBox) {
    for _ in 0..100 {
        let r = http
            .post(format!("{}/session", b.base()))
            .json(&json!({"email": "tech@example.com", "password": "wrong password"}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => return,
            429 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{}: failed login answered {other}", b.site),
        }
    }
    panic!("{}: every login attempt was throttled", b.site);
}

/// Logs in as `tech` on `b`; returns the bearer token. Retries while the API is not up yet.
pub async fn login(http: &reqwest::Client, b: &FleetBox) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .post(format!("{}/session", b.base()))
            .json(&json!({"email": "tech@example.com", "password": PASSWORD}))
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 201, "login on {}: {body}", b.site);
            return body["token"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the API of {} never came up",
            b.site
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The number of grants `GET /me` lists for the session `token` on `b`.
pub async fn my_grants(http: &reqwest::Client, b: &FleetBox, token: &str) -> usize {
    let r = http
        .get(format!("{}/me", b.base()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", b.site);
    let body: Value = r.json().await.unwrap();
    body["grants"].as_array().map_or(usize::MAX, Vec::len)
}
