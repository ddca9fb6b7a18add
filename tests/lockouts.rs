//! Lockouts as the site's admin meets them: someone on the LAN guesses an admin's password until
//! the account locks; the admin's own client, which logged in before, still gets in with its
//! device cookie; the admin sees and clears the lockout over the API (audited), and root on the
//! box does the same with `sitegate lockouts`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod common;
mod e2e_support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;

use e2e_support::*;
use serde_json::{Value, json};

fn members() -> Vec<Member> {
    vec![
        Member {
            user: "ada",
            role: "admin",
            scope: json!({"site": SITE}),
            grant: "g-admin",
        },
        Member {
            user: "vera",
            role: "viewer",
            scope: json!({"site": SITE}),
            grant: "g-viewer",
        },
        Member {
            user: "tom",
            role: "technician",
            scope: json!({"site": SITE}),
            grant: "g-tech",
        },
    ]
}

async fn login(s: &Site, user: &str, password: &str, device: Option<&str>) -> (u16, Value) {
    let mut body = json!({"email": email(user), "password": password});
    if let Some(d) = device {
        body["device"] = json!(d);
    }
    session(s, &body).await
}

async fn call(s: &Site, method: reqwest::Method, path: &str, bearer: &str) -> (u16, Value) {
    let r = s
        .http
        .request(method, format!("{}{path}", s.base))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lan_guesser_cannot_lock_the_admin_out_of_their_own_device_and_the_admin_clears_the_lockout()
 {
    let s = Site::start_with_members(&members()).await;
    let (st, first) = login(&s, "ada", PASSWORD, None).await;
    assert_eq!(st, 201, "{first}");
    let cookie = first["device"].as_str().unwrap().to_string();
    let ada = first["token"].as_str().unwrap().to_string();

    // Ten wrong guesses (the default lockout threshold) lock the account for untrusted clients.
    for _ in 0..10 {
        let (st, _) = login(&s, "ada", "guess", None).await;
        assert!(st == 401 || st == 429);
        s.clock.advance(time::Duration::seconds(1));
    }
    let (st, body) = login(&s, "ada", PASSWORD, None).await;
    assert_eq!((st, body["error"].clone()), (429, json!("login_throttled")));
    // The admin's device still gets in.
    let (st, body) = login(&s, "ada", PASSWORD, Some(&cookie)).await;
    assert_eq!(st, 201, "{body}");
    assert!(body["device"].is_string());
    // A made-up cookie does not.
    let (st, _) = login(&s, "ada", PASSWORD, Some("AAAAAAAAAAAAAAAAAAAAAA.AAAA")).await;
    assert_eq!(st, 429);

    // Only an admin sees lockouts.
    let (_, v) = login(&s, "vera", PASSWORD, None).await;
    let vera = v["token"].as_str().unwrap().to_string();
    let (st, _) = call(&s, reqwest::Method::GET, "/lockouts", &vera).await;
    assert_eq!(st, 403);
    // A site-wide technician holds `manage_users` but not the admin role: refused too.
    let (st, t) = login(&s, "tom", PASSWORD, None).await;
    assert_eq!(st, 201, "{t}");
    let tom = t["token"].as_str().unwrap().to_string();
    let (st, body) = call(&s, reqwest::Method::GET, "/lockouts", &tom).await;
    assert_eq!(
        (st, body["error"].clone()),
        (403, json!("forbidden")),
        "{body}"
    );
    let (st, list) = call(&s, reqwest::Method::GET, "/lockouts", &ada).await;
    assert_eq!(st, 200, "{list}");
    let entry = list["lockouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["label"] == json!(email("ada")))
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    assert!(entry["locked_until"].is_string(), "{entry}");
    assert_eq!(entry["failures"], json!(10));
    let key = entry["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("email:"), "{key}");
    let path = format!("/lockouts/{key}");
    let (st, _) = call(&s, reqwest::Method::DELETE, &path, &vera).await;
    assert_eq!(st, 403);
    let (st, _) = call(&s, reqwest::Method::DELETE, &path, &tom).await;
    assert_eq!(st, 403);
    let (st, _) = call(&s, reqwest::Method::DELETE, &path, &ada).await;
    assert_eq!(st, 204);
    let (st, body) = call(&s, reqwest::Method::DELETE, &path, &ada).await;
    assert_eq!(
        (st, body["error"].clone()),
        (404, json!("lockout_not_found"))
    );
    // Cleared: any client logs in again.
    s.clock.advance(time::Duration::seconds(1));
    let (st, body) = login(&s, "ada", PASSWORD, None).await;
    assert_eq!(st, 201, "{body}");
    let cleared = audit_of_kind(&s.daemon.store, "lockout_cleared");
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].actor.as_deref(), Some("ada"));
    assert_eq!(cleared[0].detail["key"], json!(key));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_on_the_box_lists_and_clears_lockouts_with_the_cli_and_the_clear_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("sitegate.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\nmode = \"plain\"\n",
            state.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // Lock an account through the real auth service on the box's database.
    {
        let store = sitegate::store::Store::open_in(&state).unwrap();
        let clock: sitegate::clock::SharedClock = Arc::new(sitegate::clock::SystemClock);
        let audit = sitegate::audit::Audit::new(store.clone(), clock.clone(), None);
        let authz = sitegate::authz::owner::Access::new(sitegate::authz::Inputs::default());
        let cfg = sitegate::config::Auth {
            session_ttl: std::time::Duration::from_secs(3600),
            throttle_base: std::time::Duration::from_millis(1),
            throttle_max: std::time::Duration::from_millis(2),
            lockout_after_failures: 2,
            lockout: std::time::Duration::from_secs(600),
        };
        let auth = sitegate::auth::Auth::new(store, audit, authz, clock, cfg, None).unwrap();
        for i in 0..2u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1));
            let _ = auth.login_password("ada@example.com", "guess", ip).await;
        }
    }
    let run = |args: &[&str]| {
        let out = Command::new(common::daemon::bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cfg = config.to_str().unwrap();
    let (code, out, err) = run(&["lockouts", "list", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("email:") && l.contains("locked until"))
        .unwrap_or_else(|| panic!("{out}"));
    let key = line.split('\t').next().unwrap().to_string();
    let (code, out, err) = run(&["lockouts", "clear", &key, "--config", cfg]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("cleared `{key}`").as_str()),
        "{err}"
    );
    let (code, _, err) = run(&["lockouts", "clear", &key, "--config", cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("no lockout"), "{err}");
    let (code, out, _) = run(&["lockouts", "list", "--config", cfg]);
    assert_eq!(code, 0);
    assert!(!out.contains(&key), "{out}");
    let store = sitegate::store::Store::open_in(&state).unwrap();
    let recs = audit_of_kind(&store, "lockout_cleared");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].actor.as_deref(), Some("cli"));
    assert_eq!(recs[0].detail["key"], json!(key));
}
