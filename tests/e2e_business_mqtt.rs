//! End to end over MQTT: the site owner's suspension of a service business reaches the cloud as
//! an audit event on `…/events` and as the retained `…/suspensions` document, from the real
//! daemon through its outbox to a real mosquitto.

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
use common::mqtt::{Collector, ROOT, mqtt_toml, observer};
use e2e_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_and_its_restoration_are_reported_to_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let cloud = observer(broker.port, "e2e-observer").await;
    let s = Site::start("plain", &mqtt_toml(broker.port, "sitegate-e2e")).await;
    let members = vec![
        Member {
            user: "olga",
            role: "control-only",
            scope: json!({"site": SITE}),
            grant: "g-olga",
        },
        Member {
            user: "pam",
            role: "admin",
            scope: json!({"site": SITE}),
            grant: "g-pam",
        },
    ];
    s.apply(bundle_with_user_fields(
        1,
        &members,
        &[],
        &fleet_key(),
        &[
            ("olga", json!({"owner": true})),
            ("pam", json!({"business": "acme-service"})),
        ],
    ))
    .await;
    let olga = s.login("olga").await;
    let r = s
        .http
        .put(format!("{}/businesses/acme-service/suspension", s.base))
        .bearer_auth(&olga)
        .json(&json!({"note": "contract ended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let topic = format!("{ROOT}/suspensions");
    let m = cloud
        .wait_message(&topic, Duration::from_secs(15), |m| {
            m.json()["suspended"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await;
    let doc = m.json();
    assert_eq!(doc["suspended"][0]["business"], "acme-service");
    assert_eq!(doc["suspended"][0]["suspended_by"], "olga");
    assert_eq!(doc["suspended"][0]["members"], json!(["pam"]));
    let ev = cloud
        .wait_message(&format!("{ROOT}/events"), Duration::from_secs(15), |m| {
            m.json()["kind"] == "business_suspended"
        })
        .await;
    assert_eq!(ev.json()["outcome"], "ok");
    assert_eq!(ev.json()["actor"], "olga");

    let r = s
        .http
        .delete(format!("{}/businesses/acme-service/suspension", s.base))
        .bearer_auth(&olga)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cloud
        .wait_message(&topic, Duration::from_secs(15), |m| {
            m.json()["suspended"] == json!([])
        })
        .await;
    cloud
        .wait_message(&format!("{ROOT}/events"), Duration::from_secs(15), |m| {
            m.json()["kind"] == "business_restored" && m.json()["outcome"] == "ok"
        })
        .await;
    // Retained: a subscriber arriving later gets the current list at once.
    let late = Collector::start(broker.port, "e2e-late", &topic, false, None);
    let m = late
        .wait_message(&topic, Duration::from_secs(10), |m| m.retain)
        .await;
    assert_eq!(m.json()["suspended"], json!([]));
    s.stop().await;
}
