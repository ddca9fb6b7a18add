//! A fleet on one broker: 50 real `sitegate` daemons (each its own site, config and SQLite, no
//! units) on one mosquitto. Across two broker restarts no audit event of any box is lost (exact
//! counts of distinct records per box, some made while the broker was down), and a revoking
//! bundle published for every site is enforced by every box (`GET /me` of a live session no
//! longer lists the grant).
//!
//! `fleet_bench` (ignored; `scripts/bench` runs it with the bench profile) is the long setting:
//! it measures the reconnect storm after a broker restart (time until every box is back, peak
//! CONNECTs per second from the broker's log) and the time from publishing a revoking bundle for
//! every site to each box applying it (p50/p99/max), and writes them as JSON.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step should fail the test loudly"
)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::fleet::*;
use common::mqtt::{Collector, publish_all};

/// Boxes in the test (the bench takes `SITEGATE_FLEET_BOXES`).
const BOXES: usize = 50;
/// Failed logins per box in each phase (before, during outage 1, during outage 2).
const PER_PHASE: usize = 2;

async fn failed_logins_everywhere(http: &reqwest::Client, boxes: &[FleetBox]) {
    for b in boxes {
        for _ in 0..PER_PHASE {
            failed_login(http, b).await;
        }
    }
}

/// Waits until every box has exactly `n` distinct `login`/`failed` events at the cloud.
async fn every_box_has_events(cloud: &Collector, sites: &[String], n: usize) {
    until(
        &format!("{n} failed-login events from every box"),
        Duration::from_secs(120),
        || {
            let got = events_by_site(&cloud.all(), "login", "failed");
            sites
                .iter()
                .all(|s| got.get(s).copied().unwrap_or(0) >= n)
                .then_some(())
        },
    )
    .await;
    let got = events_by_site(&cloud.all(), "login", "failed");
    for s in sites {
        assert_eq!(got.get(s).copied(), Some(n), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_boxes_lose_no_event_across_two_broker_restarts_and_all_enforce_a_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    // The cloud keeps its broker session (persistent), so the broker holds what arrives for it
    // while it reconnects after each restart.
    let cloud = Collector::start(broker.port, "fleet-cloud", "sitegate/v1/#", true, None);
    cloud.wait_subscribed().await;
    let sites: Vec<String> = (0..BOXES).map(site_id).collect();
    publish_all(broker.port, bundles_for(&sites, 1, false), true).await;
    let mut boxes: Vec<FleetBox> = (0..BOXES)
        .map(|i| start_box(dir.path(), i, broker.port, 5))
        .collect();
    until("every box applied seq 1", Duration::from_secs(180), || {
        (applied_seq(&cloud.all(), 1).len() == BOXES).then_some(())
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for b in &boxes {
        let t = login(&http, b).await;
        assert_eq!(my_grants(&http, b, &t).await, 1, "{}", b.site);
        tokens.push(t);
    }

    // Phase 1 with the broker up, phase 2 while it is down (restart 1).
    failed_logins_everywhere(&http, &boxes).await;
    broker.stop();
    failed_logins_everywhere(&http, &boxes).await;
    broker.start_again();
    every_box_has_events(&cloud, &sites, 2 * PER_PHASE).await;

    // A revoking bundle for every site: every box enforces it on the live session.
    publish_all(broker.port, bundles_for(&sites, 2, true), true).await;
    until("every box applied seq 2", Duration::from_secs(120), || {
        (applied_seq(&cloud.all(), 2).len() == BOXES).then_some(())
    })
    .await;
    for (b, t) in boxes.iter().zip(&tokens) {
        assert_eq!(my_grants(&http, b, t).await, 0, "{}", b.site);
    }

    // Phase 3 while the broker is down again (restart 2).
    broker.stop();
    failed_logins_everywhere(&http, &boxes).await;
    broker.start_again();
    every_box_has_events(&cloud, &sites, 3 * PER_PHASE).await;

    // Every box reconnected after each restart (three CONNECTs each, by its client id).
    let log = broker.log();
    for s in &sites {
        let n = log.matches(&format!(" as sitegate-{s} ")).count();
        assert_eq!(n, 3, "{s} connected {n} times");
    }
    for b in &mut boxes {
        b.stop();
    }
}

/// Sorted `v`'s value at quantile `q`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The broker log's CONNECTs by the fleet's boxes so far.
fn connects(broker: &Broker) -> usize {
    broker.log().matches(" as sitegate-f-").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "bench: run by scripts/bench (SITEGATE_FLEET_BOXES, SITEGATE_FLEET_ROUNDS)"]
async fn fleet_bench() {
    let n: usize = std::env::var("SITEGATE_FLEET_BOXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rounds: usize = std::env::var("SITEGATE_FLEET_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let cloud = Collector::start(broker.port, "fleet-cloud", "sitegate/v1/#", true, None);
    cloud.wait_subscribed().await;
    let sites: Vec<String> = (0..n).map(site_id).collect();
    publish_all(broker.port, bundles_for(&sites, 1, false), true).await;
    let t_start = Instant::now();
    let mut boxes: Vec<FleetBox> = (0..n)
        .map(|i| start_box(dir.path(), i, broker.port, 60))
        .collect();
    until("every box applied seq 1", Duration::from_secs(600), || {
        (applied_seq(&cloud.all(), 1).len() == n).then_some(())
    })
    .await;
    let cold_start = t_start.elapsed().as_secs_f64();

    let mut reconnect_all = Vec::new();
    let mut peak_connects = Vec::new();
    let mut revoke = Vec::new();
    for round in 0..rounds {
        // Restart: the broker is down for about a second, as a restart of a real one.
        let before = connects(&broker);
        broker.stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.start_again();
        let up = Instant::now();
        let mut arrivals: Vec<f64> = Vec::new();
        let mut seen = before;
        while seen < before + n {
            assert!(
                up.elapsed() < Duration::from_secs(300),
                "the fleet did not reconnect"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            let c = connects(&broker);
            for _ in seen..c {
                arrivals.push(up.elapsed().as_secs_f64());
            }
            seen = c;
        }
        reconnect_all.push(arrivals.last().copied().unwrap_or(0.0));
        // Peak CONNECTs in any one-second window.
        let peak = (0..arrivals.len())
            .map(|i| {
                arrivals[i..]
                    .iter()
                    .take_while(|t| **t < arrivals[i] + 1.0)
                    .count()
            })
            .max()
            .unwrap_or(0);
        peak_connects.push(peak);

        // A revoking (odd rounds: restoring) bundle for every site.
        let seq = 2 + round as u64;
        let msgs = bundles_for(&sites, seq, round % 2 == 0);
        let t0 = Instant::now();
        publish_all(broker.port, msgs, true).await;
        let mut applied_at: HashMap<String, f64> = HashMap::new();
        while applied_at.len() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "not every box applied seq {seq}"
            );
            for s in applied_seq(&cloud.all(), seq) {
                applied_at
                    .entry(s)
                    .or_insert_with(|| t0.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut v: Vec<f64> = applied_at.into_values().collect();
        v.sort_by(f64::total_cmp);
        revoke.push(v);
        // Connections up longer than `mqtt::RECONNECT_STABLE` (2 s) reset the boxes' backoff:
        // the next restart then finds the fleet as a restart after normal operation does.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let all: Vec<f64> = {
        let mut a: Vec<f64> = revoke.iter().flatten().copied().collect();
        a.sort_by(f64::total_cmp);
        a
    };
    let result = serde_json::json!({
        "boxes": n,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "rounds": rounds,
        "cold_start_all_applied_s": cold_start,
        "reconnect_all_s": reconnect_all,
        "peak_connects_per_s": peak_connects,
        "revoke_apply_p50_s": quantile(&all, 0.5),
        "revoke_apply_p99_s": quantile(&all, 0.99),
        "revoke_apply_max_s": all.last(),
        "rss_kib_per_box": boxes.first().and_then(|b| b.child.as_ref()).and_then(|c| {
            std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok()
        }).and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok())),
    });
    println!("{result:#}");
    let out = std::env::var("SITEGATE_BENCH_OUT")
        .unwrap_or_else(|_| "target/bench-results/fleet.json".into());
    if let Some(p) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(p);
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    for b in &mut boxes {
        b.stop();
    }
}
