//! The Modbus server face in the real daemon, configured by `[modbus_server]`: a pymodbus TLS
//! client with a certificate from `sitegate modbus-client-cert`, and a signed bundle that revokes
//! the client's grant taking effect on its open connection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test helpers"
)]

mod e2e_support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use e2e_support::*;
use serde_json::json;

fn issue(dir: &Path, name: &str, role: Option<&str>) {
    let ca = dir.join("ca");
    let out = dir.join("issued");
    let mut args = vec![
        "modbus-client-cert".to_string(),
        "--ca-dir".into(),
        ca.display().to_string(),
        "--name".into(),
        name.into(),
        "--out-dir".into(),
        out.display().to_string(),
    ];
    match role {
        Some(r) => args.extend(["--role".into(), r.into()]),
        None => args.extend(["--server".into(), "127.0.0.1".into()]),
    }
    let o = Command::new(env!("CARGO_BIN_EXE_sitegate"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

struct Bms {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Bms {
    fn start(port: u16, dir: &Path, name: &str) -> Bms {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/bms_tls_client.py"
            ))
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg(dir.join("ca/ca.pem"))
            .arg(dir.join(format!("issued/{name}.pem")))
            .arg(dir.join(format!("issued/{name}.key")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with pymodbus");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "connected");
        Bms {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        tokio::task::block_in_place(|| {
            writeln!(self.stdin, "{cmd}").unwrap();
            self.stdin.flush().unwrap();
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            line.trim().to_string()
        })
    }
}

impl Drop for Bms {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn members(with_bms: bool) -> Vec<Member> {
    let mut m = vec![Member {
        user: "vera",
        role: "viewer",
        scope: json!({"site": SITE}),
        grant: "g-viewer",
    }];
    if with_bms {
        m.push(Member {
            user: "bms-1",
            role: "control-only",
            scope: json!({"unit": "hvac-1"}),
            grant: "g-bms",
        });
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_modbus_tls_from_its_config_and_a_revoking_bundle_stops_writes_on_the_open_connection()
 {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    issue(dir, "modbus-server", None);
    issue(dir, "bms-1", Some("technician"));
    let extra = format!(
        r#"
[modbus_server]
max_age_ms = 1000

[modbus_server.tls]
listen = "127.0.0.1:0"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[[modbus_server.units]]
unit = "hvac-1"
unit_id = 1
"#,
        ca = dir.join("ca/ca.pem").display(),
        cert = dir.join("issued/modbus-server.pem").display(),
        key = dir.join("issued/modbus-server.key").display(),
    );
    let s = Site::start("plain", &extra).await;
    s.apply(bundle(1, &members(true), &[])).await;
    let port = s
        .daemon
        .site
        .as_ref()
        .unwrap()
        .modbus_server
        .as_ref()
        .unwrap()
        .tls
        .unwrap()
        .port();
    let writes = || s.sim.stats().writes_to(HVAC1_SLAVE).len();

    let mut bms = Bms::start(port, dir, "bms-1");
    assert_eq!(bms.ask("read 1 18 1"), "ok 240");
    assert_eq!(bms.ask("write 1 18 215"), "ok");
    assert_eq!(writes(), 1);
    // The certificate says technician, but the bundle user `bms-1` holds control-only: the
    // diagnostic register stays closed.
    assert_eq!(bms.ask("read 1 25 1"), "exception 1");

    // The cloud revokes the grant: the next write on the same connection is refused.
    s.apply(bundle(2, &members(true), &["g-bms"])).await;
    assert_eq!(bms.ask("write 1 18 220"), "exception 1");
    assert_eq!(bms.ask("read 1 18 1"), "exception 1");
    assert_eq!(writes(), 1);
    // Counted with the LAN API's denials.
    let text = s.daemon.site.as_ref().unwrap().metrics.render(0);
    assert!(
        text.contains(r#"sitegate_authz_denials_total{capability="control",reason="no_grant"} 1"#),
        "{text}"
    );
    drop(bms);
}
