//! End to end: the site owner suspends and restores a service business on the real daemon
//! (`Daemon::start`, simulators on loopback, bundles signed like the fleet tool signs them),
//! over real HTTP. The suspension bites at once, answers with the documented codes, cannot be
//! lifted by any user of the business, survives a restart and a later bundle, and is audited.
//! Also the access-request lifecycle: listed over the API, resolved by the next bundle.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod e2e_support;

use e2e_support::*;
use serde_json::{Value, json};

const ACME: &str = "acme-service";

fn members() -> Vec<Member> {
    vec![
        Member {
            user: "olga",
            role: "admin",
            scope: json!({"site": SITE}),
            grant: "g-olga",
        },
        Member {
            user: "pam",
            role: "admin",
            scope: json!({"site": SITE}),
            grant: "g-pam",
        },
        Member {
            user: "tom",
            role: "technician",
            scope: json!({"site": SITE}),
            grant: "g-tom",
        },
        Member {
            user: "vic",
            role: "viewer",
            scope: json!({"unit": "gen-1"}),
            grant: "g-vic",
        },
        Member {
            user: "nick",
            role: "viewer",
            scope: json!({"unit": "hvac-2"}),
            grant: "g-nick",
        },
    ]
}

/// olga is the site owner; pam (Pro Admin) and tom (Pro Technician) work for acme-service.
fn signed(seq: u64) -> Vec<u8> {
    bundle_with_user_fields(
        seq,
        &members(),
        &[],
        &fleet_key(),
        &[
            ("olga", json!({"owner": true})),
            ("pam", json!({"business": ACME})),
            ("tom", json!({"business": ACME})),
        ],
    )
}

async fn suspend(s: &Site, business: &str, token: &str) -> Resp {
    call(
        s,
        reqwest::Method::PUT,
        &format!("/businesses/{business}/suspension"),
        token,
        Some(json!({"note": "contract ended"})),
    )
    .await
}

async fn restore(s: &Site, business: &str, token: &str) -> Resp {
    call(
        s,
        reqwest::Method::DELETE,
        &format!("/businesses/{business}/suspension"),
        token,
        None,
    )
    .await
}

/// The value of `sitegate_authz_denials_total{capability="view",reason="business_suspended"}`.
async fn suspended_view_denials(s: &Site) -> u64 {
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("sitegate_authz_denials_total{")
                && l.contains("capability=\"view\"")
                && l.contains("reason=\"business_suspended\"")
        })
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn the_site_owner_suspends_and_restores_a_service_business_over_the_api() {
    let s = Site::start("plain", "").await;
    s.apply(signed(1)).await;
    let (olga, pam, tom) = (
        s.login("olga").await,
        s.login("pam").await,
        s.login("tom").await,
    );
    let vic = s.login("vic").await;

    // tom delegates control-only on gen-1 to vic (independent site: effective at once).
    let r = call(
        &s,
        reqwest::Method::POST,
        "/grants",
        &tom,
        Some(json!({"email": email("vic"), "role": "control-only", "scope": {"unit": "gen-1"}, "expires_at": "2035-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let r = get(&s, "/businesses", &olga).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["businesses"],
        json!([{"business": ACME, "members": ["pam", "tom"], "suspended": false}])
    );
    // Nobody but the owner: not the business's own site admin, not a viewer; unknown names
    // answer alike.
    for t in [&pam, &tom, &vic] {
        for r in [
            get(&s, "/businesses", t).await,
            suspend(&s, ACME, t).await,
            suspend(&s, "no-such-business", t).await,
            restore(&s, ACME, t).await,
        ] {
            assert_eq!(r.status, 403, "{}", r.body);
            assert_eq!(r.body["error"], "forbidden");
        }
    }
    assert_eq!(get(&s, "/units/gen-1", &tom).await.status, 200);

    let r = suspend(&s, ACME, &olga).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["suspension"]["business"], ACME);
    assert_eq!(r.body["suspension"]["members"], json!(["pam", "tom"]));
    assert_eq!(r.body["suspension"]["note"], "contract ended");
    assert_eq!(suspend(&s, ACME, &olga).await.status, 200);
    let r = suspend(&s, "no-such-business", &olga).await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (404, json!("business_not_found"))
    );

    // /me tells the business's users why they see nothing.
    let me = get(&s, "/me", &tom).await;
    assert_eq!(me.status, 200);
    assert_eq!(
        (
            me.body["user"]["business"].clone(),
            me.body["user"]["business_suspended"].clone(),
            me.body["user"]["owner"].clone(),
            me.body["units"].clone(),
        ),
        (json!(ACME), json!(true), json!(false), json!([]))
    );
    let me = get(&s, "/me", &olga).await;
    assert_eq!(me.body["user"]["owner"], true);
    assert_eq!(me.body["user"]["business"], Value::Null);
    // At once: every unit is gone for the business's users, and delegation by them is refused.
    let before = suspended_view_denials(&s).await;
    for t in [&pam, &tom] {
        let r = get(&s, "/units/gen-1", t).await;
        assert_eq!(
            (r.status, r.body["error"].clone()),
            (404, json!("unit_not_found"))
        );
        let r = get(&s, "/units", t).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["units"], json!([]));
    }
    assert_eq!(suspended_view_denials(&s).await, before + 2);
    let r = call(
        &s,
        reqwest::Method::POST,
        "/grants",
        &pam,
        Some(json!({"email": email("nick"), "role": "viewer", "scope": {"unit": "gen-1"}, "expires_at": "2035-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (403, json!("forbidden"))
    );
    // vic keeps her own viewer grant on gen-1, but tom's delegation (control) no longer applies:
    // the command never reaches the unit.
    let writes = s.sim.stats().writes.len();
    let r = call(
        &s,
        reqwest::Method::POST,
        "/units/gen-1/commands/stop",
        &vic,
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (403, json!("forbidden"))
    );
    assert_eq!(s.sim.stats().writes.len(), writes);
    assert_eq!(get(&s, "/units/gen-1", &vic).await.status, 200);
    // Neither business user can lift it.
    for t in [&pam, &tom] {
        assert_eq!(restore(&s, ACME, t).await.status, 403);
    }

    // Audited: the owner sees the suspension and the refused attempts.
    let r = get(&s, "/audit?kind=business_suspended&limit=100", &olga).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outcomes: Vec<(String, String)> = r.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["actor"].as_str().unwrap().to_string(),
                x["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|(a, o)| a == "olga" && o == "ok")
            .count(),
        1
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|(a, o)| a != "olga" && o == "denied")
            .count(),
        6
    );

    // A restart keeps it; a later bundle does not lift it.
    let s = s.restart().await;
    let olga = s.login("olga").await;
    let tom = s.login("tom").await;
    assert_eq!(get(&s, "/units/gen-1", &tom).await.status, 404);
    s.apply(signed(2)).await;
    assert_eq!(get(&s, "/units/gen-1", &tom).await.status, 404);
    let r = get(&s, "/businesses", &olga).await;
    assert_eq!(r.body["businesses"][0]["suspended"], true);
    assert_eq!(
        r.body["businesses"][0]["suspension"]["suspended_by"],
        "olga"
    );

    // The owner restores it: access is back at once.
    let r = restore(&s, ACME, &olga).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "restored");
    assert_eq!(get(&s, "/units/gen-1", &tom).await.status, 200);
    let r = restore(&s, ACME, &olga).await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (404, json!("not_suspended"))
    );
    // One restoration by the owner; the five refused attempts by pam, tom and vic.
    let r = get(&s, "/audit?kind=business_restored&limit=100", &olga).await;
    let records = r.body["records"].as_array().unwrap();
    let ok: Vec<&str> = records
        .iter()
        .filter(|x| x["outcome"] == "ok")
        .map(|x| x["actor"].as_str().unwrap())
        .collect();
    assert_eq!(ok, vec!["olga"]);
    assert_eq!(
        records.iter().filter(|x| x["outcome"] == "denied").count(),
        5
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bundle_cannot_make_a_business_user_the_owner() {
    let s = Site::start("plain", "").await;
    let bad = bundle_with_user_fields(
        1,
        &members(),
        &[],
        &fleet_key(),
        &[("pam", json!({"business": ACME, "owner": true}))],
    );
    let r = s.daemon.site.as_ref().unwrap().clone();
    let out = tokio::task::spawn_blocking(move || {
        r.apply_envelope(Some(sitegate::grants::Kind::Bundle), &bad, "test")
    })
    .await
    .unwrap();
    assert_eq!(out.unwrap_err().reason, sitegate::grants::Reason::Malformed);
    s.stop().await;
}

fn cli(s: &Site, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sitegate"))
        .arg("business")
        .args(args)
        .arg("--config")
        .arg(&s.config_path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls (bounded: 100 × 100 ms) until `tom` gets `status` on gen-1.
async fn wait_for_status(s: &Site, token: &str, status: u16) {
    for _ in 0..100 {
        if get(s, "/units/gen-1", token).await.status == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("gen-1 never answered {status}");
}

#[tokio::test]
async fn the_cli_suspends_only_as_the_owner_and_the_running_daemon_applies_it() {
    let s = Site::start("plain", "").await;
    s.apply(signed(1)).await;
    let tom = s.login("tom").await;
    assert_eq!(get(&s, "/units/gen-1", &tom).await.status, 200);

    // A business user (even its site admin) is refused and nothing changes.
    let (code, _, err) = cli(&s, &["suspend", ACME, "--as", &email("pam")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not the site owner"), "{err}");
    let (code, _, _) = cli(&s, &["suspend", ACME, "--as", &email("tom")]);
    assert_eq!(code, 1);
    let (code, out, _) = cli(&s, &["list"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["suspended"], json!([]));
    assert_eq!(
        doc["businesses"],
        json!([{"business": ACME, "members": ["pam", "tom"]}])
    );

    let (code, out, err) = cli(
        &s,
        &["suspend", ACME, "--as", &email("olga"), "--note", "overdue"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("suspended `acme-service` (2 user(s))"),
        "{out}"
    );
    wait_for_status(&s, &tom, 404).await;
    let (code, _, _) = cli(&s, &["restore", ACME, "--as", &email("tom")]);
    assert_eq!(code, 1);
    let (code, out, _) = cli(&s, &["list"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["suspended"][0]["suspended_by"], "cli:olga");
    assert_eq!(doc["suspended"][0]["note"], "overdue");

    let (code, _, err) = cli(&s, &["restore", ACME, "--as", &email("olga")]);
    assert_eq!(code, 0, "{err}");
    wait_for_status(&s, &tom, 200).await;
    let (code, _, err) = cli(&s, &["restore", ACME, "--as", &email("olga")]);
    assert_eq!(code, 1);
    assert!(err.contains("is not suspended"), "{err}");
    s.stop().await;
}

async fn request_status(s: &Site, token: &str, id: &str) -> Option<String> {
    let r = get(s, "/access-requests", token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .map(|x| x["status"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn access_requests_are_listed_and_resolved_by_the_next_bundle() {
    let s = Site::start("plain", "").await;
    s.apply(signed(1)).await;
    let (olga, nick, vic) = (
        s.login("olga").await,
        s.login("nick").await,
        s.login("vic").await,
    );
    let ask = |role: &str, unit: &str| json!({"role": role, "scope": {"unit": unit}});
    let r = call(
        &s,
        reqwest::Method::POST,
        "/access-requests",
        &nick,
        Some(ask("viewer", "gen-1")),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let granted = r.body["request_id"].as_str().unwrap().to_string();
    let r = call(
        &s,
        reqwest::Method::POST,
        "/access-requests",
        &nick,
        Some(ask("control-only", "hvac-1")),
    )
    .await;
    assert_eq!(r.status, 202);
    let denied = r.body["request_id"].as_str().unwrap().to_string();

    assert_eq!(
        request_status(&s, &nick, &granted).await.as_deref(),
        Some("pending")
    );
    assert_eq!(
        request_status(&s, &olga, &denied).await.as_deref(),
        Some("pending")
    );
    assert_eq!(request_status(&s, &vic, &granted).await, None);

    // The next bundle grants the first and denies the second.
    let mut m = members();
    m.push(Member {
        user: "nick",
        role: "viewer",
        scope: json!({"unit": "gen-1"}),
        grant: "g-nick-gen",
    });
    let b = bundle_with_fields(
        2,
        &m,
        &[],
        &fleet_key(),
        &[("olga", json!({"owner": true}))],
        &json!({"requests_denied": [denied]}),
    );
    s.apply(b).await;
    // Resolution follows the applied state on the daemon's watch task (bounded wait).
    for _ in 0..100 {
        if request_status(&s, &nick, &denied).await.as_deref() == Some("denied") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        request_status(&s, &nick, &granted).await.as_deref(),
        Some("granted")
    );
    assert_eq!(
        request_status(&s, &nick, &denied).await.as_deref(),
        Some("denied")
    );
    let r = get(&s, "/audit?kind=access_request_resolved&limit=10", &olga).await;
    assert_eq!(r.body["records"].as_array().unwrap().len(), 2);
    s.stop().await;
}

/// An installer token for `inst`, a technician of acme-service not named in any bundle.
fn installer_token() -> Vec<u8> {
    let user = json!({"id": "inst", "email": "inst@acme.example", "name": "Ivo", "active": true,
                      "business": ACME});
    e2e_support::installer_token(user, "t-inst", time::Duration::days(2))
}

#[tokio::test]
async fn an_installer_token_of_a_suspended_business_stays_suspended_across_a_restart() {
    let s = Site::start("plain", "").await;
    s.apply(signed(1)).await;
    let olga = s.login("olga").await;
    let inst = token_login(&s, &installer_token()).await;
    assert_eq!(get(&s, "/units/gen-1", &inst).await.status, 200);
    // The owner sees the token user as a member of the business.
    let r = get(&s, "/businesses", &olga).await;
    assert_eq!(
        r.body["businesses"][0]["members"],
        json!(["inst", "pam", "tom"])
    );
    assert_eq!(suspend(&s, ACME, &olga).await.status, 201);
    assert_eq!(get(&s, "/units/gen-1", &inst).await.status, 404);

    // After a restart the token's grant is reloaded from the store with its business, and a
    // fresh login with the same token does not get around the suspension either.
    let s = s.restart().await;
    // The session from before the restart: the grant comes from the store only.
    let r = get(&s, "/units/gen-1", &inst).await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (404, json!("unit_not_found"))
    );
    let me = get(&s, "/me", &inst).await;
    assert_eq!(me.body["user"]["business"], ACME);
    let inst = token_login(&s, &installer_token()).await;
    let r = get(&s, "/units/gen-1", &inst).await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (404, json!("unit_not_found"))
    );
    let me = get(&s, "/me", &inst).await;
    assert_eq!(me.body["user"]["business_suspended"], true);
    s.stop().await;
}
