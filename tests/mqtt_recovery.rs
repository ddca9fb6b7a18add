//! Recovery from broker failures: prompt reconnects after a blip that follows a long outage, and
//! backfill of events a crashed broker lost after acknowledging them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::mqtt::{Collector, ROOT, Running, mqtt_config, wait_for};
use serde_json::json;
use sitegate::audit::{self, Event, Record};

fn start(dir: &std::path::Path, cfg: sitegate::config::Mqtt) -> Running {
    Running::start(dir, cfg, true)
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
    r.stop().await;
}

/// The events the subscriber received, parsed.
fn received_events(sub: &Collector) -> Vec<Record> {
    sub.on(&format!("{ROOT}/events"))
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

/// The runs of consecutive seqs in 1..=max that `have` lacks (the cloud's gap detection).
fn gaps(have: &BTreeSet<i64>, max: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for s in 1..=max {
        if have.contains(&s) {
            continue;
        }
        match out.last_mut() {
            Some((_, to)) if *to == s - 1 => *to = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_killed_broker_lost_after_acknowledging_them_come_back_by_backfill() {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path());
    let events = format!("{ROOT}/events");
    // The cloud's consumer has a persistent session but is away: the broker acknowledges the
    // box's events and keeps them for it in memory only (no autosave), so a crash loses them.
    {
        let away = Collector::start(b.port, "cloud-events", &events, true, None);
        away.wait_subscribed().await;
    }
    let mut cfg = mqtt_config(b.port, "sitegate-backfill");
    cfg.backfill_rate = 10_000;
    let r = start(dir.path(), cfg);
    let h = r.handle.clone();
    wait_for("the box to connect", Duration::from_secs(10), || {
        h.connected()
    })
    .await;
    let audit = r.audit.clone();
    r.store
        .with_conn(move |c| {
            let tx = c.transaction()?;
            for i in 0..N {
                audit.record_in(
                    &tx,
                    &Event::new("test_event", "ok").detail(json!({ "i": i })),
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .unwrap();
    r.handle.wake();
    // Mid-drain: SIGKILL once a few thousand events were acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let acked = loop {
        let a = h.stats().await.unwrap().acked;
        if a >= 2000 {
            break a;
        }
        assert!(Instant::now() < deadline, "the drain did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    b.kill();
    b.start_again();
    let sub = Collector::start(b.port, "cloud-events", &events, true, None);
    sub.wait_subscribed().await;
    // Anything newer than the gap tells the cloud how far the box's seq has come.
    let marker = r
        .audit
        .record(Event::new("test_marker", "ok"))
        .await
        .unwrap();
    wait_for(
        "the marker at the subscriber",
        Duration::from_secs(30),
        || received_events(&sub).iter().any(|e| e.id == marker.id),
    )
    .await;

    // The cloud: gap detection from seq, then one backfill request per run of missing seqs.
    let have: BTreeSet<i64> = received_events(&sub).iter().map(|e| e.seq).collect();
    let missing = gaps(&have, marker.seq);
    let lost: i64 = missing.iter().map(|(a, z)| z - a + 1).sum();
    assert!(lost > 0, "the broker lost acknowledged events");
    eprintln!(
        "acked before the kill: {acked}; lost in the broker: {lost} in {} runs",
        missing.len()
    );
    for (n, (from, to)) in missing.iter().enumerate() {
        let mut from = *from;
        while from <= *to {
            let end = (*to).min(from + sitegate::mqtt::backfill::MAX_SPAN - 1);
            let rid = format!("bf-{n}-{from}");
            common::broker::publish(
                b.port,
                dir.path(),
                &format!("{ROOT}/events/backfill"),
                json!({ "from": from, "to": end, "request_id": rid })
                    .to_string()
                    .as_bytes(),
                false,
            );
            sub.wait_message(&events, Duration::from_secs(30), |m| {
                let v = m.json();
                v["kind"] == "mqtt_backfill" && v["detail"]["request_id"] == rid.as_str()
            })
            .await;
            from = end + 1;
        }
    }
    // A malformed request is refused and audited.
    common::broker::publish(
        b.port,
        dir.path(),
        &format!("{ROOT}/events/backfill"),
        br#"{"from":0,"to":5}"#,
        false,
    );
    let refused = sub
        .wait_message(&events, Duration::from_secs(10), |m| {
            m.json()["kind"] == "mqtt_backfill_rejected"
        })
        .await;
    assert_eq!(refused.json()["detail"]["reason"], "bad_range");

    // Every record of the trail, exactly once after de-duplication by id, with its stored
    // seq, hash and content.
    let trail: Vec<Record> = r.store.with_conn(|c| audit::range(c, 1, i64::MAX)).unwrap();
    let want: HashSet<String> = trail.iter().map(|e| e.id.clone()).collect();
    wait_for("every event of the trail", Duration::from_secs(30), || {
        let got: HashSet<String> = received_events(&sub).into_iter().map(|e| e.id).collect();
        want.is_subset(&got)
    })
    .await;
    let got = received_events(&sub);
    let by_id: BTreeMap<&str, &Record> = trail.iter().map(|e| (e.id.as_str(), e)).collect();
    for e in &got {
        assert_eq!(Some(&e), by_id.get(e.id.as_str()), "as stored");
    }
    let unique: HashSet<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(unique.len(), trail.len());
    eprintln!(
        "received {} event messages for {} records ({} duplicates)",
        got.len(),
        trail.len(),
        got.len() - unique.len()
    );
    let chain = r.store.with_conn(|c| audit::verify_chain(c)).unwrap();
    assert_eq!(chain, Ok(trail.len() as u64));
    r.stop().await;
}
