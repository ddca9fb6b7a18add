//! The built-in profiles against simulators typed in from the vendors' documents (not generated
//! from the profiles): every point of every profile is read and its decoded value and quality
//! compared with what the document says the register holds. A profile that reads the wrong
//! register, the wrong nibble or the wrong sentinel fails here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test helpers"
)]

mod common;

use std::collections::BTreeMap;

use common::modbus::*;
use serde_json::{Value, json};
use sitegate::config::Unit;
use sitegate::modbus::profile::RegKind;
use sitegate::modbus::{ProfileRegistry, Quality, WriteError, WriteStatus};
use sitegate::sim::{SimHandle, SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

async fn sim(units: Vec<SimUnit>) -> (SimHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let h = SimServer::start_tcp("127.0.0.1:0".parse().unwrap(), units, stop.clone())
        .await
        .unwrap();
    (h, stop)
}

/// Waits until every point of `unit` has been read, then returns `point → (value, quality)`.
async fn all_points(h: &Harness, unit: &str) -> BTreeMap<String, (Value, Quality)> {
    eventually(15, "every point read", || {
        let snap = h.engine.snapshot(&uid(unit))?;
        snap.points
            .values()
            .all(|p| p.quality != Quality::Unknown)
            .then(|| {
                snap.points
                    .iter()
                    .map(|(k, p)| (k.clone(), (p.value.clone(), p.quality)))
                    .collect()
            })
    })
    .await
}

fn good(v: Value) -> (Value, Quality) {
    (v, Quality::Good)
}

/// The meaning of every register of the DSE simulator at power-up, per the GenComm documents.
fn dse_expected(alarm_count: u64, alarms: &[&str]) -> BTreeMap<String, (Value, Quality)> {
    let mut m: BTreeMap<String, (Value, Quality)> = [
        ("model_number", good(json!(4510))),
        ("control_mode", good(json!("stop"))),
        ("engine_state", good(json!("stopped"))),
        ("oil_pressure", good(json!(0))),
        ("coolant_temperature", good(json!(21))),
        // Oil temperature is not fitted: 0x7FFF, "unimplemented", not 32767 °C.
        ("oil_temperature", (Value::Null, Quality::Unimplemented)),
        ("fuel_level", good(json!(78))),
        ("charge_alternator_voltage", good(json!(0.0))),
        ("battery_voltage", good(json!(13.1))),
        ("engine_speed", good(json!(0))),
        ("frequency", good(json!(0.0))),
        ("l1_n_voltage", good(json!(0.0))),
        ("l1_current", good(json!(0.0))),
        ("l1_power", good(json!(0))),
        ("engine_hours", good(json!(1234.0))),
        ("number_of_starts", good(json!(87))),
        ("alarm_count", good(json!(alarm_count))),
        // Functions 0-7 (modes, start, mute, panel reset) and 32-35 (telemetry start/stop, reset
        // alarm codes, clear telemetry flag); function 0 is the most significant bit.
        ("supported_functions_0_15", good(json!(0xFF00))),
        ("supported_functions_32_47", good(json!(0xF000))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for a in alarms {
        m.insert((*a).to_string(), good(json!("not_active")));
    }
    m
}

const PAGE8_ALARMS: [&str; 12] = [
    "alarm_emergency_stop",
    "alarm_low_oil_pressure",
    "alarm_high_coolant_temperature",
    "alarm_high_oil_temperature",
    "alarm_under_speed",
    "alarm_over_speed",
    "alarm_fail_to_start",
    "alarm_fail_to_stop",
    "alarm_charge_alternator_failure",
    "alarm_low_battery",
    "alarm_high_battery",
    "alarm_low_fuel",
];

const PAGE154_ALARMS: [&str; 12] = [
    "alarm_emergency_stop",
    "alarm_low_oil_pressure",
    "alarm_high_coolant_temperature",
    "alarm_low_coolant_temperature",
    "alarm_under_speed",
    "alarm_over_speed",
    "alarm_low_battery",
    "alarm_high_battery",
    "alarm_charge_alternator_failure",
    "alarm_fail_to_start",
    "alarm_fail_to_stop",
    "alarm_low_fuel",
];

async fn dse(profile: &str, sim_unit: SimUnit) -> (Harness, SimHandle, CancellationToken) {
    let (s, stop) = sim(vec![sim_unit]).await;
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[unit("gen", "bus", 1, profile, 100)],
        ProfileRegistry::builtin().unwrap(),
    );
    (h, s, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_point_of_the_page8_dse_profile_reads_what_gencomm_puts_in_that_register() {
    let (h, _s, stop) = dse("dse-gencomm", SimUnit::generator(1)).await;
    let got = all_points(&h, "gen").await;
    assert_eq!(got, dse_expected(28, &PAGE8_ALARMS));
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_point_of_the_page154_dse_profile_reads_what_gencomm_puts_in_that_register() {
    let (h, _s, stop) = dse("dse-gencomm-page154", SimUnit::generator_page154(1)).await;
    let mut want = dse_expected(24, &PAGE154_ALARMS);
    want.insert("model_number".into(), good(json!(7320)));
    let got = all_points(&h, "gen").await;
    assert_eq!(got, want);
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_nibbles_decode_in_the_documented_positions_and_reset_alarms_clears_the_latched_ones()
{
    let (h, s, stop) = dse("dse-gencomm", SimUnit::generator(1)).await;
    all_points(&h, "gen").await;
    // Page 8 offset 2: under speed, over speed, fail to start (bits 5-8) = shutdown, fail to stop.
    s.set_register(1, RegKind::Holding, 2050, 0x1131);
    // Offset 7: low battery warning (bits 13-16), high battery "active indication" (10), low fuel
    // not active, high fuel unimplemented.
    s.set_register(1, RegKind::Holding, 2055, 0x2A1F);
    // Offset 1: emergency stop shutdown, the others reserved code 5 / disabled / not active.
    s.set_register(1, RegKind::Holding, 2049, 0x3501);
    let want: [(&str, Value, Quality); 9] = [
        ("alarm_under_speed", json!("not_active"), Quality::Good),
        ("alarm_over_speed", json!("not_active"), Quality::Good),
        ("alarm_fail_to_start", json!("shutdown"), Quality::Good),
        ("alarm_fail_to_stop", json!("not_active"), Quality::Good),
        ("alarm_low_battery", json!("warning"), Quality::Good),
        (
            "alarm_high_battery",
            json!("active_indication"),
            Quality::Good,
        ),
        ("alarm_low_fuel", json!("not_active"), Quality::Good),
        ("alarm_emergency_stop", json!("shutdown"), Quality::Good),
        // Code 5 is reserved: shown as the number with quality bad_data, never as a label.
        ("alarm_low_oil_pressure", json!(5), Quality::BadData),
    ];
    eventually(10, "alarms decoded", || {
        let snap = h.engine.snapshot(&uid("gen"))?;
        want.iter()
            .all(|(p, v, q)| snap.points[*p].value == *v && snap.points[*p].quality == *q)
            .then_some(())
    })
    .await;
    let snap = h.engine.snapshot(&uid("gen")).unwrap();
    assert_eq!(
        snap.points["alarm_high_coolant_temperature"].value,
        json!("disabled")
    );

    let out = h
        .engine
        .run_command(&uid("gen"), "reset_alarms")
        .await
        .unwrap();
    assert!(out.status.is_ok(), "{out:?}");
    let w = s.stats().writes_to(1).last().cloned().cloned().unwrap();
    assert_eq!(
        (w.function, w.address, w.values),
        (16, 4104, vec![35734, 29801])
    );
    // Function 34 resets warnings, shutdowns and trips; indications and reserved codes stay.
    assert_eq!(s.register(1, RegKind::Holding, 2050), Some(0x1111));
    assert_eq!(s.register(1, RegKind::Holding, 2055), Some(0x1A1F));
    assert_eq!(s.register(1, RegKind::Holding, 2049), Some(0x1501));
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_controller_ignores_a_start_key_in_stop_mode_and_refuses_unsupported_keys() {
    use tokio_modbus::client::Writer;
    let (s, stop) = sim(vec![SimUnit::generator(1)]).await;
    let mut c = tokio_modbus::client::tcp::connect_slave(s.addr.unwrap(), tokio_modbus::Slave(1))
        .await
        .unwrap();
    // Stop mode: the key is accepted and ignored, like the real controller.
    c.write_multiple_registers(4104, &[35705, 29830])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.register(1, RegKind::Holding, 1408), Some(0));
    assert_eq!(
        s.register(1, RegKind::Holding, 1809),
        Some(87),
        "no start counted"
    );
    // Function 20 is not implemented, a wrong complement and FC06 are refused: exception 07.
    for (addr, words) in [(4104u16, vec![35720u16, 29815]), (4104, vec![35705, 29831])] {
        let e = c.write_multiple_registers(addr, &words).await.unwrap();
        assert_eq!(e, Err(tokio_modbus::ExceptionCode::new(7)));
    }
    let e = c.write_single_register(4104, 35705).await.unwrap();
    assert_eq!(e, Err(tokio_modbus::ExceptionCode::new(7)));
    assert_eq!(s.register(1, RegKind::Holding, 772), Some(0));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_in_stop_mode_is_refused_as_not_possible_and_in_manual_it_is_read_back_running() {
    let (h, s, stop) = dse("dse-gencomm", SimUnit::generator(1)).await;
    let gen_id = uid("gen");
    all_points(&h, "gen").await;
    let e = h.engine.run_command(&gen_id, "start").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "command `start` is not possible while `control_mode` is \"stop\" (possible in: manual, test_on_load, test_off_load)"
    );
    assert!(matches!(e, WriteError::NotPossible(_)));
    assert!(
        s.stats().writes.is_empty(),
        "nothing reached the controller"
    );

    let out = h.engine.run_command(&gen_id, "manual").await.unwrap();
    assert_eq!(
        (out.status, out.read_back),
        (WriteStatus::Ok, Some(json!("manual")))
    );
    // The command returns as soon as the engine state shows the start (pre-start lasts 300 ms).
    let out = h.engine.run_command(&gen_id, "start").await.unwrap();
    assert_eq!(
        (out.status, out.read_back),
        (WriteStatus::Ok, Some(json!("pre_start")))
    );
    let mut seen = vec![s.register(1, RegKind::Holding, 1408).unwrap()];
    eventually(10, "running", || {
        let v = s.register(1, RegKind::Holding, 1408)?;
        if seen.last() != Some(&v) {
            seen.push(v);
        }
        (v == 3).then_some(())
    })
    .await;
    assert_eq!(seen, vec![1, 2, 3], "engine operating states in order");
    assert_eq!(s.register(1, RegKind::Holding, 1809), Some(88));
    // The stop key selects stop mode and stops the engine at once.
    let out = h.engine.run_command(&gen_id, "stop").await.unwrap();
    assert_eq!(
        (out.status, out.read_back),
        (WriteStatus::Ok, Some(json!("stop")))
    );
    assert_eq!(s.register(1, RegKind::Holding, 1408), Some(0));
    let writes: Vec<(u16, Vec<u16>)> = s
        .stats()
        .writes
        .iter()
        .map(|w| (w.address, w.values.clone()))
        .collect();
    assert_eq!(
        writes,
        vec![
            (4104, vec![35702, 29833]),
            (4104, vec![35705, 29830]),
            (4104, vec![35700, 29835])
        ]
    );
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_controller_does_not_report_supported_is_not_offered_and_not_sent() {
    let (h, s, stop) = dse("dse-gencomm", SimUnit::generator(1)).await;
    let gen_id = uid("gen");
    // Function 5 (start) withdrawn from the flags of register 4096.
    s.set_register(1, RegKind::Holding, 4096, 0xFB00);
    eventually(10, "flags polled", || {
        (!h.engine.command_offered(&gen_id, "start")?).then_some(())
    })
    .await;
    assert_eq!(h.engine.command_offered(&gen_id, "manual"), Some(true));
    h.engine.run_command(&gen_id, "manual").await.unwrap();
    s.reset_stats();
    let e = h.engine.run_command(&gen_id, "start").await.unwrap_err();
    assert!(matches!(e, WriteError::NotSupported(_)), "{e}");
    assert!(
        e.to_string().contains("`supported_functions_0_15` = 64256"),
        "{e}"
    );
    assert!(s.stats().writes.is_empty());
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_result_does_not_show_within_its_bound_is_reported_unverified() {
    let (s, stop) = sim(vec![SimUnit::generator(1)]).await;
    // The built-in profile with a short read-back bound for `start`.
    let text = include_str!("../config/profiles/dse-gencomm.toml")
        .replace("name = \"dse-gencomm\"", "name = \"dse-short\"")
        .replace("within_ms = 10000", "within_ms = 300");
    let reg =
        ProfileRegistry::from_profiles([sitegate::modbus::profile::Profile::parse(&text).unwrap()]);
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[unit("gen", "bus", 1, "dse-short", 100)],
        reg,
    );
    let gen_id = uid("gen");
    all_points(&h, "gen").await;
    h.engine.run_command(&gen_id, "manual").await.unwrap();
    // The engine state register is stuck at "stopped" (the controller never starts).
    s.set_register(1, RegKind::Holding, 1408, 0);
    let out = h.engine.run_command(&gen_id, "start").await.unwrap();
    assert_eq!(
        out.status,
        WriteStatus::Unverified {
            reason: "`engine_state` is \"stopped\" 300 ms after the command, expected one of: pre_start, warming_up, running".into()
        }
    );
    assert_eq!(out.read_back, Some(json!("stopped")));
    h.shutdown().await;
    stop.cancel();
}

fn va_unit(id: &str, slave: u8, va: u16, poll_ms: u64) -> Unit {
    let mut u = unit(id, "bus", slave, "coolmaster-va", poll_ms);
    u.va = Some(va);
    u
}

fn hvac_expected() -> BTreeMap<String, (Value, Quality)> {
    [
        ("mode", good(json!("cool"))),
        ("fan", good(json!("auto"))),
        ("setpoint", good(json!(24.0))),
        ("on", good(json!(false))),
        ("filter_sign", good(json!(false))),
        ("swing", good(json!("auto"))),
        ("room_temperature", good(json!(26.8))),
        ("failure_code", good(json!(0))),
        ("wall_controller_lock", good(json!(0))),
        ("set_temperature_limits", good(json!(0))),
        ("therm_on", good(json!(false))),
        ("indoor_comm_failure", good(json!(false))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_indoor_units_behind_one_gateway_slave_id_read_their_own_vas_in_merged_requests() {
    let (s, stop) = sim(vec![SimUnit::coolmaster(5, &[1, 2])]).await;
    // A distinct state per indoor unit so that a unit reading its neighbour's VA would show.
    s.set_register(5, RegKind::Holding, 32 + 1, 2);
    // Polled once (long interval): every request of the first cycle is counted.
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[va_unit("ac-1", 5, 1, 60_000), va_unit("ac-2", 5, 2, 60_000)],
        ProfileRegistry::builtin().unwrap(),
    );
    let got1 = all_points(&h, "ac-1").await;
    let got2 = all_points(&h, "ac-2").await;
    assert_eq!(got1, hvac_expected());
    let mut want2 = hvac_expected();
    want2.insert("fan".into(), good(json!("high")));
    assert_eq!(got2, want2);
    // Holding 16-25 and 32-41 are one read (gap of 6 within max_gap 8); the discrete inputs
    // 16-17 and 32-33 are 14 apart, so two reads.
    let st = s.stats();
    assert_eq!((st.function(3), st.function(2)), (1, 2), "{st:?}");

    // A write lands on the unit's own VA.
    let out = h
        .engine
        .write_point(&uid("ac-2"), "mode", json!("vam_heat_exchange"))
        .await
        .unwrap();
    assert!(out.status.is_ok(), "{out:?}");
    assert_eq!(s.register(5, RegKind::Holding, 32), Some(10));
    assert_eq!(s.register(5, RegKind::Holding, 16), Some(0));
    // The lock register takes bit 7 (inhibit all) and refuses undefined bits before the bus.
    let out = h
        .engine
        .write_point(&uid("ac-1"), "wall_controller_lock", json!(0x80))
        .await
        .unwrap();
    assert!(out.status.is_ok(), "{out:?}");
    assert_eq!(s.register(5, RegKind::Holding, 24), Some(0x80));
    let before = s.stats().writes.len();
    assert!(
        h.engine
            .write_point(&uid("ac-1"), "wall_controller_lock", json!(0x08))
            .await
            .is_err()
    );
    assert_eq!(s.stats().writes.len(), before);
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_indoor_unit_behind_a_live_gateway_reads_stale_while_its_neighbour_stays_good() {
    let (s, stop) = sim(vec![SimUnit::coolmaster(5, &[1, 2])]).await;
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[va_unit("ac-1", 5, 1, 100), va_unit("ac-2", 5, 2, 100)],
        ProfileRegistry::builtin().unwrap(),
    );
    all_points(&h, "ac-1").await;
    all_points(&h, "ac-2").await;
    assert!(s.set_indoor_failure(5, 2, true));
    eventually(10, "ac-2 stale", || {
        let snap = h.engine.snapshot(&uid("ac-2"))?;
        let fail = &snap.points["indoor_comm_failure"];
        (fail.value == json!(true)
            && fail.quality == Quality::Good
            && snap
                .points
                .iter()
                .filter(|(k, _)| k.as_str() != "indoor_comm_failure")
                .all(|(_, p)| p.quality == Quality::Stale))
        .then_some(())
    })
    .await;
    // The gateway itself still answers: both units stay online, the neighbour stays good.
    let units = h.engine.units();
    assert!(units.iter().all(|u| u.online == Some(true)), "{units:?}");
    let snap = h.engine.snapshot(&uid("ac-1")).unwrap();
    assert!(
        snap.points.values().all(|p| p.quality == Quality::Good),
        "{snap:?}"
    );
    assert!(s.set_indoor_failure(5, 2, false));
    eventually(10, "ac-2 good again", || {
        let snap = h.engine.snapshot(&uid("ac-2"))?;
        snap.points
            .values()
            .all(|p| p.quality == Quality::Good)
            .then_some(())
    })
    .await;
    assert!(!s.set_indoor_failure(5, 9, true), "no indoor unit at VA 9");
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_point_of_the_sdm630_profile_reads_the_float_the_manual_puts_at_its_start_address() {
    let (s, stop) = sim(vec![SimUnit::sdm630(4)]).await;
    let h = Harness::start(
        &[tcp_link("bus", s.addr.unwrap(), 500)],
        &[unit("meter", "bus", 4, "eastron-sdm630", 60_000)],
        ProfileRegistry::builtin().unwrap(),
    );
    let got = all_points(&h, "meter").await;
    let want: BTreeMap<String, (Value, Quality)> = [
        ("l1_voltage", 230.5),
        ("l2_voltage", 229.75),
        ("l3_voltage", 231.0),
        ("l1_current", 1.5),
        ("l2_current", 2.25),
        ("l3_current", 0.5),
        ("l1_power", 345.0),
        ("l2_power", 517.5),
        ("l3_power", 115.5),
        ("total_power", 978.0),
        ("power_factor", 0.98),
        ("frequency", 50.0),
        ("import_energy", 1234.5),
        ("export_energy", 12.25),
        ("total_energy", 1246.75),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), good(json!(v))))
    .collect();
    assert_eq!(got, want);
    // Input registers only (FC04), three coalesced reads: 0x00-0x11, 0x34-0x4B, 0x156-0x157,
    // each below the meter's 80-register limit.
    let st = s.stats();
    assert_eq!((st.function(4), st.function(3)), (3, 0), "{st:?}");
    h.shutdown().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_auto_mode_a_remote_start_runs_the_engine_and_a_remote_stop_cools_it_down() {
    let (h, s, stop) = dse("dse-gencomm", SimUnit::generator(1)).await;
    let gen_id = uid("gen");
    all_points(&h, "gen").await;
    // Telemetry start is for auto mode only: refused in stop mode, nothing sent.
    assert!(matches!(
        h.engine.run_command(&gen_id, "remote_start").await,
        Err(WriteError::NotPossible(_))
    ));
    assert!(s.stats().writes.is_empty());
    h.engine.run_command(&gen_id, "auto").await.unwrap();
    let out = h.engine.run_command(&gen_id, "remote_start").await.unwrap();
    assert_eq!(
        (out.status, out.read_back),
        (WriteStatus::Ok, Some(json!("pre_start")))
    );
    eventually(10, "running", || {
        (s.register(1, RegKind::Holding, 1408)? == 3).then_some(())
    })
    .await;
    let out = h.engine.run_command(&gen_id, "remote_stop").await.unwrap();
    assert_eq!(
        (out.status, out.read_back),
        (WriteStatus::Ok, Some(json!("cooling_down")))
    );
    eventually(10, "stopped after cooling down", || {
        (s.register(1, RegKind::Holding, 1408)? == 0).then_some(())
    })
    .await;
    assert_eq!(
        s.register(1, RegKind::Holding, 772),
        Some(1),
        "still in auto"
    );
    h.shutdown().await;
    stop.cancel();
}
