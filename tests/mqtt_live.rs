//! Telemetry on the live path: kept in memory while the broker is connected (no outbox row per
//! message), written to the outbox in batches while it is not, and delivered in order once it is
//! back (real mosquitto, real SQLite file).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::broker::Broker;
use common::mqtt::{Collector, ROOT, Running, mqtt_config, wait_for};
use serde_json::{Value, json};
use sitegate::mqtt::{PointSample, Quality};
use sitegate::outbox::{self, Class};
use sitegate::store::Store;

/// Outbox rows ever inserted (the table is AUTOINCREMENT: `sqlite_sequence` only grows).
fn rows_written(store: &Store) -> i64 {
    store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap()
}

fn depth(store: &Store, class: Class) -> u64 {
    store.with_conn(|c| outbox::class_depth(c, class)).unwrap()
}

fn sample(v: i64) -> PointSample {
    PointSample {
        name: "rpm".into(),
        value: json!(v),
        quality: Quality::Good,
        deadband: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_skips_the_disk_while_connected_and_survives_an_outage_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path());
    let topic = format!("{ROOT}/telemetry/gen-1");
    // A persistent subscriber: the broker keeps its session across its own restart.
    let sub = Collector::start(b.port, "cloud", &topic, true, None);
    sub.wait_subscribed().await;
    let bx = Running::start(dir.path(), mqtt_config(b.port, "sitegate-live"), true);
    let (h, store) = (bx.handle.clone(), bx.store.clone());
    wait_for("the box to connect", Duration::from_secs(10), || {
        h.connected()
    })
    .await;
    // The connect itself queues the online status in the outbox; wait until it left.
    wait_for("the outbox to empty", Duration::from_secs(10), || {
        depth(&store, Class::State) == 0
    })
    .await;
    let unit = "gen-1".parse().unwrap();
    let tel = h.telemetry();

    // Broker up: 50 messages delivered, not one outbox row written.
    let before = rows_written(&store);
    for v in 0..50 {
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(tel.update(&unit, &[sample(v)], now).await.unwrap(), 1);
    }
    sub.wait_message(&topic, Duration::from_secs(10), |m| {
        m.json()["points"]["rpm"]["value"] == 49
    })
    .await;
    assert_eq!(
        rows_written(&store),
        before,
        "no outbox row for telemetry while the broker is connected"
    );

    // Broker down: the messages reach the outbox in one batch (never one at a time).
    b.stop();
    wait_for("the box to notice", Duration::from_secs(20), || {
        !h.connected()
    })
    .await;
    for v in 100..200 {
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(tel.update(&unit, &[sample(v)], now).await.unwrap(), 1);
    }
    let mut seen = HashSet::new();
    wait_for("the batch in the outbox", Duration::from_secs(30), || {
        let d = depth(&store, Class::Telemetry);
        seen.insert(d);
        d == 100
    })
    .await;
    assert!(
        seen.iter().all(|d| *d == 0 || *d == 100),
        "written as one batch, saw depths {seen:?}"
    );
    assert_eq!(rows_written(&store), before + 100);

    // Broker back: everything arrives, in the order it was made, and the outbox empties.
    b.restart();
    sub.wait_message(&topic, Duration::from_secs(30), |m| {
        m.json()["points"]["rpm"]["value"] == 199
    })
    .await;
    wait_for("the outbox to empty", Duration::from_secs(10), || {
        depth(&store, Class::Telemetry) == 0
    })
    .await;
    // At least once: drop resends (same msg_id) before checking the order.
    let mut ids = HashSet::new();
    let msgs: Vec<Value> = sub
        .on(&topic)
        .iter()
        .map(|m| m.json())
        .filter(|m| ids.insert(m["msg_id"].as_str().unwrap_or_default().to_string()))
        .collect();
    let changes: Vec<i64> = msgs
        .iter()
        .filter(|m| m["reason"] == "change")
        .map(|m| m["points"]["rpm"]["value"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..50).chain(100..200).collect();
    assert_eq!(changes, expected);
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "per-unit seq in order: {seqs:?}"
    );
    bx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_telemetry_not_yet_delivered_is_kept_across_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port: the broker is unreachable for the whole run.
    let port = common::broker::free_port();
    let bx = Running::start(dir.path(), mqtt_config(port, "sitegate-stop"), false);
    let (h, store) = (bx.handle.clone(), bx.store.clone());
    let unit = "gen-1".parse().unwrap();
    for v in 0..3 {
        let now = time::OffsetDateTime::now_utc();
        h.telemetry()
            .update(&unit, &[sample(v)], now)
            .await
            .unwrap();
    }
    bx.stop().await;
    assert_eq!(depth(&store, Class::Telemetry), 3);
}
