//! The idle cost of a site on a metered link: an idle unit sends no telemetry between snapshots,
//! the status heartbeat carries each unit's telemetry seq, and a snapshot comes on connect and on
//! request. Measures the MQTT-level bytes per day (docs/PERFORMANCE.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::broker::Broker;
use common::mqtt::{Collector, NoSink, ROOT, Received, mqtt_config, site, wait_for};
use serde_json::{Value, json};
use sitegate::audit::Audit;
use sitegate::clock::SystemClock;
use sitegate::model::UnitId;
use sitegate::mqtt::{MqttClient, PointSample, Quality};
use sitegate::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes of one QoS 1 PUBLISH on the wire (fixed header, remaining length, topic, packet id,
/// payload) plus its PUBACK (4 bytes).
fn wire_bytes(topic_len: usize, payload_len: usize) -> usize {
    let remaining = 2 + topic_len + 2 + payload_len;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        _ => 3,
    };
    1 + len_bytes + remaining + 4
}

fn sample(name: &str, value: Value, deadband: Option<f64>) -> PointSample {
    PointSample {
        name: name.into(),
        value,
        quality: Quality::Good,
        deadband,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_two_unit_site_costs_under_half_a_megabyte_a_day_at_a_60_s_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path());
    let sub = Collector::start(b.port, "cloud", &format!("{ROOT}/#"), false, None);
    sub.wait_subscribed().await;
    let store = Store::open_in(dir.path()).unwrap();
    let audit = Audit::new(store.clone(), Arc::new(SystemClock), None);
    let mut cfg = mqtt_config(b.port, "sitegate-idle");
    cfg.telemetry_interval = Duration::from_secs(1);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let h = MqttClient::start(
        &cfg,
        &site(),
        store,
        audit,
        Arc::new(NoSink),
        shutdown.clone(),
        &tracker,
    )
    .unwrap();
    wait_for("the box to connect", Duration::from_secs(10), || {
        h.connected()
    })
    .await;
    let t = h.telemetry();
    let now = time::OffsetDateTime::now_utc();
    let hvac = UnitId::new("hvac-1").unwrap();
    let gen_ = UnitId::new("gen-1").unwrap();
    let hvac_points = vec![
        sample("room_temp", json!(21.5), Some(0.2)),
        sample("supply_temp", json!(14.2), Some(0.2)),
        sample("return_temp", json!(22.8), Some(0.2)),
        sample("setpoint", json!(21.0), None),
        sample("mode", json!("cool"), None),
        sample("fan", json!("auto"), None),
    ];
    let gen_points = vec![
        sample("rpm", json!(0), Some(10.0)),
        sample("voltage", json!(0.0), Some(1.0)),
        sample("fuel_level", json!(83.5), Some(0.5)),
        sample("running", json!(false), None),
        sample("alarm", json!(false), None),
        sample("mode", json!("auto"), None),
    ];
    assert_eq!(t.update(&hvac, &hvac_points, now).await.unwrap(), 6);
    assert_eq!(t.update(&gen_, &gen_points, now).await.unwrap(), 6);
    let tel = |u: &str| format!("{ROOT}/telemetry/{u}");
    sub.wait_message(&tel("gen-1"), Duration::from_secs(10), |m| {
        m.json()["reason"] == "change"
    })
    .await;

    // On request: a full snapshot of every unit, with the next seq.
    common::broker::publish(b.port, dir.path(), &format!("{ROOT}/snapshot"), b"", false);
    let mut snapshot_bytes = 0;
    for (u, n) in [("hvac-1", 6), ("gen-1", 6)] {
        let m = sub
            .wait_message(&tel(u), Duration::from_secs(10), |m| {
                m.json()["reason"] == "snapshot"
            })
            .await;
        assert_eq!(m.json()["points"].as_object().unwrap().len(), n);
        snapshot_bytes += wire_bytes(m.topic.len(), m.payload.len());
    }
    // Each unit's messages are numbered 1, 2, … without a gap.
    let newest = |u: &str| -> u64 {
        let seqs: Vec<u64> = sub
            .on(&tel(u))
            .iter()
            .map(|m| m.json()["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{u}");
        seqs.len() as u64
    };
    let (hvac_seq, gen_seq) = (newest("hvac-1"), newest("gen-1"));

    // Idle: the same values again (as the Modbus poller offers them) and several heartbeats.
    sub.msgs.lock().unwrap().clear();
    let statuses = |s: &Collector| -> Vec<Received> { s.on(&format!("{ROOT}/status")) };
    for _ in 0..4 {
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(t.update(&hvac, &hvac_points, now).await.unwrap(), 0);
        assert_eq!(t.update(&gen_, &gen_points, now).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    wait_for("three status heartbeats", Duration::from_secs(10), || {
        statuses(&sub).len() >= 3
    })
    .await;
    let all = sub.all();
    let telemetry: Vec<&Received> = all
        .iter()
        .filter(|m| m.topic.starts_with(&format!("{ROOT}/telemetry/")))
        .collect();
    assert!(
        telemetry.is_empty(),
        "an idle unit sends no telemetry: {telemetry:?}"
    );
    let status = statuses(&sub).last().cloned().unwrap();
    assert_eq!(
        status.json()["telemetry_seq"],
        json!({"gen-1": gen_seq, "hvac-1": hvac_seq})
    );

    // Per day at a 60 s heartbeat: one status (uptime padded to 7 digits, 115 days) plus the
    // keep-alive (PINGREQ + PINGRESP, 4 bytes, every 30 s, the default).
    let uptime_digits = status.json()["uptime_s"].to_string().len();
    let status_payload = status.payload.len() + 7 - uptime_digits.min(7);
    let per_heartbeat = wire_bytes(status.topic.len(), status_payload);
    let per_day = 1440 * per_heartbeat + 2880 * 4;
    // One unit's share: its `"unit":seq,` entry in the status (seq padded to 7 digits).
    let per_unit_day = 1440 * (r#""hvac-1":1234567,"#.len());
    let before = 1440 * (per_heartbeat + snapshot_bytes) + 2880 * 4;
    eprintln!(
        "idle: {per_heartbeat} B per heartbeat, {per_day} B/day for the site, \
         {per_unit_day} B/day per unit; full snapshots on every heartbeat would be {before} B/day"
    );
    assert!(per_day <= 500_000, "{per_day} B/day");
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}
