//! The installer tools `sitegate units test` and `sitegate scan`, run as the built binary
//! against the simulator.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration test helpers"
)]

mod common;

use sitegate::sim::{SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

fn write_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\ndir = \"{}\"\n\
             [api]\nlisten = \"127.0.0.1:{}\"\nmode = \"plain\"\nconsole_socket = \"{}\"\n\
             [[links]]\nname = \"bus\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout_ms = 300\n\
             [[units]]\nid = \"gen-1\"\nlink = \"bus\"\nslave = 1\nprofile = \"dse-gencomm\"\n\
             [[units]]\nid = \"ac-1\"\nlink = \"bus\"\nslave = 2\nprofile = \"coolmaster-va\"\n\
             [[units]]\nid = \"ghost\"\nlink = \"bus\"\nslave = 9\nprofile = \"coolmaster-va\"\n",
            dir.join("state").display(),
            common::broker::free_port(),
            dir.join("console.sock").display(),
        ),
    )
    .unwrap();
    path
}

async fn run(args: Vec<String>) -> (i32, String) {
    let (code, out, _) = run_full(args).await;
    (code, out)
}

/// Exit code, stdout and stderr of the binary.
async fn run_full(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sitegate"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A config with one link given as TOML lines and one DSE unit at slave 1 on it.
fn config_with_link(dir: &std::path::Path, link: &str) -> String {
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!(
            "[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{}\"\nmode = \"plain\"\n\
             console_socket = \"{}\"\n\
             [[links]]\nname = \"bus\"\n{link}\ntimeout_ms = 300\n\
             [[units]]\nid = \"gen-1\"\nlink = \"bus\"\nslave = 1\nprofile = \"dse-gencomm\"\n",
            dir.join("state").display(),
            common::broker::free_port(),
            dir.join("console.sock").display(),
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tcp_connection_is_named_with_a_hint_and_fails_scan_and_units_test() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nothing listening on it.
    let port = common::broker::free_port();
    let cfg = config_with_link(
        dir.path(),
        &format!("kind = \"tcp\"\naddress = \"127.0.0.1:{port}\""),
    );
    let (code, out, err) = run_full(args(&[
        "scan", "--link", "bus", "--config", &cfg, "--range", "1-3",
    ]))
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("unit(s) answered"), "{out}");
    assert!(
        err.contains(&format!(
            "link `bus`: `127.0.0.1:{port}`: connection refused (ECONNREFUSED)"
        )),
        "{err}"
    );
    assert!(err.contains("hint: nothing listens there"), "{err}");
    let (code, out, err) = run_full(args(&["units", "test", "--config", &cfg])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("connection refused (ECONNREFUSED)"), "{err}");
    assert!(err.contains("hint: nothing listens there"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_serial_device_is_named_with_a_hint_and_fails_scan_and_units_test() {
    let dir = tempfile::tempdir().unwrap();
    let tty = dir.path().join("ttyUSB-gone");
    let cfg = config_with_link(
        dir.path(),
        &format!(
            "kind = \"rtu\"\ndevice = \"{}\"\nbaud = 9600",
            tty.display()
        ),
    );
    let (code, out, err) = run_full(args(&[
        "scan", "--link", "bus", "--config", &cfg, "--range", "1-3",
    ]))
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("unit(s) answered"), "{out}");
    assert!(
        err.contains(&format!("`{}`: no such device (ENOENT)", tty.display())),
        "{err}"
    );
    assert!(err.contains("hint: check `device` of the link"), "{err}");
    let (code, out, err) = run_full(args(&["units", "test", "gen-1", "--config", &cfg])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no such device (ENOENT)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_port_held_by_the_running_daemon_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
    let mut socat = std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(a.exists() && b.exists()) {
        assert!(std::time::Instant::now() < deadline, "socat made no ptys");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let cfg = config_with_link(
        dir.path(),
        &format!("kind = \"rtu\"\ndevice = \"{}\"\nbaud = 9600", a.display()),
    );
    // A provisioned box, so the daemon runs its Modbus links.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n");
    std::fs::write(&cfg, text).unwrap();
    let (mut daemon, logs) = common::daemon::spawn_run(std::path::Path::new(&cfg), None, &[]);
    // The daemon holds the port once its link task opened it (it logs its API address first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let err = loop {
        let (code, out, err) = run_full(args(&[
            "scan", "--link", "bus", "--config", &cfg, "--range", "1", "--direct",
        ]))
        .await;
        if err.contains("device busy (EBUSY)") {
            assert_eq!(code, 1, "{out}{err}");
            break err;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{out}{err}\n{}",
            logs.all()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        err.contains("hint: the sitegate daemon is running"),
        "{err}"
    );
    assert!(err.contains("systemctl stop sitegate"), "{err}");
    // Without `--direct` the same scan runs through the daemon, on the port it holds (nothing
    // answers on the other end of the PTY).
    let (code, out, err) = run_full(args(&[
        "scan",
        "--link",
        "bus",
        "--config",
        &cfg,
        "--range",
        "1",
        "--timeout-ms",
        "50",
    ]))
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out, "# scan of link `bus`, slave ids 1..=1: 0 unit(s) answered\n",
        "{err}"
    );
    assert!(!err.contains("EBUSY"), "{err}");
    common::daemon::signal(daemon.id(), "TERM");
    let _ = tokio::task::spawn_blocking(move || {
        common::daemon::wait_exit(&mut daemon, std::time::Duration::from_secs(15))
    })
    .await;
    socat.kill().unwrap();
    let _ = socat.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_scan_reports_progress_and_a_scan_where_nobody_answers_fails() {
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port())
        .display()
        .to_string();
    let (code, out, err) = run_full(args(&[
        "scan",
        "--link",
        "bus",
        "--config",
        &cfg,
        "--range",
        "1-12",
        "--timeout-ms",
        "50",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 unit(s) answered"), "{out}");
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("scan: probed"))
        .collect();
    assert_eq!(progress.len(), 2, "{err}");
    assert!(
        progress[0].starts_with("scan: probed 10/12 id(s), 2 answered"),
        "{err}"
    );
    assert!(
        progress[1].starts_with("scan: probed 12/12 id(s), 2 answered"),
        "{err}"
    );

    let (code, out, err) = run_full(args(&[
        "scan",
        "--link",
        "bus",
        "--config",
        &cfg,
        "--range",
        "5-6",
        "--timeout-ms",
        "50",
    ]))
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("0 unit(s) answered"), "{out}");
    assert!(
        err.contains("error: no unit answered on link `bus` (slave ids 5..=6)"),
        "{err}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_test_fails_when_a_point_reads_a_sentinel_and_passes_once_it_reads_a_value() {
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port())
        .display()
        .to_string();
    // The simulated generator has no oil temperature sender: GenComm's "unimplemented".
    let (code, out) = run(args(&["units", "test", "gen-1", "--config", &cfg])).await;
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("oil_temperature "))
        .unwrap();
    assert!(line.contains("unimplemented"), "{out}");
    assert!(out.contains("1 failure(s)"), "{out}");

    // A sender is fitted: the point reads a value and the unit passes.
    let reg = sitegate::modbus::ProfileRegistry::builtin().unwrap();
    let point = reg
        .get("dse-gencomm")
        .unwrap()
        .point("oil_temperature")
        .unwrap()
        .clone();
    assert!(s.set_register(1, point.kind, point.address, 85));
    let (code, out) = run(args(&["units", "test", "gen-1", "--config", &cfg])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("all points read with good quality"), "{out}");
    assert!(s.stats().writes.is_empty(), "the tool never writes");
    stop.cancel();
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_test_prints_every_point_and_fails_for_a_unit_that_does_not_answer() {
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port());
    let cfg = cfg.display().to_string();
    let (code, out) = run(vec![
        "units".into(),
        "test".into(),
        "ac-1".into(),
        "--config".into(),
        cfg.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("setpoint") && out.contains("24") && out.contains("°C"),
        "{out}"
    );
    assert!(out.contains("all points read with good quality"), "{out}");
    let (code, out) = run(vec![
        "units".into(),
        "test".into(),
        "ghost".into(),
        "--config".into(),
        cfg.clone(),
        "--timeout-ms".into(),
        "3000".into(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(s.stats().writes.is_empty(), "the tool never writes");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_and_identifies_units_and_proposes_config_entries() {
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port());
    let (code, out) = run(vec![
        "scan".into(),
        "--link".into(),
        "bus".into(),
        "--config".into(),
        cfg.display().to_string(),
        "--range".into(),
        "1-4".into(),
        "--timeout-ms".into(),
        "100".into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 unit(s) answered"), "{out}");
    assert!(
        out.contains("slave = 1\nprofile = \"dse-gencomm\""),
        "{out}"
    );
    assert!(
        out.contains("slave = 2\nprofile = \"coolmaster-va\""),
        "{out}"
    );
    assert!(!out.contains("slave = 3"), "{out}");
    // The proposed entries are valid config.
    let toml_part: String = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed: toml::Value = toml::from_str(&toml_part).unwrap();
    assert_eq!(parsed["units"].as_array().unwrap().len(), 2);
    assert!(s.stats().writes.is_empty(), "a scan never writes");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_watch_prints_every_point_then_only_what_changes_and_stops_after_count_rounds() {
    use std::io::BufRead;
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port());
    let reg = sitegate::modbus::ProfileRegistry::builtin().unwrap();
    let profile = reg.get("dse-gencomm").unwrap();
    let points = profile.points.len();
    let fuel = profile.point("fuel_level").unwrap().clone();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sitegate"))
        .args([
            "units",
            "watch",
            "gen-1",
            "--count",
            "10",
            "--interval-ms",
            "200",
        ])
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // The header, then every point once (round 1).
    while lines.len() < 1 + points {
        let l = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        lines.push(l);
    }
    // A change while it watches: exactly one more line, in a later round.
    assert!(s.set_register(1, fuel.kind, fuel.address, 50));
    while let Some(l) = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
    {
        lines.push(l);
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        lines[0],
        "watching unit `gen-1` (dse-gencomm, link `bus`, slave 1) every 200 ms"
    );
    // Each value line: a time, then unit, point, value, engineering unit and quality.
    let rest = |l: &str| l.split_once(' ').map(|(_, r)| r.to_string()).unwrap();
    let first: Vec<String> = lines[1..=points].iter().map(|l| rest(l)).collect();
    assert!(
        first.contains(&"gen-1 fuel_level = 78 % (good)".to_string()),
        "{first:?}"
    );
    assert!(
        first.contains(&"gen-1 oil_temperature = null °C (unimplemented)".to_string()),
        "{first:?}"
    );
    assert_eq!(lines.len(), points + 2, "{lines:#?}");
    assert_eq!(rest(&lines[points + 1]), "gen-1 fuel_level = 50 % (good)");
    assert!(s.stats().writes.is_empty(), "the tool never writes");
    stop.cancel();
}

/// `(kind, actor, outcome, unit)` of the audit records of `kinds`, in order, from a stopped
/// daemon's database.
fn audit_of(state: &std::path::Path, kinds: &[&str]) -> Vec<(String, String, String, String)> {
    let store = sitegate::store::Store::open_in(state).unwrap();
    store
        .with_conn(|c| {
            let mut st = c.prepare(
                "SELECT kind, coalesce(actor, ''), outcome, coalesce(unit, '') FROM audit \
                 ORDER BY seq",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            Ok(rows.collect::<Result<Vec<(String, String, String, String)>, _>>()?)
        })
        .unwrap()
        .into_iter()
        .filter(|r| kinds.contains(&r.0.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_units_test_and_watch_run_through_the_running_daemons_console_as_the_console_actor() {
    use std::os::unix::fs::PermissionsExt;
    let stop = CancellationToken::new();
    let s = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(1), SimUnit::hvac(2)],
        stop.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), s.addr.unwrap().port());
    // A provisioned box, so the daemon runs its Modbus links.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[site]\nid = \"s-1\"\ngateway = \"gw-1\"\n");
    std::fs::write(&cfg, text).unwrap();
    let (mut daemon, logs) = common::daemon::spawn_run(&cfg, None, &[]);
    logs.wait_for("console listening", std::time::Duration::from_secs(20));
    let socket = dir.path().join("console.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
    let cfg = cfg.display().to_string();

    let (code, out, err) = run_full(args(&[
        "scan",
        "--link",
        "bus",
        "--config",
        &cfg,
        "--range",
        "1-12",
        "--timeout-ms",
        "50",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}\n{}", logs.all());
    assert!(
        out.starts_with("# scan of link `bus`, slave ids 1..=12: 2 unit(s) answered\n"),
        "{out}"
    );
    assert_eq!(out.matches("[[units]]").count(), 2, "{out}");
    assert!(
        out.contains("slave = 1\nprofile = \"dse-gencomm\""),
        "{out}"
    );
    assert!(
        out.contains("slave = 2\nprofile = \"coolmaster-va\""),
        "{out}"
    );
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("scan: probed"))
        .collect();
    assert_eq!(progress.len(), 2, "{err}");
    assert!(
        progress[0].starts_with("scan: probed 10/12 id(s), 2 answered"),
        "{err}"
    );
    assert!(
        progress[1].starts_with("scan: probed 12/12 id(s), 2 answered"),
        "{err}"
    );

    // The simulated generator has no oil temperature sender: one failure, exit 1.
    let (code, out, err) = run_full(args(&["units", "test", "gen-1", "--config", &cfg])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with("unit `gen-1` (dse-gencomm, link `bus`, slave 1)\n  point "),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("oil_temperature "))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["oil_temperature", "null", "°C", "unimplemented", "view"],
        "{out}"
    );
    assert!(
        out.ends_with("1 failure(s): unit(s) not answering or point(s) not good\n"),
        "{out}"
    );
    let (code, out, err) = run_full(args(&["units", "test", "ac-1", "--config", &cfg])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with("all points read with good quality\n"),
        "{out}"
    );
    // A config the daemon does not run (one more unit, the same console): that unit is named
    // as unknown to the daemon, not as a refusal.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "{}\n[[units]]\nid = \"ac-7\"\nlink = \"bus\"\nslave = 7\nprofile = \"coolmaster-va\"\n",
            std::fs::read_to_string(&cfg).unwrap()
        ),
    )
    .unwrap();
    let other = other.display().to_string();
    let (code, out, err) = run_full(args(&["units", "test", "ac-7", "--config", &other])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out,
        "unit `ac-7` (coolmaster-va, link `bus`, slave 7)\n  FAILED: the running daemon has no \
         unit `ac-7`: its configuration is not this file, or was changed and not reloaded \
         (`systemctl reload sitegate`); `--direct` tests it on the bus\n\
         1 failure(s): unit(s) not answering or point(s) not good\n"
    );
    // `units watch` too: the header, then every point of the unit once.
    let (code, out, err) = run_full(args(&[
        "units", "watch", "gen-1", "--config", &cfg, "--count", "1",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "watching unit `gen-1` (dse-gencomm, link `bus`, slave 1) every 1000 ms"
    );
    let points = sitegate::modbus::ProfileRegistry::builtin()
        .unwrap()
        .get("dse-gencomm")
        .unwrap()
        .points
        .len();
    assert_eq!(lines.len(), 1 + points, "{out}");
    let rest: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    assert!(rest.contains(&"gen-1 fuel_level = 78 % (good)"), "{out}");
    assert!(
        rest.contains(&"gen-1 oil_temperature = null °C (unimplemented)"),
        "{out}"
    );
    assert!(s.stats().writes.is_empty(), "the tools never write");

    common::daemon::signal(daemon.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || {
        common::daemon::wait_exit(&mut daemon, std::time::Duration::from_secs(15))
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        !socket.exists(),
        "the daemon removes its socket when it stops"
    );
    // The daemon and the tools run as the same user here (root or not): admitted.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let actor = format!("console:uid={uid}");
    let row =
        |k: &str, o: &str, u: &str| (k.to_string(), actor.clone(), o.to_string(), u.to_string());
    assert_eq!(
        audit_of(&dir.path().join("state"), &["scan", "unit_test"]),
        vec![
            row("scan", "started", ""),
            row("scan", "ok", ""),
            row("unit_test", "failed", "gen-1"),
            row("unit_test", "ok", "ac-1"),
            row("unit_test", "denied", "ac-7"),
        ]
    );
    stop.cancel();
}
