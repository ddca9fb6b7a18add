//! A real kill -9 of a process running the outbox and MQTT client mid-stream: nothing recorded is
//! lost, and the broker publishes the last will.
//!
//! The test re-executes its own binary as the child (`child_box`, ignored unless the
//! `SITEGATE_MQTT_CHILD_DIR` environment variable is set), which runs the real client on the
//! shared SQLite file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::broker::Broker;
use common::mqtt::{Collector, mqtt_config, site, wait_for};
use serde_json::{Value, json};
use sitegate::audit::{Audit, Event};
use sitegate::clock::SystemClock;
use sitegate::mqtt::{GrantSink, InboundKind, MqttClient};
use sitegate::outbox::{self, Class};
use sitegate::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ROOT: &str = "sitegate/v1/s-1/gw-1";
const EVENTS: usize = 20_000;

struct NoSink;
impl GrantSink for NoSink {
    fn apply(&self, _: InboundKind, _: Vec<u8>) -> Value {
        json!({})
    }
}

/// The child: runs the client on the given state dir and broker port, records `EVENTS` audit
/// events when asked, then idles until killed (at most 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sigkill_mid_stream_loses_nothing_and_the_will_is_published"]
async fn child_box() {
    let Ok(dir) = std::env::var("SITEGATE_MQTT_CHILD_DIR") else {
        return;
    };
    let port: u16 = std::env::var("SITEGATE_MQTT_CHILD_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let events: usize = std::env::var("SITEGATE_MQTT_CHILD_EVENTS")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open_in(std::path::Path::new(&dir)).unwrap();
    let audit = Audit::new(
        store.clone(),
        Arc::new(SystemClock),
        Some(format!("{ROOT}/events")),
    );
    let tracker = TaskTracker::new();
    let _h = MqttClient::start(
        &mqtt_config(port, "sitegate-kill"),
        &site(),
        store,
        audit.clone(),
        Arc::new(NoSink),
        CancellationToken::new(),
        &tracker,
    )
    .unwrap();
    // In transactions of 500, so the drain works through a backlog (the case that yields the
    // most duplicates on a kill).
    let mut i = 0;
    while i < events {
        let n = (events - i).min(500);
        let a = audit.clone();
        audit
            .store()
            .call(move |c| {
                let tx = c.transaction()?;
                for k in i..i + n {
                    a.record_in(
                        &tx,
                        &Event::new("test_event", "ok").detail(json!({ "i": k })),
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .unwrap();
        i += n;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
}

fn spawn_child(dir: &std::path::Path, port: u16, events: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child_box", "--exact", "--nocapture", "--ignored"])
        .env("SITEGATE_MQTT_CHILD_DIR", dir)
        .env("SITEGATE_MQTT_CHILD_PORT", port.to_string())
        .env("SITEGATE_MQTT_CHILD_EVENTS", events.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn recorded_ids(dir: &std::path::Path) -> (HashSet<String>, u64) {
    let store = Store::open_in(dir).unwrap();
    store
        .with_conn(|c| {
            let mut stmt = c.prepare("SELECT id FROM audit WHERE kind = 'test_event'")?;
            let ids = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<HashSet<_>, _>>()?;
            Ok((ids, outbox::class_depth(c, Class::Event)?))
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_the_will_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let b = Broker::start(dir.path());
    let sub = Collector::start(b.port, "cloud", &format!("{ROOT}/#"), true, None);
    sub.wait_subscribed().await;
    let events_topic = format!("{ROOT}/events");
    let status_topic = format!("{ROOT}/status");

    let mut child = spawn_child(&state, b.port, EVENTS);
    sub.wait_message(&status_topic, Duration::from_secs(20), |m| {
        m.json()["online"] == true
    })
    .await;
    wait_for("300 events to arrive", Duration::from_secs(30), || {
        sub.on(&events_topic).len() >= 300
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The broker notices the dead connection and publishes the will, exactly `{"online":false}`.
    sub.wait_message(&status_topic, Duration::from_secs(20), |m| {
        m.payload == br#"{"online":false}"#
    })
    .await;

    let (ids, depth) = recorded_ids(&state);
    assert!(
        ids.len() < EVENTS || depth > 0,
        "the kill came after everything was sent; not a mid-stream kill"
    );
    let received = |s: &Collector| -> HashSet<String> {
        s.on(&events_topic)
            .iter()
            .filter_map(|m| m.json()["id"].as_str().map(str::to_string))
            .collect()
    };
    eprintln!(
        "killed with {} events recorded, {} queued, {} received",
        ids.len(),
        depth,
        received(&sub).len()
    );

    // Restarted (no new events): everything recorded before the kill arrives.
    let mut child = spawn_child(&state, b.port, 0);
    wait_for(
        "every recorded event id at the subscriber",
        Duration::from_secs(60),
        || ids.is_subset(&received(&sub)),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    // The duplicate burst the cloud absorbs (docs/mqtt.md, "Delivery guarantees").
    let msgs = sub.on(&events_topic).len();
    eprintln!(
        "duplicates after the kill: {} ({msgs} messages for {} events)",
        msgs - received(&sub).len(),
        received(&sub).len()
    );
}
