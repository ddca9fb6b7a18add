//! Benchmark (ignored; run by hand): outbox drain rate after a 100,000-message backlog versus a
//! plain rumqttc QoS 1 publisher, against the same local mosquitto. Prints messages per second;
//! asserts only that everything was delivered (no wall-clock assertion).
//!
//! `cargo test --release --test mqtt_bench -- --ignored --nocapture`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::mqtt::{mqtt_config, site};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};
use sitegate::audit::Audit;
use sitegate::clock::SystemClock;
use sitegate::mqtt::{GrantSink, InboundKind, MqttClient};
use sitegate::outbox::{self, Class};
use sitegate::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const N: usize = 100_000;
const ROOT: &str = "sitegate/v1/s-1/gw-1";

struct NoSink;
impl GrantSink for NoSink {
    fn apply(&self, _: InboundKind, _: Vec<u8>) -> Value {
        json!({})
    }
}

/// A payload shaped like an audit record (about 260 bytes).
fn payload(i: usize) -> Vec<u8> {
    json!({
        "seq": i, "id": format!("a-0123456789ab-{i}"), "at": "2026-11-26T12:00:00.123Z",
        "kind": "command", "actor": "u-1", "unit": "hvac-12", "outcome": "ok",
        "detail": {"point": "setpoint", "value": 21.5},
        "hash": "9f2c1e4b7a3d5f6e8c0b1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f"
    })
    .to_string()
    .into_bytes()
}

async fn outbox_drain(port: u16, dir: &std::path::Path) -> f64 {
    let store = Store::open_in(dir).unwrap();
    let t0 = Instant::now();
    store
        .with_conn(|c| {
            let tx = c.transaction()?;
            for i in 0..N {
                outbox::enqueue(
                    &tx,
                    Class::Event,
                    &format!("b-{i}"),
                    &format!("{ROOT}/events"),
                    &payload(i),
                    true,
                    false,
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .unwrap();
    eprintln!("enqueued {N} rows in {:.2} s", t0.elapsed().as_secs_f64());
    let audit = Audit::new(store.clone(), Arc::new(SystemClock), None);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let t0 = Instant::now();
    let h = MqttClient::start(
        &mqtt_config(port, "sitegate-bench"),
        &site(),
        store.clone(),
        audit,
        Arc::new(NoSink),
        shutdown.clone(),
        &tracker,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // O(1) probe (MAX of the rowid): a COUNT would hold the database lock for milliseconds.
        let left = store.with_conn(|c| outbox::max_seq(c)).unwrap();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish; {left} left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let stats = h.stats().await.unwrap();
    eprintln!(
        "outbox drain: {N} msgs in {secs:.2} s = {:.0} msg/s ({stats:?})",
        N as f64 / secs
    );
    shutdown.cancel();
    N as f64 / secs
}

async fn plain_rumqttc(port: u16) -> f64 {
    let mut o = MqttOptions::new("plain-bench", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 100);
    let t0 = Instant::now();
    tokio::spawn(async move {
        for i in 0..N {
            client
                .publish(format!("{ROOT}/plain"), QoS::AtLeastOnce, false, payload(i))
                .await
                .unwrap();
        }
        // Keep the client (and so the request channel) alive until the loop below ends.
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    let mut acked = 0;
    let mut sent = 0;
    while acked < N {
        match el.poll().await.unwrap() {
            Event::Incoming(Packet::PubAck(_)) => acked += 1,
            Event::Outgoing(Outgoing::Publish(_)) => sent += 1,
            _ => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "plain rumqttc QoS 1: {N} msgs ({sent} sent) in {secs:.2} s = {:.0} msg/s",
        N as f64 / secs
    );
    N as f64 / secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
async fn outbox_drain_rate_versus_plain_rumqttc() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let plain = plain_rumqttc(b.port).await;
    let drain = outbox_drain(b.port, dir.path()).await;
    eprintln!("ratio outbox/plain = {:.2}", drain / plain);
}
