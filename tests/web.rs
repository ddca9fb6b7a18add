//! The local web app in a real browser: the real daemon over TLS with Modbus simulators and a
//! signed bundle, driven by Debian's Chromium through `playwright-core` (tests/web/app.test.mjs).
//!
//! The Node script drives the page and asks this harness, over a line protocol on its
//! stdin/stdout, for what only the site can do: count the Modbus writes the simulator received,
//! change a register, apply a revoking bundle. Needs `chromium` and `npm ci` in tests/web
//! (scripts/install-deps does both).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

#[allow(dead_code, reason = "only the process helpers are used here")]
#[path = "common/daemon.rs"]
mod daemon;
mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use e2e_support::*;
use serde_json::{Value, json};
use sitegate::modbus::profile::RegKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The whole browser run is bounded by this.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// A fleet-signed installer token (technician on the whole site for a day).
fn installer_token() -> Vec<u8> {
    let user =
        json!({"id": "ivo", "email": "ivo@example.com", "name": "Ivo Installer", "active": true});
    e2e_support::installer_token(user, "g-ivo", time::Duration::days(1))
}

/// The site of the browser test: the role members, with ada the site owner and tess in the
/// service company `acme` (the owner's switch for it is on the admin page).
fn web_bundle(seq: u64, revoked: &[&str]) -> Vec<u8> {
    web_bundle_with(seq, revoked, Vec::new())
}

/// [`web_bundle`] with `extra` members.
fn web_bundle_with(seq: u64, revoked: &[&str], extra: Vec<Member>) -> Vec<u8> {
    let mut members = role_members();
    members.extend(extra);
    bundle_with_user_fields(
        seq,
        &members,
        revoked,
        &fleet_key(),
        &[
            ("ada", json!({"owner": true})),
            ("tess", json!({"business": "acme"})),
        ],
    )
}

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// Answers one request of the Node script.
async fn handle(s: &Site, req: &Value) -> Value {
    match req["cmd"].as_str().unwrap_or_default() {
        "reset_writes" => {
            s.sim.reset_stats();
            json!({"ok": true})
        }
        "writes" => {
            let w: Vec<Value> = s
                .sim
                .stats()
                .writes
                .iter()
                .map(|w| {
                    json!({"slave": w.slave, "function": w.function, "address": w.address,
                           "values": w.values})
                })
                .collect();
            json!({ "writes": w })
        }
        "set_register" => {
            let ok = s.sim.set_register(
                u8::try_from(req["slave"].as_u64().unwrap()).unwrap(),
                RegKind::Holding,
                u16::try_from(req["address"].as_u64().unwrap()).unwrap(),
                u16::try_from(req["value"].as_u64().unwrap()).unwrap(),
            );
            json!({ "ok": ok })
        }
        "silence" => {
            let slave = u8::try_from(req["slave"].as_u64().unwrap()).unwrap();
            s.sim.set_fault(
                Some(slave),
                sitegate::sim::Fault {
                    drop: true,
                    ..Default::default()
                },
            );
            json!({"ok": true})
        }
        "heal" => {
            s.sim.clear_faults();
            json!({"ok": true})
        }
        "revoke" => {
            let revoked: Vec<String> = req["grants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().to_string())
                .collect();
            let revoked: Vec<&str> = revoked.iter().map(String::as_str).collect();
            s.apply(web_bundle(2, &revoked)).await;
            json!({"ok": true})
        }
        "crowd" => {
            // `n` more people, viewers on the site (`crowd-00` …), for paging "Who has access";
            // carl's revoked grant stays revoked.
            let n = req["n"].as_u64().unwrap();
            let extra = (0..n)
                .map(|i| Member {
                    user: Box::leak(format!("crowd-{i:02}").into_boxed_str()),
                    role: "viewer",
                    scope: json!({"site": SITE}),
                    grant: Box::leak(format!("g-crowd-{i:02}").into_boxed_str()),
                })
                .collect();
            s.apply(web_bundle_with(3, &["g-carl-hvac"], extra)).await;
            json!({"ok": true})
        }
        other => panic!("unknown request from the browser test: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_uses_the_web_app_in_chromium_and_the_page_never_exceeds_their_access() {
    let dir = web_dir();
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/install-deps"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && dir.join("node_modules/axe-core").exists(),
        "tests/web/node_modules is missing: run scripts/install-deps (npm ci in tests/web)"
    );
    let s = Site::start_with_clock("tls", "", false).await;
    s.apply(web_bundle(1, &[])).await;
    let origin = format!("https://{}", s.daemon.api_addr);
    // scripts/bench points this at its results directory; screenshots and metrics land there.
    let out = std::env::var_os("SITEGATE_WEB_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("web"));
    std::fs::create_dir_all(&out).unwrap();
    let token_file = out.join("installer.token");
    std::fs::write(&token_file, installer_token()).unwrap();

    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("app.test.mjs"))
        .env("SITEGATE_ORIGIN", &origin)
        .env("SITEGATE_PASSWORD", PASSWORD)
        .env("SITEGATE_WEB_OUT", &out)
        .env("SITEGATE_INSTALLER_TOKEN", &token_file)
        .env(
            "SITEGATE_BUILD",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "optimized"
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let req: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("browser test sent `{line}`: {e}"));
            let resp = handle(&s, &req).await;
            stdin
                .write_all(format!("{resp}\n").as_bytes())
                .await
                .unwrap();
            stdin.flush().await.unwrap();
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the browser test did not finish in time");
    assert!(status.success(), "browser test failed: {status}");
    let metrics = std::fs::read_to_string(out.join("metrics.json")).unwrap();
    eprintln!("web metrics: {metrics}");
    s.stop().await;
}

/// Waits (bounded) for a file to appear with content; returns it.
async fn wait_file(path: &Path, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(t) = std::fs::read_to_string(path)
            && !t.trim().is_empty()
        {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first-boot page in Chromium: a blank box (the real binary, no `[site]`) serves the setup
/// form over TLS; the installer checks the certificate fingerprint (the harness computes it from
/// the certificate file, independently of the page), enters the setup code, the site and gateway
/// ids and the fleet trust key; the box restarts provisioned with the same certificate, and the
/// installer signs in with a token signed by that key, then commissions the box from the Scan
/// page: adds a TCP link to a simulator, scans it and adds the two units found, which then show
/// in the site view (tests/web/setup.test.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_box_is_set_up_from_the_first_boot_page_and_the_installer_signs_in() {
    use rustls_pki_types::pem::PemObject;
    let dir = web_dir();
    assert!(
        Path::new("/usr/bin/chromium").exists()
            && dir.join("node_modules/playwright-core").exists(),
        "chromium or tests/web/node_modules is missing: run scripts/install-deps"
    );
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let config = tmp.path().join("sitegate.toml");
    let port = daemon::free_port();
    std::fs::write(
        &config,
        format!(
            "# blank box\n[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
            state.display()
        ),
    )
    .unwrap();
    let (sim, sim_stop) = start_sim(vec![
        sitegate::sim::SimUnit::generator(3),
        sitegate::sim::SimUnit::hvac(7),
    ])
    .await;
    let (mut box_process, logs) = daemon::spawn_run(&config, None, &[]);
    let code = wait_file(&state.join("setup-code"), "setup code").await;
    let pem = wait_file(&state.join("tls/cert.pem"), "certificate").await;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let fingerprint = sitegate::tls::fingerprint(der.as_ref());
    let out = std::env::var_os("SITEGATE_WEB_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("web"));
    std::fs::create_dir_all(&out).unwrap();
    let token_file = out.join("installer-setup.token");
    std::fs::write(&token_file, installer_token()).unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("setup.test.mjs"))
        .env("SITEGATE_ORIGIN", format!("https://127.0.0.1:{port}"))
        .env("SITEGATE_WEB_OUT", &out)
        .env("SITEGATE_SETUP_CODE", code.trim())
        .env("SITEGATE_FINGERPRINT", &fingerprint)
        .env("SITEGATE_SITE", SITE)
        .env("SITEGATE_KID", KID)
        .env(
            "SITEGATE_PUBLIC_KEY",
            sitegate::grants::fleet::public_key_b64(&fleet_key()),
        )
        .env("SITEGATE_INSTALLER_TOKEN", &token_file)
        .env("SITEGATE_SIM_ADDR", sim.addr.unwrap().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let status = tokio::time::timeout(RUN_LIMIT, child.wait())
        .await
        .expect("the browser test did not finish in time")
        .unwrap();
    let _ = box_process.kill();
    let _ = box_process.wait();
    sim_stop.cancel();
    assert!(
        status.success(),
        "browser test failed: {status}\n{}",
        logs.all()
    );
    assert_eq!(sim.stats().writes.len(), 0, "commissioning only reads");
    // The box kept its certificate across the restart (the fingerprint pinned at setup).
    let after = std::fs::read_to_string(state.join("tls/cert.pem")).unwrap();
    assert_eq!(after, pem);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&format!("\"{SITE}\"")), "{text}");
    // The link and units added from the page, below the installer's comment.
    assert!(text.starts_with("# blank box\n"), "{text}");
    let cfg = sitegate::config_load::load(&config).unwrap();
    let units: Vec<(String, String, u8, String)> = cfg
        .units
        .iter()
        .map(|u| {
            (
                u.id.to_string(),
                u.name.clone(),
                u.slave.get(),
                u.profile.clone(),
            )
        })
        .collect();
    let row = |id: &str, name: &str, slave: u8, profile: &str| {
        (id.to_string(), name.to_string(), slave, profile.to_string())
    };
    assert_eq!(
        units,
        [
            row("gen-1", "Standby generator", 3, "dse-gencomm"),
            row("hvac-1", "Office AHU", 7, "coolmaster-va"),
        ]
    );
}

/// Reads server-sent events from `resp` until one named `want` arrives (bounded by a timeout);
/// returns its data.
async fn next_event(resp: &mut reqwest::Response, buf: &mut String, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = if n.trim() == want { want } else { "other" };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if name == want {
                return data;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{want}` event within 5 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream closed before a `{want}` event"));
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

fn unit_ids(data: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(data).unwrap();
    v["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_stream_drops_a_revoked_unit_on_its_next_message_and_ends_at_logout() {
    let s = Site::start_with_clock("plain", "", false).await;
    s.apply(bundle(1, &role_members(), &[])).await;
    let token = s.login("carl").await;
    let mut resp = s
        .http
        .get(format!("{}/units/stream", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buf = String::new();
    let first = next_event(&mut resp, &mut buf, "units").await;
    assert_eq!(unit_ids(&first), vec!["gen-1", "hvac-1"]);
    let v: Value = serde_json::from_str(&first).unwrap();
    let hvac = &v["units"][1];
    assert_eq!(hvac["capabilities"], json!(["view", "control"]));
    // Each unit's own poll interval, for the page's stale mark (the test site polls every 500 ms).
    assert_eq!(hvac["poll_interval_ms"], json!(500));
    let setpoint = hvac["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "setpoint")
        .unwrap();
    assert_eq!(setpoint["writable"], json!(true));

    s.apply(bundle(2, &role_members(), &["g-carl-hvac"])).await;
    let next: Value =
        serde_json::from_str(&next_event(&mut resp, &mut buf, "units").await).unwrap();
    assert_eq!(next["removed"], json!(["hvac-1"]), "{next}");

    let out = s
        .http
        .delete(format!("{}/session", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let end = next_event(&mut resp, &mut buf, "end").await;
    assert_eq!(end, r#"{"error":"unauthenticated"}"#);
    s.stop().await;
}

/// A point of a unit of a stream message.
fn point_of<'a>(unit: &'a Value, point: &str) -> &'a Value {
    unit["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == point)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_stream_sends_a_full_snapshot_then_only_the_changed_unit_then_the_revoked_one_as_removed()
 {
    let s = Site::start_with_clock("plain", "", false).await;
    s.apply(bundle(1, &role_members(), &[])).await;
    let token = s.login("carl").await;
    let mut resp = s
        .http
        .get(format!("{}/units/stream", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    // First message: every unit carl may view, in full, with read times and no ages.
    let first: Value =
        serde_json::from_str(&next_event(&mut resp, &mut buf, "units").await).unwrap();
    assert_eq!(first["full"], json!(true));
    assert_eq!(unit_ids(&first.to_string()), vec!["gen-1", "hvac-1"]);
    let fuel = point_of(&first["units"][0], "fuel_level");
    assert!(fuel.get("age_ms").is_none(), "{fuel}");
    assert!(fuel["read_at"].is_string(), "{fuel}");
    assert_ne!(fuel["value"], json!(77), "{fuel}");

    // A register changes at the simulator: the next message with a changed value carries gen-1
    // alone, with only that point (by its index), its quality and read time. Until then,
    // messages carry read times at most (the site polls every 500 ms): never a unit in full,
    // never a removal.
    let fuel_index = first["units"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .position(|p| p["name"] == "fuel_level")
        .unwrap();
    // Right after the start a unit's first poll may still change its shape (`online`), and
    // hvac-1's room temperature drifts towards 28 °C while it is off (the simulator's model): put
    // it there (holding 22, VA 1), wait for a message with no unit in full and no changed value,
    // then change the register.
    assert!(s.sim.set_register(HVAC1_SLAVE, RegKind::Holding, 22, 280));
    let mut settled = false;
    for _ in 0..10 {
        let m: Value =
            serde_json::from_str(&next_event(&mut resp, &mut buf, "units").await).unwrap();
        let values = m["patches"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.get("values").is_some());
        if m.get("units").is_none() && !values {
            settled = true;
            break;
        }
    }
    assert!(settled, "every message resent a unit in full");
    assert!(s.sim.set_register(GEN_SLAVE, RegKind::Holding, 1027, 77));
    let mut changed = None;
    for _ in 0..10 {
        let m: Value =
            serde_json::from_str(&next_event(&mut resp, &mut buf, "units").await).unwrap();
        assert_eq!(
            (&m["full"], m.get("units"), m.get("removed")),
            (&json!(false), None, None),
            "{m}"
        );
        let patches = m["patches"].as_array().cloned().unwrap_or_default();
        for p in &patches {
            // Each read-time entry: a time, then the indexes of the points read at that time.
            for g in p["read_at"].as_array().into_iter().flatten() {
                let g = g.as_array().unwrap();
                assert!(g.len() >= 2 && g[1..].iter().all(Value::is_u64), "{p}");
            }
        }
        let with_values: Vec<&Value> = patches
            .iter()
            .filter(|p| p.get("values").is_some())
            .collect();
        if !with_values.is_empty() {
            changed = Some(with_values.into_iter().cloned().collect::<Vec<_>>());
            break;
        }
    }
    let changed = changed.expect("no message carried the changed value");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["id"], json!("gen-1"));
    let values = changed[0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(
        (&values[0][0], &values[0][1], &values[0][2]),
        (&json!(fuel_index), &json!(77), &json!("good"))
    );
    assert!(values[0][3].is_string(), "{values:?}");

    // A revoking bundle: the next message lists hvac-1 as removed, and nothing in full.
    s.apply(bundle(2, &role_members(), &["g-carl-hvac"])).await;
    let next: Value =
        serde_json::from_str(&next_event(&mut resp, &mut buf, "units").await).unwrap();
    assert_eq!(
        (&next["full"], &next["removed"], next.get("units")),
        (&json!(false), &json!(["hvac-1"]), None),
        "{next}"
    );
    assert!(
        next["patches"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["id"] == "gen-1"),
        "{next}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_carry_the_page_policy_and_the_api_keeps_its_own() {
    let s = Site::start("plain", "").await;
    let root = s.base.trim_end_matches("/api/v1").to_string();
    let page = s.http.get(format!("{root}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, sitegate::api::web::PAGE_CSP);
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    let js = html
        .split('"')
        .find(|p| p.starts_with("/assets/app.") && p.ends_with(".js"))
        .unwrap()
        .to_string();
    let asset = s.http.get(format!("{root}{js}")).send().await.unwrap();
    assert_eq!(asset.status(), 200);
    assert_eq!(
        asset.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        asset.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    // Without `Accept-Encoding: gzip` the asset comes as is; with it, precompressed (build.rs),
    // and both answers say they vary by it.
    assert!(asset.headers().get("content-encoding").is_none());
    assert_eq!(asset.headers()["vary"], "accept-encoding");
    let plain = asset.bytes().await.unwrap();
    let gz = s
        .http
        .get(format!("{root}{js}"))
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.status(), 200);
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.headers()["vary"], "accept-encoding");
    let packed = gz.bytes().await.unwrap();
    assert_eq!(&packed[..2], &[0x1f, 0x8b], "a gzip stream");
    eprintln!("app.js: {} B, gzip {} B", plain.len(), packed.len());
    assert!(packed.len() * 3 < plain.len());
    let missing = s
        .http
        .get(format!("{root}/assets/app.000000000000.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let api = s
        .http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    assert_eq!(api.headers()["cache-control"], "no-store");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_changing_route_refuses_the_cookie_without_the_csrf_token() {
    let s = Site::start("plain", "").await;
    s.apply(bundle(1, &role_members(), &[])).await;
    let root = s.base.trim_end_matches("/api/v1").to_string();
    let login = s
        .http
        .post(format!("{root}/web/session"))
        .json(&json!({"email": email("ada"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 201);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let body: Value = login.json().await.unwrap();
    assert!(body.get("token").is_none(), "{body}");
    let csrf = body["csrf_token"].as_str().unwrap().to_string();

    s.sim.reset_stats();
    let mut checked = 0;
    for def in sitegate::api::ROUTES {
        if def.method == reqwest::Method::GET
            || def.path == "/api/v1/session" && def.method == reqwest::Method::POST
        {
            continue;
        }
        let path = def
            .path
            .replace("{unit}", "hvac-1")
            .replace("{point}", "setpoint")
            .replace("{command}", "reset_filter")
            .replace("{id}", "g-viewer");
        let url = format!("{root}{path}");
        for (label, token) in [("no token", None), ("wrong token", Some("x".repeat(43)))] {
            let mut req = s
                .http
                .request(def.method.clone(), &url)
                .header("cookie", &cookie)
                .json(&json!({"value": 21.5}));
            if let Some(t) = &token {
                req = req.header("x-csrf-token", t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let b: Value = r.json().await.unwrap();
            assert_eq!(
                (status, b["error"].as_str()),
                (403, Some("csrf_failed")),
                "{} {path} with {label}: {b}",
                def.method
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} state-changing routes");
    assert!(s.sim.stats().writes.is_empty());

    // With the token the same cookie works, and a bearer client needs none.
    let r = s
        .http
        .put(format!("{root}/api/v1/units/hvac-1/points/setpoint"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"value": 21.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bearer = s.login("ada").await;
    let r = s
        .http
        .put(format!("{root}/api/v1/units/hvac-1/points/setpoint"))
        .bearer_auth(&bearer)
        .json(&json!({"value": 22.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.sim.stats().writes.len(), 2);

    // Logout through the page's route clears the cookie and ends the session.
    let out = s
        .http
        .delete(format!("{root}/web/session"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = s
        .http
        .get(format!("{root}/api/v1/units"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    s.stop().await;
}

/// Bytes of the unit stream a site viewer receives in `secs` seconds on a site of `n` HVAC
/// units (one simulator, one link, every unit polled every `poll_ms`), counted on the wire
/// (uncompressed SSE: event, id, retry and data lines).
async fn stream_bytes(n: u8, poll_ms: u64, secs: u64) -> usize {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_stop) = start_sim((1..=n).map(sitegate::sim::SimUnit::hvac).collect()).await;
    let links = vec![("bus".to_string(), sim.addr.unwrap())];
    let units: Vec<(String, String, u8, &str, &str)> = (1..=n)
        .map(|i| {
            (
                format!("hvac-{i}"),
                "bus".to_string(),
                i,
                "coolmaster-va",
                "offices",
            )
        })
        .collect();
    let text = config_text(
        &dir.path().join("state"),
        &links,
        &units,
        poll_ms,
        "plain",
        "",
    );
    let cfg = parse_config(&text, dir.path());
    let daemon = sitegate::app::Daemon::start(
        cfg,
        std::sync::Arc::new(sitegate::clock::SystemClock),
        sitegate::notify::Notifier::from_env(&|_| None),
    )
    .await
    .unwrap();
    let site = daemon.site.as_ref().unwrap().clone();
    let b = bundle(1, &role_members(), &[]);
    tokio::task::spawn_blocking(move || {
        site.apply_envelope(Some(sitegate::grants::Kind::Bundle), &b, "test")
    })
    .await
    .unwrap()
    .unwrap();
    let base = format!("http://{}/api/v1", daemon.api_addr);
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{base}/session"))
        .json(&json!({"email": email("vera"), "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_string();
    // Let every unit be polled once, so the count is of a settled site.
    tokio::time::sleep(Duration::from_millis(poll_ms * 3)).await;
    let mut resp = http
        .get(format!("{base}/units/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut bytes = 0;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(end, resp.chunk())
        .await
        .map(Result::unwrap)
    {
        bytes += chunk.len();
    }
    drop(resp);
    daemon.stop(true).await;
    sim_stop.cancel();
    bytes
}

/// The figures of docs/PERFORMANCE.md ("Live stream"): bytes per minute of the stream for a
/// viewer of 100 and of 4 units that barely change. A measurement, not a check; run with
/// `cargo test --test web stream_bytes_per_minute -- --ignored --nocapture`
/// (`SITEGATE_STREAM_POLL_MS` sets the units' poll interval, 500 ms when unset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of a minute per site; run by hand for docs/PERFORMANCE.md"]
async fn stream_bytes_per_minute() {
    let poll_ms = std::env::var("SITEGATE_STREAM_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (hundred, four) =
        tokio::join!(stream_bytes(100, poll_ms, 60), stream_bytes(4, poll_ms, 60));
    eprintln!(
        "stream bytes per minute, poll {poll_ms} ms: 100 units {hundred} B, 4 units {four} B"
    );
}
