//! Load bench of the LAN API: 50 concurrent clients on loopback against `GET /api/v1/units` and
//! `PUT /api/v1/units/{unit}/points/{point}`; prints requests/s, p50 and p99.
//!
//! By default it serves the real router with the in-memory ports of `tests/common` (plain HTTP,
//! audit records in a real SQLite store). To measure a running daemon instead, set
//! `SITEGATE_BENCH_URL` (e.g. `https://127.0.0.1:8443/api/v1`), `SITEGATE_BENCH_TOKEN` (a bearer
//! token of a user with `control` on the unit), and optionally `SITEGATE_BENCH_UNIT` and
//! `SITEGATE_BENCH_POINT` (default `hvac-1` / `setpoint`). The certificate is not verified in
//! that mode. `SITEGATE_BENCH_SECS` sets the duration of each scenario (default 5).
//!
//! Run: `cargo bench --bench api_load`.

#![expect(clippy::unwrap_used, reason = "a bench tool fails loudly")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use serde_json::json;

const CLIENTS: usize = 50;

struct Target {
    base: String,
    token: String,
    unit: String,
    point: String,
    http: reqwest::Client,
}

async fn run(target: &Target, name: &str, secs: u64, put: bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let http = target.http.clone();
        let token = target.token.clone();
        let url = if put {
            format!(
                "{}/units/{}/points/{}",
                target.base, target.unit, target.point
            )
        } else {
            format!("{}/units", target.base)
        };
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let req = if put {
                    let v = 20.0 + ((c as u64 + i) % 5) as f64;
                    http.put(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "value": v }))
                } else {
                    http.get(&url).bearer_auth(&token)
                };
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{name:<28} clients={CLIENTS} ok={} errors={errors} req/s={:.0} p50={:.2}ms p99={:.2}ms",
        all.len(),
        all.len() as f64 / wall,
        pct(0.50),
        pct(0.99)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench` passes `--bench`; under `cargo test` the bench only checks that it runs.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("SITEGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench_mode { 5 } else { 1 });
    rt.block_on(async move {
        common::install_crypto();
        let mut _harness = None;
        let target = match std::env::var("SITEGATE_BENCH_URL") {
            Ok(base) => Target {
                base,
                token: std::env::var("SITEGATE_BENCH_TOKEN").unwrap_or_default(),
                unit: std::env::var("SITEGATE_BENCH_UNIT").unwrap_or_else(|_| "hvac-1".into()),
                point: std::env::var("SITEGATE_BENCH_POINT").unwrap_or_else(|_| "setpoint".into()),
                http: reqwest::Client::builder()
                    .danger_accept_invalid_certs(true)
                    .pool_max_idle_per_host(CLIENTS)
                    .build()
                    .unwrap(),
            },
            Err(_) => {
                let mut cfg = common::api_config(sitegate::config::ApiMode::Plain);
                cfg.rate_limit_per_sec = 1_000_000;
                cfg.rate_limit_burst = 1_000_000;
                let h = common::Harness::start_with(cfg).await;
                let token = h.login("control@example.com").await;
                let t = Target {
                    base: h.base.clone(),
                    token,
                    unit: "hvac-1".into(),
                    point: "setpoint".into(),
                    http: reqwest::Client::builder()
                        .pool_max_idle_per_host(CLIENTS)
                        .build()
                        .unwrap(),
                };
                _harness = Some(h);
                t
            }
        };
        println!("target: {}", target.base);
        run(&target, "GET /units", secs, false).await;
        run(&target, "PUT /units/{u}/points/{p}", secs, true).await;
    });
}
