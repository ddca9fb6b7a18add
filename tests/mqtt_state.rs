//! Retained state: `…/grants/state` follows every apply whatever its source, and per-unit
//! availability does not claim `online` after the box stopped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::Broker;
use common::mqtt::{Collector, mqtt_config, site, wait_for};
use serde_json::{Value, json};
use sitegate::audit::Audit;
use sitegate::clock::SystemClock;
use sitegate::model::UnitId;
use sitegate::mqtt::{GrantSink, InboundKind, MqttClient};
use sitegate::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ROOT: &str = "sitegate/v1/s-1/gw-1";

/// Stands in for the grants engine: the state is a shared document, an MQTT message sets it.
struct Engine {
    state: Arc<Mutex<Value>>,
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl GrantSink for Engine {
    fn apply(&self, _: InboundKind, _: Vec<u8>) -> Value {
        let mut doc = json!({"seq": 3, "source": "mqtt"});
        *self.state.lock().unwrap() = doc.clone();
        self.changes.send_modify(|n| *n += 1);
        doc["last_message"] = json!({"kind": "grants", "outcome": "applied"});
        doc
    }
}

fn states(sub: &Collector) -> Vec<Value> {
    sub.on(&format!("{ROOT}/grants/state"))
        .iter()
        .map(common::mqtt::Received::json)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_state_follows_every_apply_and_a_clean_stop_leaves_units_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let sub = Collector::start(b.port, "cloud", &format!("{ROOT}/#"), false, None);
    sub.wait_subscribed().await;
    let store = Store::open_in(dir.path()).unwrap();
    let audit = Audit::new(store.clone(), Arc::new(SystemClock), None);
    let state = Arc::new(Mutex::new(json!({"seq": 1, "source": "start"})));
    let (changes, rx) = tokio::sync::watch::channel(0u64);
    let changes = Arc::new(changes);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let h = MqttClient::start(
        &mqtt_config(b.port, "sitegate-state"),
        &site(),
        store,
        audit,
        Arc::new(Engine {
            state: state.clone(),
            changes: changes.clone(),
        }),
        shutdown.clone(),
        &tracker,
    )
    .unwrap();
    let s2 = state.clone();
    h.follow_grants(
        rx,
        move || s2.lock().unwrap().clone(),
        shutdown.clone(),
        &tracker,
    );

    // On start: the state as it is (applies made while the daemon was stopped).
    wait_for("the state on start", Duration::from_secs(10), || {
        states(&sub).contains(&json!({"seq": 1, "source": "start"}))
    })
    .await;
    // A local apply (LAN, setup): published without any MQTT message.
    *state.lock().unwrap() = json!({"seq": 2, "source": "lan"});
    changes.send_modify(|n| *n += 1);
    wait_for(
        "the state after a local apply",
        Duration::from_secs(10),
        || states(&sub).contains(&json!({"seq": 2, "source": "lan"})),
    )
    .await;
    // An MQTT apply: its outcome is `last_message`, and it stays in later documents.
    common::broker::publish(b.port, dir.path(), &format!("{ROOT}/grants"), b"{}", false);
    let mqtt_doc = json!({"seq": 3, "source": "mqtt",
                          "last_message": {"kind": "grants", "outcome": "applied"}});
    wait_for(
        "the state after an MQTT apply",
        Duration::from_secs(10),
        || states(&sub).contains(&mqtt_doc),
    )
    .await;
    *state.lock().unwrap() = json!({"seq": 4, "source": "lan"});
    changes.send_modify(|n| *n += 1);
    let later = json!({"seq": 4, "source": "lan",
                       "last_message": {"kind": "grants", "outcome": "applied"}});
    wait_for("a later local apply", Duration::from_secs(10), || {
        states(&sub).contains(&later)
    })
    .await;
    assert_eq!(
        states(&sub).last(),
        Some(&later),
        "the newest document is the newest state"
    );

    // Availability: set, then a clean stop marks every unit unknown (retained).
    let u1 = UnitId::new("gen-1").unwrap();
    let u2 = UnitId::new("hvac-1").unwrap();
    h.set_availability(&u1, true).await.unwrap();
    h.set_availability(&u2, false).await.unwrap();
    let avail = |u: &str| format!("{ROOT}/units/{u}/availability");
    sub.wait_message(&avail("gen-1"), Duration::from_secs(10), |m| {
        m.payload == b"online"
    })
    .await;
    sub.wait_message(&avail("hvac-1"), Duration::from_secs(10), |m| {
        m.payload == b"offline"
    })
    .await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    for u in ["gen-1", "hvac-1"] {
        let last = sub
            .wait_message(&avail(u), Duration::from_secs(10), |m| {
                m.payload == b"unknown"
            })
            .await;
        assert!(!last.retain, "live");
    }
    // A late subscriber reads the retained values: unknown, next to the shutdown status.
    let late = Collector::start(b.port, "late", &format!("{ROOT}/#"), false, None);
    late.wait_subscribed().await;
    for u in ["gen-1", "hvac-1"] {
        let m = late
            .wait_message(&avail(u), Duration::from_secs(10), |_| true)
            .await;
        assert_eq!(m.payload, b"unknown");
        assert!(m.retain);
    }
    let status = late
        .wait_message(&format!("{ROOT}/status"), Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(status.json()["reason"], "shutdown");
}
