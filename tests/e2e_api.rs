//! End to end: the real daemon (`Daemon::start`) with Modbus simulators on loopback and a signed
//! grant bundle, driven over real HTTP as each role. Every write that must not reach a device is
//! counted at the simulator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

#[path = "common/client.rs"]
mod client;
mod e2e_support;

use std::time::{Duration, Instant};

use client::pinned_client;
use e2e_support::*;
use serde_json::{Value, json};

fn members() -> Vec<Member> {
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
            user: "carl",
            role: "control-only",
            scope: json!({"unit": "hvac-3"}),
            grant: "g-carl-hvac3",
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
        Member {
            user: "rick",
            role: "viewer",
            scope: json!({"group": "offices"}),
            grant: "g-rick-view",
        },
        Member {
            user: "rick",
            role: "control-only",
            scope: json!({"unit": "hvac-1"}),
            grant: "g-rick-control",
        },
    ]
}

async fn site() -> Site {
    let s = Site::start("plain", "").await;
    s.apply(bundle(1, &members(), &[])).await;
    s
}

struct Resp {
    status: u16,
    body: Value,
}

async fn call(
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

async fn get(s: &Site, path: &str, token: &str) -> Resp {
    call(s, reqwest::Method::GET, path, token, None).await
}

async fn put_point(s: &Site, unit: &str, point: &str, token: &str, value: Value) -> Resp {
    call(
        s,
        reqwest::Method::PUT,
        &format!("/units/{unit}/points/{point}"),
        token,
        Some(json!({ "value": value })),
    )
    .await
}

async fn command(s: &Site, unit: &str, cmd: &str, token: &str) -> Resp {
    call(
        s,
        reqwest::Method::POST,
        &format!("/units/{unit}/commands/{cmd}"),
        token,
        Some(json!({})),
    )
    .await
}

fn total_writes(s: &Site) -> usize {
    s.sim.stats().writes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_every_unit_but_every_write_is_403_and_nothing_reaches_the_bus() {
    let s = site().await;
    let t = s.login("vera").await;
    let units = get(&s, "/units", &t).await;
    assert_eq!(units.status, 200, "{}", units.body);
    let text = units.body.to_string();
    for u in ["gen-1", "hvac-1", "hvac-2"] {
        assert!(text.contains(u), "{u} missing from {text}");
    }
    let one = get(&s, "/units/hvac-1", &t).await;
    assert_eq!(one.status, 200, "{}", one.body);

    let before = total_writes(&s);
    let r = put_point(&s, "hvac-1", "setpoint", &t, json!(21.5)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = put_point(&s, "hvac-1", "on", &t, json!(true)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = command(&s, "gen-1", "start", &t).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = command(&s, "hvac-1", "reset_filter", &t).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = get(&s, "/units/gen-1/diagnostics", &t).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(total_writes(&s), before, "{:?}", s.sim.stats().writes);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_only_sets_the_hvac_setpoint_and_starts_the_generator_but_not_a_configure_point() {
    let s = site().await;
    let t = s.login("carl").await;

    s.sim.reset_stats();
    let r = put_point(&s, "hvac-1", "setpoint", &t, json!(21.5)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["read_back"], json!(21.5), "{}", r.body);
    let writes = s.sim.stats().writes;
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].slave, HVAC1_SLAVE);
    assert_eq!(writes[0].address, 18);
    assert_eq!(writes[0].values, vec![215]);
    assert_eq!(
        s.sim
            .register(HVAC1_SLAVE, sitegate::modbus::profile::RegKind::Holding, 18),
        Some(215)
    );
    let fresh = get(&s, "/units/hvac-1?fresh=true", &t).await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    assert!(fresh.body.to_string().contains("21.5"), "{}", fresh.body);

    // In stop mode a start is refused before the bus with a clear code.
    s.sim.reset_stats();
    let r = command(&s, "gen-1", "start", &t).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "not_possible_in_mode", "{}", r.body);
    assert!(s.sim.stats().writes.is_empty());
    let r = command(&s, "gen-1", "manual", &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.sim.reset_stats();
    let r = command(&s, "gen-1", "start", &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let writes = s.sim.stats().writes;
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].slave, GEN_SLAVE);
    assert_eq!(writes[0].function, 16);
    assert_eq!(writes[0].address, 4104);
    assert_eq!(writes[0].values, vec![35705, 29830]);

    s.sim.reset_stats();
    // The configure point of the built-in HVAC profile is visible to `view` and writable only
    // with `configure`: a homeowner sees the wall controller lock but can't change it.
    for (unit, point, v) in [("hvac-1", "wall_controller_lock", 1)] {
        let r = put_point(&s, unit, point, &t, json!(v)).await;
        assert_eq!(r.status, 403, "{point}: {}", r.body);
    }
    // Resetting the generator's latched alarms needs `configure` (function 34 clears
    // protective shutdowns): control-only gets 403 and nothing reaches the bus.
    let r = command(&s, "gen-1", "reset_alarms", &t).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A configure point the caller can see (profile open-hvac): 403, nothing on the bus.
    let r = put_point(&s, "hvac-3", "wall_controller_lock", &t, json!(1)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = get(&s, "/units/hvac-1/diagnostics", &t).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        s.sim.stats().writes.is_empty(),
        "{:?}",
        s.sim.stats().writes
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_writes_a_configure_point_and_reads_diagnostics_and_raw_registers() {
    let s = site().await;
    let t = s.login("tess").await;
    s.sim.reset_stats();
    let r = put_point(&s, "hvac-3", "wall_controller_lock", &t, json!(3)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.sim.stats().writes_to(HVAC3_SLAVE).len(), 1);
    s.sim.reset_stats();
    let r = put_point(&s, "hvac-1", "wall_controller_lock", &t, json!(0x81)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let writes = s.sim.stats().writes;
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (writes[0].address, writes[0].values.clone()),
        (24, vec![0x81])
    );
    // A technician (configure) resets the generator's alarm codes: key 35734, function 34.
    s.sim.reset_stats();
    let r = command(&s, "gen-1", "reset_alarms", &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let writes = s.sim.stats().writes;
    assert_eq!(
        (writes.len(), writes[0].address, writes[0].values.clone()),
        (1, 4104, vec![35734, 29801])
    );

    let r = get(&s, "/units/gen-1/diagnostics", &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(
        &s,
        "/units/gen-1/diagnostics?kind=holding&address=768&count=2",
        &t,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The DSE signature register (768) reads 1.
    assert!(r.body.to_string().contains('1'), "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_outside_the_scope_is_404_with_the_body_of_a_unit_that_does_not_exist() {
    let s = site().await;
    let t = s.login("carl").await;
    let units = get(&s, "/units", &t).await;
    assert!(!units.body.to_string().contains("hvac-2"), "{}", units.body);
    let hidden = get(&s, "/units/hvac-2", &t).await;
    let missing = get(&s, "/units/hvac-9", &t).await;
    assert_eq!(hidden.status, 404);
    assert_eq!(missing.status, 404);
    assert_eq!(
        hidden.body.to_string().replace("hvac-2", "X"),
        missing.body.to_string().replace("hvac-9", "X")
    );
    let before = total_writes(&s);
    let hidden = put_point(&s, "hvac-2", "setpoint", &t, json!(20)).await;
    let missing = put_point(&s, "hvac-9", "setpoint", &t, json!(20)).await;
    assert_eq!((hidden.status, missing.status), (404, 404));
    assert_eq!(
        hidden.body.to_string().replace("hvac-2", "X"),
        missing.body.to_string().replace("hvac-9", "X")
    );
    assert_eq!(total_writes(&s), before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_bearer_token_are_401_and_never_reach_the_bus() {
    let s = site().await;
    let long = "a".repeat(4096);
    for token in ["", "garbage", "Bearer", long.as_str()] {
        let r = get(&s, "/units", token).await;
        assert_eq!(r.status, 401, "{token:.20}: {}", r.body);
        let r = put_point(&s, "hvac-1", "setpoint", token, json!(21)).await;
        assert_eq!(r.status, 401, "{token:.20}: {}", r.body);
    }
    let r = s
        .http
        .get(format!("{}/units", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A logged-out session is dead at once.
    let t = s.login("carl").await;
    let r = call(&s, reqwest::Method::DELETE, "/session", &t, None).await;
    assert!(r.status == 200 || r.status == 204, "{}", r.body);
    assert_eq!(get(&s, "/units", &t).await.status, 401);
    assert!(s.sim.stats().writes.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_ttl_is_401() {
    let s = site().await;
    let t = s.login("carl").await;
    assert_eq!(get(&s, "/units", &t).await.status, 200);
    s.clock.advance(time::Duration::seconds(3601));
    let r = get(&s, "/units", &t).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = put_point(&s, "hvac-1", "setpoint", &t, json!(22)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_by_a_newer_bundle_turns_the_live_sessions_next_call_into_403() {
    let s = site().await;
    let t = s.login("rick").await;
    let r = put_point(&s, "hvac-1", "setpoint", &t, json!(23)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.apply(bundle(2, &members(), &["g-rick-control"])).await;
    s.sim.reset_stats();
    let r = put_point(&s, "hvac-1", "setpoint", &t, json!(24)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(s.sim.stats().writes.is_empty());
    // The viewer grant that was not revoked still reads.
    assert_eq!(get(&s, "/units/hvac-1", &t).await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setpoint_out_of_range_is_422_and_no_modbus_write_reaches_the_unit() {
    let s = site().await;
    let t = s.login("tess").await;
    s.sim.reset_stats();
    for v in [
        json!(99),
        json!(15.9),
        json!(-40),
        json!("warm"),
        json!(null),
    ] {
        let r = put_point(&s, "hvac-1", "setpoint", &t, v.clone()).await;
        assert_eq!(r.status, 422, "{v}: {}", r.body);
    }
    let r = put_point(&s, "hvac-1", "mode", &t, json!("turbo")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = put_point(&s, "hvac-1", "room_temperature", &t, json!(20)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let stats = s.sim.stats();
    assert!(stats.writes.is_empty(), "{:?}", stats.writes);
    assert_eq!(stats.function(6) + stats.function(16), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_body_is_413_and_malformed_json_is_400() {
    let s = site().await;
    let t = s.login("tess").await;
    let addr = s
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let text = client::put_declaring_10_mb(addr, "/api/v1/units/hvac-1/points/setpoint", &t).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    for body in ["{\"value\": ", "not json", "{\"value\": 21}}"] {
        let r = s
            .http
            .put(format!("{}/units/hvac-1/points/setpoint", s.base))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"], "malformed_json", "{b}");
    }
    assert!(s.sim.stats().writes.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_sees_command_records_with_their_actors_in_the_audit_trail() {
    let s = site().await;
    let carl = s.login("carl").await;
    let vera = s.login("vera").await;
    assert_eq!(command(&s, "gen-1", "manual", &carl).await.status, 200);
    assert_eq!(command(&s, "gen-1", "start", &carl).await.status, 200);
    assert_eq!(
        put_point(&s, "hvac-1", "setpoint", &vera, json!(20))
            .await
            .status,
        403
    );
    let admin = s.login("ada").await;
    let r = get(&s, "/audit?kind=command&limit=50", &admin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let records = r.body["records"]
        .as_array()
        .or_else(|| r.body["items"].as_array())
        .or_else(|| r.body.as_array())
        .cloned()
        .unwrap_or_else(|| panic!("no record list in {}", r.body));
    let text = serde_json::to_string(&records).unwrap();
    assert!(records.len() >= 2, "{text}");
    assert!(text.contains("carl"), "{text}");
    assert!(text.contains("vera"), "{text}");
    assert!(text.contains("start"), "{text}");
    assert!(text.contains("denied"), "{text}");
    // A control-only user has no diagnose anywhere: 403.
    assert_eq!(get(&s, "/audit", &carl).await.status, 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_request_counters_modbus_link_series_and_the_grant_seq() {
    let s = site().await;
    let t = s.login("carl").await;
    assert_eq!(
        put_point(&s, "hvac-1", "setpoint", &t, json!(22))
            .await
            .status,
        200
    );
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("sitegate_http_requests_total{"), "{text}");
    assert!(
        text.contains("sitegate_modbus_request_duration_seconds"),
        "{text}"
    );
    assert!(text.contains("link=\"bus\""), "{text}");
    // The grant gauges are refreshed by the daemon's housekeeping tick (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let text = s
            .http
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("sitegate_grant_seq 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "grant seq never 1:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_true_reads_the_unit_now_and_sees_a_change_made_behind_the_gateways_back() {
    let s = site().await;
    let t = s.login("vera").await;
    // Room temperature 23.4 °C written straight into the simulator.
    assert!(s.sim.set_register(
        HVAC1_SLAVE,
        sitegate::modbus::profile::RegKind::Holding,
        22,
        234
    ));
    let r = get(&s, "/units/hvac-1?fresh=true", &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.to_string().contains("23.4"), "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_client_pinning_the_daemon_fingerprint_works_end_to_end() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut s = Site::start("tls", "").await;
    s.apply(bundle(1, &members(), &[])).await;
    let fp = s.daemon.tls_fingerprint.clone().unwrap();
    s.http = pinned_client(&fp);
    let t = s.login("carl").await;
    let r = put_point(&s, "hvac-1", "setpoint", &t, json!(19)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A client pinning another fingerprint never gets through the handshake.
    let wrong = pinned_client(&format!("{}00", "00:".repeat(31)));
    let err = wrong.get(format!("{}/units", s.base)).send().await;
    assert!(err.is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_keeps_the_cached_values_fresh_without_any_write() {
    let s = site().await;
    let t = s.login("vera").await;
    assert!(s.sim.set_register(
        HVAC1_SLAVE,
        sitegate::modbus::profile::RegKind::Holding,
        22,
        251
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&s, "/units/hvac-1", &t).await;
        if r.body.to_string().contains("25.1") {
            break;
        }
        assert!(Instant::now() < deadline, "poll never saw 25.1: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.sim.stats().writes.is_empty());
    s.stop().await;
}
