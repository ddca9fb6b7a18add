//! docs/operations.md, run: every fenced `sh` block of the document, in order, in one temporary
//! "box" (the test maps `/etc/sitegate`, `/var/lib/sitegate` and `/root` into a temp dir and the
//! gateway address `192.168.1.50:502` to a simulated bus). A block preceded by
//! `<!-- not run: REASON -->` is skipped: those need root, systemd, a package install or the
//! daemon running, which scripts/package-test and the tests named in the reason cover. Every other
//! block must exit 0; then the outcomes the document promises are checked (the backup is mode
//! 0600 and holds the config, the restore brings the same site back, …).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use sitegate::modbus::ProfileRegistry;
use sitegate::sim::{SimServer, SimUnit};
use tokio_util::sync::CancellationToken;

/// One fenced block: its first line number, its text, and why it is not run (if so).
struct Block {
    line: usize,
    text: String,
    skip: Option<String>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate().peekable();
    let mut last_text: Option<&str> = None;
    while let Some((i, l)) = lines.next() {
        if l.trim_start().starts_with("```sh") {
            let skip = last_text.and_then(|t| {
                t.trim()
                    .strip_prefix("<!-- not run:")
                    .and_then(|r| r.strip_suffix("-->"))
                    .map(|r| r.trim().to_string())
            });
            let mut text = String::new();
            for (_, b) in lines.by_ref() {
                if b.trim_start().starts_with("```") {
                    break;
                }
                text.push_str(b);
                text.push('\n');
            }
            out.push(Block {
                line: i + 1,
                text,
                skip,
            });
            last_text = None;
        } else if !l.trim().is_empty() {
            last_text = Some(l);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_operations_guide_runs_in_order() {
    let doc = include_str!("../docs/operations.md");
    // Every command is in a fenced block the test sees (none hides in an indented block).
    for (i, l) in doc.lines().enumerate() {
        for cmd in ["sitegate ", "systemctl ", "curl ", "journalctl ", "apt "] {
            assert!(
                !l.starts_with(&format!("    {cmd}")),
                "docs/operations.md:{}: an indented command; put it in a ```sh block",
                i + 1
            );
        }
    }
    let stop = CancellationToken::new();
    let sim = SimServer::start_tcp(
        "127.0.0.1:0".parse().unwrap(),
        vec![SimUnit::generator(3), SimUnit::hvac(7)],
        stop.clone(),
    )
    .await
    .unwrap();
    // The generator has an oil temperature sender fitted (else `units test` rightly fails).
    let reg = ProfileRegistry::builtin().unwrap();
    let oil = reg
        .get("dse-gencomm")
        .unwrap()
        .point("oil_temperature")
        .unwrap()
        .clone();
    assert!(sim.set_register(3, oil.kind, oil.address, 85));

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let map = |s: &str| {
        s.replace("/etc/sitegate", &format!("{}/etc/sitegate", root.display()))
            .replace(
                "/var/lib/sitegate",
                &format!("{}/var/lib/sitegate", root.display()),
            )
            .replace("/root/", &format!("{}/root/", root.display()))
            .replace("192.168.1.50:502", &sim.addr.unwrap().to_string())
    };
    // What the package leaves: the config directory with the shipped, unprovisioned config.
    for d in ["etc/sitegate", "var/lib", "root", "home", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("etc/sitegate/sitegate.toml"),
        map(include_str!("../packaging/debian/sitegate.toml")),
    )
    .unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_sitegate"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let all = blocks(doc);
    let mut ran = 0;
    let mut skipped = 0;
    for b in &all {
        if let Some(reason) = &b.skip {
            assert!(
                !reason.is_empty(),
                "docs/operations.md:{}: a skipped block must say why",
                b.line
            );
            skipped += 1;
            continue;
        }
        let script = map(&b.text);
        let out = tokio::task::spawn_blocking({
            let (script, path, root) = (script.clone(), path.clone(), root.to_path_buf());
            move || {
                Command::new("bash")
                    .args(["-euo", "pipefail", "-c", &script])
                    .current_dir(root.join("work"))
                    .env("PATH", path)
                    .env("HOME", root.join("home"))
                    .env_remove("RUST_LOG")
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "docs/operations.md:{}: the block exited {:?}\n--- block ---\n{script}--- stdout ---\n{}--- stderr ---\n{}",
            b.line,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 10 && skipped >= 1, "ran {ran}, skipped {skipped}");

    // What the guide promises.
    let backup = root.join("root/sitegate-backup.tar");
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds private keys");
    let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(&backup).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n.ends_with("sitegate.toml")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with("sitegate.db")),
        "{names:?}"
    );
    let cfg = std::fs::read_to_string(root.join("etc/sitegate/sitegate.toml")).unwrap();
    assert!(cfg.contains("id = \"s-1042\""), "{cfg}");
    assert!(
        sim.stats().writes.is_empty(),
        "no command of the guide writes to a device"
    );
    stop.cancel();
}
