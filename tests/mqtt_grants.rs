//! Grant and key envelopes in, `…/grants/state` out, against a real mosquitto.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::{self, Broker};
use common::mqtt::{Collector, ROOT, Running, mqtt_config};
use serde_json::{Value, json};
use sitegate::mqtt::{GrantSink, InboundKind};

/// A stand-in for the grants engine: `{"seq":N,"sig":"good"}` is applied when N is above the last
/// applied seq (same N: duplicate), anything else is rejected.
#[derive(Default)]
struct TestSink {
    seen: Mutex<Vec<(InboundKind, Vec<u8>)>>,
    applied: Mutex<i64>,
}

impl GrantSink for TestSink {
    fn apply(&self, kind: InboundKind, bytes: Vec<u8>) -> Value {
        self.seen.lock().unwrap().push((kind, bytes.clone()));
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return json!({"kind": kind, "outcome": "rejected", "reason": "malformed"});
        };
        if v["sig"] != "good" {
            return json!({"kind": kind, "outcome": "rejected", "reason": "bad_signature"});
        }
        let seq = v["seq"].as_i64().unwrap_or(0);
        let mut applied = self.applied.lock().unwrap();
        let outcome = if seq > *applied {
            *applied = seq;
            "applied"
        } else {
            "duplicate"
        };
        json!({"kind": kind, "outcome": outcome, "applied_seq": *applied})
    }
}

/// The box's MQTT client with `sink`, audit records to `…/events`.
fn start_box(dir: &std::path::Path, port: u16, sink: Arc<TestSink>) -> Running {
    Running::start_with_sink(dir, mqtt_config(port, "sitegate-test"), true, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_bundle_is_applied_and_its_state_is_published_retained() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    // Published retained BEFORE the box connects: it must arrive on subscribe.
    broker::publish(
        b.port,
        dir.path(),
        &format!("{ROOT}/grants"),
        br#"{"seq":42,"sig":"good"}"#,
        true,
    );
    let sink = Arc::new(TestSink::default());
    let bx = start_box(dir.path(), b.port, sink.clone());

    let watcher = Collector::start(b.port, "watcher", &format!("{ROOT}/#"), false, None);
    let state_topic = format!("{ROOT}/grants/state");
    watcher
        .wait_message(&state_topic, Duration::from_secs(15), |m| {
            m.json()["outcome"] == "applied" && m.json()["applied_seq"] == 42
        })
        .await;
    {
        let seen = sink.seen.lock().unwrap();
        assert_eq!(seen[0].0, InboundKind::Grants);
        assert_eq!(
            seen[0].1, br#"{"seq":42,"sig":"good"}"#,
            "exact bytes reach the sink"
        );
    }

    // A late subscriber gets the state and the online status as retained messages.
    let late = Collector::start(b.port, "late", &format!("{ROOT}/#"), false, None);
    let st = late
        .wait_message(&state_topic, Duration::from_secs(10), |m| m.retain)
        .await;
    assert_eq!(st.json()["applied_seq"], 42);
    let status = late
        .wait_message(&format!("{ROOT}/status"), Duration::from_secs(10), |m| {
            m.retain
        })
        .await;
    assert_eq!(status.json()["online"], true);
    assert_eq!(status.json()["version"], env!("CARGO_PKG_VERSION"));
    assert!(status.json()["since"].is_string());
    assert!(status.json()["uptime_s"].is_u64());

    // A forged bundle is rejected and the reason is published.
    broker::publish(
        b.port,
        dir.path(),
        &format!("{ROOT}/grants"),
        br#"{"seq":43,"sig":"forged"}"#,
        true,
    );
    watcher
        .wait_message(&state_topic, Duration::from_secs(10), |m| {
            m.json()["reason"] == "bad_signature"
        })
        .await;

    // A duplicate delivery (same bytes, new packet id) is harmless; a key set arrives as keys.
    broker::publish(
        b.port,
        dir.path(),
        &format!("{ROOT}/grants"),
        br#"{"seq":42,"sig":"good"}"#,
        true,
    );
    watcher
        .wait_message(&state_topic, Duration::from_secs(10), |m| {
            m.json()["outcome"] == "duplicate"
        })
        .await;
    broker::publish(
        b.port,
        dir.path(),
        &format!("{ROOT}/keys"),
        br#"{"seq":3,"sig":"good"}"#,
        true,
    );
    watcher
        .wait_message(&state_topic, Duration::from_secs(10), |m| {
            m.json()["kind"] == "keys"
        })
        .await;
    assert!(bx.handle.connected());
    let stats = bx.handle.stats().await.unwrap();
    assert_eq!(stats.inbound, 4);

    bx.shutdown.cancel();
    bx.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), bx.tracker.wait())
        .await
        .unwrap();
    // A clean stop publishes the offline status (the will is not needed).
    watcher
        .wait_message(&format!("{ROOT}/status"), Duration::from_secs(10), |m| {
            m.json()["online"] == false
        })
        .await;
    drop(bx.store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_envelope_is_rejected_without_reaching_the_sink_or_dropping_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let sink = Arc::new(TestSink::default());
    let bx = start_box(dir.path(), b.port, sink.clone());
    let watcher = Collector::start(b.port, "watcher", &format!("{ROOT}/#"), false, None);
    watcher.wait_subscribed().await;
    let big = vec![b'x'; sitegate::mqtt::MAX_INBOUND_BYTES + 1];
    broker::publish(b.port, dir.path(), &format!("{ROOT}/grants"), &big, false);
    let st = watcher
        .wait_message(
            &format!("{ROOT}/grants/state"),
            Duration::from_secs(15),
            |m| m.json()["reason"] == "too_large",
        )
        .await;
    assert_eq!(st.json()["bytes"], sitegate::mqtt::MAX_INBOUND_BYTES + 1);
    assert!(sink.seen.lock().unwrap().is_empty());
    // Still connected and serving: the next good bundle is applied.
    broker::publish(
        b.port,
        dir.path(),
        &format!("{ROOT}/grants"),
        br#"{"seq":1,"sig":"good"}"#,
        false,
    );
    watcher
        .wait_message(
            &format!("{ROOT}/grants/state"),
            Duration::from_secs(10),
            |m| m.json()["outcome"] == "applied",
        )
        .await;
    assert_eq!(bx.handle.stats().await.unwrap().reconnects, 0);
    // The rejection is in the audit trail.
    let n: i64 = bx
        .store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM audit WHERE kind = 'mqtt_inbound_too_large'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(n, 1);
    bx.shutdown.cancel();
}
