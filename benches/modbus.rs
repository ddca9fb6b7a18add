//! Cost of the engine over a direct tokio-modbus client, against the same in-process simulator:
//! a full poll of one unit (`read_fresh`) and a validated write with read-back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up fails loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sitegate::audit::Audit;
use sitegate::clock::SystemClock;
use sitegate::config::{Link, LinkKind, Unit};
use sitegate::modbus::{ModbusEngine, ProfileRegistry};
use sitegate::model::{LinkId, SlaveId, UnitId};
use sitegate::sim::{SimServer, SimUnit};
use sitegate::store::Store;
use tokio_modbus::client::{Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (engine, addr) = rt.block_on(async {
        let sim = SimServer::start_tcp(
            "127.0.0.1:0".parse().unwrap(),
            vec![SimUnit::generator(1), SimUnit::hvac(2)],
            stop.clone(),
        )
        .await
        .unwrap();
        let addr = sim.addr.unwrap();
        let link = Link {
            name: LinkId::new("bus").unwrap(),
            kind: LinkKind::Tcp {
                address: addr.to_string(),
            },
            timeout: Duration::from_secs(1),
            retries: 0,
            max_gap: 8,
            inter_frame_delay: Duration::ZERO,
        };
        let unit = |id: &str, slave: u8, profile: &str| Unit {
            id: UnitId::new(id).unwrap(),
            name: id.into(),
            link: link.name.clone(),
            slave: SlaveId::new(slave).unwrap(),
            profile: profile.into(),
            group: None,
            // Background polling off: only the measured requests touch the bus.
            poll_interval: Duration::from_secs(3600),
            va: None,
            base_offset: 0,
        };
        let store = Store::open_in(dir.path()).unwrap();
        let audit = Audit::new(store, Arc::new(SystemClock), None);
        let engine = ModbusEngine::start(
            std::slice::from_ref(&link),
            &[
                unit("gen", 1, "dse-gencomm"),
                unit("ac", 2, "coolmaster-va"),
            ],
            Arc::new(ProfileRegistry::builtin().unwrap()),
            audit,
            stop.clone(),
            &tracker,
        )
        .unwrap();
        // Let the first cycle learn the generator's gap splits.
        for u in ["gen", "ac"] {
            let _ = engine
                .read_fresh(&UnitId::new(u).unwrap(), Duration::from_secs(5))
                .await;
        }
        (engine, addr)
    });
    let mut direct = rt.block_on(async {
        let mut ctx = tokio_modbus::client::tcp::connect(addr).await.unwrap();
        ctx.set_slave(tokio_modbus::Slave(2));
        ctx
    });
    let ac = UnitId::new("ac").unwrap();
    let genset = UnitId::new("gen").unwrap();

    let mut g = c.benchmark_group("poll_cycle");
    g.bench_function("engine_hvac_read_fresh", |b| {
        b.iter(|| {
            rt.block_on(engine.read_fresh(&ac, Duration::from_secs(5)))
                .unwrap()
        })
    });
    // VA 1 of the gateway: holding 16-25 and discrete inputs 16-17, as the engine reads them.
    g.bench_function("direct_hvac_same_blocks", |b| {
        b.iter(|| {
            rt.block_on(async {
                direct.set_slave(tokio_modbus::Slave(2));
                direct
                    .read_holding_registers(16, 10)
                    .await
                    .unwrap()
                    .unwrap();
                direct.read_discrete_inputs(16, 2).await.unwrap().unwrap()
            })
        })
    });
    // The engine's coalesced plan of the dse-gencomm profile (max_gap 8).
    let gen_plan: Vec<(u16, u16)> = vec![
        (769, 4),
        (1024, 10),
        (1044, 10),
        (1408, 1),
        (1798, 12),
        (2048, 8),
        (4096, 3),
    ];
    g.bench_function("engine_generator_read_fresh", |b| {
        b.iter(|| {
            rt.block_on(engine.read_fresh(&genset, Duration::from_secs(5)))
                .unwrap()
        })
    });
    g.bench_function("direct_generator_same_blocks", |b| {
        b.iter(|| {
            rt.block_on(async {
                direct.set_slave(tokio_modbus::Slave(1));
                for (a, n) in &gen_plan {
                    direct
                        .read_holding_registers(*a, *n)
                        .await
                        .unwrap()
                        .unwrap();
                }
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("command_round_trip");
    g.bench_function("engine_write_point_with_readback", |b| {
        b.iter(|| {
            rt.block_on(engine.write_point(&ac, "setpoint", json!(21.5)))
                .unwrap()
        })
    });
    g.bench_function("direct_write_and_read_back", |b| {
        b.iter(|| {
            rt.block_on(async {
                direct.set_slave(tokio_modbus::Slave(2));
                direct
                    .write_single_register(18, 215)
                    .await
                    .unwrap()
                    .unwrap();
                direct.read_holding_registers(18, 1).await.unwrap().unwrap()
            })
        })
    });
    g.bench_function("engine_generator_command", |b| {
        b.iter(|| {
            rt.block_on(engine.run_command(&genset, "mute_alarm"))
                .unwrap()
        })
    });
    g.finish();
    stop.cancel();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
