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
//! 4. Flash writes, CPU and memory with MQTT (`flash`): the same 100 units with a broker
//!    connected and with the broker unreachable, every unit's room temperature changing every
//!    second (one telemetry message per unit per second, the worst case), measured in a child
//!    process from `/proc/self/io` `write_bytes` (bytes sent to the block layer) and the CPU time
//!    of all its threads (`/proc/self/task/*/schedstat`); and one 31-point generator
//!    (dse-gencomm) polled every second, for the CPU per poll cycle.
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

#[allow(dead_code, reason = "the bench uses only part of the broker helper")]
#[path = "../tests/common/broker.rs"]
mod broker;
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
/// Sequential round trips measured (after 50 warm-up calls); `SITEGATE_E2E_ROUND_TRIPS` sets it
/// (e.g. fewer under a profiler).
fn round_trips() -> usize {
    std::env::var("SITEGATE_E2E_ROUND_TRIPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}
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
    let mut api = Vec::with_capacity(round_trips());
    for i in 0..round_trips() + 50 {
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
    let mut write = Vec::with_capacity(round_trips());
    let mut write_read = Vec::with_capacity(round_trips());
    for i in 0..round_trips() + 50 {
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
           "direct_write_readback": summary(write_read), "fsync_4k": fsync_reference()})
}

/// The disk's own commit cost, measured next to the round trip: 4 KiB appended and
/// `fdatasync`ed, 200 times, to a file on the file system of the daemon's state directory
/// (`std::env::temp_dir()`, where the bench's temporary directories live). A command's audit
/// record is committed with `synchronous=FULL`: its WAL frames are appended and synced once per
/// commit (shared by the commands of a group commit), so this is the floor of a sequential
/// command on that disk. (An append costs about twice an overwrite on ext4: the file size
/// changes, so the sync also commits the journal.)
fn fsync_reference() -> Value {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("sync")).unwrap();
    let block = [0x5au8; 4096];
    let mut lat = Vec::with_capacity(200);
    for i in 0..220u64 {
        f.write_all(&block).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        if i >= 20 {
            lat.push(t.elapsed());
        }
    }
    let mut s = summary(lat);
    s["dir"] = json!(std::env::temp_dir().display().to_string());
    s
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

/// Parent side of the RSS figure: simulators here, the daemon in a child process with `units`
/// HVAC units spread over `links` links.
async fn rss(units: usize, links: usize) -> Value {
    let mut sims = Vec::new();
    for _ in 0..links {
        let units = (1..=(units / links) as u8).map(SimUnit::hvac).collect();
        sims.push(start_sim(units).await);
    }
    let addrs: Vec<String> = sims
        .iter()
        .map(|(s, _)| s.addr.unwrap().to_string())
        .collect();
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new(exe)
        .env(
            "SITEGATE_E2E_RSS_CHILD",
            format!("{units};{}", addrs.join(",")),
        )
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
fn rss_child(spec: &str) {
    let (total, addrs) = spec.split_once(';').unwrap();
    let total: usize = total.parse().unwrap();
    let rt = sitegate::app::runtime().unwrap();
    rt.block_on(async move {
        let before = vm_rss_kib().unwrap_or(0);
        let before_breakdown = mem_breakdown();
        let dir = tempfile::tempdir().unwrap();
        let links: Vec<(String, std::net::SocketAddr)> = addrs
            .split(',')
            .enumerate()
            .map(|(i, a)| (format!("bus{i}"), a.parse().unwrap()))
            .collect();
        let per = total / links.len();
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
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        let breakdown = mem_breakdown();
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
            json!({"units": total, "links": links.len(), "poll_ms": 1000,
                   "settle_s": RSS_SETTLE.as_secs(), "rss_before_start_kib": before,
                   "rss_after_start_kib": started, "rss_steady_kib": steady,
                   "vm_hwm_kib": hwm, "threads": threads, "link_stats": online,
                   "breakdown": breakdown, "before_start_breakdown": before_breakdown})
        );
    });
}

/// How long the flash children settle before measuring, and measure.
const FLASH_SETTLE: Duration = Duration::from_secs(10);
fn flash_window() -> Duration {
    Duration::from_secs(
        std::env::var("SITEGATE_FLASH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    )
}

/// Parent side of the flash figures: simulators (and their changing values) and the broker here,
/// the daemon in a child. `mode`: `up` (broker connected), `down` (nothing listens on the port),
/// `gen` (one generator, broker connected).
async fn flash(mode: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut sims = Vec::new();
    if mode == "gen" {
        sims.push(start_sim(vec![SimUnit::generator(1)]).await);
    } else {
        for _ in 0..RSS_LINKS {
            let units = (1..=(RSS_UNITS / RSS_LINKS) as u8)
                .map(SimUnit::hvac)
                .collect();
            sims.push(start_sim(units).await);
        }
    }
    let broker = (mode != "down").then(|| broker::Broker::start(dir.path()));
    let port = broker.as_ref().map_or_else(broker::free_port, |b| b.port);
    let addrs: Vec<String> = sims
        .iter()
        .map(|(s, _)| s.addr.unwrap().to_string())
        .collect();
    // Every HVAC unit's room temperature (holding +6 of VA 1, x10, deadband 0.2 °C) alternates
    // between 20.0 and 20.5 °C every second: one telemetry message per unit and poll.
    let changer = {
        let handles: Vec<_> = sims.iter().map(|(s, _)| s.clone()).collect();
        let hvac = mode != "gen";
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for i in 0u64.. {
                tick.tick().await;
                if !hvac {
                    continue;
                }
                for h in &handles {
                    for slave in 1..=(RSS_UNITS / RSS_LINKS) as u8 {
                        h.set_register(
                            slave,
                            sitegate::modbus::profile::RegKind::Holding,
                            22,
                            200 + (i % 2) as u16 * 5,
                        );
                    }
                }
            }
        })
    };
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new(exe)
        .env(
            "SITEGATE_E2E_FLASH_CHILD",
            format!("{mode};{port};{}", addrs.join(",")),
        )
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    changer.abort();
    assert!(out.status.success(), "flash child failed");
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["mode"] = json!(mode);
    for (_, stop) in sims {
        stop.cancel();
    }
    drop(broker);
    v
}

/// Bytes this process caused to be sent to the block layer (`write_bytes` of /proc/self/io).
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time of every thread of this process, in ns (schedstat: time spent on the CPU).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Child side of the flash figures: only the daemon lives in this process, on the daemon's own
/// runtime (`app::runtime`).
fn flash_child(spec: &str) {
    let mut parts = spec.split(';');
    let mode = parts.next().unwrap().to_string();
    let port: u16 = parts.next().unwrap().parse().unwrap();
    let addrs = parts.next().unwrap().to_string();
    let rt = sitegate::app::runtime().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let links: Vec<(String, std::net::SocketAddr)> = addrs
            .split(',')
            .enumerate()
            .map(|(i, a)| (format!("bus{i}"), a.parse().unwrap()))
            .collect();
        let mut units = Vec::new();
        if mode == "gen" {
            units.push((
                "gen-1".to_string(),
                "bus0".to_string(),
                1u8,
                "dse-gencomm",
                "plant",
            ));
        } else {
            let per = RSS_UNITS / links.len();
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
        }
        let mqtt = format!(
            "\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"sitegate-flash-{mode}\"\n"
        );
        let state = dir.path().join("state");
        let text = config_text(&state, &links, &units, 1000, "plain", &mqtt);
        let cfg = parse_config(&text, dir.path());
        let daemon =
            sitegate::app::Daemon::start(cfg, Arc::new(SystemClock), Notifier::from_env(&|_| None))
                .await
                .unwrap();
        tokio::time::sleep(FLASH_SETTLE).await;
        let window = flash_window();
        let (w0, c0) = (write_bytes(), cpu_ns());
        tokio::time::sleep(window).await;
        let (w1, c1) = (write_bytes(), cpu_ns());
        let rss = vm_rss_kib().unwrap_or(0);
        let hwm = status_kib("VmHWM").unwrap_or(0);
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        let breakdown = mem_breakdown();
        daemon.stop(true).await;
        // After the stop: what the outbox holds (the broker-down case spilled telemetry there).
        let store = sitegate::store::Store::open_in(&state).unwrap();
        let depth = sitegate::outbox::depth(&store).unwrap_or_default();
        let written: i64 = store
            .with_conn(|c| {
                Ok(c.query_row(
                    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap_or(0);
        let secs = window.as_secs_f64();
        let bytes = w1.saturating_sub(w0);
        println!(
            "{}",
            json!({"units": units.len(), "poll_ms": 1000, "settle_s": FLASH_SETTLE.as_secs(),
                   "window_s": secs, "write_bytes": bytes,
                   "write_bytes_per_s": bytes as f64 / secs,
                   "write_mb_per_day": bytes as f64 / secs * 86_400.0 / 1e6,
                   "cpu_ms": (c1 - c0) as f64 / 1e6,
                   "cpu_ms_per_poll_cycle": (c1 - c0) as f64 / 1e6 / secs,
                   "rss_steady_kib": rss, "vm_hwm_kib": hwm, "threads": threads,
                   "breakdown": breakdown, "outbox_rows_inserted_total": written, "outbox_depth_after_stop": depth})
        );
    });
}

/// Where the resident memory of this process sits, from `/proc/self/smaps`: totals per kind of
/// mapping (the executable's own pages, shared libraries, `[heap]` (the main malloc arena),
/// anonymous mappings (other malloc arenas, thread stacks, mmap'd allocations), `[stack]`), and
/// the largest anonymous mappings with their size, so arenas (64 MiB reservations) and thread
/// stacks (2 MiB + guard) can be told apart.
fn mem_breakdown() -> Value {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return Value::Null;
    };
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut totals = std::collections::BTreeMap::<&str, u64>::new();
    let mut anon: Vec<(u64, u64, String)> = Vec::new();
    let mut current: Option<(&str, u64, String)> = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let perms = f.next().unwrap_or("").to_string();
            let path = line.split_whitespace().nth(5).unwrap_or("");
            let (lo, hi) = first.split_once('-').unwrap_or(("0", "0"));
            let size = (u64::from_str_radix(hi, 16).unwrap_or(0)
                - u64::from_str_radix(lo, 16).unwrap_or(0))
                / 1024;
            let kind = if path.is_empty() {
                "anon"
            } else if path == exe {
                "exe"
            } else if path == "[heap]" {
                "heap"
            } else if path == "[stack]" {
                "stack"
            } else if path.starts_with('/') {
                "libs"
            } else {
                "other"
            };
            current = Some((kind, size, perms));
        } else if first == "Rss:" {
            let rss: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some((kind, size, perms)) = current.take() {
                *totals.entry(kind).or_default() += rss;
                if kind == "anon" && rss > 0 {
                    anon.push((rss, size, perms));
                }
            }
        }
    }
    anon.sort_by(|a, b| b.cmp(a));
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    json!({"rss_kib_by_kind": totals, "anonymous_kib": field("Anonymous:"),
           "file_backed_kib": field("Rss:").saturating_sub(field("Anonymous:")),
           "anon_mappings_top": anon.iter().take(24)
               .map(|(rss, size, perms)| json!({"rss_kib": rss, "size_kib": size, "perms": perms}))
               .collect::<Vec<_>>(),
           "anon_mappings_resident": anon.len()})
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
    if let Ok(spec) = std::env::var("SITEGATE_E2E_FLASH_CHILD") {
        flash_child(&spec);
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
    // `SITEGATE_E2E_ONLY=rss` (the 100-unit memory figure alone) or `flash-up` (the same with a
    // broker connected): one figure, for measuring a change or running under a profiler.
    let only = std::env::var("SITEGATE_E2E_ONLY").unwrap_or_default();
    let result = rt.block_on(async move {
        match only.as_str() {
            "rss" => {
                let r = rss(RSS_UNITS, RSS_LINKS).await;
                println!("rss: {r}");
                return json!({ "rss": r });
            }
            "flash-up" => {
                let f = flash("up").await;
                println!("flash up: {f}");
                return json!({ "flash": [f] });
            }
            _ => {}
        }
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
        if std::env::var("SITEGATE_E2E_COMMANDS_ONLY").is_ok() {
            // For profiling the command path alone (`perf record`, see docs/PERFORMANCE.md).
            return json!({"round_trip": rt, "load_get_units": get, "load_put_point": put});
        }
        let rss_main = rss(RSS_UNITS, RSS_LINKS).await;
        println!("rss: {rss_main}");
        // Two more shapes for the memory budget: per unit (20 vs 100 units on 4 links) and per
        // link (100 units on 1 vs 4 links).
        let rss_20 = rss(20, RSS_LINKS).await;
        println!("rss 20 units: {rss_20}");
        let rss_1link = rss(RSS_UNITS, 1).await;
        println!("rss 1 link: {rss_1link}");
        let rss = json!({"units": rss_main["units"], "links": rss_main["links"],
            "poll_ms": rss_main["poll_ms"], "settle_s": rss_main["settle_s"],
            "rss_before_start_kib": rss_main["rss_before_start_kib"],
            "rss_after_start_kib": rss_main["rss_after_start_kib"],
            "rss_steady_kib": rss_main["rss_steady_kib"], "vm_hwm_kib": rss_main["vm_hwm_kib"],
            "link_stats": rss_main["link_stats"], "sim_requests_total": rss_main["sim_requests_total"],
            "threads": rss_main["threads"], "breakdown": rss_main["breakdown"],
            "before_start_breakdown": rss_main["before_start_breakdown"],
            "budget_20_units": rss_20, "budget_one_link": rss_1link});
        let mut flash_figures = Vec::new();
        if bench_mode || std::env::var("SITEGATE_FLASH_SECS").is_ok() {
            for mode in ["up", "down", "gen"] {
                let f = flash(mode).await;
                println!("flash {mode}: {f}");
                flash_figures.push(f);
            }
        }
        json!({"round_trip": rt, "load_get_units": get, "load_put_point": put,
               "sim_writes_seen": writes, "poll_cost": poll, "rss": rss,
               "flash": flash_figures})
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
