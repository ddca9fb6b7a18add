//! End to end over MQTT: the real daemon connected to its own mosquitto. A signed bundle
//! published retained on `…/grants` is applied (login then works) and reported on
//! `…/grants/state`; a forged one is rejected there with `bad_signature` and changes nothing; a
//! command over the LAN API comes out as an audit record on `…/events`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod common;
mod e2e_support;

use std::time::Duration;

use common::broker::Broker;
use common::mqtt::{Collector, ROOT, publish_retained};
use e2e_support::*;
use serde_json::json;

fn members() -> Vec<Member> {
    vec![Member {
        user: "carl",
        role: "control-only",
        scope: json!({"unit": "gen-1"}),
        grant: "g-carl",
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_over_mqtt_is_applied_a_forged_one_is_rejected_and_commands_become_events() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let cloud = Collector::start(
        broker.port,
        "e2e-observer",
        &format!("{ROOT}/#"),
        false,
        None,
    );
    cloud.wait_subscribed().await;
    let site = Site::start(
        "plain",
        &format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"sitegate-e2e\"\n",
            broker.port
        ),
    )
    .await;

    // Before any bundle nobody can log in.
    let r = site
        .http
        .post(format!("{}/session", site.base))
        .json(&json!({"email": email("carl"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let state_topic = format!("{ROOT}/grants/state");
    publish_retained(
        broker.port,
        &format!("{ROOT}/grants"),
        bundle(1, &members(), &[]),
    )
    .await;
    cloud
        .wait_message(&state_topic, Duration::from_secs(15), |m| {
            // The engine's state document (docs/grants.md), not the shorter form in docs/mqtt.md.
            m.json()["seq"] == 1 && m.json()["last_message"]["outcome"] == "applied"
        })
        .await;
    // The failed login above started the throttle, which runs on the (manual) clock.
    site.clock.advance(time::Duration::seconds(5));
    let token = site.login("carl").await;

    // A forged bundle (seq 2, signed by a key the box does not trust) changes nothing.
    publish_retained(
        broker.port,
        &format!("{ROOT}/grants"),
        bundle_signed_by(2, &[], &["g-carl"], &forged_key()),
    )
    .await;
    let m = cloud
        .wait_message(&state_topic, Duration::from_secs(15), |m| {
            m.json()["last_message"]
                .to_string()
                .contains("bad_signature")
        })
        .await;
    assert_eq!(
        m.json()["last_message"]["outcome"],
        "rejected",
        "{:?}",
        m.json()
    );
    assert_eq!(m.json()["seq"], 1, "{:?}", m.json());
    assert_eq!(site.daemon.site.as_ref().unwrap().grants.snapshot().seq, 1);

    // The live session still works, and its command is published as an audit event.
    let r = site
        .http
        .post(format!("{}/units/gen-1/commands/manual", site.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = cloud
        .wait_message(&format!("{ROOT}/events"), Duration::from_secs(15), |m| {
            let j = m.json();
            j["kind"] == "command" && j["outcome"] == "ok" && j["unit"] == "gen-1"
        })
        .await;
    assert_eq!(ev.json()["actor"], "carl", "{:?}", ev.json());
    assert!(ev.json()["hash"].is_string());

    // The state is retained: a subscriber arriving later gets the latest outcome at once.
    let late = Collector::start(broker.port, "e2e-late", &state_topic, false, None);
    let m = late
        .wait_message(&state_topic, Duration::from_secs(10), |m| m.retain)
        .await;
    assert!(
        m.json()["last_message"]
            .to_string()
            .contains("bad_signature"),
        "{:?}",
        m.json()
    );
    site.stop().await;
}

/// Waits for a `…/grants/state` message whose last message was rejected with `reason`.
async fn wait_rejected(cloud: &Collector, reason: &str) -> serde_json::Value {
    let m = cloud
        .wait_message(
            &format!("{ROOT}/grants/state"),
            Duration::from_secs(15),
            |m| m.json()["last_message"]["reason"] == reason,
        )
        .await;
    assert_eq!(m.json()["last_message"]["outcome"], "rejected");
    m.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_a_key_set_adding_the_identity_key_is_refused_and_nothing_forged_under_it_applies()
 {
    use sitegate::grants::envelope::signing_input;
    use sitegate::grants::{Kind, fleet};
    let b64 = |b: &[u8]| sitegate::util_b64::encode(b);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let cloud = Collector::start(
        broker.port,
        "e2e-observer",
        &format!("{ROOT}/#"),
        false,
        None,
    );
    cloud.wait_subscribed().await;
    let site = Site::start(
        "plain",
        &format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"sitegate-e2e\"\n",
            broker.port
        ),
    )
    .await;
    let state_topic = format!("{ROOT}/grants/state");
    publish_retained(
        broker.port,
        &format!("{ROOT}/grants"),
        bundle(1, &members(), &[]),
    )
    .await;
    cloud
        .wait_message(&state_topic, Duration::from_secs(15), |m| {
            m.json()["seq"] == 1 && m.json()["last_message"]["outcome"] == "applied"
        })
        .await;

    // R = the identity point, S = 0: verifies under the identity key for any message in ring.
    let mut forged_sig = [0u8; 64];
    forged_sig[0] = 1;
    let identity = {
        let mut k = [0u8; 32];
        k[0] = 1;
        k
    };
    let issued =
        sitegate::clock::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::minutes(5));
    let payload = serde_json::to_vec(&json!({
        "seq": 1, "issued_at": issued,
        "keys": [{"kid": KID, "public_key": fleet::public_key_b64(&fleet_key())},
                 {"kid": "k-evil", "public_key": b64(&identity)}]
    }))
    .unwrap();
    let trusted_sig = fleet_key().sign(&signing_input(Kind::Keys, &payload));
    let keys_env = serde_json::to_vec(&json!({
        "v": 1, "kind": "keys", "payload": b64(&payload),
        "sigs": [{"kid": KID, "sig": b64(trusted_sig.as_ref())},
                 {"kid": "k-evil", "sig": b64(&forged_sig)}]
    }))
    .unwrap();
    publish_retained(broker.port, &format!("{ROOT}/keys"), keys_env).await;
    let st = wait_rejected(&cloud, "weak_key").await;
    assert_eq!(st["keys_seq"], 0, "{st:?}");

    // A bundle "signed" under that kid making a new user site admin.
    let evil = serde_json::to_vec(&json!({
        "site": SITE, "seq": 2, "issued_at": issued,
        "policy": {"management": "independent", "features": ["view", "control", "configure", "manage_users"]},
        "users": [{"id": "eve", "email": email("eve"), "name": "Eve", "active": true,
                   "password": fleet::hash_password(PASSWORD, 1_000).unwrap()}],
        "grants": [{"id": "g-eve", "user": "eve", "role": "admin", "scope": {"site": SITE}}]
    }))
    .unwrap();
    let forged_bundle = serde_json::to_vec(&json!({
        "v": 1, "kind": "bundle", "kid": "k-evil", "payload": b64(&evil), "sig": b64(&forged_sig)
    }))
    .unwrap();
    publish_retained(broker.port, &format!("{ROOT}/grants"), forged_bundle).await;
    let st = wait_rejected(&cloud, "unknown_key").await;
    assert_eq!(st["seq"], 1, "{st:?}");

    // A genuinely signed bundle whose max_offline repeats a role is malformed, not last-wins.
    let dup = format!(
        r#"{{"site":"{SITE}","seq":3,"issued_at":"{issued}","policy":{{"management":"independent","features":["view"],"max_offline":{{"admin":"1d","admin":"3650d"}}}}}}"#
    );
    publish_retained(
        broker.port,
        &format!("{ROOT}/grants"),
        fleet::sign(Kind::Bundle, KID, &fleet_key(), dup.as_bytes()),
    )
    .await;
    let st = wait_rejected(&cloud, "malformed").await;
    assert!(
        st["last_message"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key `admin`"),
        "{st:?}"
    );
    assert_eq!(st["seq"], 1, "{st:?}");
    assert_eq!(site.daemon.site.as_ref().unwrap().grants.snapshot().seq, 1);

    let r = site
        .http
        .post(format!("{}/session", site.base))
        .json(&json!({"email": email("eve"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    site.stop().await;
}

/// `…/grants/state` reports what the cloud sent. A bundle rejection stays the reported one after
/// LAN logins with a malformed token and with a token signed by an untrusted key (both 401 and
/// audited), including when the next inbound message makes the box publish the state again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_login_failures_never_change_the_rejection_the_cloud_reads() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let cloud = Collector::start(
        broker.port,
        "e2e-observer",
        &format!("{ROOT}/#"),
        false,
        None,
    );
    cloud.wait_subscribed().await;
    let site = Site::start(
        "plain",
        &format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"sitegate-e2e\"\n",
            broker.port
        ),
    )
    .await;
    let state_topic = format!("{ROOT}/grants/state");
    let good = bundle(1, &members(), &[]);
    publish_retained(broker.port, &format!("{ROOT}/grants"), good.clone()).await;
    cloud
        .wait_message(&state_topic, Duration::from_secs(15), |m| {
            m.json()["last_message"]["outcome"] == "applied"
        })
        .await;
    publish_retained(
        broker.port,
        &format!("{ROOT}/grants"),
        bundle_signed_by(2, &[], &["g-carl"], &forged_key()),
    )
    .await;
    cloud
        .wait_message(&state_topic, Duration::from_secs(15), |m| {
            m.json()["rejection"]["reason"] == "bad_signature"
        })
        .await;

    // Two failed LAN logins with tokens: malformed, and well-formed but signed by a stranger.
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let desc = json!({
        "site": SITE, "issued_at": (now - time::Duration::minutes(1)).format(fmt).unwrap(),
        "user": {"id": "u-eve", "email": "eve@example.com", "name": "Eve", "active": true},
        "grant": {"id": "g-eve", "user": "u-eve", "role": "admin", "scope": {"site": SITE},
                  "expires_at": (now + time::Duration::hours(1)).format(fmt).unwrap()},
    });
    let stranger = sitegate::grants::fleet::sign_token_description(
        &forged_key(),
        KID,
        &serde_json::to_vec(&desc).unwrap(),
    )
    .unwrap();
    for token in [
        "{not a token".to_string(),
        String::from_utf8(stranger).unwrap(),
    ] {
        let r = site
            .http
            .post(format!("{}/session", site.base))
            .json(&json!({ "token": token }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        site.clock.advance(time::Duration::seconds(5));
    }
    let audited = site
        .daemon
        .store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM audit WHERE kind = 'grant_rejected'
                 AND json_extract(detail, '$.source') = 'token'",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .unwrap();
    assert_eq!(audited, 2, "each refused token is audited");

    // The cloud sends the good bundle again (a redelivery): the box publishes its state, and the
    // rejection in it is still the cloud's forged bundle, not a LAN login.
    publish_retained(broker.port, &format!("{ROOT}/grants"), good).await;
    let m = cloud
        .wait_message(&state_topic, Duration::from_secs(15), |m| {
            m.json()["last_message"]["outcome"] == "duplicate"
        })
        .await;
    let state = m.json();
    assert_eq!(state["rejection"]["kind"], "bundle", "{state}");
    assert_eq!(state["rejection"]["reason"], "bad_signature", "{state}");
    assert_eq!(state["rejection"]["source"], "mqtt", "{state}");
    assert_eq!(state["seq"], 1, "{state}");
    site.stop().await;
}

/// One point, one quality name: the simulated generator has no oil temperature sender (GenComm's
/// "unimplemented" sentinel), and the API and the MQTT telemetry both call it `unimplemented`,
/// the name `sitegate units test` prints and the profile's sentinel declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_has_the_same_quality_name_in_the_api_and_on_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let cloud = Collector::start(
        broker.port,
        "e2e-observer",
        &format!("{ROOT}/#"),
        false,
        None,
    );
    cloud.wait_subscribed().await;
    let site = Site::start(
        "plain",
        &format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"sitegate-e2e\"\n",
            broker.port
        ),
    )
    .await;
    publish_retained(
        broker.port,
        &format!("{ROOT}/grants"),
        bundle(1, &members(), &[]),
    )
    .await;
    cloud
        .wait_message(
            &format!("{ROOT}/grants/state"),
            Duration::from_secs(15),
            |m| m.json()["last_message"]["outcome"] == "applied",
        )
        .await;
    let telemetry = cloud
        .wait_message(
            &format!("{ROOT}/telemetry/gen-1"),
            Duration::from_secs(15),
            |m| m.json()["points"]["oil_temperature"].is_object(),
        )
        .await;
    let token = site.login("carl").await;
    let r = site
        .http
        .get(format!("{}/units/gen-1", site.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let unit: serde_json::Value = r.json().await.unwrap();
    let api = unit["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "oil_temperature")
        .unwrap()
        .clone();
    assert_eq!(api["quality"], "unimplemented", "{api}");
    assert_eq!(
        telemetry.json()["points"]["oil_temperature"]["quality"],
        "unimplemented",
        "{:?}",
        telemetry.json()
    );
    assert_eq!(
        sitegate::modbus::Quality::Unimplemented.as_str(),
        "unimplemented"
    );
    site.stop().await;
}

/// The generator's points span several read blocks (pages 3, 4, 5, 7, 8 of GenComm): a poll cycle
/// that finds changes in two of them sends ONE telemetry message with both, not one per block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_sends_one_telemetry_message_per_poll_cycle_however_many_blocks_changed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let topic = format!("{ROOT}/telemetry/gen-1");
    let cloud = Collector::start(broker.port, "e2e-observer", &topic, false, None);
    cloud.wait_subscribed().await;
    let site = Site::start(
        "plain",
        &format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"sitegate-e2e\"\n",
            broker.port
        ),
    )
    .await;
    // Steady: every point sent (the first cycle and the snapshot on connect).
    cloud
        .wait_message(&topic, Duration::from_secs(15), |m| {
            m.json()["points"]["fuel_level"].is_object()
        })
        .await;
    // Change a register in two blocks (768.. and 1024..) while the generator does not answer,
    // so that one cycle, the first after it answers again, reads both changes.
    site.sim.set_fault(
        Some(GEN_SLAVE),
        sitegate::sim::Fault {
            drop: true,
            ..Default::default()
        },
    );
    common::mqtt::wait_for("a dropped request", Duration::from_secs(10), || {
        site.sim.stats().dropped >= 1
    })
    .await;
    let before = cloud.on(&topic).len();
    site.sim.set_register(
        GEN_SLAVE,
        sitegate::modbus::profile::RegKind::Holding,
        769,
        4321,
    );
    site.sim.set_register(
        GEN_SLAVE,
        sitegate::modbus::profile::RegKind::Holding,
        1027,
        50,
    );
    site.sim.clear_faults();
    let msg = cloud
        .wait_message(&topic, Duration::from_secs(15), |m| {
            m.json()["points"]["fuel_level"]["value"] == json!(50)
        })
        .await;
    let m = msg.json();
    assert_eq!(m["reason"], "change", "{m}");
    let names: Vec<&String> = m["points"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["fuel_level", "model_number"], "{m}");
    assert_eq!(m["points"]["model_number"]["value"], json!(4321));
    // Four more poll cycles (500 ms): nothing else changed, nothing else is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cloud.on(&topic);
    assert_eq!(
        after.len(),
        before + 1,
        "{:?}",
        after.iter().map(|r| r.json()).collect::<Vec<_>>()
    );
    site.stop().await;
}
