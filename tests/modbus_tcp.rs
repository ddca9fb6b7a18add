//! The engine against the simulators over Modbus TCP (and RTU over TCP): polling, validated
//! writes with read-back, commands, faults, availability, coalescing and gap splitting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration test helpers"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::modbus::*;
use serde_json::json;
use sitegate::modbus::profile::{Profile, RegKind};
use sitegate::modbus::{
    EngineError, ProfileRegistry, Quality, RawValues, UnitUpdate, WriteError, WriteStatus,
};
use sitegate::sim::{Fault, SimHandle, SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

async fn sim(units: Vec<SimUnit>) -> (SimHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let h = SimServer::start_tcp("127.0.0.1:0".parse().unwrap(), units, stop.clone())
        .await
        .unwrap();
    (h, stop)
}

async fn gen_and_hvac(poll_ms: u64) -> (Harness, SimHandle, CancellationToken) {
    let (s, stop) = sim(vec![SimUnit::generator(1), SimUnit::hvac(2)]).await;
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[
            unit("gen", "bus", 1, "dse-gencomm", poll_ms),
            unit("ac", "bus", 2, "coolmaster-va", poll_ms),
        ],
        ProfileRegistry::builtin().unwrap(),
    );
    (h, s, stop)
}

fn value(h: &Harness, unit: &str, point: &str) -> Option<(serde_json::Value, Quality)> {
    let snap = h.engine.snapshot(&uid(unit))?;
    let p = snap.points.get(point)?;
    Some((p.value.clone(), p.quality))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_polls_simulated_units_into_engineering_values_with_sentinel_qualities() {
    let (h, _s, stop) = gen_and_hvac(200).await;
    eventually(10, "hvac setpoint", || {
        (value(&h, "ac", "setpoint")? == (json!(24.0), Quality::Good)).then_some(())
    })
    .await;
    eventually(10, "generator battery", || {
        (value(&h, "gen", "battery_voltage")? == (json!(13.1), Quality::Good)).then_some(())
    })
    .await;
    assert_eq!(value(&h, "gen", "control_mode").unwrap().0, json!("stop"));
    assert_eq!(value(&h, "gen", "engine_hours").unwrap().0, json!(1234.0));
    assert_eq!(
        value(&h, "gen", "oil_temperature").unwrap(),
        (serde_json::Value::Null, Quality::Unimplemented)
    );
    assert_eq!(
        value(&h, "gen", "alarm_emergency_stop").unwrap().0,
        json!("not_active")
    );
    let units = h.engine.units();
    assert!(units.iter().all(|u| u.online == Some(true)), "{units:?}");
    let kinds = h.audit_kinds().await;
    assert!(
        kinds.contains(&("unit_online".into(), Some("gen".into()))),
        "{kinds:?}"
    );
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_validated_before_the_bus_then_written_and_read_back() {
    let (h, s, stop) = gen_and_hvac(200).await;
    let ac = uid("ac");
    // Out of range, wrong type, unknown enum: refused, and nothing reaches the unit.
    for (point, v) in [
        ("setpoint", json!(40)),
        ("setpoint", json!("warm")),
        ("mode", json!("turbo")),
        ("room_temperature", json!(20)),
    ] {
        let e = h.engine.write_point(&ac, point, v).await.unwrap_err();
        assert!(matches!(e, WriteError::Invalid { .. }), "{point}: {e:?}");
    }
    assert!(
        s.stats().writes_to(2).is_empty(),
        "no write reached the unit"
    );
    assert!(matches!(
        h.engine.write_point(&ac, "nope", json!(1)).await,
        Err(WriteError::UnknownPoint(_))
    ));

    let out = h
        .engine
        .write_point(&ac, "setpoint", json!(21.5))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Ok, "{out:?}");
    assert_eq!(out.read_back, Some(json!(21.5)));
    // VA 1 of the gateway: holding registers 16 + offset on the wire.
    assert_eq!(s.register(2, RegKind::Holding, 18), Some(215));
    let out = h
        .engine
        .write_point(&ac, "mode", json!("heat"))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Ok);
    assert_eq!(s.register(2, RegKind::Holding, 16), Some(1));
    // The cache follows the read-back at once.
    assert_eq!(value(&h, "ac", "setpoint").unwrap().0, json!(21.5));

    // The profile bounds the filter sign to `false` (the unit only lets it be cleared): `true`
    // is refused before the bus.
    s.reset_stats();
    let e = h
        .engine
        .write_point(&ac, "filter_sign", json!(true))
        .await
        .unwrap_err();
    assert!(matches!(e, WriteError::Invalid { .. }), "{e:?}");
    assert!(
        s.stats().writes_to(2).is_empty(),
        "no write reached the unit"
    );
    h.shutdown().await;

    // Without that bound, the unit ignores the attempt: read-back shows the mismatch.
    let dir = tempfile::tempdir().unwrap();
    let open = include_str!("../config/profiles/coolmaster-va.toml")
        .replace("name = \"coolmaster-va\"", "name = \"open-filter\"")
        .replace("max = 0.0\n", "");
    std::fs::write(dir.path().join("open-filter.toml"), open).unwrap();
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[unit("ac", "bus", 2, "open-filter", 200)],
        ProfileRegistry::load(Some(dir.path())).unwrap(),
    );
    let out = h
        .engine
        .write_point(&ac, "filter_sign", json!(true))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Mismatch, "{out:?}");
    assert_eq!(out.read_back, Some(json!(false)));
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hvac_room_temperature_drifts_toward_the_setpoint_when_on() {
    let (h, _s, stop) = gen_and_hvac(200).await;
    let ac = uid("ac");
    let before = eventually(10, "first poll", || {
        value(&h, "ac", "room_temperature")?.0.as_f64()
    })
    .await;
    h.engine
        .write_point(&ac, "setpoint", json!(20))
        .await
        .unwrap();
    h.engine.write_point(&ac, "on", json!(true)).await.unwrap();
    eventually(15, "room temperature falling", || {
        let now = value(&h, "ac", "room_temperature")?.0.as_f64()?;
        (now < before - 0.3).then_some(())
    })
    .await;
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_starts_on_its_control_key_ramps_up_and_stops() {
    let (h, s, stop) = gen_and_hvac(200).await;
    let genset = uid("gen");
    // In stop mode the controller would ignore start: the engine refuses it before the bus.
    assert!(matches!(
        h.engine.run_command(&genset, "start").await,
        Err(WriteError::NotPossible(_))
    ));
    assert!(s.stats().writes_to(1).is_empty());
    assert!(matches!(
        h.engine.run_command(&genset, "launch").await,
        Err(WriteError::UnknownCommand(_))
    ));
    assert!(
        h.engine
            .run_command(&genset, "manual")
            .await
            .unwrap()
            .status
            .is_ok()
    );
    assert!(
        h.engine
            .run_command(&genset, "start")
            .await
            .unwrap()
            .status
            .is_ok()
    );
    let writes = s
        .stats()
        .writes_to(1)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    let last = writes.last().unwrap();
    assert_eq!(
        (last.function, last.address, last.values.clone()),
        (16, 4104, vec![35705, 29830]),
        "start is one FC16 write of the key and its complement"
    );
    eventually(15, "generator running at full voltage", || {
        let state = value(&h, "gen", "engine_state")?.0;
        let v = value(&h, "gen", "l1_n_voltage")?.0.as_f64()?;
        let f = value(&h, "gen", "frequency")?.0.as_f64()?;
        (state == json!("running") && v > 229.0 && f > 49.9).then_some(())
    })
    .await;
    assert_eq!(value(&h, "gen", "control_mode").unwrap().0, json!("manual"));
    assert!(
        h.engine
            .run_command(&genset, "stop")
            .await
            .unwrap()
            .status
            .is_ok()
    );
    eventually(15, "generator stopped", || {
        (value(&h, "gen", "engine_state")?.0 == json!("stopped")
            && value(&h, "gen", "l1_n_voltage")?.0 == json!(0.0))
        .then_some(())
    })
    .await;
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_exceptions_and_silence_come_back_as_write_outcomes() {
    let (h, s, stop) = gen_and_hvac(200).await;
    let ac = uid("ac");
    s.set_fault(
        Some(2),
        Fault {
            exception: Some(4),
            only_writes: true,
            ..Fault::default()
        },
    );
    let out = h
        .engine
        .write_point(&ac, "setpoint", json!(22))
        .await
        .unwrap();
    assert!(
        matches!(out.status, WriteStatus::Exception { code: 4, .. }),
        "{out:?}"
    );
    s.set_fault(
        Some(2),
        Fault {
            drop: true,
            only_writes: true,
            ..Fault::default()
        },
    );
    let before = s.stats().writes_to(2).len();
    let out = h
        .engine
        .write_point(&ac, "setpoint", json!(23))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Timeout, "{out:?}");
    assert_eq!(
        s.stats().writes_to(2).len(),
        before + 1,
        "a write that timed out is not retried"
    );
    s.clear_faults();
    let out = h
        .engine
        .write_point(&ac, "setpoint", json!(23))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Ok, "the link recovers: {out:?}");
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_goes_offline_with_an_audit_event_and_comes_back_online() {
    let (h, s, stop) = gen_and_hvac(100).await;
    let mut updates = h.engine.subscribe();
    eventually(10, "online", || {
        h.engine
            .units()
            .iter()
            .all(|u| u.online == Some(true))
            .then_some(())
    })
    .await;
    s.set_fault(
        Some(1),
        Fault {
            drop: true,
            ..Fault::default()
        },
    );
    eventually(20, "generator offline", || {
        (h.engine.units()[0].online == Some(false)).then_some(())
    })
    .await;
    // Values of an offline unit are stale, the other unit is unaffected.
    assert_eq!(
        value(&h, "gen", "battery_voltage").unwrap().1,
        Quality::Stale
    );
    assert_eq!(h.engine.units()[1].online, Some(true));
    let mut saw_offline = false;
    while let Ok(u) = updates.try_recv() {
        if let UnitUpdate::Availability {
            unit,
            online: false,
        } = u
        {
            assert_eq!(unit.as_str(), "gen");
            saw_offline = true;
        }
    }
    assert!(saw_offline);
    s.clear_faults();
    eventually(70, "generator back online", || {
        (h.engine.units()[0].online == Some(true)).then_some(())
    })
    .await;
    let kinds = h.audit_kinds().await;
    let gen_events: Vec<_> = kinds
        .iter()
        .filter(|(_, u)| u.as_deref() == Some("gen"))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        gen_events,
        vec!["unit_online", "unit_offline", "unit_online"]
    );
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_unit_on_link_a_does_not_delay_commands_on_link_b() {
    let (a, stop_a) = sim(vec![SimUnit::generator(1)]).await;
    let (b, stop_b) = sim(vec![SimUnit::hvac(2)]).await;
    a.set_fault(
        None,
        Fault {
            drop: true,
            ..Fault::default()
        },
    );
    let h = Harness::start(
        &[
            tcp_link("bus-a", a.addr.unwrap(), 8000),
            tcp_link("bus-b", b.addr.unwrap(), 500),
        ],
        &[
            unit("gen", "bus-a", 1, "dse-gencomm", 100),
            unit("ac", "bus-b", 2, "coolmaster-va", 100),
        ],
        ProfileRegistry::builtin().unwrap(),
    );
    // Link A is now stuck in a transaction that will only time out after 8 s.
    eventually(5, "link a busy", || (a.stats().dropped > 0).then_some(())).await;
    let ac = uid("ac");
    for sp in [20, 21, 22, 23, 24] {
        let out = h
            .engine
            .write_point(&ac, "setpoint", json!(sp))
            .await
            .unwrap();
        assert_eq!(out.status, WriteStatus::Ok);
    }
    let stats = h.engine.link_stats();
    let a_stats = stats.iter().find(|s| s.link == "bus-a").unwrap();
    assert_eq!(
        a_stats.timeouts, 0,
        "all five commands on link B finished while link A was still waiting for its first answer"
    );
    assert_eq!(b.stats().writes_to(2).len(), 5);
    h.shutdown().await;
    stop_a.cancel();
    stop_b.cancel();
}

/// 40 points in three contiguous runs: holding 0..15, holding 100..115 (as 8 u32 + ... ) and
/// input 0..9.
fn forty_points() -> Profile {
    let mut t = String::from("name = \"forty\"\n");
    let mut n = 0;
    for a in 0..15 {
        t.push_str(&format!(
            "[[points]]\nname=\"h{n}\"\nkind=\"holding\"\naddress={a}\ntype=\"u16\"\n"
        ));
        n += 1;
    }
    for i in 0..8 {
        t.push_str(&format!(
            "[[points]]\nname=\"w{n}\"\nkind=\"holding\"\naddress={}\ntype=\"u32\"\n",
            100 + 2 * i
        ));
        n += 1;
    }
    for a in 116..123 {
        t.push_str(&format!(
            "[[points]]\nname=\"h{n}\"\nkind=\"holding\"\naddress={a}\ntype=\"i16\"\n"
        ));
        n += 1;
    }
    for a in 0..10 {
        t.push_str(&format!(
            "[[points]]\nname=\"i{n}\"\nkind=\"input\"\naddress={a}\ntype=\"u16\"\n"
        ));
        n += 1;
    }
    assert_eq!(n, 40);
    Profile::parse(&t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_points_in_three_runs_cost_exactly_three_requests_per_poll_cycle() {
    let p = Arc::new(forty_points());
    let (s, stop) = sim(vec![SimUnit::profile(5, p.clone())]).await;
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        // One cycle at start, then none for an hour: every request is accounted for.
        &[unit("x", "bus", 5, "forty", 3_600_000)],
        ProfileRegistry::from_profiles([(*p).clone()]),
    );
    eventually(10, "first cycle", || {
        (h.engine.units()[0].online == Some(true)).then_some(())
    })
    .await;
    let st = s.stats();
    assert_eq!(st.requests, 3, "{st:?}");
    assert_eq!((st.function(3), st.function(4)), (2, 1));
    s.set_register(5, RegKind::Holding, 101, 7);
    let snap = h
        .engine
        .read_fresh(&uid("x"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(s.stats().requests, 6, "a fresh read is one more cycle of 3");
    assert_eq!(snap.points["w15"].value, json!(7));
    assert!(snap.points.values().all(|v| v.quality == Quality::Good));
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_read_across_an_unmapped_gap_is_split_and_no_point_is_lost() {
    let p = Profile::parse(
        "name = \"gappy\"\n\
         [[points]]\nname=\"a\"\nkind=\"holding\"\naddress=10\ntype=\"u16\"\n\
         [[points]]\nname=\"b\"\nkind=\"holding\"\naddress=11\ntype=\"u16\"\n\
         [[points]]\nname=\"c\"\nkind=\"holding\"\naddress=14\ntype=\"u16\"\n\
         [[points]]\nname=\"d\"\nkind=\"holding\"\naddress=15\ntype=\"u16\"\n",
    )
    .unwrap();
    let p = Arc::new(p);
    // The simulator maps only the points' registers: 12 and 13 answer exception 02.
    let (s, stop) = sim(vec![SimUnit::profile(9, p.clone())]).await;
    for (a, v) in [(10, 1), (11, 2), (14, 3), (15, 4)] {
        s.set_register(9, RegKind::Holding, a, v);
    }
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[unit("g", "bus", 9, "gappy", 3_600_000)],
        ProfileRegistry::from_profiles([(*p).clone()]),
    );
    eventually(10, "every point read", || {
        let snap = h.engine.snapshot(&uid("g"))?;
        snap.points
            .values()
            .all(|v| v.quality == Quality::Good)
            .then_some(())
    })
    .await;
    // First cycle: one coalesced read (exception 02), then the two runs.
    assert_eq!(s.stats().function(3), 3);
    let snap = h
        .engine
        .read_fresh(&uid("g"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        s.stats().function(3),
        5,
        "the split is remembered: two reads per cycle"
    );
    let vals: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| snap.points[*n].value.clone())
        .collect();
    assert_eq!(vals, vec![json!(1), json!(2), json!(3), json!(4)]);
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reads_and_link_statistics_serve_technicians() {
    let (h, _s, stop) = gen_and_hvac(200).await;
    let genset = uid("gen");
    let raw = h
        .engine
        .raw_read(&genset, RegKind::Holding, 768, 2)
        .await
        .unwrap();
    assert_eq!(raw, RawValues::Words(vec![1, 4510]));
    let e = h
        .engine
        .raw_read(&genset, RegKind::Holding, 2304, 4)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        EngineError::Modbus(sitegate::modbus::ModbusError::Exception(2))
    );
    assert!(matches!(
        h.engine.raw_read(&genset, RegKind::Holding, 0, 126).await,
        Err(EngineError::BadRequest(_))
    ));
    assert!(matches!(
        h.engine.raw_read(&genset, RegKind::Holding, 65535, 2).await,
        Err(EngineError::BadRequest(_))
    ));
    let stats = h.engine.link_stats();
    let s = &stats[0];
    assert!(s.requests >= 2 && s.exceptions >= 1 && s.connected, "{s:?}");
    let answered: u64 = s.latency_buckets_ms.iter().map(|b| b.1).sum();
    assert_eq!(
        answered,
        s.requests - s.timeouts - s.transport_errors - s.protocol_errors
    );
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_open_circuit_is_reported_as_quality_and_recovers() {
    let (h, s, stop) = gen_and_hvac(100).await;
    // GenComm: 0xFFFC = transducer fault, 0xFFFE = over measurable range (not 6553.4 V).
    s.set_register(1, RegKind::Holding, 1029, 0xFFFC);
    eventually(10, "open circuit", || {
        (value(&h, "gen", "battery_voltage")? == (serde_json::Value::Null, Quality::OpenCircuit))
            .then_some(())
    })
    .await;
    s.set_register(1, RegKind::Holding, 1029, 0xFFFE);
    eventually(10, "over range", || {
        (value(&h, "gen", "battery_voltage")? == (serde_json::Value::Null, Quality::OverRange))
            .then_some(())
    })
    .await;
    // A signed GenComm value: 0x7FFC is the coolant sender's transducer fault.
    s.set_register(1, RegKind::Holding, 1025, 0x7FFC);
    eventually(10, "coolant sender fault", || {
        (value(&h, "gen", "coolant_temperature")?
            == (serde_json::Value::Null, Quality::OpenCircuit))
            .then_some(())
    })
    .await;
    s.set_register(1, RegKind::Holding, 1029, 131);
    eventually(10, "good again", || {
        (value(&h, "gen", "battery_voltage")? == (json!(13.1), Quality::Good)).then_some(())
    })
    .await;
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_links_talk_rtu_frames_to_a_converter() {
    let stop = CancellationToken::new();
    let s = SimServer::start_rtu_over_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::hvac(7)],
        stop.clone(),
    )
    .await
    .unwrap();
    let mut link = tcp_link("conv", s.addr.unwrap(), 500);
    link.kind = sitegate::config::LinkKind::RtuOverTcp {
        address: s.addr.unwrap().to_string(),
    };
    let h = Harness::start(
        &[link],
        &[unit("ac", "conv", 7, "coolmaster-va", 200)],
        ProfileRegistry::builtin().unwrap(),
    );
    eventually(10, "online", || {
        (value(&h, "ac", "setpoint")?.0 == json!(24.0)).then_some(())
    })
    .await;
    let out = h
        .engine
        .write_point(&uid("ac"), "fan", json!("high"))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::Ok);
    assert_eq!(s.register(7, RegKind::Holding, 17), Some(2));
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_link_task_even_with_a_dead_link() {
    let (a, stop_a) = sim(vec![SimUnit::generator(1)]).await;
    a.set_fault(
        None,
        Fault {
            drop: true,
            ..Fault::default()
        },
    );
    let h = Harness::start(
        &[tcp_link("bus", a.addr.unwrap(), 1000)],
        &[unit("gen", "bus", 1, "dse-gencomm", 100)],
        ProfileRegistry::builtin().unwrap(),
    );
    eventually(5, "busy", || (a.stats().dropped > 0).then_some(())).await;
    let t = Instant::now();
    h.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(10));
    stop_a.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_changes_beyond_the_deadband_and_slow_drift_adds_up() {
    let (h, s, stop) = gen_and_hvac(100).await;
    let mut rx = h.engine.subscribe();
    let room_updates = |rx: &mut tokio::sync::broadcast::Receiver<UnitUpdate>| {
        let mut seen = Vec::new();
        while let Ok(u) = rx.try_recv() {
            if let UnitUpdate::Values { unit, points } = u
                && unit.as_str() == "ac"
                && let Some(p) = points.get("room_temperature")
            {
                seen.push(p.value.clone());
            }
        }
        seen
    };
    for (raw, shown) in [
        (250, json!(25.0)),
        (251, json!(25.1)),
        (252, json!(25.2)),
        (253, json!(25.3)),
    ] {
        s.set_register(2, RegKind::Holding, 22, raw);
        eventually(10, "polled", || {
            (value(&h, "ac", "room_temperature")?.0 == shown).then_some(())
        })
        .await;
    }
    let seen = room_updates(&mut rx);
    // 25 is published; 25.1 and 25.2 are within 0.2 of it; 25.3 is not.
    assert_eq!(seen.last(), Some(&json!(25.3)), "{seen:?}");
    assert!(seen.contains(&json!(25.0)), "{seen:?}");
    assert!(
        !seen.contains(&json!(25.1)) && !seen.contains(&json!(25.2)),
        "{seen:?}"
    );
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_keeps_failing_is_backed_off_so_it_costs_the_bus_little() {
    let (s, stop) = sim(vec![SimUnit::generator(1)]).await;
    s.set_fault(
        None,
        Fault {
            drop: true,
            ..Fault::default()
        },
    );
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 50)],
        &[unit("gen", "bus", 1, "dse-gencomm", 100)],
        ProfileRegistry::builtin().unwrap(),
    );
    eventually(10, "offline", || {
        (h.engine.units()[0].online == Some(false)).then_some(())
    })
    .await;
    // Without back-off this unit would cost two requests (one retry) every ~200 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.reset_stats();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = s.stats().requests;
    assert!(probes <= 2, "{probes} requests in 2 s to an offline unit");
    // A successful interactive request brings it back at once.
    s.clear_faults();
    let raw = h
        .engine
        .raw_read(&uid("gen"), RegKind::Holding, 768, 1)
        .await
        .unwrap();
    assert_eq!(raw, RawValues::Words(vec![1]));
    eventually(5, "online again", || {
        (h.engine.units()[0].online == Some(true)).then_some(())
    })
    .await;
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_is_not_cut_off_by_shutdown() {
    let (h, s, stop) = gen_and_hvac(200).await;
    s.set_fault(
        Some(2),
        Fault {
            delay: Duration::from_millis(400),
            only_writes: true,
            ..Fault::default()
        },
    );
    let engine = h.engine.clone();
    let write =
        tokio::spawn(async move { engine.write_point(&uid("ac"), "setpoint", json!(18)).await });
    eventually(5, "write arrived", || {
        (!s.stats().writes_to(2).is_empty()).then_some(())
    })
    .await;
    h.stop.cancel();
    let out = write.await.unwrap().unwrap();
    assert_eq!(out.status, WriteStatus::Ok, "{out:?}");
    assert_eq!(s.register(2, RegKind::Holding, 18), Some(180));
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_overtakes_the_rest_of_a_poll_cycle() {
    // Ten runs far apart: ten read requests per cycle.
    let mut t = String::from("name = \"ten\"\n");
    for i in 0..10 {
        t.push_str(&format!(
            "[[points]]\nname=\"p{i}\"\nkind=\"holding\"\naddress={}\ntype=\"u16\"\nwrite=\"control\"\n",
            i * 100
        ));
    }
    let p = Arc::new(Profile::parse(&t).unwrap());
    let (s, stop) = sim(vec![SimUnit::profile(3, p.clone())]).await;
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 1000)],
        &[unit("t", "bus", 3, "ten", 10)],
        ProfileRegistry::from_profiles([(*p).clone()]),
    );
    eventually(10, "online", || {
        (h.engine.units()[0].online == Some(true)).then_some(())
    })
    .await;
    // Slow reads keep the bus busy polling.
    s.set_fault(
        None,
        Fault {
            delay: Duration::from_millis(30),
            ..Fault::default()
        },
    );
    for round in 0..3 {
        let n0 = s.stats().requests;
        let out = h
            .engine
            .write_point(&uid("t"), "p9", json!(round))
            .await
            .unwrap();
        assert_eq!(out.status, WriteStatus::Ok);
        let w = s.stats().writes_to(3).last().cloned().cloned().unwrap();
        assert!(
            w.seq <= n0 + 2,
            "the write waited for {} requests (at most the one in flight expected)",
            w.seq - n0 - 1
        );
    }
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reporting_its_target_unreachable_takes_the_unit_offline() {
    let (h, s, stop) = gen_and_hvac(100).await;
    eventually(10, "online", || {
        (h.engine.units()[1].online == Some(true)).then_some(())
    })
    .await;
    // A TCP gateway answers 0x0B for an RTU slave behind it that does not respond.
    s.set_fault(
        Some(2),
        Fault {
            exception: Some(0x0B),
            ..Fault::default()
        },
    );
    eventually(10, "hvac offline", || {
        (h.engine.units()[1].online == Some(false)).then_some(())
    })
    .await;
    assert_eq!(h.engine.units()[0].online, Some(true));
    // An ordinary exception (a device answering) keeps a unit online.
    s.set_fault(
        Some(2),
        Fault {
            exception: Some(0x04),
            ..Fault::default()
        },
    );
    eventually(70, "hvac online again", || {
        (h.engine.units()[1].online == Some(true)).then_some(())
    })
    .await;
    // Its points are polled again and carry the exception (the holding block may come one
    // cycle after the block that brought the unit back).
    eventually(10, "setpoint error", || {
        (value(&h, "ac", "setpoint")?.1 == Quality::Error).then_some(())
    })
    .await;
    h.shutdown().await;
    stop.cancel();
}

/// A present holding register at 1000 and seven input registers the device does not have: five
/// far apart (one request each) and a contiguous pair (one coalesced request, then split).
fn with_absent_registers() -> (Profile, Profile) {
    let present = "[[points]]\nname=\"p\"\nkind=\"holding\"\naddress=1000\ntype=\"u16\"\n";
    let mut t = format!("name = \"absent\"\n{present}");
    for (n, a) in [0, 20, 40, 60, 80, 100, 101].iter().enumerate() {
        t.push_str(&format!(
            "[[points]]\nname=\"a{n}\"\nkind=\"input\"\naddress={a}\ntype=\"u16\"\n"
        ));
    }
    let device = format!("name = \"absent\"\n{present}");
    (
        Profile::parse(&t).unwrap(),
        Profile::parse(&device).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_registers_are_backed_off_and_reported_once() {
    let (p, device) = with_absent_registers();
    // The simulator maps only `p`: every input register answers exception 02.
    let (s, stop) = sim(vec![SimUnit::profile(7, Arc::new(device))]).await;
    s.set_register(7, RegKind::Holding, 1000, 5);
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[unit("x", "bus", 7, "absent", 150)],
        ProfileRegistry::from_profiles([p]),
    );
    let mut rx = h.engine.subscribe();
    // One FC3 (the present register, read last in its cycle) per poll cycle.
    eventually(20, "eight poll cycles", || {
        (s.stats().function(3) >= 8).then_some(())
    })
    .await;
    // Cycle 1: five single reads, the pair (1 + 2 after the split): 8; then the seven absent
    // points are read again in cycles 3 and 6 only (back-off 1, 2, then 4 cycles: next in 11):
    // 8 + 7 + 7. Without back-off: 8 + 7 × 7 = 57.
    let st = s.stats();
    assert_eq!((st.function(3), st.function(4)), (8, 22), "{st:?}");
    let snap = h.engine.snapshot(&uid("x")).unwrap();
    for n in 0..7 {
        let v = &snap.points[&format!("a{n}")];
        assert_eq!(
            (v.quality, &v.value),
            (Quality::Unimplemented, &json!(null))
        );
    }
    assert_eq!(snap.points["p"].quality, Quality::Good);
    assert_eq!(h.engine.units()[0].online, Some(true));
    // Reported once: one update for the unit's first cycle (all eight points), none after.
    let mut updates = Vec::new();
    while let Ok(u) = rx.try_recv() {
        if let UnitUpdate::Values { points, .. } = u {
            updates.push(points);
        }
    }
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].len(), 8);
    assert!(
        (0..7).all(|n| updates[0][&format!("a{n}")].quality == Quality::Unimplemented),
        "{updates:?}"
    );
    // A fresh read tries every point: a register that answers now is present again.
    s.set_register(7, RegKind::Input, 40, 42);
    let snap = h
        .engine
        .read_fresh(&uid("x"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (snap.points["a2"].quality, &snap.points["a2"].value),
        (Quality::Good, &json!(42))
    );
    assert_eq!(snap.points["a3"].quality, Quality::Unimplemented);
    h.shutdown().await;
    stop.cancel();
}
