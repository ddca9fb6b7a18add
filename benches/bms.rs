//! The Modbus server face (BMS, `src/bms/`) under 20 concurrent clients, against direct
//! tokio-modbus reads of the same simulator in the same run.
//!
//! One in-process HVAC simulator on loopback, the real engine (background polling off), the
//! real authorization index and audit trail, and the face with both listeners: Modbus/TCP
//! Security (mutual TLS, a viewer client certificate issued by a fresh site CA) and the plain
//! listener (127.0.0.1 allowed as viewer). Phases, each with its own connections opened before
//! the clock starts:
//! - direct: tokio-modbus straight to the simulator (1 client, then 20 concurrent);
//! - face, cached: the 4 holding registers 16-19 (mode, fan, setpoint, on) warmed once, then
//!   read over TLS (1 client, then 20) and over the plain listener (20);
//! - face, uncached: a second face on the same engine with `max_age` 0 (every read goes
//!   through the engine's link scheduler to the simulator), 1 client.
//!
//! Requests are counted at the simulator around every phase and checked exactly: a cached phase
//! adds none, a direct or uncached phase one per read. Every answer is checked against the
//! simulator's values.
//!
//! `cargo bench --bench bms` writes `$SITEGATE_BENCH_OUT` (default
//! `target/bench-results/bms.json`); `cargo test --bench bms` runs a short check (20 reads per
//! client) and writes only when `SITEGATE_BENCH_OUT` is set. `SITEGATE_BENCH_READS` sets the
//! reads per client (default 5000 under `cargo bench`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark set-up fails loudly"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use sitegate::access::{AccessState, Policy};
use sitegate::audit::Audit;
use sitegate::authz::{Authz, Inputs};
use sitegate::bms::cert::{Issued, Request, issue, new_ca};
use sitegate::bms::config::{PlainListener, TlsListener};
use sitegate::bms::tls::TlsFiles;
use sitegate::bms::{BmsConfig, Face, PlainAllow, RoleMap};
use sitegate::clock::SystemClock;
use sitegate::config::{Link, LinkKind, Unit};
use sitegate::modbus::{ModbusEngine, ProfileRegistry};
use sitegate::model::{CapSet, LinkId, Management, Role, SiteId, SlaveId, UnitId};
use sitegate::sim::{SimHandle, SimServer, SimUnit};
use sitegate::store::Store;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::Slave;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CLIENTS: usize = 20;
/// The unit id the face exposes the HVAC at; the simulator's own slave id is 2.
const FACE_UNIT: u8 = 7;
const SIM_SLAVE: u8 = 2;
/// mode, fan, setpoint, on: holding 16-19 of coolmaster-va, the simulator's defaults.
const ADDR: u16 = 16;
const EXPECTED: [u16; 4] = [0, 3, 240, 0];

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

fn pem_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn cert(ca: &Issued, name: &str, role: Option<&str>, server: bool) -> Issued {
    let now = time::OffsetDateTime::now_utc();
    issue(
        ca,
        &Request {
            name: name.into(),
            role: role.map(str::to_string),
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(1),
            server_names: server.then(|| vec!["127.0.0.1".to_string()]),
        },
    )
    .unwrap()
}

/// How a client reaches the registers.
#[derive(Clone)]
enum Target {
    /// Straight to the simulator.
    Direct(SocketAddr),
    /// The face's TLS listener with this client config.
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
    /// The face's plain listener.
    Plain(SocketAddr),
}

async fn connect(t: &Target) -> Context {
    match t {
        Target::Direct(a) => {
            let s = tokio::net::TcpStream::connect(a).await.unwrap();
            tokio_modbus::client::tcp::attach_slave(s, Slave(SIM_SLAVE))
        }
        Target::Plain(a) => {
            let s = tokio::net::TcpStream::connect(a).await.unwrap();
            tokio_modbus::client::tcp::attach_slave(s, Slave(FACE_UNIT))
        }
        Target::Tls(a, cfg) => {
            let s = tokio::net::TcpStream::connect(a).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(ServerName::try_from("127.0.0.1").unwrap(), s)
                .await
                .unwrap();
            tokio_modbus::client::tcp::attach_slave(tls, Slave(FACE_UNIT))
        }
    }
}

/// `clients` connections, all opened first; then each reads the 4 registers `reads` times in
/// sequence. Returns the phase's figures, with the requests the simulator saw meanwhile.
async fn phase(name: &str, t: &Target, clients: usize, reads: usize, sim: &SimHandle) -> Value {
    let mut ctxs = Vec::with_capacity(clients);
    for _ in 0..clients {
        ctxs.push(connect(t).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut joins = Vec::new();
    for mut ctx in ctxs {
        let barrier = barrier.clone();
        joins.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let mut lat = Vec::with_capacity(reads);
            let mut wrong = 0usize;
            for _ in 0..reads {
                let t0 = Instant::now();
                let r = ctx.read_holding_registers(ADDR, 4).await;
                lat.push(t0.elapsed());
                if !matches!(&r, Ok(Ok(v)) if v == &EXPECTED) {
                    wrong += 1;
                }
            }
            (lat, wrong, start, Instant::now())
        }));
    }
    let before = sim.stats().requests;
    barrier.wait().await;
    let mut lat = Vec::with_capacity(clients * reads);
    let mut wrong = 0;
    // From the first client's start to the last one's end, as the clients saw it (this task may
    // be woken after they started).
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    for j in joins {
        let (l, w, start, end) = j.await.unwrap();
        lat.extend(l);
        wrong += w;
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |e| e.max(end)));
    }
    let wall = match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    };
    let bus = sim.stats().requests - before;
    lat.sort();
    let n = lat.len();
    let v = json!({
        "clients": clients,
        "reads": n,
        "wrong_answers": wrong,
        "bus_requests": bus,
        "wall_s": wall.as_secs_f64(),
        "reads_per_s": n as f64 / wall.as_secs_f64(),
        "p50_us": pct(&lat, 0.50),
        "p99_us": pct(&lat, 0.99),
        "max_us": lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
        "mean_us": lat.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / n.max(1) as f64,
    });
    println!("{name}: {v}");
    assert_eq!(
        wrong, 0,
        "{name}: answers that are not the simulator's values"
    );
    v
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` the bench only checks that it runs.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let reads: usize = std::env::var("SITEGATE_BENCH_READS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench_mode { 5000 } else { 20 });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(run(reads));
    let out = match std::env::var("SITEGATE_BENCH_OUT") {
        Ok(o) => o,
        Err(_) if bench_mode => "target/bench-results/bms.json".to_string(),
        Err(_) => return,
    };
    let path = std::path::Path::new(&out);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    println!("written to {out}");
}

async fn run(reads: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let sim = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::hvac(SIM_SLAVE)],
        stop.clone(),
    )
    .await
    .unwrap();
    let sim_addr = sim.addr.unwrap();
    let link = Link {
        name: LinkId::new("bus").unwrap(),
        kind: LinkKind::Tcp {
            address: sim_addr.to_string(),
        },
        timeout: Duration::from_secs(1),
        retries: 0,
        max_gap: 8,
        inter_frame_delay: Duration::ZERO,
    };
    let ac = UnitId::new("ac-1").unwrap();
    let unit = Unit {
        id: ac.clone(),
        name: "ac-1".into(),
        link: link.name.clone(),
        slave: SlaveId::new(SIM_SLAVE).unwrap(),
        profile: "coolmaster-va".into(),
        group: None,
        // Background polling off: only the measured requests touch the bus.
        poll_interval: Duration::from_secs(3600),
        va: None,
        base_offset: 0,
    };
    let store = Store::open_in(d).unwrap();
    let audit = Audit::new(store, Arc::new(SystemClock), None);
    let engine = ModbusEngine::start(
        std::slice::from_ref(&link),
        &[unit],
        Arc::new(ProfileRegistry::builtin().unwrap()),
        audit.clone(),
        stop.clone(),
        &tasks,
    )
    .unwrap();
    let _ = engine.read_fresh(&ac, Duration::from_secs(5)).await;
    let site = SiteId::new("site-1").unwrap();
    let authz = Arc::new(Authz::new(Inputs {
        site: Some(site.clone()),
        state: Arc::new(AccessState {
            site: Some(site),
            seq: 1,
            policy: Policy {
                management: Management::Pro,
                features: CapSet::ALL,
                max_offline: Default::default(),
            },
            ..AccessState::default()
        }),
        inventory: vec![(ac.clone(), None)],
        ..Inputs::default()
    }));

    // A fresh site CA, the face's server certificate and one viewer client certificate.
    let ca = new_ca("bench Modbus client CA", 1).unwrap();
    let server = cert(&ca, "modbus-server", None, true);
    let client = cert(&ca, "bench-bms", Some("viewer"), false);
    let files = TlsFiles {
        cert: pem_file(d, "server.pem", &server.cert_pem),
        key: pem_file(d, "server.key", &server.key_pem),
        ca: pem_file(d, "ca.pem", &ca.cert_pem),
        crls: Vec::new(),
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let client_cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
        )
        .unwrap(),
    );

    let face_cfg = |max_age: Duration, tls: bool| BmsConfig {
        tls: tls.then(|| TlsListener {
            listen: "127.0.0.1:0".parse().unwrap(),
            files: files.clone(),
        }),
        plain: Some(PlainListener {
            listen: "127.0.0.1:0".parse().unwrap(),
            allow: vec![PlainAllow {
                source: "127.0.0.1".parse().unwrap(),
                role: Role::Viewer,
                client: Some("bench-plain".into()),
            }],
        }),
        units: vec![(FACE_UNIT, ac.clone())],
        roles: RoleMap::standard(),
        max_age,
        read_timeout: Duration::from_secs(3),
        handshake_timeout: Duration::from_secs(3),
        max_connections: 64,
    };
    let start_face = |cfg: BmsConfig| {
        let face = Arc::new(Face::new(
            engine.clone(),
            authz.clone(),
            audit.clone(),
            Arc::new(SystemClock),
            &cfg.units,
            cfg.max_age,
            cfg.read_timeout,
        ));
        let (stop, tasks) = (stop.clone(), tasks.clone());
        async move {
            sitegate::bms::serve(&cfg, face, stop, &tasks)
                .await
                .unwrap()
        }
    };
    let cached = start_face(face_cfg(Duration::from_secs(3600), true)).await;
    let uncached = start_face(face_cfg(Duration::ZERO, false)).await;
    let tls = Target::Tls(cached.tls.unwrap(), client_cfg);
    let plain = Target::Plain(cached.plain.unwrap());
    let direct = Target::Direct(sim_addr);

    // Warm the face's cache with one read (one request at the simulator).
    let before = sim.stats().requests;
    let mut warm = connect(&tls).await;
    let got = warm.read_holding_registers(ADDR, 4).await.unwrap().unwrap();
    assert_eq!(got, EXPECTED);
    let warm_requests = sim.stats().requests - before;
    drop(warm);

    let direct_1 = phase("direct, 1 client", &direct, 1, reads, &sim).await;
    let direct_20 = phase("direct, 20 clients", &direct, CLIENTS, reads, &sim).await;
    let tls_1 = phase("face TLS cached, 1 client", &tls, 1, reads, &sim).await;
    let tls_20 = phase("face TLS cached, 20 clients", &tls, CLIENTS, reads, &sim).await;
    let plain_20 = phase(
        "face plain cached, 20 clients",
        &plain,
        CLIENTS,
        reads,
        &sim,
    )
    .await;
    let uncached_1 = phase(
        "face plain uncached, 1 client",
        &Target::Plain(uncached.plain.unwrap()),
        1,
        reads,
        &sim,
    )
    .await;
    // Exact bus traffic: none for cached reads, one request per direct or uncached read.
    for (name, v, per_read) in [
        ("direct 1", &direct_1, 1),
        ("direct 20", &direct_20, 1),
        ("tls 1", &tls_1, 0),
        ("tls 20", &tls_20, 0),
        ("plain 20", &plain_20, 0),
        ("uncached 1", &uncached_1, 1),
    ] {
        assert_eq!(
            v["bus_requests"].as_u64(),
            v["reads"].as_u64().map(|n| n * per_read),
            "{name}: requests at the simulator"
        );
    }
    stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "clients": CLIENTS,
        "reads_per_client": reads,
        "registers_per_read": 4,
        "warm_up_bus_requests": warm_requests,
        "direct_1": direct_1,
        "direct_20": direct_20,
        "face_tls_cached_1": tls_1,
        "face_tls_cached_20": tls_20,
        "face_plain_cached_20": plain_20,
        "face_uncached_1": uncached_1,
    })
}
