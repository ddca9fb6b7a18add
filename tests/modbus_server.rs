//! The Modbus server face for building management systems, against third-party clients:
//! pymodbus's TLS client (Modbus/TCP Security) with certificates made by
//! `sitegate modbus-client-cert`, and mbpoll on the plain listener. The face serves the HVAC
//! simulator through the real engine and the real authorization index; every write is counted
//! at the simulator.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test helpers"
)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::modbus::*;
use sitegate::access::{AccessState, Grant, Origin, Policy, User};
use sitegate::authz::Inputs;
use sitegate::bms::config::{PlainListener, TlsListener};
use sitegate::bms::tls::TlsFiles;
use sitegate::bms::{BmsConfig, Face, Listening, PlainAllow, RoleMap};
use sitegate::clock::SystemClock;
use sitegate::modbus::ProfileRegistry;
use sitegate::modbus::profile::RegKind;
use sitegate::model::{CapSet, Capability, GrantId, Management, Role, Scope, SiteId, UserId};
use sitegate::sim::{SimHandle, SimServer, SimUnit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The HVAC's setpoint register (tenths of °C) in the coolmaster-va map.
const SETPOINT: u16 = 18;
/// The Modbus unit id the face exposes the HVAC at (the simulator's own slave id is 2).
const UNIT_ID: u8 = 7;

fn sitegate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sitegate"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sitegate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issues a certificate with the subcommand; returns (cert, key).
fn cert(dir: &Path, ca: &str, name: &str, role: Option<&str>, server: bool) -> (PathBuf, PathBuf) {
    let ca_dir = dir.join(ca);
    let out_dir = dir.join("issued");
    let mut args = vec![
        "modbus-client-cert",
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--name",
        name,
        "--out-dir",
        out_dir.to_str().unwrap(),
    ];
    if let Some(r) = role {
        args.extend(["--role", r]);
    }
    if server {
        args.extend(["--server", "127.0.0.1"]);
    }
    let printed = sitegate(&args);
    assert!(printed.contains("certificate:"), "{printed}");
    (
        out_dir.join(format!("{name}.pem")),
        out_dir.join(format!("{name}.key")),
    )
}

/// Issues a certificate from the CA in `dir/ca` with the library (for the cases the CLI must
/// not make: no role extension, already expired).
fn lib_cert(dir: &Path, name: &str, role: Option<&str>, expired: bool) -> (PathBuf, PathBuf) {
    use sitegate::bms::cert::{Issued, Request, issue};
    let ca = Issued {
        cert_pem: std::fs::read_to_string(dir.join("ca/ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("ca/ca.key")).unwrap(),
    };
    let now = time::OffsetDateTime::now_utc();
    let (nb, na) = if expired {
        (
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
    } else {
        (
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        )
    };
    let c = issue(
        &ca,
        &Request {
            name: name.into(),
            role: role.map(str::to_string),
            not_before: nb,
            not_after: na,
            server_names: None,
        },
    )
    .unwrap();
    let cert = dir.join(format!("issued/{name}.pem"));
    let key = dir.join(format!("issued/{name}.key"));
    std::fs::write(&cert, c.cert_pem).unwrap();
    std::fs::write(&key, c.key_pem).unwrap();
    (cert, key)
}

/// A CRL of the site CA revoking the given certificates (PEM).
fn crl(dir: &Path, certs: &[PathBuf]) -> String {
    let certs: Vec<&Path> = certs.iter().map(PathBuf::as_path).collect();
    common::pki::crl(&dir.join("ca/ca.key"), &dir.join("ca/ca.pem"), &certs, 1)
}

fn site() -> SiteId {
    SiteId::new("site-1").unwrap()
}

/// The applied access state: all features, and the bundle user `bms-bound` holding
/// control-only on the site through grant `g-bms` (revoked when `revoke_bound`).
fn state(features: CapSet, revoke_bound: bool) -> Arc<AccessState> {
    let user = UserId::new("bms-bound").unwrap();
    let gid = GrantId::new("g-bms").unwrap();
    let mut revoked = HashSet::new();
    if revoke_bound {
        revoked.insert(gid.clone());
    }
    Arc::new(AccessState {
        site: Some(site()),
        seq: 1,
        policy: Policy {
            management: Management::Pro,
            features,
            max_offline: Default::default(),
        },
        users: vec![User {
            id: user.clone(),
            email: "bms@example.test".into(),
            name: "BMS".into(),
            active: true,
            password: None,
            business: None,
            owner: false,
        }],
        grants: vec![Grant {
            id: gid,
            user,
            role: Role::ControlOnly,
            scope: Scope::Site(site()),
            not_before: None,
            expires_at: None,
            origin: Origin::Cloud,
        }],
        revoked,
        ..AccessState::default()
    })
}

/// ACME RB4 relay board, from its (invented) vendor register map: four relays as coils 0-3
/// switched with `control`, and a discrete input for the board's supply.
const RB4: &str = r#"name = "acme-rb4"
description = "ACME RB4 four-relay board"
manufacturer = "ACME"

[[points]]
name = "relay_1"
kind = "coil"
address = 0
type = "bool"
write = "control"

[[points]]
name = "relay_2"
kind = "coil"
address = 1
type = "bool"
write = "control"

[[points]]
name = "relay_3"
kind = "coil"
address = 2
type = "bool"
write = "control"

[[points]]
name = "relay_4"
kind = "coil"
address = 3
type = "bool"
write = "control"

[[points]]
name = "supply_ok"
kind = "discrete"
address = 0
type = "bool"
"#;

/// What the simulator behind the face is.
#[derive(Clone, Copy)]
enum Device {
    /// The built-in HVAC (coolmaster-va).
    Hvac,
    /// The relay board of [`RB4`], a profile from the profiles directory.
    Relays,
}

struct Bed {
    dir: tempfile::TempDir,
    sim: SimHandle,
    harness: Harness,
    /// Stages the owner's access state, as a newer bundle would.
    stage: sitegate::authz::owner::Stage,
    listening: Listening,
    stop: CancellationToken,
    tasks: TaskTracker,
    _sim_stop: CancellationToken,
}

impl Bed {
    async fn start(max_age_ms: u64) -> Bed {
        Bed::start_with(max_age_ms, &[]).await
    }

    /// `revoked`: client certificates (role control-only) issued before start and listed in the
    /// CA's CRL the listener is configured with.
    async fn start_with(max_age_ms: u64, revoked: &[&str]) -> Bed {
        Bed::start_on(max_age_ms, revoked, Device::Hvac).await
    }

    async fn start_on(max_age_ms: u64, revoked: &[&str], device: Device) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let sim_stop = CancellationToken::new();
        // The relay board is a device of the installer's own: its profile is read from a
        // `[profiles] dir` like the daemon reads it.
        let (sim_unit, profile, registry) = match device {
            Device::Hvac => (
                SimUnit::hvac(2),
                "coolmaster-va",
                ProfileRegistry::builtin().unwrap(),
            ),
            Device::Relays => {
                let profiles = dir.path().join("profiles");
                std::fs::create_dir(&profiles).unwrap();
                std::fs::write(profiles.join("acme-rb4.toml"), RB4).unwrap();
                let registry = ProfileRegistry::load(Some(&profiles)).unwrap();
                let p = registry.get("acme-rb4").unwrap();
                (SimUnit::profile(2, p), "acme-rb4", registry)
            }
        };
        let sim = SimServer::start_tcp(
            "127.0.0.1:0".parse().unwrap(),
            vec![sim_unit],
            sim_stop.clone(),
        )
        .await
        .unwrap();
        let harness = Harness::start(
            &[tcp_link("bus", sim.addr.unwrap(), 1000)],
            &[unit("ac-1", "bus", 2, profile, 60_000)],
            registry,
        );
        let (authz, _, stage) = sitegate::authz::owner::Access::staged(Inputs {
            site: Some(site()),
            state: state(CapSet::ALL, false),
            inventory: vec![(uid("ac-1"), None)],
            ..Inputs::default()
        });
        let (server_cert, server_key) = cert(dir.path(), "ca", "modbus-server", None, true);
        let mut crls = Vec::new();
        if !revoked.is_empty() {
            let pems: Vec<PathBuf> = revoked
                .iter()
                .map(|n| cert(dir.path(), "ca", n, Some("control-only"), false).0)
                .collect();
            let path = dir.path().join("ca/ca.crl.pem");
            std::fs::write(&path, crl(dir.path(), &pems)).unwrap();
            crls.push(path);
        }
        let cfg = BmsConfig {
            tls: Some(TlsListener {
                listen: "127.0.0.1:0".parse().unwrap(),
                files: TlsFiles {
                    cert: server_cert,
                    key: server_key,
                    ca: dir.path().join("ca/ca.pem"),
                    crls,
                },
            }),
            plain: Some(PlainListener {
                listen: "127.0.0.1:0".parse().unwrap(),
                allow: vec![PlainAllow {
                    source: "127.0.0.1".parse().unwrap(),
                    role: Role::Viewer,
                    client: Some("legacy-bms".into()),
                }],
            }),
            units: vec![(UNIT_ID, uid("ac-1"))],
            roles: RoleMap::standard(),
            max_age: Duration::from_millis(max_age_ms),
            read_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(3),
            max_connections: 4,
        };
        let face = Arc::new(Face::new(
            harness.engine.clone(),
            authz.authz(),
            harness.audit.clone(),
            Arc::new(SystemClock),
            &cfg.units,
            cfg.max_age,
            cfg.read_timeout,
        ));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let listening = sitegate::bms::serve(&cfg, face, stop.clone(), &tasks)
            .await
            .unwrap();
        Bed {
            dir,
            sim,
            harness,
            stage,
            listening,
            stop,
            tasks,
            _sim_stop: sim_stop,
        }
    }

    fn client(&self, cert: &Path, key: &Path) -> Bms {
        Bms::start(
            self.listening.tls.unwrap().port(),
            &self.dir.path().join("ca/ca.pem"),
            cert,
            key,
        )
    }

    fn writes(&self) -> usize {
        self.sim.stats().writes_to(2).len()
    }

    fn reads(&self) -> u64 {
        self.sim.stats().function(3)
    }

    /// `(kind, actor, outcome)` of every audit record.
    async fn audit(&self) -> Vec<(String, Option<String>, String)> {
        self.harness
            .audit
            .store()
            .call(|c| {
                let mut st = c.prepare("SELECT kind, actor, outcome FROM audit ORDER BY seq")?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        self.harness.shutdown().await;
    }
}

/// A pymodbus TLS client process driven line by line (it keeps one connection open).
struct Bms {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    connected: String,
}

impl Bms {
    fn start(port: u16, ca: &Path, cert: &Path, key: &Path) -> Bms {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/bms_tls_client.py"
            ))
            .arg("127.0.0.1")
            .arg(port.to_string())
            .args([ca, cert, key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with pymodbus is installed");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut connected = String::new();
        stdout.read_line(&mut connected).unwrap();
        Bms {
            child,
            stdin,
            stdout,
            connected: connected.trim().to_string(),
        }
    }

    /// Sends one command and returns the client's one-line answer (blocking: run it off the
    /// runtime's worker with `spawn_blocking` when the server shares the runtime).
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Bms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ask(bms: &mut Bms, cmd: &str) -> String {
    tokio::task::block_in_place(|| bms.ask(cmd))
}

async fn start_bms(bed: &Bed, cert: &Path, key: &Path) -> Bms {
    let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
    tokio::task::block_in_place(|| bed.client(&cert, &key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_certificate_reads_points_and_a_write_is_refused_with_exception_01_and_nothing_written()
 {
    let bed = Bed::start(2000).await;
    let (c, k) = cert(bed.dir.path(), "ca", "viewer-bms", Some("viewer"), false);
    let mut bms = start_bms(&bed, &c, &k).await;
    assert_eq!(bms.connected, "connected");
    // mode, fan, setpoint, on: the simulator's defaults (setpoint 24.0 °C = 240).
    assert_eq!(ask(&mut bms, "read 7 18 1").await, "ok 240");
    assert_eq!(ask(&mut bms, "write 7 18 215").await, "exception 1");
    // Repeated, the same refusal is answered the same way but audited once per connection.
    assert_eq!(ask(&mut bms, "write 7 18 216").await, "exception 1");
    assert_eq!(bed.writes(), 0);
    // The diagnostic lock register (needs `diagnose`) is refused, and a gap is 02.
    assert_eq!(ask(&mut bms, "read 7 25 1").await, "exception 1");
    assert_eq!(ask(&mut bms, "read 7 900 1").await, "exception 2");
    // Another unit id is not exposed.
    assert_eq!(ask(&mut bms, "read 2 18 1").await, "exception 10");
    let audit = bed.audit().await;
    assert!(
        audit.contains(&(
            "command".into(),
            Some("modbus:viewer-bms".into()),
            "denied".into()
        )),
        "{audit:?}"
    );
    let denied_writes = audit
        .iter()
        .filter(|(k, _, o)| k == "command" && o == "denied")
        .count();
    assert_eq!(denied_writes, 1, "{audit:?}");
    assert!(
        audit.contains(&(
            "modbus_read".into(),
            Some("modbus:viewer-bms".into()),
            "denied".into()
        )),
        "{audit:?}"
    );
    drop(bms);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_only_certificate_writes_the_setpoint_once_with_read_back_and_bad_values_are_03()
{
    let bed = Bed::start(2000).await;
    let (c, k) = cert(bed.dir.path(), "ca", "ctl-bms", Some("control-only"), false);
    let mut bms = start_bms(&bed, &c, &k).await;
    assert_eq!(bms.connected, "connected");
    assert_eq!(ask(&mut bms, "write 7 18 215").await, "ok");
    assert_eq!(bed.writes(), 1);
    assert_eq!(bed.sim.register(2, RegKind::Holding, SETPOINT), Some(215));
    assert_eq!(ask(&mut bms, "read 7 18 1").await, "ok 215");
    // 40.0 °C is above the profile's 32.0 maximum: refused before the bus (03).
    assert_eq!(ask(&mut bms, "write 7 18 400").await, "exception 3");
    // A read-only point (room temperature) is refused (01).
    assert_eq!(ask(&mut bms, "write 7 22 200").await, "exception 1");
    assert_eq!(bed.writes(), 1);
    let audit = bed.audit().await;
    let ok = audit
        .iter()
        .filter(|(k, a, o)| k == "command" && a.as_deref() == Some("modbus:ctl-bms") && o == "ok")
        .count();
    assert_eq!(ok, 1, "{audit:?}");
    drop(bms);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_without_a_role_from_another_ca_or_expired_are_refused_at_the_handshake() {
    let bed = Bed::start(2000).await;
    let dir = bed.dir.path();
    // Make sure the site CA exists before the library issues from it.
    let _ = cert(dir, "ca", "someone", Some("viewer"), false);
    let cases = [
        ("no role", lib_cert(dir, "no-role", None, false)),
        ("expired", lib_cert(dir, "old", Some("control-only"), true)),
        (
            "another CA",
            cert(dir, "other-ca", "stranger", Some("technician"), false),
        ),
        ("unmapped role", lib_cert(dir, "boss", Some("admin"), false)),
    ];
    let reads_before = bed.reads();
    for (what, (c, k)) in cases {
        let mut bms = start_bms(&bed, &c, &k).await;
        // With TLS 1.3 the client learns of the refusal only when it next reads, so the
        // request it sends must get no answer at all.
        let answer = if bms.connected == "connected" {
            ask(&mut bms, "read 7 18 1").await
        } else {
            "not-connected".into()
        };
        assert!(
            answer == "not-connected" || answer.starts_with("error "),
            "{what}: {answer}"
        );
    }
    assert_eq!(bed.reads(), reads_before);
    assert_eq!(bed.writes(), 0);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoking_bundle_and_a_package_change_take_effect_on_an_open_connection() {
    let bed = Bed::start(2000).await;
    // `bms-bound` is a user of the bundle: its grant caps the certificate's role.
    let (c, k) = cert(bed.dir.path(), "ca", "bms-bound", Some("technician"), false);
    let mut bms = start_bms(&bed, &c, &k).await;
    assert_eq!(ask(&mut bms, "write 7 18 220").await, "ok");
    assert_eq!(bed.writes(), 1);
    // The bundle user's grant is control-only: the technician certificate may not read the
    // diagnostic register.
    assert_eq!(ask(&mut bms, "read 7 25 1").await, "exception 1");
    // The cloud revokes the grant: same connection, refused, nothing written.
    bed.stage.set_state(state(CapSet::ALL, true));
    assert_eq!(ask(&mut bms, "write 7 18 225").await, "exception 1");
    assert_eq!(ask(&mut bms, "read 7 18 1").await, "exception 1");
    assert_eq!(bed.writes(), 1);

    // An unbound control-only client loses `control` when the package drops it.
    let (c, k) = cert(bed.dir.path(), "ca", "ctl-2", Some("control-only"), false);
    let mut other = start_bms(&bed, &c, &k).await;
    assert_eq!(ask(&mut other, "write 7 18 230").await, "ok");
    assert_eq!(bed.writes(), 2);
    bed.stage.set_state(state(
        CapSet::of(&[Capability::View, Capability::Diagnose]),
        true,
    ));
    assert_eq!(ask(&mut other, "write 7 18 231").await, "exception 1");
    assert_eq!(ask(&mut other, "read 7 18 1").await, "ok 230");
    assert_eq!(bed.writes(), 2);
    drop((bms, other));
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_add_no_bus_traffic_within_max_age() {
    let bed = Bed::start(60_000).await;
    let (c, k) = cert(bed.dir.path(), "ca", "poller", Some("viewer"), false);
    let mut bms = start_bms(&bed, &c, &k).await;
    assert_eq!(ask(&mut bms, "read 7 16 4").await, "ok 0,3,240,0");
    let after_first = bed.reads();
    for _ in 0..20 {
        assert_eq!(ask(&mut bms, "read 7 16 4").await, "ok 0,3,240,0");
    }
    assert_eq!(bed.reads(), after_first);
    drop(bms);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_by_the_configured_crl_is_refused_at_the_handshake_and_others_still_work()
 {
    let bed = Bed::start_with(2000, &["lost-laptop"]).await;
    let dir = bed.dir.path().to_path_buf();
    let revoked = (
        dir.join("issued/lost-laptop.pem"),
        dir.join("issued/lost-laptop.key"),
    );
    let mut bms = start_bms(&bed, &revoked.0, &revoked.1).await;
    let answer = if bms.connected == "connected" {
        ask(&mut bms, "write 7 18 215").await
    } else {
        "not-connected".into()
    };
    assert!(
        answer == "not-connected" || answer.starts_with("error "),
        "{answer}"
    );
    assert_eq!(bed.writes(), 0);
    let (c, k) = cert(&dir, "ca", "fresh", Some("control-only"), false);
    let mut good = start_bms(&bed, &c, &k).await;
    assert_eq!(ask(&mut good, "write 7 18 215").await, "ok");
    assert_eq!(bed.writes(), 1);
    drop((bms, good));
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_does_not_hold_up_other_clients() {
    let bed = Bed::start(2000).await;
    // Connects and sends nothing (and another one sends garbage instead of a ClientHello).
    let port = bed.listening.tls.unwrap().port();
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage
        .write_all(&[0, 1, 0, 0, 0, 6, 7, 3, 0, 18, 0, 1])
        .unwrap();
    let (c, k) = cert(bed.dir.path(), "ca", "busy-bms", Some("viewer"), false);
    let mut bms = start_bms(&bed, &c, &k).await;
    assert_eq!(bms.connected, "connected");
    assert_eq!(ask(&mut bms, "read 7 18 1").await, "ok 240");
    drop(bms);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_and_a_freed_place_is_reused() {
    let bed = Bed::start(2000).await;
    let (c, k) = cert(bed.dir.path(), "ca", "many", Some("viewer"), false);
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut b = start_bms(&bed, &c, &k).await;
        assert_eq!(ask(&mut b, "read 7 18 1").await, "ok 240");
        open.push(b);
    }
    let mut fifth = start_bms(&bed, &c, &k).await;
    let answer = if fifth.connected == "connected" {
        ask(&mut fifth, "read 7 18 1").await
    } else {
        "not-connected".into()
    };
    assert!(
        answer == "not-connected" || answer.starts_with("error "),
        "{answer}"
    );
    drop(fifth);
    drop(open.pop());
    // The server notices the closed connection when it next reads from it.
    let mut again = None;
    for _ in 0..50 {
        let mut b = start_bms(&bed, &c, &k).await;
        if b.connected == "connected" && ask(&mut b, "read 7 18 1").await == "ok 240" {
            again = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a freed place is given to a new client");
    drop(open);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_register_write_is_validated_whole_before_anything_is_sent() {
    let bed = Bed::start(2000).await;
    let (c, k) = cert(
        bed.dir.path(),
        "ca",
        "ctl-multi",
        Some("control-only"),
        false,
    );
    let mut bms = start_bms(&bed, &c, &k).await;
    // mode = heat, fan = high, setpoint 40.0 °C (above 32.0): refused whole, nothing written.
    assert_eq!(ask(&mut bms, "writes 7 16 1,2,400").await, "exception 3");
    assert_eq!(bed.writes(), 0);
    // mode = heat, fan = high, setpoint 22.0 °C: three points, three validated writes.
    assert_eq!(ask(&mut bms, "writes 7 16 1,2,220").await, "ok");
    assert_eq!(bed.writes(), 3);
    assert_eq!(ask(&mut bms, "read 7 16 3").await, "ok 1,2,220");
    // Into the wall-controller lock register (a masked point written with `configure`): 01.
    assert_eq!(ask(&mut bms, "writes 7 24 1").await, "exception 1");
    assert_eq!(bed.writes(), 3);
    drop(bms);
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_closes_connections_from_a_source_address_not_listed() {
    use tokio_modbus::prelude::*;
    let bed = Bed::start(2000).await;
    let addr = bed.listening.plain.unwrap();
    let read_from = |source: &'static str| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        let mut ctx = tokio_modbus::client::tcp::attach_slave(stream, Slave(UNIT_ID));
        tokio::time::timeout(
            Duration::from_secs(5),
            ctx.read_holding_registers(SETPOINT, 1),
        )
        .await
        .unwrap()
    };
    // 127.0.0.2 is not listed: the connection is closed without an answer.
    assert!(read_from("127.0.0.2").await.is_err());
    assert_eq!(read_from("127.0.0.1").await.unwrap().unwrap(), vec![240]);
    assert_eq!(bed.writes(), 0);
    bed.shutdown().await;
}

fn mbpoll(args: &[&str]) -> (bool, String) {
    let out = Command::new("mbpoll").args(args).output().expect("mbpoll");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_through_the_plain_listener_as_the_source_addresses_viewer_and_cannot_write() {
    let bed = Bed::start(2000).await;
    let port = bed.listening.plain.unwrap().port().to_string();
    let p = port.as_str();
    let (ok, out) = tokio::task::block_in_place(|| {
        mbpoll(&[
            "-m",
            "tcp",
            "-a",
            "7",
            "-0",
            "-r",
            "18",
            "-c",
            "1",
            "-t",
            "4",
            "-1",
            "-p",
            p,
            "127.0.0.1",
        ])
    });
    assert!(ok && out.contains("[18]: \t240"), "{out}");
    let (_, out) = tokio::task::block_in_place(|| {
        mbpoll(&[
            "-m",
            "tcp",
            "-a",
            "7",
            "-0",
            "-r",
            "18",
            "-t",
            "4",
            "-1",
            "-p",
            p,
            "127.0.0.1",
            "215",
        ])
    });
    assert!(out.contains("Illegal function"), "{out}");
    assert_eq!(bed.writes(), 0);
    let audit = bed.audit().await;
    assert!(
        audit.contains(&(
            "command".into(),
            Some("modbus:legacy-bms".into()),
            "denied".into()
        )),
        "{audit:?}"
    );
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coils_are_read_and_switched_with_fc01_05_15_once_each_with_read_back_and_refused_to_a_viewer()
 {
    let bed = Bed::start_on(2000, &[], Device::Relays).await;
    let dir = bed.dir.path();
    let coil_writes = |bed: &Bed| -> Vec<(u8, u16, Vec<u16>)> {
        bed.sim
            .stats()
            .writes_to(2)
            .iter()
            .map(|w| (w.function, w.address, w.values.clone()))
            .collect()
    };
    let coil = |bed: &Bed, a: u16| bed.sim.register(2, RegKind::Coil, a);

    // A viewer reads the relays (FC01) and is refused a switch (01), nothing reaches the board.
    let (c, k) = cert(dir, "ca", "viewer-bms", Some("viewer"), false);
    let mut viewer = start_bms(&bed, &c, &k).await;
    assert_eq!(viewer.connected, "connected");
    assert_eq!(ask(&mut viewer, "readc 7 0 4").await, "ok 0,0,0,0");
    assert_eq!(ask(&mut viewer, "writec 7 1 1").await, "exception 1");
    assert_eq!(ask(&mut viewer, "writecs 7 1 1,1").await, "exception 1");
    assert_eq!(coil_writes(&bed), vec![]);

    // A control-only client switches relay 2 with FC05: one write at the board, read back.
    let (c, k) = cert(dir, "ca", "ctl-bms", Some("control-only"), false);
    let mut ctl = start_bms(&bed, &c, &k).await;
    assert_eq!(ask(&mut ctl, "writec 7 1 1").await, "ok");
    assert_eq!(coil_writes(&bed), vec![(5, 1, vec![1])]);
    assert_eq!(coil(&bed, 1), Some(1));
    assert_eq!(ask(&mut ctl, "readc 7 0 4").await, "ok 0,1,0,0");

    // FC15 over relays 3 and 4: each relay is a point, validated and written with read-back
    // on its own (one FC05 per point, in address order).
    assert_eq!(ask(&mut ctl, "writecs 7 2 1,1").await, "ok");
    assert_eq!(
        coil_writes(&bed),
        vec![(5, 1, vec![1]), (5, 2, vec![1]), (5, 3, vec![1])]
    );
    assert_eq!(ask(&mut ctl, "readc 7 0 4").await, "ok 0,1,1,1");
    // Off again, one relay.
    assert_eq!(ask(&mut ctl, "writec 7 2 0").await, "ok");
    assert_eq!(coil(&bed, 2), Some(0));
    assert_eq!(coil_writes(&bed).len(), 4);

    // Coils the board's map does not have: 02, for reads and for both write functions, and a
    // range running past the last relay is refused whole.
    assert_eq!(ask(&mut ctl, "readc 7 10 1").await, "exception 2");
    assert_eq!(ask(&mut ctl, "writec 7 10 1").await, "exception 2");
    assert_eq!(ask(&mut ctl, "writecs 7 3 1,1").await, "exception 2");
    assert_eq!(coil_writes(&bed).len(), 4);
    assert_eq!(coil(&bed, 3), Some(1));
    // The supply input is a discrete input, not a coil.
    assert_eq!(ask(&mut ctl, "readc 7 4 1").await, "exception 2");

    // The viewer's refusals of relay 2 are audited once per connection, the switches each.
    let audit = bed.audit().await;
    let count = |actor: &str, outcome: &str| {
        audit
            .iter()
            .filter(|(k, a, o)| k == "command" && a.as_deref() == Some(actor) && o == outcome)
            .count()
    };
    assert_eq!(count("modbus:viewer-bms", "denied"), 1, "{audit:?}");
    assert_eq!(count("modbus:ctl-bms", "ok"), 4, "{audit:?}");
    drop((viewer, ctl));
    bed.shutdown().await;
}
