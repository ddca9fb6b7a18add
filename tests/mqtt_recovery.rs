//! Recovery from broker failures: prompt reconnects after a blip that follows a long outage, and
//! backfill of events a crashed broker lost after acknowledging them.
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
use common::mqtt::{Collector, mqtt_config, site, wait_for};
use serde_json::{Value, json};
use sitegate::audit::Audit;
use sitegate::clock::SystemClock;
use sitegate::mqtt::{GrantSink, InboundKind, MqttClient, MqttHandle};
use sitegate::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ROOT: &str = "sitegate/v1/s-1/gw-1";

struct NoSink;
impl GrantSink for NoSink {
    fn apply(&self, _: InboundKind, _: Vec<u8>) -> Value {
        json!({})
    }
}

struct Running {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: MqttHandle,
    audit: Audit,
    store: Store,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn start(dir: &std::path::Path, cfg: sitegate::config::Mqtt) -> Running {
    let store = Store::open_in(dir).unwrap();
    let audit = Audit::new(
        store.clone(),
        Arc::new(SystemClock),
        Some(format!("{ROOT}/events")),
    );
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = MqttClient::start(
        &cfg,
        &site(),
        store.clone(),
        audit.clone(),
        Arc::new(NoSink),
        shutdown.clone(),
        &tracker,
    )
    .unwrap();
    Running {
        shutdown,
        tracker,
        handle,
        audit,
        store,
    }
}

/// Time the reconnect schedule does not cover: one TCP connect and CONNACK, queuing and
/// publishing the status, and the subscriber's own reconnect (it retries every 100 ms).
const CONNECT_ALLOWANCE: Duration = Duration::from_millis(1500);

/// The latest moment, counted from the drop, at which the schedule has the box try again after
/// the broker was back `outage` after the drop (docs/mqtt.md, "Reconnect"): the delay running
/// when the broker returned began before it returned and its cap is below 2·outage + min (the
/// caps double and each delay is at least half its cap), and no cap exceeds max.
fn reconnect_bound(cfg: &sitegate::config::Mqtt, outage: Duration) -> Duration {
    outage + (outage * 2 + cfg.reconnect_min).min(cfg.reconnect_max) + CONNECT_ALLOWANCE
}

fn online_statuses(sub: &Collector) -> usize {
    sub.on(&format!("{ROOT}/status"))
        .iter()
        .filter(|m| m.json()["online"] == true)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_broker_blip_after_a_long_outage_keeps_the_box_offline_only_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path());
    // A short schedule with the default's shape: a long outage takes the delay to its cap.
    let mut cfg = mqtt_config(b.port, "sitegate-reconnect");
    cfg.reconnect_min = Duration::from_millis(100);
    cfg.reconnect_max = Duration::from_secs(16);
    cfg.reconnect_stable = Duration::from_secs(1);
    let r = start(dir.path(), cfg.clone());
    let h = r.handle.clone();
    let sub = Collector::start(
        b.port,
        "cloud-status",
        &format!("{ROOT}/status"),
        false,
        None,
    );
    sub.wait_subscribed().await;
    wait_for("the box online", Duration::from_secs(10), || {
        online_statuses(&sub) >= 1
    })
    .await;

    // A long outage: SIGKILL (the broker saves nothing, so no stale retained status survives),
    // 8 s down. At least six attempts fail; the next cap is 6.4 s or more.
    b.kill();
    wait_for("the box to notice", Duration::from_secs(10), || {
        !h.connected()
    })
    .await;
    let long = Duration::from_secs(8);
    let dropped = Instant::now();
    tokio::time::sleep(long).await;
    b.start_again();
    let outage = dropped.elapsed();
    sub.msgs.lock().unwrap().clear();
    let limit = reconnect_bound(&cfg, outage).saturating_sub(dropped.elapsed());
    wait_for("the box online after the long outage", limit, || {
        online_statuses(&sub) >= 1
    })
    .await;
    // The connection lasts the stable period, which resets the backoff.
    tokio::time::sleep(cfg.reconnect_stable + Duration::from_millis(500)).await;

    // The blip: killed and started again at once. With the backoff not reset (the behaviour this
    // test guards against) the first attempt would wait at least 6.4 s.
    sub.msgs.lock().unwrap().clear();
    let dropped = Instant::now();
    b.kill();
    b.start_again();
    let outage = dropped.elapsed();
    let bound = reconnect_bound(&cfg, outage);
    wait_for(
        "the box online after the blip",
        bound.saturating_sub(dropped.elapsed()),
        || online_statuses(&sub) >= 1,
    )
    .await;
    assert!(h.connected());
    let stats = h.stats().await.unwrap();
    assert_eq!(stats.reconnects, 2, "{stats:?}");
    drop(r.audit.clone());
    let _ = &r.store;
    r.stop().await;
}
