//! Offline commissioning with the real binary: a box that has never seen a bundle (no MQTT, no
//! cloud), simulated units on loopback, and installer tokens minted with `sitegate fleet
//! issue-token`. The token's own grant is the whole access state: its role, scope and expiry.
//! Every write is counted at the simulator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should fail the test loudly"
)]

mod common;
mod e2e_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{fleet_keygen, free_port, signal, sitegate, spawn_run, wait_exit};
use e2e_support::{install_crypto, start_sim};
use serde_json::{Value, json};
use sitegate::sim::SimUnit;

const GEN: u8 = 3;
const HVAC: u8 = 7;

fn ts(t: time::OffsetDateTime) -> String {
    sitegate::clock::rfc3339(t)
}

/// Signs a token description with the fleet tool and returns the envelope text.
fn issue_token(dir: &Path, key: &Path, name: &str, desc: &Value) -> String {
    let input = dir.join(format!("{name}.json"));
    let out = dir.join(format!("{name}.token"));
    std::fs::write(&input, serde_json::to_vec(desc).unwrap()).unwrap();
    let r = sitegate(&[
        "fleet",
        "issue-token",
        "--key",
        key.to_str().unwrap(),
        "--kid",
        "fleet-a",
        "--in",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    std::fs::read_to_string(&out).unwrap().trim().to_string()
}

fn token_desc(
    site: &str,
    user: &str,
    role: &str,
    scope: Value,
    issued: time::OffsetDateTime,
    expires: time::OffsetDateTime,
) -> Value {
    json!({
        "site": site, "issued_at": ts(issued),
        "user": {"id": user, "email": format!("{user}@installer.example"), "name": user, "active": true},
        "grant": {"id": format!("g-{user}"), "user": user, "role": role, "scope": scope,
                  "expires_at": ts(expires)},
    })
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if !bearer.is_empty() {
            r = r.bearer_auth(bearer);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn get(&self, path: &str, bearer: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, bearer, None).await
    }
    async fn put(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, bearer, Some(body))
            .await
    }
    async fn post(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, bearer, Some(body))
            .await
    }
    async fn token_login(&self, token: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/session",
            "",
            Some(json!({ "token": token })),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installer_token_commissions_a_box_that_has_never_seen_a_bundle_within_its_role_scope_and_expiry()
 {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The fleet key, made and used only through the fleet tool.
    let (key, pk) = fleet_keygen(d, "fleet-a");

    let (sim, sim_stop) = start_sim(vec![SimUnit::generator(GEN), SimUnit::hvac(HVAC)]).await;
    let addr = sim.addr.unwrap();
    let port = free_port();
    let state = d.join("state");
    let config = d.join("sitegate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[site]
id = "s-1"
gateway = "gw-1"

[state]
dir = "{state}"

[api]
listen = "127.0.0.1:{port}"
mode = "plain"

[auth]
throttle_base_ms = 1
throttle_max_ms = 2

[[grants.trust]]
kid = "fleet-a"
public_key = "{pk}"

[[links]]
name = "bus"
kind = "tcp"
address = "{addr}"
timeout_ms = 1000

[[units]]
id = "gen-1"
link = "bus"
slave = {GEN}
profile = "dse-gencomm"
group = "plant-room"
poll_interval_ms = 500

[[units]]
id = "hvac-1"
link = "bus"
slave = {HVAC}
profile = "coolmaster-va"
group = "offices"
poll_interval_ms = 500
"#,
            state = state.display()
        ),
    )
    .unwrap();

    // The installer's tools on the box: the bus scan and the unit test find and read both units.
    let scan = sitegate(&[
        "scan",
        "--link",
        "bus",
        "--config",
        config.to_str().unwrap(),
        "--range",
        "1-8",
        "--timeout-ms",
        "150",
    ]);
    assert_eq!(scan.code, 0, "{}{}", scan.stdout, scan.stderr);
    assert!(
        scan.stdout.contains("2 unit(s) answered"),
        "{}",
        scan.stdout
    );
    let test = sitegate(&["units", "test", "--config", config.to_str().unwrap()]);
    // The simulated generator has no oil temperature sender (GenComm's "unimplemented"
    // sentinel), so the unit test names exactly that point and fails.
    assert_eq!(test.code, 1, "{}{}", test.stdout, test.stderr);
    let not_good: Vec<&str> = test
        .stdout
        .lines()
        .filter(|l| {
            l.starts_with("  ") && !l.contains(" good ") && !l.trim_start().starts_with("point ")
        })
        .collect();
    assert_eq!(not_good.len(), 1, "{}", test.stdout);
    assert!(
        not_good[0].trim_start().starts_with("oil_temperature "),
        "{}",
        test.stdout
    );
    assert!(
        test.stdout
            .contains("1 failure(s): unit(s) not answering or point(s) not good"),
        "{}",
        test.stdout
    );
    assert_eq!(sim.stats().writes.len(), 0, "scan and test only read");

    let (mut child, logs) = spawn_run(&config, None, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}/api/v1"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = api.http.get(format!("{}/healthz", api.base)).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "daemon never answered: {}",
            logs.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let tech = issue_token(
        d,
        &key,
        "ivo",
        &token_desc(
            "s-1",
            "ivo",
            "technician",
            json!({"site": "s-1"}),
            now - time::Duration::minutes(1),
            now + 4 * hour,
        ),
    );
    let (st, body) = api.token_login(&tech).await;
    assert_eq!(st, 201, "{body}");
    let bearer = body["token"].as_str().unwrap().to_string();

    // The token's role applies in full: technician capabilities on the site and on each unit.
    let (st, me) = api.get("/me", &bearer).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(
        me["site"]["capabilities"],
        json!(["view", "control", "diagnose", "configure", "manage_users"]),
        "{me}"
    );
    let (st, units) = api.get("/units", &bearer).await;
    assert_eq!(st, 200, "{units}");
    let ids: Vec<&str> = units["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().or(u["id"].as_str()).unwrap())
        .collect();
    assert_eq!(ids, ["gen-1", "hvac-1"], "{units}");
    // Readings arrive once the first poll has been made.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, u) = api.get("/units/hvac-1", &bearer).await;
        assert_eq!(st, 200, "{u}");
        if u.to_string().contains("room_temperature") && u["online"] != json!(false) {
            break;
        }
        assert!(Instant::now() < deadline, "no readings: {u}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, diag) = api.get("/units/gen-1/diagnostics", &bearer).await;
    assert_eq!(st, 200, "{diag}");
    let (st, raw) = api
        .get(
            "/units/gen-1/diagnostics?kind=holding&address=768&count=2",
            &bearer,
        )
        .await;
    assert_eq!(st, 200, "{raw}");

    // A configure point: one write reaches the unit.
    sim.reset_stats();
    let (st, body) = api
        .put(
            "/units/hvac-1/points/wall_controller_lock",
            &bearer,
            json!({"value": 5}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let writes = sim.stats().writes;
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (writes[0].slave, writes[0].address, writes[0].values.clone()),
        (HVAC, 24, vec![5])
    );

    // A second installer with control-only on one unit: no configure, the other unit hidden.
    let carl = issue_token(
        d,
        &key,
        "carl",
        &token_desc(
            "s-1",
            "carl",
            "control-only",
            json!({"unit": "hvac-1"}),
            now - time::Duration::minutes(1),
            now + hour,
        ),
    );
    let (st, body) = api.token_login(&carl).await;
    assert_eq!(st, 201, "{body}");
    let carl = body["token"].as_str().unwrap().to_string();
    sim.reset_stats();
    let (st, body) = api
        .put(
            "/units/hvac-1/points/wall_controller_lock",
            &carl,
            json!({"value": 1}),
        )
        .await;
    assert_eq!(st, 403, "{body}");
    let (st, body) = api.get("/units/gen-1", &carl).await;
    assert_eq!(st, 404, "{body}");
    let (st, body) = api.get("/units", &carl).await;
    assert_eq!(st, 200);
    assert_eq!(body["units"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(sim.stats().writes.len(), 0);

    // Refused: a token for another site, and an expired one.
    let other = issue_token(
        d,
        &key,
        "mia",
        &token_desc(
            "s-2",
            "mia",
            "admin",
            json!({"site": "s-2"}),
            now - time::Duration::minutes(1),
            now + hour,
        ),
    );
    let (st, body) = api.token_login(&other).await;
    assert_eq!(
        (st, body["error"].clone()),
        (401, json!("invalid_credentials")),
        "{body}"
    );
    let expired = issue_token(
        d,
        &key,
        "old",
        &token_desc(
            "s-1",
            "old",
            "admin",
            json!({"site": "s-1"}),
            now - 3 * hour,
            now - hour,
        ),
    );
    // The refusals above throttle this client for a moment (1-2 ms in this config).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (st, body) = api.token_login(&expired).await;
    assert_eq!(
        (st, body["error"].clone()),
        (401, json!("invalid_credentials")),
        "{body}"
    );
    assert_eq!(sim.stats().writes.len(), 0);

    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.success(), "{st:?}");
    sim_stop.cancel();

    // The commissioning is in the audit trail: two token logins, two refusals, one write.
    let store = sitegate::store::Store::open_in(&state).unwrap();
    let logins = store
        .with_conn(|c| {
            sitegate::audit::query(
                c,
                &sitegate::audit::Query {
                    kind: Some("login".into()),
                    limit: 50,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    let mut outcomes: Vec<&str> = logins.iter().map(|r| r.outcome.as_str()).collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["failed", "failed", "ok", "ok"]);
}

/// The ceiling before and after the first bundle, on the real `Index`.
#[test]
fn before_the_first_bundle_each_token_holder_gets_exactly_their_role_and_after_it_the_bundles_ceiling()
 {
    use sitegate::access::{AccessState, Grant, Origin, Policy, User};
    use sitegate::authz::{Decision, DenyReason, Index, Inputs, Target};
    use sitegate::model::{CapSet, Capability, GrantId, Role, Scope, SiteId, UnitId, UserId};
    use std::sync::Arc;

    let now = time::macros::datetime!(2026-12-01 12:00 UTC);
    let site = SiteId::new("s-1").unwrap();
    let token = |u: &str, role: Role| {
        (
            User {
                id: UserId::new(u).unwrap(),
                email: format!("{u}@installer.example"),
                name: u.to_string(),
                active: true,
                password: None,
                business: None,
                owner: false,
            },
            Grant {
                id: GrantId::new(format!("g-{u}")).unwrap(),
                user: UserId::new(u).unwrap(),
                role,
                scope: Scope::Site(site.clone()),
                not_before: None,
                expires_at: Some(now + time::Duration::hours(4)),
                origin: Origin::Token,
            },
        )
    };
    let hvac = Target::Unit(UnitId::new("hvac-1").unwrap());
    // Admitted tokens are part of the access state the grants engine publishes.
    let inputs = |mut state: AccessState| {
        for (u, g) in [token("ivo", Role::Technician), token("vic", Role::Viewer)] {
            state.users.push(u);
            state.grants.push(g);
        }
        Inputs {
            site: Some(site.clone()),
            state: Arc::new(state),
            inventory: vec![(UnitId::new("hvac-1").unwrap(), None)],
            ..Inputs::default()
        }
    };
    let ivo = UserId::new("ivo").unwrap();
    let vic = UserId::new("vic").unwrap();

    let never = Index::build(&inputs(AccessState::default()));
    assert_eq!(
        never.decide(&ivo, Capability::Configure, &hvac, now),
        Decision::Allow
    );
    assert_eq!(
        never.decide(&ivo, Capability::Diagnose, &hvac, now),
        Decision::Allow
    );
    assert_eq!(
        never.decide(&ivo, Capability::ManageUsers, &Target::Site, now),
        Decision::Allow
    );
    // The technician's ceiling does not lift the viewer: each holder gets their own role.
    assert_eq!(
        never.decide(&vic, Capability::View, &hvac, now),
        Decision::Allow
    );
    assert_eq!(
        never.decide(&vic, Capability::Control, &hvac, now),
        Decision::Deny(DenyReason::RoleLacks)
    );
    // The token's expiry still bites.
    assert_eq!(
        never.decide(
            &ivo,
            Capability::View,
            &hvac,
            now + time::Duration::hours(5)
        ),
        Decision::Deny(DenyReason::Expired)
    );

    // Once a bundle was applied its package ceiling rules, for token holders too.
    let bundled = Index::build(&inputs(AccessState {
        site: Some(site.clone()),
        seq: 1,
        issued_at: Some(now),
        last_trusted_time: Some(now),
        policy: Policy {
            features: CapSet::of(&[Capability::View, Capability::Control]),
            ..Policy::default()
        },
        ..AccessState::default()
    }));
    assert_eq!(
        bundled.decide(&ivo, Capability::Control, &hvac, now),
        Decision::Allow
    );
    assert_eq!(
        bundled.decide(&ivo, Capability::Configure, &hvac, now),
        Decision::Deny(DenyReason::PackageExcludes)
    );
}

/// Commissioning from the page's API on the real daemon: a provisioned box with no links gets a
/// TCP link to a simulator, scans it, and gets the units the scan found; each change is written
/// to the config file (a comment placed before it survives), applied by the daemon's reload, and
/// audited. An invalid unit is refused with the config's own words and the file left byte for
/// byte; users without `configure` on the site are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_adds_a_link_scans_it_and_adds_the_units_found_which_then_answer_with_values()
{
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, pk) = fleet_keygen(d, "fleet-a");
    let (sim, sim_stop) = start_sim(vec![SimUnit::generator(GEN), SimUnit::hvac(HVAC)]).await;
    let addr = sim.addr.unwrap();
    let port = free_port();
    let state = d.join("state");
    let config = d.join("sitegate.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Plant room B: commissioned from the page.
[site]
id = "s-1"
gateway = "gw-1"

[state]
dir = "{state}"

[api]
listen = "127.0.0.1:{port}"
mode = "plain"

[auth]
throttle_base_ms = 1
throttle_max_ms = 2

[[grants.trust]]
kid = "fleet-a"
public_key = "{pk}"
"#,
            state = state.display()
        ),
    )
    .unwrap();

    let (mut child, logs) = spawn_run(&config, None, &[]);
    // A fresh connection for every request: a reload closes the old server's connections.
    let api = Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}/api/v1"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = api.http.get(format!("{}/healthz", api.base)).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "daemon never answered: {}",
            logs.all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let mut bearers = Vec::new();
    for (user, role) in [
        ("ivo", "technician"),
        ("vic", "viewer"),
        ("carl", "control-only"),
    ] {
        let token = issue_token(
            d,
            &key,
            user,
            &token_desc(
                "s-1",
                user,
                role,
                json!({"site": "s-1"}),
                now - time::Duration::minutes(1),
                now + hour,
            ),
        );
        let (st, body) = api.token_login(&token).await;
        assert_eq!(st, 201, "{body}");
        bearers.push(body["token"].as_str().unwrap().to_string());
    }
    let (tech, viewer, control) = (&bearers[0], &bearers[1], &bearers[2]);

    let (st, body) = api.get("/config/links", tech).await;
    assert_eq!((st, body), (200, json!({"links": []})));
    let link =
        json!({"name": "bus", "kind": "tcp", "address": addr.to_string(), "timeout_ms": 1000});

    // Without `configure` on the site: refused, the file untouched.
    let original = std::fs::read(&config).unwrap();
    for bearer in [viewer, control] {
        let (st, body) = api.post("/config/links", bearer, link.clone()).await;
        assert_eq!(
            (st, body["error"].clone()),
            (403, json!("forbidden")),
            "{body}"
        );
        let (st, body) = api.get("/config/units", bearer).await;
        assert_eq!(
            (st, body["error"].clone()),
            (403, json!("forbidden")),
            "{body}"
        );
    }
    assert_eq!(std::fs::read(&config).unwrap(), original);

    // The link: written, then live after the reload (the session carries over).
    let (st, body) = api.post("/config/links", tech, link.clone()).await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(
        body,
        json!({"change": "link_added", "link": {"name": "bus", "kind": "tcp",
            "address": addr.to_string(), "timeout_ms": 1000, "retries": 1, "units": []}})
    );
    // A change is applied by a reload; the next request waits for it (a request arriving while
    // the old server stops may be closed unanswered, and clients retry).
    let reloaded = |n: usize| {
        let logs = logs.clone();
        tokio::task::spawn_blocking(move || {
            logs.wait_for_count("configuration reloaded", n, Duration::from_secs(30))
        })
    };
    reloaded(1).await.unwrap();
    let (st, body) = api.get("/scans", tech).await;
    assert_eq!((st, body["links"].clone()), (200, json!(["bus"])), "{body}");

    // The scan finds both devices and suggests their profiles.
    let (st, scan) = api
        .post(
            "/scans",
            tech,
            json!({"link": "bus", "from": 1, "to": 8, "timeout_ms": 150}),
        )
        .await;
    assert_eq!(st, 202, "{scan}");
    let path = format!("/scans/{}", scan["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let scan = loop {
        let (st, scan) = api.get(&path, tech).await;
        assert_eq!(st, 200, "{scan}");
        if scan["status"] != json!("running") {
            break scan;
        }
        assert!(Instant::now() < deadline, "scan never ended: {scan}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(scan["status"], json!("done"), "{scan}");
    let found: Vec<(u64, String)> = scan["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["slave"].as_u64().unwrap(),
                f["profile"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            (u64::from(GEN), "dse-gencomm".to_string()),
            (u64::from(HVAC), "coolmaster-va".to_string())
        ],
        "{scan}"
    );

    // Invalid units: the config's own problem with its key path, the file byte for byte.
    let before = std::fs::read(&config).unwrap();
    for (unit, message) in [
        (
            json!({"id": "gen-1", "link": "bus", "slave": GEN, "profile": "no-such-profile"}),
            "the change would make the config invalid: units[0].profile: no profile named \
             `no-such-profile`",
        ),
        (
            json!({"id": "gen-1", "link": "bus", "slave": 0, "profile": "dse-gencomm"}),
            "the change would make the config invalid: units[0].slave: 0 is not a unicast \
             Modbus slave id (1 to 247; 0 is broadcast)",
        ),
    ] {
        let (st, body) = api.post("/config/units", tech, unit).await;
        assert_eq!(
            (st, body),
            (422, json!({"error": "config_invalid", "message": message}))
        );
        assert_eq!(std::fs::read(&config).unwrap(), before);
    }

    // The units found, with the suggested profile and the names the technician typed.
    for (n, ((slave, profile), (id, name))) in (2..).zip(
        found
            .iter()
            .zip([("gen-1", "Standby generator"), ("hvac-1", "Office AHU")]),
    ) {
        let (st, body) = api
            .post(
                "/config/units",
                tech,
                json!({"id": id, "name": name, "link": "bus", "slave": slave, "profile": profile}),
            )
            .await;
        assert_eq!(st, 202, "{body}");
        assert_eq!(body["unit"]["id"], json!(id), "{body}");
        reloaded(n).await.unwrap();
    }
    // A duplicate id is refused like any invalid change.
    let before = std::fs::read(&config).unwrap();
    let (st, body) = api
        .post(
            "/config/units",
            tech,
            json!({"id": "gen-1", "link": "bus", "slave": 9, "profile": "dse-gencomm"}),
        )
        .await;
    assert_eq!(
        (st, body),
        (
            422,
            json!({"error": "config_invalid", "message":
                "the change would make the config invalid: units[2].id: duplicate unit id `gen-1`"})
        )
    );
    assert_eq!(std::fs::read(&config).unwrap(), before);
    let (st, body) = api
        .call(reqwest::Method::DELETE, "/config/links/bus", tech, None)
        .await;
    assert_eq!(
        (st, body["error"].clone()),
        (409, json!("link_in_use")),
        "{body}"
    );

    // Once reloaded, the units answer with values.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, u) = api.get("/units/hvac-1", tech).await;
        if st == 200 && u.to_string().contains("room_temperature") && u["online"] == json!(true) {
            break;
        }
        assert!(Instant::now() < deadline, "no readings: {st} {u}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, units) = api.get("/units", tech).await;
    assert_eq!(st, 200, "{units}");
    let ids: Vec<&str> = units["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gen-1", "hvac-1"], "{units}");
    let (st, body) = api.get("/config/units", tech).await;
    assert_eq!(st, 200);
    assert_eq!(
        body,
        json!({"units": [
            {"id": "gen-1", "name": "Standby generator", "link": "bus", "slave": GEN, "profile": "dse-gencomm"},
            {"id": "hvac-1", "name": "Office AHU", "link": "bus", "slave": HVAC, "profile": "coolmaster-va"},
        ]})
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# Plant room B: commissioned from the page.\n[site]\n"),
        "{text}"
    );
    assert_eq!(sim.stats().writes.len(), 0, "commissioning only reads");

    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.success(), "{st:?}");
    sim_stop.cancel();

    // Every change, refusal and denial is in the audit trail, oldest first.
    let store = sitegate::store::Store::open_in(&state).unwrap();
    let mut records = store
        .with_conn(|c| {
            sitegate::audit::query(
                c,
                &sitegate::audit::Query {
                    kind: Some("config_changed".into()),
                    limit: 50,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    records.sort_by_key(|r| r.seq);
    let seen: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r.actor.clone().unwrap_or_default(),
                r.outcome.clone(),
                r.detail["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |a: &str, o: &str, c: &str| (a.to_string(), o.to_string(), c.to_string());
    assert_eq!(
        seen,
        [
            row("vic", "denied", "link_added"),
            row("vic", "denied", "list_units"),
            row("carl", "denied", "link_added"),
            row("carl", "denied", "list_units"),
            row("ivo", "ok", "link_added"),
            row("ivo", "refused", "unit_added"),
            row("ivo", "refused", "unit_added"),
            row("ivo", "ok", "unit_added"),
            row("ivo", "ok", "unit_added"),
            row("ivo", "refused", "unit_added"),
            row("ivo", "refused", "link_removed"),
        ]
    );
    let added = &records[4].detail;
    assert_eq!(added["before"], Value::Null, "{added}");
    assert_eq!(
        added["after"]["address"],
        json!(addr.to_string()),
        "{added}"
    );
}
