//! A device the box has never seen: the installer writes its profile from the vendor's register
//! map into `[profiles] dir` (docs/modbus.md), and it works everywhere a built-in does:
//! `check-config`, `scan`, `units test`, `provision` and `run`. A broken profile file fails
//! `check-config` and `run` with exit 78, naming the file and the key.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "integration test")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{Out, free_port, signal, sitegate, spawn_run, wait_exit};
use sitegate::modbus::{Profile, RegKind};
use sitegate::sim::{SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

/// ACME PM10 power meter, from its (invented) vendor register map: 0-based addresses, input
/// registers for measurements, a holding register for the CT ratio, and a model code to
/// recognise it by.
const PM10: &str = r#"name = "acme-pm10"
description = "ACME PM10 three-phase power meter (register map rev 3)"
manufacturer = "ACME"

[[points]]
name = "voltage_l1"
kind = "input"
address = 0
type = "u16"
scale = 0.1
unit = "V"

[[points]]
name = "active_power"
kind = "input"
address = 2
type = "i32"
unit = "W"
deadband = 50

[[points]]
name = "ct_ratio"
kind = "holding"
address = 100
type = "u16"
min = 1.0
max = 5000.0
write = "configure"

[[signature]]
kind = "holding"
address = 200
value = 1010
"#;

async fn sitegate_async(args: Vec<String>) -> Out {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sitegate(&args)
    })
    .await
    .unwrap()
}

/// A config (relative `[profiles] dir`, as an installer writes it) with the meter at slave 5.
fn write_config(dir: &Path, sim_port: u16, api_port: u16) -> String {
    let path = dir.join("sitegate.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\nmode = \"plain\"\n\
             [profiles]\ndir = \"profiles\"\n\
             [[links]]\nname = \"bus\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{sim_port}\"\ntimeout_ms = 300\n\
             [[units]]\nid = \"meter-1\"\nlink = \"bus\"\nslave = 5\nprofile = \"acme-pm10\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_written_for_a_new_device_works_in_check_config_scan_units_test_provision_and_run()
 {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    std::fs::write(dir.path().join("profiles/acme-pm10.toml"), PM10).unwrap();
    let profile = Arc::new(Profile::parse(PM10).unwrap());
    let stop = CancellationToken::new();
    let sim = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::profile(5, profile)],
        stop.clone(),
    )
    .await
    .unwrap();
    // Readings as the meter would give them: 230.4 V, 1500 W, CT 200:5 → 40.
    assert!(sim.set_register(5, RegKind::Input, 0, 2304));
    assert!(sim.set_register(5, RegKind::Input, 3, 1500));
    assert!(sim.set_register(5, RegKind::Holding, 100, 40));
    let api_port = free_port();
    let cfg = write_config(dir.path(), sim.addr.unwrap().port(), api_port);

    let out = sitegate_async(vec!["check-config".into(), "--config".into(), cfg.clone()]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("1 unit(s)"), "{}", out.stdout);

    let out = sitegate_async(
        [
            "scan",
            "--link",
            "bus",
            "--config",
            &cfg,
            "--range",
            "4-6",
            "--timeout-ms",
            "100",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("slave = 5\nprofile = \"acme-pm10\"  # by signature registers"),
        "{}",
        out.stdout
    );

    let out = sitegate_async(
        ["units", "test", "meter-1", "--config", &cfg]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for (point, value) in [
        ("voltage_l1", "230.4"),
        ("active_power", "1500"),
        ("ct_ratio", "40"),
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{point} ")))
            .unwrap_or_else(|| panic!("no {point}: {}", out.stdout));
        assert!(line.contains(value) && line.contains(" good "), "{line}");
    }

    // Provisioning keeps the unit that names the custom profile.
    let pk = sitegate::grants::fleet::public_key_b64(
        &sitegate::grants::fleet::keypair_from_seed(&[42u8; 32]).unwrap(),
    );
    let state = dir.path().join("state");
    let out = sitegate_async(
        [
            "provision",
            "--config",
            &cfg,
            "--site",
            "s-1",
            "--gateway",
            "gw-1",
            "--state-dir",
            state.to_str().unwrap(),
            "--trust",
            &format!("fleet-a={pk}"),
            "--api-listen",
            &format!("127.0.0.1:{api_port}"),
            "--non-interactive",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("profile = \"acme-pm10\""), "{text}");

    // The daemon runs it: the meter's input registers are polled.
    sim.reset_stats();
    let (mut child, logs) = spawn_run(Path::new(&cfg), None, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.stats().function(4) == 0 {
        assert!(Instant::now() < deadline, "never polled: {}", logs.all());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(child.id(), "TERM");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.success(), "{st:?}");
    assert!(sim.stats().writes.is_empty(), "nothing was written");
    stop.cancel();
}

#[test]
fn a_broken_profile_file_fails_check_config_and_run_with_78_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    let broken = PM10.replace("type = \"i32\"", "type = \"i33\"");
    let file = dir.path().join("profiles/acme-pm10.toml");
    std::fs::write(&file, broken).unwrap();
    let cfg = write_config(dir.path(), free_port(), free_port());
    let out = sitegate(&["check-config", "--config", &cfg]);
    assert_eq!(out.code, 78, "{}{}", out.stdout, out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("profiles.dir"))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(line.contains(&file.display().to_string()), "{line}");
    assert!(line.contains("i33"), "{line}");
    assert!(line.contains("type"), "{line}");
    // The unit that names it is not reported as "no profile named": the file's problem explains.
    assert!(!out.stderr.contains("no profile named"), "{}", out.stderr);

    let out = sitegate(&["run", "--config", &cfg]);
    assert_eq!(out.code, 78, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&file.display().to_string()),
        "{}",
        out.stderr
    );

    // A unit naming a profile that exists nowhere is still refused.
    std::fs::write(&file, PM10).unwrap();
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("acme-pm10", "acme-pm11"),
    )
    .unwrap();
    let out = sitegate(&["check-config", "--config", &cfg]);
    assert_eq!(out.code, 78, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no profile named `acme-pm11`"),
        "{}",
        out.stderr
    );
}
