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

/// The standard roles, plus `carl` on `hvac-3` and `rick` (viewer on the `offices` group,
/// control-only on `hvac-1`).
fn members() -> Vec<Member> {
    let mut m = role_members();
    m.extend([
        Member {
            user: "carl",
            role: "control-only",
            scope: json!({"unit": "hvac-3"}),
            grant: "g-carl-hvac3",
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
    ]);
    m
}

async fn site() -> Site {
    let s = Site::start("plain", "").await;
    s.apply(bundle(1, &members(), &[])).await;
    s
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
    // A write is authorized before the unit is looked up: 403, the same body for both.
    let hidden = put_point(&s, "hvac-2", "setpoint", &t, json!(20)).await;
    let missing = put_point(&s, "hvac-9", "setpoint", &t, json!(20)).await;
    assert_eq!((hidden.status, missing.status), (403, 403));
    assert_eq!(hidden.body, missing.body);
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

/// Bytes the database holds right now (pages in use, including the WAL's newest frames).
fn db_bytes(s: &Site) -> i64 {
    s.daemon
        .store
        .with_conn(|c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok(pages * size)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_refused_puts_of_a_65_kb_string_store_bounded_audit_fields() {
    let s = site().await;
    let t = s.login("tess").await;
    let huge = "x".repeat(65_000);
    let before = db_bytes(&s);
    for _ in 0..40 {
        let r = put_point(&s, "hvac-1", "setpoint", &t, json!(huge)).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["error"], "invalid_value");
    }
    let grown = db_bytes(&s) - before;
    let rows: Vec<(String, String, i64)> = s
        .daemon
        .store
        .with_conn(|c| {
            let mut st = c.prepare(
                "SELECT json_extract(detail, '$.error'), json_extract(detail, '$.value'), \
                 length(CAST(detail AS BLOB)) FROM audit \
                 WHERE kind = 'command' AND outcome = 'rejected' ORDER BY seq",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .unwrap();
    assert_eq!(rows.len(), 40);
    for (error, value, detail_len) in &rows {
        // The refused value is recorded by size only; the error message that repeats it keeps
        // its first 256 bytes and says how much was cut.
        assert_eq!(value, r#"{"omitted_bytes":65002}"#);
        let (head, tail) = error.split_once("…[+").unwrap();
        assert_eq!(head.len(), sitegate::audit::MAX_FIELD_BYTES, "{error}");
        assert!(head.starts_with("invalid value for `setpoint`"), "{head}");
        let cut: usize = tail.strip_suffix(" bytes]").unwrap().parse().unwrap();
        assert!(head.len() + cut > 65_000, "{cut}");
        assert_eq!(
            error.len(),
            head.len() + "…[+".len() + cut.to_string().len() + " bytes]".len()
        );
        assert_eq!(*detail_len, rows[0].2);
        assert!(*detail_len < 512, "{detail_len}");
    }
    // 40 refusals (audit row + its outbox copy each) fit in a bounded number of pages, where the
    // uncapped message alone was 40 × 65 KB twice over.
    assert!(grown <= 160 * 1024, "the database grew by {grown} bytes");
    s.stop().await;
}

fn in_a_day() -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The standard members plus `tom` (technician on the `offices` group only) and `tina`
/// (technician on the site, with a cloud `none` on `gen-1`).
async fn wider_site() -> Site {
    let s = site().await;
    let mut m = members();
    m.push(Member {
        user: "tom",
        role: "technician",
        scope: json!({"group": "offices"}),
        grant: "g-tom",
    });
    m.push(Member {
        user: "tina",
        role: "technician",
        scope: json!({"site": SITE}),
        grant: "g-tina",
    });
    m.push(Member {
        user: "tina",
        role: "none",
        scope: json!({"unit": "gen-1"}),
        grant: "g-tina-none",
    });
    s.apply(bundle(2, &m, &[])).await;
    s
}

/// Status and error code (and the whole body) of two answers are the same.
fn same(a: &Resp, b: &Resp, what: &str) {
    assert_eq!((a.status, &a.body), (b.status, &b.body), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_an_unknown_unit_group_or_email_exactly_like_a_forbidden_one() {
    let s = wider_site().await;
    let vera = s.login("vera").await; // viewer on the site
    let carl = s.login("carl").await; // control-only on hvac-1, gen-1, hvac-3
    let tom = s.login("tom").await; // technician on `offices` (hvac-1, hvac-3)
    let ada = s.login("ada").await;
    let before = total_writes(&s);

    // Reads: out of scope and unknown are 404 alike.
    let (a, b) = (
        get(&s, "/units/hvac-2", &carl).await,
        get(&s, "/units/hvac-9", &carl).await,
    );
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"], b.body["error"]);
    // Writes, commands, diagnostics: a unit the caller can see but not use, one outside the
    // scope and one that does not exist all answer the same 403.
    for (who, t, seen, hidden) in [
        ("vera", &vera, "hvac-1", None),
        ("carl", &carl, "hvac-1", Some("hvac-2")),
    ] {
        let ask = |u: &'static str| {
            let (s, t) = (&s, t);
            async move {
                (
                    put_point(s, u, "setpoint", t, json!(20)).await,
                    command(s, u, "start", t).await,
                )
            }
        };
        let (w9, c9) = ask("hvac-9").await;
        assert_eq!(
            (w9.status, &w9.body["error"]),
            (403, &json!("forbidden")),
            "{who}"
        );
        same(&c9, &w9, who);
        if who == "vera" {
            let (w, c) = ask(seen).await;
            same(&w, &w9, "viewer write on a visible unit");
            same(&c, &w9, "viewer command on a visible unit");
        }
        if let Some(h) = hidden {
            let (w, c) = ask(h).await;
            same(&w, &w9, "write out of scope");
            same(&c, &w9, "command out of scope");
        }
    }
    let d1 = get(&s, "/units/hvac-1/diagnostics", &carl).await;
    let d2 = get(&s, "/units/hvac-2/diagnostics", &carl).await;
    let d9 = get(
        &s,
        "/units/hvac-9/diagnostics?kind=holding&address=1",
        &carl,
    )
    .await;
    assert_eq!((d1.status, &d1.body["error"]), (403, &json!("forbidden")));
    same(&d2, &d1, "diagnostics out of scope");
    same(&d9, &d1, "diagnostics of an unknown unit, with a raw read");
    assert_eq!(total_writes(&s), before);

    // Delegation: authorization comes before scope and email are looked at.
    let grant = |email: &str, scope: Value| json!({"email": email, "role": "viewer", "scope": scope, "expires_at": in_a_day()});
    let base = post(
        &s,
        "/grants",
        &carl,
        grant(&email("vera"), json!({"unit": "hvac-1"})),
    )
    .await;
    assert_eq!(
        (base.status, &base.body["error"]),
        (403, &json!("forbidden"))
    );
    for (who, t, email_, scope) in [
        ("carl", &carl, email("vera"), json!({"unit": "hvac-9"})),
        ("carl", &carl, email("vera"), json!({"group": "nope"})),
        (
            "carl",
            &carl,
            "ghost@example.com".to_string(),
            json!({"unit": "hvac-1"}),
        ),
        (
            "carl",
            &carl,
            "ghost@example.com".to_string(),
            json!({"site": "s-other"}),
        ),
        ("tom", &tom, email("vera"), json!({"unit": "hvac-2"})),
        ("tom", &tom, email("vera"), json!({"group": "secret"})),
        ("tom", &tom, email("vera"), json!({"unit": "hvac-9"})),
        ("tom", &tom, email("vera"), json!({"group": "nope"})),
        (
            "tom",
            &tom,
            "ghost@example.com".to_string(),
            json!({"unit": "hvac-2"}),
        ),
        (
            "tom",
            &tom,
            "ghost@example.com".to_string(),
            json!({"site": SITE}),
        ),
    ] {
        let r = post(&s, "/grants", t, grant(&email_, scope.clone())).await;
        same(&r, &base, &format!("{who} {email_} {scope}"));
    }
    // Once authorized, an unknown email is its own answer (a success would tell anyway).
    let r = post(
        &s,
        "/grants",
        &tom,
        grant("ghost@example.com", json!({"unit": "hvac-1"})),
    )
    .await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (422, &json!("unknown_user")),
        "{}",
        r.body
    );

    // Revocation: someone else's delegation and a missing id are the same 404.
    let made = post(
        &s,
        "/grants",
        &ada,
        grant(&email("rick"), json!({"unit": "hvac-2"})),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made.body["grant"]["id"].as_str().unwrap().to_string();
    let theirs = delete(&s, &format!("/grants/{id}"), &carl).await;
    let missing = delete(&s, "/grants/l-00000000", &carl).await;
    let malformed = delete(&s, "/grants/.x", &carl).await;
    assert_eq!(
        (theirs.status, &theirs.body["error"]),
        (404, &json!("grant_not_found"))
    );
    same(&missing, &theirs, "missing grant");
    same(&malformed, &theirs, "malformed grant id");

    // Access requests: a unit that exists out of sight and one that does not are both pending.
    let ask = |scope: Value| json!({"role": "viewer", "scope": scope});
    let known = post(
        &s,
        "/access-requests",
        &carl,
        ask(json!({"unit": "hvac-2"})),
    )
    .await;
    let unknown = post(
        &s,
        "/access-requests",
        &carl,
        ask(json!({"unit": "hvac-9"})),
    )
    .await;
    let group = post(&s, "/access-requests", &carl, ask(json!({"group": "nope"}))).await;
    for r in [&known, &unknown, &group] {
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.body["status"], "pending");
        let keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["request_id", "status"]);
    }

    // Audit: filtering by a unit out of sight or by an unknown one gives the same empty page.
    let a = get(&s, "/audit?unit=hvac-2", &tom).await;
    let b = get(&s, "/audit?unit=hvac-9", &tom).await;
    assert_eq!(a.status, 200);
    same(&a, &b, "audit filter");
    assert_eq!(a.body["records"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_technician_with_none_on_a_unit_does_not_see_its_audit_history() {
    let s = wider_site().await;
    let carl = s.login("carl").await;
    let ada = s.login("ada").await;
    assert_eq!(command(&s, "gen-1", "manual", &carl).await.status, 200);
    assert_eq!(command(&s, "gen-1", "start", &carl).await.status, 200);
    assert_eq!(
        put_point(&s, "hvac-1", "setpoint", &carl, json!(21))
            .await
            .status,
        200
    );
    let tina = s.login("tina").await;
    let all = |r: &Resp| r.body["records"].as_array().unwrap().clone();
    let r = get(&s, "/audit?limit=200", &tina).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let units: std::collections::BTreeSet<Option<String>> = all(&r)
        .iter()
        .map(|x| x["unit"].as_str().map(str::to_string))
        .collect();
    // hvac-1's write is there; gen-1's start and every record about no unit (logins) are not.
    assert!(units.contains(&Some("hvac-1".to_string())), "{units:?}");
    assert!(!units.contains(&Some("gen-1".to_string())), "{units:?}");
    assert!(!units.contains(&None), "{units:?}");
    let r = get(&s, "/audit?unit=gen-1", &tina).await;
    assert_eq!((r.status, r.body["records"].clone()), (200, json!([])));
    // The admin sees the whole site: gen-1's start and the logins.
    let r = get(&s, "/audit?limit=200", &ada).await;
    let text = serde_json::to_string(&all(&r)).unwrap();
    assert!(text.contains("\"unit\":\"gen-1\""), "{text}");
    assert!(text.contains("\"kind\":\"login\""), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_cannot_take_a_unit_away_from_the_admin_over_the_api() {
    let s = site().await;
    let tess = s.login("tess").await;
    let ada = s.login("ada").await;
    let body = |role: &str| {
        json!({"email": email("ada"), "role": role, "scope": {"unit": "gen-1"},
               "expires_at": in_a_day()})
    };
    let r = post(&s, "/grants", &tess, body("none")).await;
    assert_eq!(
        (r.status, &r.body["error"]),
        (422, &json!("none_not_delegable")),
        "{}",
        r.body
    );
    let r = post(&s, "/grants", &tess, body("control-only")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["grant"]["id"].as_str().unwrap().to_string();
    // The admin keeps everything on gen-1 …
    let me = get(&s, "/me", &ada).await;
    let gen1 = me.body["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["unit"] == "gen-1")
        .unwrap()
        .clone();
    assert_eq!(
        gen1["capabilities"],
        json!(["view", "control", "diagnose", "configure", "manage_users"])
    );
    assert_eq!(get(&s, "/units/gen-1/diagnostics", &ada).await.status, 200);
    // … sees the delegation and deletes it.
    let listed = get(&s, "/grants", &ada).await;
    assert!(
        listed.body["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == id.as_str())
    );
    let r = delete(&s, &format!("/grants/{id}"), &ada).await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_read_of_a_register_the_unit_does_not_have_is_422_device_refused_not_a_502() {
    let s = site().await;
    let t = s.login("tess").await;
    let ok = get(
        &s,
        "/units/hvac-1/diagnostics?kind=holding&address=18&count=1",
        &t,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["raw"]["count"], json!(1), "{}", ok.body);
    let r = get(
        &s,
        "/units/hvac-1/diagnostics?kind=holding&address=60000&count=1",
        &t,
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"], "device_refused", "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_filter_is_limited_to_64_characters_not_64_bytes() {
    let s = site().await;
    let t = s.login("ada").await;
    let at_limit = "%C3%A9".repeat(64);
    let r = get(&s, &format!("/audit?actor={at_limit}"), &t).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["records"], json!([]), "{}", r.body);
    let r = get(&s, &format!("/audit?actor={at_limit}%C3%A9"), &t).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"], "invalid_query", "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_installer_token_fits_the_body_limit_even_fully_escaped() {
    let s = site().await;
    // 10,240 characters, each sent as a 6-byte `\u0041` escape: 61,452 bytes of body.
    let body = format!("{{\"token\":\"{}\"}}", "\\u0041".repeat(10 * 1024));
    assert!(body.len() < 64 * 1024);
    let post = |body: String| {
        s.http
            .post(format!("{}/session", s.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(body).await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_credentials", "{v}");
    // One character more, or a character outside printable ASCII: the same 401.
    for token in ["A".repeat(10 * 1024 + 1), "é".to_string()] {
        let r = post(json!({ "token": token }).to_string()).await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_credentials", "{v}");
    }
    s.stop().await;
}

/// Polls `GET /scans/{id}` until the scan is no longer running (bounded).
async fn scan_finished(s: &Site, id: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(s, &format!("/scans/{id}"), token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] != "running" {
            return r.body;
        }
        assert!(Instant::now() < deadline, "scan still running: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_scans_the_link_through_the_daemon_and_tests_a_unit_and_nothing_is_written() {
    let s = site().await;
    let tess = s.login("tess").await;
    let vera = s.login("vera").await;
    s.sim.reset_stats();

    // Only `diagnose` on the whole site may scan; on the unit, only `diagnose` may test it.
    let r = post(
        &s,
        "/scans",
        &vera,
        json!({"link": "bus", "from": 1, "to": 6}),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("forbidden"))
    );
    let r = post(&s, "/units/hvac-1/test", &vera, json!({})).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("forbidden"))
    );
    let r = post(&s, "/units/nope/test", &vera, json!({})).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("forbidden"))
    );
    // Bounds, after authorization.
    for bad in [
        json!({"link": "nope"}),
        json!({"link": "bus", "from": 0}),
        json!({"link": "bus", "to": 248}),
        json!({"link": "bus", "timeout_ms": 5}),
    ] {
        let r = post(&s, "/scans", &tess, bad.clone()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (422, Some("invalid_request")),
            "{bad}: {}",
            r.body
        );
    }

    // The unit test reads every point now; the simulated indoor unit answers every one.
    let r = post(&s, "/units/hvac-1/test", &tess, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let points = r.body["points"].as_array().unwrap();
    let bad: Vec<&Value> = points.iter().filter(|p| p["quality"] != "good").collect();
    assert_eq!(
        (r.body["passed"].as_bool(), r.body["failures"].as_u64()),
        (Some(bad.is_empty()), Some(bad.len() as u64)),
        "{}",
        r.body
    );
    assert!(points.len() > 5, "{}", r.body);

    // A scan of ids 1..=6: the four simulated devices, each with its profile and its unit.
    let r = post(
        &s,
        "/scans",
        &tess,
        json!({"link": "bus", "from": 1, "to": 6, "timeout_ms": 200}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        (r.body["status"].as_str(), r.body["total"].as_u64()),
        (Some("running"), Some(6))
    );
    let id = r.body["id"].as_str().unwrap().to_string();
    // One at a time.
    let again = post(&s, "/scans", &tess, json!({"link": "bus"})).await;
    let done = scan_finished(&s, &id, &tess).await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (409, Some("scan_running")),
        "{}",
        again.body
    );
    assert_eq!(
        (done["status"].as_str(), done["probed"].as_u64()),
        (Some("done"), Some(6)),
        "{done}"
    );
    let found: Vec<(u64, Option<&str>, Option<&str>)> = done["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["slave"].as_u64().unwrap(),
                f["profile"].as_str(),
                f["unit"].as_str(),
            )
        })
        .collect();
    eprintln!("scan: {done}");
    assert_eq!(
        found,
        vec![
            (1, Some("dse-gencomm"), Some("gen-1")),
            (2, Some("coolmaster-va"), Some("hvac-1")),
            (3, Some("coolmaster-va"), Some("hvac-2")),
            (4, Some("coolmaster-va"), Some("hvac-3")),
        ]
    );
    // Polling went on during the scan, and neither the scan nor the test wrote anything.
    assert_eq!(s.sim.stats().writes.len(), 0);

    // A scan of every id, cancelled: it stops after the id being probed.
    let r = post(
        &s,
        "/scans",
        &tess,
        json!({"link": "bus", "from": 5, "to": 247, "timeout_ms": 100}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = delete(&s, &format!("/scans/{id}"), &tess).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = scan_finished(&s, &id, &tess).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["probed"].as_u64().unwrap() < 243, "{done}");
    let r = get(&s, "/scans/does-not-exist", &tess).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("scan_not_found"))
    );
    let r = get(&s, "/scans", &tess).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["links"], json!(["bus"]));
    assert_eq!(r.body["scans"].as_array().unwrap().len(), 2);

    // Audited: the two scans (started, then ok / cancel_requested + cancelled), the unit test,
    // and the refusals.
    let admin = s.login("ada").await;
    let r = get(&s, "/audit?kind=scan&limit=50", &admin).await;
    let outcomes: Vec<&str> = r.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            "cancelled",
            "cancel_requested",
            "started",
            "ok",
            "started",
            "denied"
        ]
    );
    let r = get(&s, "/audit?kind=unit_test&limit=50", &admin).await;
    let outcomes: Vec<&str> = r.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["ok", "denied", "denied"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_bundle_an_installer_token_scans_and_tests_units() {
    let s = Site::start("plain", "").await;
    let user =
        json!({"id": "ivo", "email": "ivo@example.com", "name": "Ivo Installer", "active": true});
    let ivo = token_login(&s, &installer_token(user, "g-ivo", time::Duration::days(1))).await;
    let r = post(&s, "/units/gen-1/test", &ivo, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &s,
        "/scans",
        &ivo,
        json!({"link": "bus", "from": 1, "to": 2, "timeout_ms": 200}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let done = scan_finished(&s, &id, &ivo).await;
    assert_eq!(
        (
            done["status"].as_str(),
            done["found"].as_array().map(Vec::len)
        ),
        (Some("done"), Some(2)),
        "{done}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_lists_every_role_in_force_with_its_source_and_the_audit_chain_verifies() {
    let s = site().await;
    let ada = s.login("ada").await;
    let r = get(&s, "/roles", &ada).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut roles: Vec<String> = r.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "{} {} {} {}",
                g["email"].as_str().unwrap_or("?"),
                g["role"].as_str().unwrap(),
                g["scope"],
                g["origin"].as_str().unwrap()
            )
        })
        .collect();
    roles.sort();
    eprintln!("{roles:#?}");
    assert_eq!(roles.len(), members().len(), "{roles:#?}");
    assert!(roles.iter().all(|r| r.ends_with(" cloud")), "{roles:#?}");
    // Someone who manages users nowhere may not list roles.
    let carl = s.login("carl").await;
    let r = get(&s, "/roles", &carl).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("forbidden"))
    );
    // The chain: intact for a site technician or admin; not for a viewer.
    let r = get(&s, "/audit/verify", &ada).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["intact"].as_bool(), r.body["broken_at"].is_null()),
        (Some(true), true),
        "{}",
        r.body
    );
    assert!(r.body["records"].as_u64().unwrap() >= 2, "{}", r.body);
    // A record edited behind the daemon's back breaks the chain at that record.
    let db = rusqlite::Connection::open(s.cfg.state_dir.join("sitegate.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let edited = db
        .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2", [])
        .unwrap();
    assert_eq!(edited, 1);
    drop(db);
    let r = get(&s, "/audit/verify", &ada).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["intact"].as_bool(), r.body["broken_at"].as_i64()),
        (Some(false), Some(2)),
        "{}",
        r.body
    );
    let vera = s.login("vera").await;
    let r = get(&s, "/audit/verify", &vera).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("forbidden"))
    );
    s.stop().await;
}

/// `crowd-0000` … `crowd-1049`, one cloud grant each: viewer on the site (`i % 3 == 0`), on the
/// `offices` group (`1`) or on `hvac-2` (`2`).
fn crowd() -> Vec<Member> {
    (0..1050)
        .map(|i| {
            let user: &'static str = Box::leak(format!("crowd-{i:04}").into_boxed_str());
            let grant: &'static str = Box::leak(format!("g-crowd-{i:04}").into_boxed_str());
            let scope = match i % 3 {
                0 => json!({"site": SITE}),
                1 => json!({"group": "offices"}),
                _ => json!({"unit": "hvac-2"}),
            };
            Member {
                user,
                role: "viewer",
                scope,
                grant,
            }
        })
        .collect()
}

/// The grant ids of a `/roles` page and its `next_after`.
async fn roles_page(s: &Site, token: &str, query: &str) -> (Vec<String>, Option<String>) {
    let r = get(s, &format!("/roles?{query}"), token).await;
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    let ids = r.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_string())
        .collect();
    (ids, r.body["next_after"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_page_through_1050_grants_without_skips_or_repeats_while_grants_change() {
    let s = site().await;
    let mut all = members();
    all.extend(crowd());
    s.apply(bundle(2, &all, &[])).await;
    let ada = s.login("ada").await;
    // One local delegation (ada's own access ends, so it needs an end date).
    let r = post(
        &s,
        "/grants",
        &ada,
        json!({"email": email("vera"), "role": "control-only", "scope": {"unit": "hvac-2"},
               "expires_at": in_a_day()}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let local = r.body["grant"]["id"].as_str().unwrap().to_string();

    // Page 1: ada, carl's three grants (by grant id), then the crowd by email.
    let (p1, after1) = roles_page(&s, &ada, "limit=500").await;
    assert_eq!(p1.len(), 500);
    assert_eq!(
        p1[..5],
        [
            "g-admin",
            "g-carl-gen",
            "g-carl-hvac",
            "g-carl-hvac3",
            "g-crowd-0000"
        ]
    );
    assert_eq!(p1[499], "g-crowd-0495");
    assert_eq!(
        after1.as_deref(),
        Some("crowd-0495@example.com crowd-0495 g-crowd-0495 cloud")
    );
    // Between two pages the cloud revokes one grant already listed and one not yet listed.
    s.apply(bundle(3, &all, &["g-crowd-0100", "g-crowd-0600"]))
        .await;
    let q = |after: &str| format!("limit=500&after={}", urlencode(after));
    let (p2, after2) = roles_page(&s, &ada, &q(after1.as_deref().unwrap())).await;
    assert_eq!(p2.len(), 500);
    assert_eq!(
        (p2[0].as_str(), p2[499].as_str()),
        ("g-crowd-0496", "g-crowd-0996")
    );
    assert!(!p2.contains(&"g-crowd-0600".to_string()));
    let (p3, after3) = roles_page(&s, &ada, &q(after2.as_deref().unwrap())).await;
    assert_eq!(after3, None);
    let mut tail: Vec<String> = (997..1050).map(|i| format!("g-crowd-{i:04}")).collect();
    tail.extend(["g-rick-control", "g-rick-view", "g-tech"].map(String::from));
    let mut vera = vec![local.clone(), "g-viewer".to_string()];
    vera.sort();
    tail.extend(vera);
    assert_eq!(p3, tail);
    // Every role in force exactly once: the members, the crowd but the one revoked ahead of the
    // cursor (the one revoked behind it was listed before it went), the delegation.
    let seen: Vec<&String> = p1.iter().chain(&p2).chain(&p3).collect();
    let unique: std::collections::BTreeSet<&String> = seen.iter().copied().collect();
    assert_eq!((seen.len(), unique.len()), (1058, 1058));
    let mut want: std::collections::BTreeSet<String> =
        all.iter().map(|m| m.grant.to_string()).collect();
    want.remove("g-crowd-0600");
    want.insert(local.clone());
    assert_eq!(
        unique
            .into_iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );

    // Filters: user (case-insensitive substring of email or id), origin, unit; combined.
    let (ids, next) = roles_page(&s, &ada, "user=CROWD-104").await;
    assert_eq!(
        (ids, next),
        (
            (1040..1050).map(|i| format!("g-crowd-{i:04}")).collect(),
            None
        )
    );
    let (ids, _) = roles_page(&s, &ada, "user=rick").await;
    assert_eq!(ids, ["g-rick-control", "g-rick-view"]);
    let (ids, _) = roles_page(&s, &ada, "origin=local").await;
    assert_eq!(ids, std::slice::from_ref(&local));
    let (ids, next) = roles_page(&s, &ada, "origin=cloud&limit=1").await;
    assert_eq!(
        (ids, next.as_deref()),
        (
            vec!["g-admin".to_string()],
            Some("ada@example.com ada g-admin cloud")
        )
    );
    // hvac-2 (group `secret`): the site grants, hvac-2's own and the delegation; not `offices`.
    let (ids, next) = roles_page(&s, &ada, "unit=hvac-2&user=crowd-00").await;
    let crowd_hvac2: Vec<String> = (0..100)
        .filter(|i| i % 3 != 1)
        .map(|i| format!("g-crowd-{i:04}"))
        .collect();
    assert_eq!((ids, next), (crowd_hvac2, None));
    let (ids, _) = roles_page(&s, &ada, "unit=hvac-2&user=vera").await;
    assert_eq!(ids, tail[tail.len() - 2..]);
    let (ids, _) = roles_page(&s, &ada, "unit=hvac-1&user=crowd-000").await;
    assert_eq!(
        ids,
        [
            "g-crowd-0000",
            "g-crowd-0001",
            "g-crowd-0003",
            "g-crowd-0004",
            "g-crowd-0006",
            "g-crowd-0007",
            "g-crowd-0009"
        ]
    );
    let (ids, next) = roles_page(&s, &ada, "unit=hvac-9").await;
    assert_eq!((ids.len(), next), (0, None));

    // Limits and malformed queries: 400 invalid_query, as documented.
    for bad in [
        "limit=0".to_string(),
        "limit=501".to_string(),
        "origin=bundle".to_string(),
        format!("user={}", "a".repeat(65)),
        format!("after={}", "a".repeat(513)),
        "page=2".to_string(),
    ] {
        let r = get(&s, &format!("/roles?{bad}"), &ada).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some("invalid_query")),
            "{bad}: {}",
            r.body
        );
    }
    let (ids, _) = roles_page(&s, &ada, "").await;
    assert_eq!(ids.len(), 100, "the default page size");
    s.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
