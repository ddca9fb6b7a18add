//! Store-and-forward across a broker outage, and fairness of the drain.
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
use serde_json::json;
use sitegate::audit::Event;
use sitegate::mqtt::{PointSample, Quality};
use sitegate::outbox::{self, Class};
use sitegate::store::Store;

fn start(dir: &std::path::Path, cfg: sitegate::config::Mqtt) -> Running {
    Running::start(dir, cfg, true)
}

fn event_ids(c: &Collector) -> HashSet<String> {
    c.on(&format!("{ROOT}/events"))
        .iter()
        .filter_map(|m| m.json()["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_recorded_while_the_broker_is_down_all_arrive_after_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path());
    // A persistent subscriber: the broker keeps its session (and queues for it) across restarts.
    let sub = Collector::start(b.port, "cloud", &format!("{ROOT}/events"), true, None);
    sub.wait_subscribed().await;
    let r = start(dir.path(), mqtt_config(b.port, "sitegate-outage"));
    let h = r.handle.clone();
    wait_for("the box to connect", Duration::from_secs(10), || {
        h.connected()
    })
    .await;

    b.stop();
    wait_for(
        "the box to notice the outage",
        Duration::from_secs(20),
        || !h.connected(),
    )
    .await;
    let mut ids = HashSet::new();
    for i in 0..1000 {
        let rec = r
            .audit
            .record(Event::new("test_event", "ok").detail(json!({ "i": i })))
            .await
            .unwrap();
        ids.insert(rec.id);
    }
    let queued = r
        .store
        .with_conn(|c| outbox::class_depth(c, Class::Event))
        .unwrap();
    assert_eq!(queued, 1000, "every event waits in the outbox");

    b.restart();
    wait_for(
        "all 1,000 event ids at the subscriber",
        Duration::from_secs(60),
        || ids.is_subset(&event_ids(&sub)),
    )
    .await;
    wait_for("the outbox to empty", Duration::from_secs(10), || {
        r.store
            .with_conn(|c| outbox::class_depth(c, Class::Event))
            .unwrap()
            == 0
    })
    .await;
    let stats = r.handle.stats().await.unwrap();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(stats.acked >= 1000, "{stats:?}");

    // The box subscribed again after the reconnect: a bundle published now reaches the sink.
    let watcher = Collector::start(
        b.port,
        "watcher",
        &format!("{ROOT}/grants/state"),
        false,
        None,
    );
    watcher.wait_subscribed().await;
    common::broker::publish(b.port, dir.path(), &format!("{ROOT}/grants"), b"{}", false);
    watcher
        .wait_message(
            &format!("{ROOT}/grants/state"),
            Duration::from_secs(10),
            |m| m.json()["sink"] == "called",
        )
        .await;
    r.shutdown.cancel();
    r.tracker.close();
    r.tracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_telemetry_overtakes_a_large_event_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let sub = Collector::start(b.port, "cloud", &format!("{ROOT}/#"), false, None);
    sub.wait_subscribed().await;
    // 30,000 events queued before the client starts (a long outage).
    let store = Store::open_in(dir.path()).unwrap();
    store
        .with_conn(|c| {
            let tx = c.transaction()?;
            for i in 0..30_000 {
                outbox::enqueue(
                    &tx,
                    Class::Event,
                    &format!("bk-{i}"),
                    &format!("{ROOT}/events"),
                    format!(r#"{{"id":"bk-{i}"}}"#).as_bytes(),
                    true,
                    false,
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .unwrap();
    drop(store);
    let r = start(dir.path(), mqtt_config(b.port, "sitegate-fair"));
    let h = r.handle.clone();
    wait_for("the box to connect", Duration::from_secs(10), || {
        h.connected()
    })
    .await;
    let unit = "hvac-1".parse().unwrap();
    let sample = PointSample {
        name: "room_temp".into(),
        value: json!(21.5),
        quality: Quality::Good,
        deadband: Some(0.2),
    };
    r.handle
        .telemetry()
        .update(&unit, &[sample], time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let t = sub
        .wait_message(
            &format!("{ROOT}/telemetry/hvac-1"),
            Duration::from_secs(20),
            |_| true,
        )
        .await;
    let events_before = sub.on(&format!("{ROOT}/events")).len();
    assert!(
        events_before < 30_000,
        "telemetry waited for the whole backlog ({events_before} events first)"
    );
    assert_eq!(t.json()["points"]["room_temp"]["value"], 21.5);
    r.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_telemetry_and_requests_are_published_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let sub = Collector::start(b.port, "cloud", &format!("{ROOT}/#"), false, None);
    sub.wait_subscribed().await;
    let r = start(dir.path(), mqtt_config(b.port, "sitegate-out"));
    let unit: sitegate::model::UnitId = "gen-1".parse().unwrap();
    let h = &r.handle;

    h.set_availability(&unit, true).await.unwrap();
    h.set_availability(&unit, true).await.unwrap(); // no change: nothing new
    h.set_availability(&unit, false).await.unwrap();
    let avail = format!("{ROOT}/units/gen-1/availability");
    sub.wait_message(&avail, Duration::from_secs(10), |m| m.payload == b"offline")
        .await;
    // Retained: a late subscriber sees the newest value only.
    let late = Collector::start(b.port, "late", &avail, false, None);
    let m = late
        .wait_message(&avail, Duration::from_secs(10), |m| m.retain)
        .await;
    assert_eq!(m.payload, b"offline");

    let tel = h.telemetry();
    let now = time::OffsetDateTime::now_utc();
    let p = |v: f64| PointSample {
        name: "oil_pressure".into(),
        value: json!(v),
        quality: Quality::Good,
        deadband: Some(1.0),
    };
    assert_eq!(tel.update(&unit, &[p(5.0)], now).await.unwrap(), 1);
    assert_eq!(
        tel.update(&unit, &[p(5.5)], now).await.unwrap(),
        0,
        "inside the deadband"
    );
    assert_eq!(
        tel.update(&unit, &[p(6.2)], now).await.unwrap(),
        1,
        "drift beyond it"
    );
    h.request(
        "req-1",
        json!({"kind": "access_request", "user": "u-9", "role": "viewer"}),
    )
    .await
    .unwrap();

    let topic = format!("{ROOT}/telemetry/gen-1");
    sub.wait_message(&topic, Duration::from_secs(10), |m| {
        m.json()["points"]["oil_pressure"]["value"] == 6.2
    })
    .await;
    let sent: Vec<_> = sub.on(&topic).iter().map(|m| m.json()).collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0]["reason"], "change");
    assert_eq!(sent[0]["unit"], "gen-1");
    assert!(sent[0]["msg_id"].is_string());
    assert_ne!(sent[0]["msg_id"], sent[1]["msg_id"]);

    let req = sub
        .wait_message(&format!("{ROOT}/requests"), Duration::from_secs(10), |_| {
            true
        })
        .await;
    assert_eq!(req.json()["msg_id"], "req-1");
    assert_eq!(req.json()["user"], "u-9");
    r.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_can_never_be_sent_is_removed_and_audited_instead_of_blocking_its_class() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let sub = Collector::start(b.port, "cloud", &format!("{ROOT}/events"), false, None);
    sub.wait_subscribed().await;
    let store = Store::open_in(dir.path()).unwrap();
    store
        .with_conn(|c| {
            outbox::enqueue(c, Class::Event, "bad", "x/#", b"{}", true, false)?;
            outbox::enqueue(
                c,
                Class::Event,
                "good",
                &format!("{ROOT}/events"),
                br#"{"id":"good"}"#,
                true,
                false,
            )?;
            Ok(())
        })
        .unwrap();
    drop(store);
    let r = start(dir.path(), mqtt_config(b.port, "sitegate-poison"));
    sub.wait_message(&format!("{ROOT}/events"), Duration::from_secs(10), |m| {
        m.json()["id"] == "good"
    })
    .await;
    // Its removal is itself an event.
    let m = sub
        .wait_message(&format!("{ROOT}/events"), Duration::from_secs(10), |m| {
            m.json()["kind"] == "mqtt_message_unsendable"
        })
        .await;
    assert_eq!(m.json()["detail"]["msg_id"], "bad");
    assert_eq!(m.json()["detail"]["reason"], "invalid_topic");
    r.shutdown.cancel();
}
