//! The LAN API over real HTTP on 127.0.0.1:0: error contract, scope hiding, authorization of
//! writes and commands, validation before the bus, hardening limits, TLS and pinning.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sitegate::config::ApiMode;

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn requests_without_or_with_a_bad_token_get_401_json() {
    let h = Harness::start().await;
    let r = h.http.get(h.url("/units")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert_error(401, &v, 401, "unauthenticated");

    let (s, v) = h.get("/units", "not-a-session").await;
    assert_error(s, &v, 401, "unauthenticated");
    let r = h
        .http
        .get(h.url("/me"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn login_logout_and_wrong_password() {
    let h = Harness::start().await;
    let r = h
        .http
        .post(h.url("/session"))
        .json(&json!({"email": "viewer@example.com", "password": "nope"}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 401, "invalid_credentials");

    let token = h.login("viewer@example.com").await;
    let (s, me) = h.get("/me", &token).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["user"]["id"], "u-viewer");
    assert_eq!(me["units"][0]["unit"], "hvac-1");
    assert_eq!(me["units"][0]["capabilities"], json!(["view"]));

    let r = h
        .http
        .delete(h.url("/session"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, v) = h.get("/me", &token).await;
    assert_error(s, &v, 401, "unauthenticated");
}

#[tokio::test]
async fn installer_token_logs_in_and_a_forged_one_does_not() {
    let h = Harness::start().await;
    let good = r#"{"v":1,"kind":"token","sig":"good"}"#;
    let (s, v) = h.post("/session", "", json!({ "token": good })).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["user"], "u-tech");
    let (s, v) = h
        .post(
            "/session",
            "",
            json!({ "token": good.replace("good", "forged") }),
        )
        .await;
    assert_error(s, &v, 401, "invalid_credentials");
    let (s, v) = h
        .post("/session", "", json!({ "token": good, "email": "a@b.c" }))
        .await;
    assert_error(s, &v, 400, "invalid_body");
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_with_retry_after() {
    let h = Harness::start().await;
    for _ in 0..5 {
        let (s, _) = h
            .post(
                "/session",
                "",
                json!({"email": "admin@example.com", "password": "x"}),
            )
            .await;
        assert_eq!(s, 401);
    }
    let r = h
        .http
        .post(h.url("/session"))
        .json(&json!({"email": "admin@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "login_throttled");
}

#[tokio::test]
async fn an_expired_session_answers_401_session_expired() {
    let h = Harness::start().await;
    let token = h.login("admin@example.com").await;
    assert_eq!(h.get("/units", &token).await.0, 200);
    h.clock.advance(time::Duration::hours(2));
    let (s, v) = h.get("/units", &token).await;
    assert_error(s, &v, 401, "session_expired");
}

#[tokio::test]
async fn a_unit_outside_scope_answers_exactly_like_a_missing_one() {
    let h = Harness::start().await;
    let token = h.login("viewer@example.com").await;
    let (s, units) = h.get("/units", &token).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = units["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hvac-1"], "only the unit in scope is listed");

    let r_out = h
        .http
        .get(h.url("/units/hvac-2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let r_missing = h
        .http
        .get(h.url("/units/nope"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let r_bad = h
        .http
        .get(h.url("/units/.bad"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r_out.status(), 404);
    assert_eq!(r_missing.status(), 404);
    assert_eq!(r_bad.status(), 404);
    let (b_out, b_missing, b_bad) = (
        r_out.bytes().await.unwrap(),
        r_missing.bytes().await.unwrap(),
        r_bad.bytes().await.unwrap(),
    );
    assert_eq!(b_out, b_missing, "same body for out of scope and missing");
    assert_eq!(b_out, b_bad);

    // Writes, commands and diagnostics are authorized before the unit is looked up: out of
    // scope, missing, malformed and in scope (a viewer may not write) answer byte for byte
    // alike, and nothing reaches the bus.
    for (path, post) in [
        ("/points/setpoint", false),
        ("/commands/start", true),
        ("/diagnostics", false),
    ] {
        let mut bodies = Vec::new();
        for unit in ["hvac-2", "nope", ".bad", "hvac-1"] {
            let url = h.url(&format!("/units/{unit}{path}"));
            let req = match (path, post) {
                ("/diagnostics", _) => h.http.get(url),
                (_, true) => h.http.post(url).json(&json!({})),
                (_, false) => h.http.put(url).json(&json!({"value": 20})),
            };
            let r = req.bearer_auth(&token).send().await.unwrap();
            bodies.push((r.status().as_u16(), r.bytes().await.unwrap()));
        }
        assert_eq!(bodies[0].0, 403, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&bodies[0].1).unwrap();
        assert_eq!(v["error"], "forbidden", "{path}");
        for b in &bodies[1..] {
            assert_eq!(b, &bodies[0], "{path}");
        }
    }
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unit_detail_shows_cached_values_with_quality_and_age_and_hides_diagnose_points() {
    let h = Harness::start().await;
    let viewer = h.login("viewer@example.com").await;
    let (s, v) = h.get("/units/hvac-1", &viewer).await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"setpoint"));
    assert!(
        !names.contains(&"filter_hours"),
        "diagnose point hidden from a viewer"
    );
    let sp = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "setpoint")
        .unwrap();
    assert_eq!(sp["value"], 21.5);
    assert_eq!(sp["quality"], "good");
    assert_eq!(sp["age_ms"], 2000);
    assert_eq!(sp["writable"], false);

    let tech = h.login("tech@example.com").await;
    let (_, v) = h.get("/units/hvac-1", &tech).await;
    assert!(
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "filter_hours")
    );
}

#[tokio::test]
async fn a_fresh_read_past_its_bound_is_504_and_a_bad_flag_is_400() {
    let h = Harness::start().await;
    let token = h.login("viewer@example.com").await;
    let (s, v) = h.get("/units/hvac-1?fresh=true", &token).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["fresh"], true);
    *h.units.fresh_delay.lock().unwrap() = Duration::from_secs(5);
    let (s, v) = h.get("/units/hvac-1?fresh=true", &token).await;
    assert_error(s, &v, 504, "device_timeout");
    let (s, v) = h.get("/units/hvac-1?fresh=maybe", &token).await;
    assert_error(s, &v, 400, "invalid_query");
}

#[tokio::test]
async fn a_viewer_reads_but_every_write_is_403_and_audited() {
    let h = Harness::start().await;
    let token = h.login("viewer@example.com").await;
    let (s, v) = h
        .put(
            "/units/hvac-1/points/setpoint",
            &token,
            json!({"value": 20}),
        )
        .await;
    assert_error(s, &v, 403, "forbidden");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
    let rec = &h.audit()[0];
    assert_eq!(rec.kind, "command");
    assert_eq!(rec.outcome, "denied");
    assert_eq!(rec.actor.as_deref(), Some("u-viewer"));
    assert_eq!(rec.unit.as_deref(), Some("hvac-1"));
    assert_eq!(rec.detail["reason"], "role_lacks");
    let metrics = h.metrics.render(0);
    assert!(
        metrics.contains(
            "sitegate_authz_denials_total{capability=\"control\",reason=\"role_lacks\"} 1"
        )
    );
}

#[tokio::test]
async fn control_only_changes_the_setpoint_and_starts_the_generator_but_not_a_configure_point() {
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    let (s, v) = h
        .put(
            "/units/hvac-1/points/setpoint",
            &token,
            json!({"value": 23.5}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["read_back"], 23.5);
    assert_eq!(h.units.value("hvac-1", "setpoint"), Some(json!(23.5)));

    let (s, v) = h
        .post("/units/gen-1/commands/start", &token, json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["command"], "start");
    assert_eq!(h.units.bus_commands.load(Ordering::SeqCst), 1);

    let (s, v) = h
        .put(
            "/units/hvac-1/points/lock_bits",
            &token,
            json!({"value": 1}),
        )
        .await;
    assert_error(s, &v, 403, "forbidden");
    let (s, v) = h
        .post("/units/gen-1/commands/reset_faults", &token, json!({}))
        .await;
    assert_error(s, &v, 403, "forbidden");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 1);
    assert_eq!(h.units.bus_commands.load(Ordering::SeqCst), 1);

    let outcomes: Vec<(String, String)> = h
        .audit()
        .iter()
        .map(|r| {
            (
                r.outcome.clone(),
                r.detail["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("denied".to_string(), "command".to_string()),
            ("denied".into(), "write".into()),
            ("ok".into(), "command".into()),
            ("ok".into(), "write".into()),
        ]
    );
}

#[tokio::test]
async fn an_out_of_range_setpoint_is_422_and_nothing_reaches_the_bus() {
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    let (s, v) = h
        .put(
            "/units/hvac-1/points/setpoint",
            &token,
            json!({"value": 99}),
        )
        .await;
    assert_error(s, &v, 422, "invalid_value");
    let (s, v) = h
        .put(
            "/units/hvac-1/points/setpoint",
            &token,
            json!({"value": "warm"}),
        )
        .await;
    assert_error(s, &v, 422, "invalid_value");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
    assert_eq!(h.audit()[0].outcome, "rejected");
    let (s, v) = h
        .put(
            "/units/hvac-1/points/room_temp",
            &token,
            json!({"value": 20}),
        )
        .await;
    assert_error(s, &v, 422, "point_read_only");
    let (s, v) = h
        .put("/units/hvac-1/points/nope", &token, json!({"value": 20}))
        .await;
    assert_error(s, &v, 404, "point_not_found");
}

#[tokio::test]
async fn a_device_exception_on_write_is_502_and_audited_as_failed() {
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    *h.units.failing_point.lock().unwrap() = Some("setpoint".into());
    let (s, v) = h
        .put(
            "/units/hvac-1/points/setpoint",
            &token,
            json!({"value": 20}),
        )
        .await;
    assert_error(s, &v, 502, "device_error");
    assert_eq!(h.audit()[0].outcome, "failed");
}

#[tokio::test]
async fn a_technician_reads_diagnostics_and_raw_registers_but_a_viewer_gets_403() {
    let h = Harness::start().await;
    let tech = h.login("tech@example.com").await;
    let (s, v) = h.get("/units/gen-1/diagnostics", &tech).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["link"]["link"], "bus1");
    let (s, v) = h
        .get(
            "/units/gen-1/diagnostics?kind=holding&address=4104&count=2",
            &tech,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["raw"]["values"], json!([4104, 4105]));
    let (s, v) = h
        .get(
            "/units/gen-1/diagnostics?kind=holding&address=0&count=126",
            &tech,
        )
        .await;
    assert_error(s, &v, 400, "invalid_query");
    let (s, v) = h.get("/units/gen-1/diagnostics?kind=holding", &tech).await;
    assert_error(s, &v, 400, "invalid_query");
    let (s, v) = h
        .put("/units/hvac-1/points/lock_bits", &tech, json!({"value": 3}))
        .await;
    assert_eq!(s, 200, "technician writes a configure point: {v}");

    let viewer = h.login("viewer@example.com").await;
    let (s, v) = h.get("/units/hvac-1/diagnostics", &viewer).await;
    assert_error(s, &v, 403, "forbidden");
}

#[tokio::test]
async fn the_audit_log_is_scoped_to_what_the_caller_may_diagnose() {
    let h = Harness::start().await;
    let admin = h.login("admin@example.com").await;
    let control = h.login("control@example.com").await;
    // One record about hvac-2 (outside the technician's scope), one about hvac-1.
    h.put(
        "/units/hvac-2/points/setpoint",
        &admin,
        json!({"value": 20}),
    )
    .await;
    h.put(
        "/units/hvac-1/points/setpoint",
        &control,
        json!({"value": 21}),
    )
    .await;

    let tech = h.login("tech@example.com").await;
    let (s, v) = h.get("/audit", &tech).await;
    assert_eq!(s, 200, "{v}");
    let units: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["hvac-1"]);

    let (s, v) = h.get("/audit?limit=1", &admin).await;
    assert_eq!(s, 200);
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    let before = v["next_before"].as_i64().unwrap();
    let (_, v2) = h
        .get(&format!("/audit?limit=1&before={before}"), &admin)
        .await;
    assert_eq!(v2["records"][0]["unit"], "hvac-2", "second page is older");

    let viewer = h.login("viewer@example.com").await;
    let (s, v) = h.get("/audit", &viewer).await;
    assert_error(s, &v, 403, "forbidden");
    let (s, v) = h.get("/audit?limit=100000", &admin).await;
    assert_error(s, &v, 400, "invalid_query");
}

#[tokio::test]
async fn a_revoked_grant_takes_effect_on_the_live_sessions_next_call() {
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    let (s, _) = h
        .put("/units/gen-1/points/rpm", &token, json!({"value": 1}))
        .await;
    assert_eq!(s, 422, "read-only point, but the unit is visible");
    h.revoke("g-control-gen");
    let (s, v) = h
        .post("/units/gen-1/commands/start", &token, json!({}))
        .await;
    assert_error(s, &v, 403, "forbidden");
    h.revoke("g-control");
    let (s, v) = h
        .put(
            "/units/hvac-1/points/setpoint",
            &token,
            json!({"value": 20}),
        )
        .await;
    assert_error(s, &v, 403, "forbidden");
    assert_eq!(h.units.bus_commands.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn delegation_lists_creates_and_revokes_and_refuses_without_manage_users() {
    let h = Harness::start().await;
    let admin = h.login("admin@example.com").await;
    let (s, v) = h
        .post(
            "/grants",
            &admin,
            json!({"email": "Nobody@example.com", "role": "viewer", "scope": {"unit": "hvac-1"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "active");
    assert_eq!(v["grant"]["user"], "u-nobody");
    assert_eq!(v["grant"]["origin"], "local");
    let id = v["grant"]["id"].as_str().unwrap().to_string();
    // The delegatee can now see the unit.
    let nobody = h.login("nobody@example.com").await;
    assert_eq!(h.get("/units/hvac-1", &nobody).await.0, 200);
    let (s, v) = h.get("/grants", &admin).await;
    assert_eq!(s, 200);
    assert!(
        v["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == id.as_str())
    );
    // A viewer lists only the delegations they made or received: none.
    let viewer = h.login("viewer@example.com").await;
    let (s, v) = h.get("/grants", &viewer).await;
    assert_eq!((s, v), (200, json!({"grants": []})));
    // … and may neither delegate nor revoke; an unknown id answers the same 404.
    let (s, v) = h
        .post(
            "/grants",
            &viewer,
            json!({"email": "nobody@example.com", "role": "viewer", "scope": {"unit": "hvac-1"}}),
        )
        .await;
    assert_error(s, &v, 403, "forbidden");
    for who in [&viewer, &admin] {
        let r = h
            .http
            .delete(h.url("/grants/l-unknown"))
            .bearer_auth(who)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = h
        .http
        .delete(h.url(&format!("/grants/{id}")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .http
        .delete(h.url(&format!("/grants/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.get("/units/hvac-1", &nobody).await.0, 404);
    let (s, v) = h
        .post(
            "/grants",
            &admin,
            json!({"email": "x@example.com", "role": "boss", "scope": {"unit": "hvac-1"}}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_body");
    let (s, v) = h
        .post(
            "/access-requests",
            &viewer,
            json!({"role": "control-only", "scope": {"unit": "hvac-1"}, "message": "please"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "pending");
}

#[tokio::test]
async fn every_delegation_route_answers_unknown_scopes_and_emails_like_forbidden_ones() {
    let h = Harness::start().await;
    // u-tech: technician on hvac-1 and gen-1 only.
    let tech = h.login("tech@example.com").await;
    let viewer = h.login("viewer@example.com").await;
    let body = |email: &str, scope: Value| {
        json!({"email": email, "role": "viewer", "scope": scope,
               "expires_at": "2099-01-01T00:00:00Z"})
    };
    let mut answers = Vec::new();
    for (who, email, scope) in [
        (&tech, "nobody@example.com", json!({"unit": "hvac-2"})),
        (&tech, "nobody@example.com", json!({"unit": "hvac-9"})),
        (&tech, "nobody@example.com", json!({"group": "floor2"})),
        (&tech, "nobody@example.com", json!({"group": "floor9"})),
        (&tech, "nobody@example.com", json!({"site": "s-9"})),
        (&tech, "ghost@example.com", json!({"unit": "hvac-2"})),
        (&viewer, "nobody@example.com", json!({"unit": "hvac-1"})),
        (&viewer, "ghost@example.com", json!({"unit": "hvac-9"})),
    ] {
        let r = h
            .http
            .post(h.url("/grants"))
            .bearer_auth(who)
            .json(&body(email, scope))
            .send()
            .await
            .unwrap();
        answers.push((r.status().as_u16(), r.bytes().await.unwrap()));
    }
    let v: Value = serde_json::from_slice(&answers[0].1).unwrap();
    assert_eq!((answers[0].0, &v["error"]), (403, &json!("forbidden")));
    for a in &answers[1..] {
        assert_eq!(a, &answers[0]);
    }
    // Within the technician's scope the email is looked at.
    let (s, v) = h
        .post(
            "/grants",
            &tech,
            body("ghost@example.com", json!({"unit": "hvac-1"})),
        )
        .await;
    assert_error(s, &v, 422, "unknown_user");
    // Access requests: existing out of sight and unknown alike.
    let mut statuses = Vec::new();
    for scope in [
        json!({"unit": "hvac-2"}),
        json!({"unit": "hvac-9"}),
        json!({"group": "x"}),
    ] {
        let (s, v) = h
            .post(
                "/access-requests",
                &viewer,
                json!({"role": "viewer", "scope": scope}),
            )
            .await;
        statuses.push((s, v["status"].clone()));
    }
    assert_eq!(statuses, vec![(202, json!("pending")); 3]);
}

#[tokio::test]
async fn a_10_mb_body_is_413_json() {
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    let text = common::client::put_declaring_10_mb(
        h.serving.addr,
        "/api/v1/units/hvac-1/points/setpoint",
        &token,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"payload_too_large\""), "{text}");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_oversized_body_announced_with_expect_continue_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    let mut sock = tokio::net::TcpStream::connect(h.serving.addr)
        .await
        .unwrap();
    let head = format!(
        "PUT /api/v1/units/hvac-1/points/setpoint HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: 10485760\r\nexpect: 100-continue\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // No body is sent: the answer comes at once, and is the 413, not `100 Continue`.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"error\":\"payload_too_large\""), "{text}");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
}

/// Every character of `s` as a `\uXXXX` escape (6 bytes each), which JSON allows.
fn escape_all(s: &str) -> String {
    s.chars()
        .map(|c| format!("\\u{:04x}", u32::from(c)))
        .collect()
}

#[tokio::test]
async fn the_longest_token_fits_the_login_body_even_with_every_character_escaped() {
    let h = Harness::start().await;
    let send = |body: String| {
        h.http
            .post(h.url("/session"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let good = r#"{"v":1,"kind":"token","sig":"good"}"#;
    let r = send(format!(r#"{{"token":"{}"}}"#, escape_all(good)))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The longest token the login takes (10 KiB), every byte escaped: still judged by the login
    // (401), not refused by size.
    let longest = format!(r#"{{"token":"{}"}}"#, escape_all(&"A".repeat(10 * 1024)));
    assert!(longest.len() > 60 * 1024 && longest.len() <= sitegate::api::MAX_LOGIN_BODY);
    let r = send(longest).await.unwrap();
    let (s, v) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(s, &v, 401, "invalid_credentials");

    // The login's bound has an end: past both it and the harness's 64 KiB `max_body_bytes`.
    let over = format!(
        r#"{{"token":"{}"}}"#,
        "A".repeat(sitegate::api::MAX_LOGIN_BODY.max(64 * 1024))
    );
    let r = send(over).await.unwrap();
    let (s, v) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(s, &v, 413, "payload_too_large");
    let token = h.login("admin@example.com").await;
    let r = h
        .http
        .post(h.url("/grants"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"user":"{}"}}"#,
            escape_all(&"u".repeat(16 * 1024))
        ))
        .send()
        .await
        .unwrap();
    let (s, v) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(s, &v, 413, "payload_too_large");
}

#[tokio::test]
async fn a_body_that_never_finishes_arriving_is_504_after_the_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = api_config(ApiMode::Plain);
    cfg.request_timeout = Duration::from_millis(300);
    let h = Harness::start_with(cfg).await;
    let token = h.login("control@example.com").await;
    let mut sock = tokio::net::TcpStream::connect(h.serving.addr)
        .await
        .unwrap();
    let head = format!(
        "PUT /api/v1/units/hvac-1/points/setpoint HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: 100\r\nconnection: close\r\n\r\n{{\"value\":"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    let mut sock = tokio::net::TcpStream::connect(h.serving.addr)
        .await
        .unwrap();
    let head = format!(
        "PUT /api/v1/units/hvac-1/points/setpoint HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // 20 chunks of 8 KiB (160 KiB) against a 64 KiB limit; the server may answer early.
    // The server reads the whole body before answering, so no write is ever reset.
    let chunk = format!("2000\r\n{}\r\n", " ".repeat(0x2000));
    for _ in 0..20 {
        sock.write_all(chunk.as_bytes()).await.unwrap();
    }
    sock.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"error\":\"payload_too_large\""), "{text}");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_json_is_400_wrong_shape_is_400_and_wrong_type_is_415() {
    let h = Harness::start().await;
    let token = h.login("control@example.com").await;
    let send = |body: &'static str, ct: &'static str| {
        h.http
            .put(h.url("/units/hvac-1/points/setpoint"))
            .bearer_auth(&token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = send("{\"value\": ", "application/json").await.unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 400, "malformed_json");
    let r = send("{\"valu\": 1}", "application/json").await.unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_error(s, &v, 400, "invalid_body");
    assert!(
        !v["message"].as_str().unwrap().contains("::"),
        "no Rust type paths: {v}"
    );
    let r = send("{\"value\": 1}", "text/plain").await.unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 415, "unsupported_media_type");
    assert_eq!(h.units.bus_writes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_routes_are_json_404_and_wrong_methods_json_405() {
    let h = Harness::start().await;
    let r = h.http.get(h.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    let r = h
        .http
        .get(format!("http://{}/etc/passwd", h.serving.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let token = h.login("viewer@example.com").await;
    let (s, v) = h.get("/units/%FF%FE", &token).await;
    assert_error(s, &v, 404, "not_found");
    let r = h.http.patch(h.url("/units")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "method_not_allowed");
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let mut cfg = api_config(ApiMode::Plain);
    cfg.rate_limit_per_sec = 1;
    cfg.rate_limit_burst = 3;
    let h = Harness::start_with(cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = h.http.get(h.url("/healthz")).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
}

#[tokio::test]
async fn health_openapi_and_metrics_are_served() {
    let h = Harness::start().await;
    let r = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let r = h.http.get(h.url("/openapi.json")).send().await.unwrap();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["paths"]["/units/{unit}/points/{point}"]["put"].is_object());
    let r = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("sitegate_http_requests_total{route=\"/api/v1/healthz\",method=\"GET\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("sitegate_grant_seq 0"));
}

#[tokio::test]
async fn cors_is_off_by_default_and_echoes_only_configured_origins() {
    let h = Harness::start().await;
    let r = h
        .http
        .get(h.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = h
        .http
        .request(reqwest::Method::OPTIONS, h.url("/units"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let mut cfg = api_config(ApiMode::Plain);
    cfg.cors_origins = vec!["https://app.example".into()];
    let h = Harness::start_with(cfg).await;
    let r = h
        .http
        .request(reqwest::Method::OPTIONS, h.url("/units"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = h
        .http
        .get(h.url("/healthz"))
        .header("origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let h = Harness::start().await;
    assert_eq!(
        h.http.get(h.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let url = h.url("/healthz");
    let http = h.http.clone();
    h.shutdown.cancel();
    let res = tokio::time::timeout(Duration::from_secs(10), h.serving.task).await;
    assert!(matches!(res, Ok(Ok(Ok(())))), "{res:?}");
    // The server keeps a duplicate of its listening socket for a configuration reload to serve
    // on; once its owner lets go of it, nothing listens on the port.
    drop(h.serving.listener);
    let after = tokio::time::timeout(Duration::from_secs(10), http.get(url).send()).await;
    assert!(matches!(after, Ok(Err(_))), "{after:?}");
}

#[tokio::test]
async fn metrics_from_the_lan_need_a_token_with_site_wide_diagnose() {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let h = Harness::start().await;
    let admin = h.login("admin@example.com").await;
    let tech = h.login("tech@example.com").await;
    let lan = std::net::SocketAddr::from(([192, 168, 1, 50], 40000));
    let app = sitegate::api::router(h.state.clone());
    let call = |token: Option<String>| {
        let app = app.clone();
        async move {
            let mut b = axum::http::Request::builder().uri("/api/v1/metrics");
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            let mut req = b.body(Body::empty()).unwrap();
            req.extensions_mut().insert(ConnectInfo(lan));
            app.oneshot(req).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(call(None).await, 401);
    assert_eq!(
        call(Some(tech)).await,
        403,
        "unit-scoped diagnose is not enough"
    );
    assert_eq!(call(Some(admin)).await, 200);
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let mut sock = tokio::net::TcpStream::connect(h.serving.addr)
        .await
        .unwrap();
    let mut req = String::from("GET /api/v1/healthz HTTP/1.1\r\nhost: x\r\n");
    // 70 headers: over the API's limit of 64, under hyper's default of 100.
    for i in 0..70 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("connection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test]
async fn a_request_over_the_request_timeout_is_abandoned_with_504() {
    let mut cfg = api_config(ApiMode::Plain);
    cfg.request_timeout = Duration::from_millis(300);
    cfg.fresh_read_timeout = Duration::from_secs(30);
    let h = Harness::start_with(cfg).await;
    let token = h.login("viewer@example.com").await;
    *h.units.fresh_delay.lock().unwrap() = Duration::from_secs(10);
    let (s, v) = h.get("/units/hvac-1?fresh=true", &token).await;
    assert_error(s, &v, 504, "request_timeout");
}
