//! End-to-end figures of the real daemon (`Daemon::start`) with Modbus simulators on loopback,
//! each next to its reference measured in the same run:
//!
//! 1. HTTP `PUT /units/{u}/points/setpoint` round trip (write + read-back through the engine),
//!    sequential, p50/p99 — vs a direct tokio-modbus write (and write + read-back) to the same
//!    simulator: the physical limit on loopback.
//! 2. `GET /units` and `PUT` point under 50 concurrent clients: requests/s, p50, p99.
//! 3. Resident memory (VmRSS) of a daemon serving 100 HVAC units (4 links × 25 slaves, polled
//!    every second) after 10 s, measured in a child process that holds only the daemon; the
//!    same child's VmRSS before `Daemon::start` is the reference.
//!
//! Results are printed and written as JSON to `$SITEGATE_BENCH_OUT` (default
//! `target/bench-results/e2e.json`). `SITEGATE_BENCH_SECS` sets the load duration (default 5).
//!
//! Run: `cargo bench --bench e2e`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a bench tool fails loudly"
)]

#[path = "../tests/e2e_support/mod.rs"]
mod e2e_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_support::*;
use serde_json::{Value, json};
use sitegate::clock::SystemClock;
use sitegate::notify::Notifier;
use sitegate::sim::SimUnit;
use tokio_modbus::client::{Reader, Writer};
use tokio_modbus::prelude::SlaveContext;

const CLIENTS: usize = 50;
const ROUND_TRIPS: usize = 1000;
const RSS_UNITS: usize = 100;
const RSS_LINKS: usize = 4;
const RSS_SETTLE: Duration = Duration::from_secs(10);

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

fn summary(mut lat: Vec<Duration>) -> Value {
    lat.sort();
    json!({"n": lat.len(), "p50_us": pct(&lat, 0.50), "p99_us": pct(&lat, 0.99),
           "mean_us": lat.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / lat.len().max(1) as f64})
}

fn members() -> Vec<Member> {
    vec![Member {
        user: "tess",
        role: "technician",
        scope: json!({"site": SITE}),
        grant: "g-tech",
    }]
}

async fn round_trip(site: &Site, token: &str) -> Value {
    let url = format!("{}/units/hvac-1/points/setpoint", site.base);
    let http = reqwest::Client::new();
    let mut api = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 50 {
        let v = 20.0 + (i % 5) as f64;
        let t = Instant::now();
        let r = http
            .put(&url)
            .bearer_auth(token)
            .json(&json!({ "value": v }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let _ = r.bytes().await;
        if i >= 50 {
            api.push(t.elapsed());
        }
    }
    let mut ctx = tokio_modbus::client::tcp::connect(site.sim.addr.unwrap())
        .await
        .unwrap();
    ctx.set_slave(tokio_modbus::Slave(HVAC1_SLAVE));
    let mut write = Vec::with_capacity(ROUND_TRIPS);
    let mut write_read = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 50 {
        let v = 200 + (i % 5) as u16 * 10;
        let t = Instant::now();
        ctx.write_single_register(18, v).await.unwrap().unwrap();
        let w = t.elapsed();
        let back = ctx.read_holding_registers(18, 1).await.unwrap().unwrap();
        let wr = t.elapsed();
        assert_eq!(back, vec![v]);
        if i >= 50 {
            write.push(w);
            write_read.push(wr);
        }
    }
    json!({"api_put": summary(api), "direct_write": summary(write),
           "direct_write_readback": summary(write_read)})
}

async fn load(site: &Site, token: &str, secs: u64, put: bool) -> Value {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let url = if put {
        format!("{}/units/hvac-1/points/setpoint", site.base)
    } else {
        format!("{}/units", site.base)
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, url, token) = (http.clone(), url.clone(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i) = (Vec::new(), Vec::new(), 0u64);
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
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or_default();
                        let code = format!(
                            "{} ({})",
                            body["error"].as_str().unwrap_or("?"),
                            body["message"].as_str().unwrap_or("")
                        );
                        errors.push(format!("{status} {code}"));
                    }
                    Err(_) => errors.push("transport".to_string()),
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), std::collections::BTreeMap::<String, u64>::new());
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        for code in e {
            *errors.entry(code).or_default() += 1;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let n = all.len();
    let mut s = summary(all);
    s["clients"] = json!(CLIENTS);
    s["errors"] = json!(errors);
    s["req_per_s"] = json!(n as f64 / wall);
    s
}

/// Modbus requests per poll of each unit of the test site (polled every 500 ms, nothing else on
/// the bus), counted at the simulator over 5 s, next to the number of points of its profile.
async fn poll_cost(site: &Site) -> Value {
    const WINDOW: Duration = Duration::from_secs(5);
    let polls = WINDOW.as_millis() as f64 / 500.0;
    site.sim.reset_stats();
    tokio::time::sleep(WINDOW).await;
    let stats = site.sim.stats();
    let points = |text: &str| text.matches("[[points]]").count();
    let gen_points = points(include_str!("../config/profiles/dse-gencomm.toml"));
    let hvac_points = points(include_str!("../config/profiles/coolmaster-va.toml"));
    let per = |slave: u8| stats.by_slave.get(&slave).copied().unwrap_or(0) as f64 / polls;
    json!([
        {"unit": "gen-1", "profile": "dse-gencomm", "points": gen_points,
         "requests_per_poll": per(GEN_SLAVE)},
        {"unit": "hvac-1", "profile": "coolmaster-va", "points": hvac_points,
         "requests_per_poll": per(HVAC1_SLAVE)},
    ])
}

/// Parent side of the RSS figure: simulators here, the daemon in a child process.
async fn rss() -> Value {
    let mut sims = Vec::new();
    for _ in 0..RSS_LINKS {
        let units = (1..=(RSS_UNITS / RSS_LINKS) as u8)
            .map(SimUnit::hvac)
            .collect();
        sims.push(start_sim(units).await);
    }
    let addrs: Vec<String> = sims
        .iter()
        .map(|(s, _)| s.addr.unwrap().to_string())
        .collect();
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new(exe)
        .env("SITEGATE_E2E_RSS_CHILD", addrs.join(","))
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "rss child failed");
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let requests: u64 = sims.iter().map(|(s, _)| s.stats().requests).sum();
    v["sim_requests_total"] = json!(requests);
    for (_, stop) in sims {
        stop.cancel();
    }
    v
}

/// Child side: only the daemon (plus a tokio runtime) lives in this process.
fn rss_child(addrs: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let before = vm_rss_kib().unwrap_or(0);
        let dir = tempfile::tempdir().unwrap();
        let links: Vec<(String, std::net::SocketAddr)> = addrs
            .split(',')
            .enumerate()
            .map(|(i, a)| (format!("bus{i}"), a.parse().unwrap()))
            .collect();
        let per = RSS_UNITS / links.len();
        let mut units = Vec::new();
        for (l, (name, _)) in links.iter().enumerate() {
            for s in 1..=per {
                units.push((
                    format!("hvac-{}", l * per + s),
                    name.clone(),
                    s as u8,
                    "coolmaster-va",
                    "offices",
                ));
            }
        }
        let text = config_text(&dir.path().join("state"), &links, &units, 1000, "plain", "");
        let cfg = parse_config(&text, dir.path());
        let daemon =
            sitegate::app::Daemon::start(cfg, Arc::new(SystemClock), Notifier::from_env(&|_| None))
                .await
                .unwrap();
        let started = vm_rss_kib().unwrap_or(0);
        tokio::time::sleep(RSS_SETTLE).await;
        let steady = vm_rss_kib().unwrap_or(0);
        let hwm = status_kib("VmHWM").unwrap_or(0);
        let online = daemon
            .site
            .as_ref()
            .map(|r| {
                r.modbus
                    .link_stats()
                    .iter()
                    .map(|l| serde_json::to_value(l).unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        daemon.stop(true).await;
        println!(
            "{}",
            json!({"units": RSS_UNITS, "links": links.len(), "poll_ms": 1000,
                   "settle_s": RSS_SETTLE.as_secs(), "rss_before_start_kib": before,
                   "rss_after_start_kib": started, "rss_steady_kib": steady,
                   "vm_hwm_kib": hwm, "link_stats": online})
        );
    });
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    if let Ok(addrs) = std::env::var("SITEGATE_E2E_RSS_CHILD") {
        rss_child(&addrs);
        return;
    }
    // `cargo bench` passes `--bench`; under `cargo test` the bench only checks that it runs.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("SITEGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench_mode { 5 } else { 1 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async move {
        let site = Site::start_with_clock("plain", "", false).await;
        site.apply(bundle(1, &members(), &[])).await;
        let token = site.login("tess").await;
        let rt = round_trip(&site, &token).await;
        println!("round trip: {rt}");
        let get = load(&site, &token, secs, false).await;
        println!("GET /units x{CLIENTS}: {get}");
        let put = load(&site, &token, secs, true).await;
        println!("PUT point x{CLIENTS}: {put}");
        let writes = site.sim.stats().writes.len();
        let poll = poll_cost(&site).await;
        println!("poll cost: {poll}");
        site.stop().await;
        let rss = rss().await;
        println!("rss: {rss}");
        json!({"round_trip": rt, "load_get_units": get, "load_put_point": put,
               "sim_writes_seen": writes, "poll_cost": poll, "rss": rss})
    });
    if !bench_mode {
        return;
    }
    let out = std::env::var("SITEGATE_BENCH_OUT")
        .unwrap_or_else(|_| "target/bench-results/e2e.json".to_string());
    let path = std::path::Path::new(&out);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    println!("written to {out}");
}
