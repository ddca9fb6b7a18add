//! The engine over Modbus RTU through a socat PTY pair, against the in-process simulator.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration test helpers"
)]

mod common;

use std::time::Duration;

use common::modbus::*;
use serde_json::json;
use sitegate::modbus::profile::RegKind;
use sitegate::modbus::{ProfileRegistry, Quality, WriteStatus};
use sitegate::sim::{Fault, SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_polls_writes_and_commands_units_on_an_rtu_bus() {
    let pty = PtyPair::new().await;
    let stop = CancellationToken::new();
    // Server side first: a request buffered before it starts would shift every answer.
    let s = SimServer::start_rtu(
        &pty.a,
        38400,
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .unwrap();
    let h = Harness::start(
        &[rtu_link("rs485", pty.b.clone())],
        &[
            unit("gen", "rs485", 1, "dse-gencomm", 300),
            unit("ac", "rs485", 2, "coolmaster-va", 300),
        ],
        ProfileRegistry::builtin().unwrap(),
    );
    eventually(15, "both units polled", || {
        let g = h.engine.snapshot(&uid("gen"))?;
        let a = h.engine.snapshot(&uid("ac"))?;
        (g.points["battery_voltage"].value == json!(13.1)
            && a.points["setpoint"].value == json!(24.0))
        .then_some(())
    })
    .await;
    let out = h
        .engine
        .write_point(&uid("ac"), "setpoint", json!(19.5))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Ok, "{out:?}");
    assert_eq!(s.register(2, RegKind::Holding, 18), Some(195));
    assert!(
        h.engine
            .run_command(&uid("gen"), "auto")
            .await
            .unwrap()
            .status
            .is_ok()
    );
    assert_eq!(s.register(1, RegKind::Holding, 772), Some(1));

    // A late answer (delay beyond the timeout) must not shift later answers.
    s.set_fault(
        Some(2),
        Fault {
            delay: Duration::from_millis(1200),
            ..Fault::default()
        },
    );
    let e = h.engine.raw_read(&uid("ac"), RegKind::Holding, 18, 1).await;
    assert!(e.is_err(), "{e:?}");
    s.clear_faults();
    s.set_register(2, RegKind::Holding, 23, 42);
    eventually(15, "fresh, correct answers after the late one", || {
        let a = h.engine.snapshot(&uid("ac"))?;
        (a.points["failure_code"].value == json!(42)
            && a.points["failure_code"].quality == Quality::Good
            && a.points["setpoint"].value == json!(19.5))
        .then_some(())
    })
    .await;
    let raw = h
        .engine
        .raw_read(&uid("gen"), RegKind::Holding, 768, 2)
        .await
        .unwrap();
    assert_eq!(raw, sitegate::modbus::RawValues::Words(vec![1, 4510]));
    h.shutdown().await;
    stop.cancel();
}
