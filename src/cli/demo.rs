//! `sitegate demo`: a complete site on loopback in one command, for someone trying sitegate.
//!
//! It owns a demo state directory (a fresh temp dir unless one is given, kept afterwards), a
//! demo fleet signing key stored there, a simulated Modbus bus (a generator at slave 3 and an
//! HVAC indoor unit at slave 7, in-process), a config file written there, a signed bundle with
//! four users (passwords random and printed), and the daemon itself, started in-process. It
//! prints exactly what to try next as `  $ curl …` lines. It never binds anything but what the
//! user asked for (default loopback) and never touches `/etc/sitegate` or `/var/lib/sitegate`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::Daemon;
use crate::clock::{Clock, SystemClock, rfc3339};
use crate::grants::fleet;
use crate::notify::Notifier;
use crate::signal::Signals;
use crate::sim::{SimServer, SimUnit};

/// Site and gateway ids of the demo.
pub const SITE: &str = "demo-site";
pub const GATEWAY: &str = "demo-gw";
/// Kid of the demo fleet key.
pub const KID: &str = "demo-fleet";
/// PBKDF2 rounds of the demo passwords: far below the 600,000 a real bundle should use, so that
/// the demo starts and logs in quickly.
pub const DEMO_ITERATIONS: u32 = 10_000;
/// Default LAN API address of the demo.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// State directory (default: a new temp dir, kept and printed).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// LAN API address (default 127.0.0.1:8443, or a free port if that one is busy).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// MQTT broker url, e.g. `mqtt://127.0.0.1:1883` (without one, events wait in the outbox).
    #[arg(long)]
    pub mqtt: Option<String>,
}

/// One demo user.
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub id: &'static str,
    pub role: &'static str,
    pub email: &'static str,
    pub password: String,
    /// Shell variable the printed instructions put this user's session token in.
    pub token_var: &'static str,
}

fn users() -> Vec<DemoUser> {
    let pw = || crate::util::random_hex(6);
    vec![
        DemoUser {
            id: "u-viewer",
            role: "viewer",
            email: "viewer@demo.local",
            password: pw(),
            token_var: "VIEWER_TOKEN",
        },
        DemoUser {
            id: "u-control",
            role: "control-only",
            email: "control@demo.local",
            password: pw(),
            token_var: "CONTROL_TOKEN",
        },
        DemoUser {
            id: "u-tech",
            role: "technician",
            email: "tech@demo.local",
            password: pw(),
            token_var: "TECH_TOKEN",
        },
        DemoUser {
            id: "u-admin",
            role: "admin",
            email: "admin@demo.local",
            password: pw(),
            token_var: "ADMIN_TOKEN",
        },
    ]
}

/// Loads the demo fleet key from the state dir, or makes it.
fn fleet_key(state: &Path) -> anyhow::Result<ring::signature::Ed25519KeyPair> {
    let path = state.join("demo-fleet.pk8");
    if !path.exists() {
        let doc = fleet::generate_pkcs8()?;
        crate::util::write_private(&path, &doc)
            .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", path.display()))?;
    }
    Ok(fleet::load_pkcs8(&path)?)
}

/// The demo rewrites the config and the grants of its state dir: refuse a directory that has
/// something in it and was not made by a demo (a real box's `/var/lib/sitegate`, a home dir).
fn check_state_dir(state: &Path) -> anyhow::Result<()> {
    let mut entries = match std::fs::read_dir(state) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot read `{}`: {e}", state.display()),
    };
    if entries.next().is_some() && !state.join("demo-fleet.pk8").exists() {
        anyhow::bail!(
            "`{}` is not empty and was not made by `sitegate demo`; \
             give a new or empty directory with --state-dir",
            state.display()
        );
    }
    Ok(())
}

/// Picks the API address: the one asked for, else the default, else a free loopback port.
fn pick_listen(asked: Option<SocketAddr>) -> SocketAddr {
    if let Some(a) = asked {
        return a;
    }
    let default: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8443));
    match std::net::TcpListener::bind(default) {
        Ok(_) => default,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn toml_str(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// The demo's config file.
pub fn config_text(
    state: &Path,
    listen: SocketAddr,
    sim: SocketAddr,
    public_key: &str,
    mqtt: Option<&str>,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# written by `sitegate demo`\n");
    let _ = writeln!(
        t,
        "[site]\nid = \"{SITE}\"\ngateway = \"{GATEWAY}\"\nname = \"Demo site\"\n"
    );
    let _ = writeln!(t, "[state]\ndir = {}\n", toml_str(&state.to_string_lossy()));
    let _ = writeln!(t, "[api]\nlisten = \"{listen}\"\nmode = \"tls\"\n");
    let _ = writeln!(
        t,
        "[[grants.trust]]\nkid = \"{KID}\"\npublic_key = \"{public_key}\"\n"
    );
    if let Some(url) = mqtt {
        let _ = writeln!(t, "[mqtt]\nurl = {}\n", toml_str(url));
    }
    let _ = writeln!(
        t,
        "[[links]]\nname = \"bus\"\nkind = \"tcp\"\naddress = \"{sim}\"\ntimeout_ms = 1000\n"
    );
    let _ = writeln!(
        t,
        "[[units]]\nid = \"gen-1\"\nlink = \"bus\"\nslave = 3\nprofile = \"dse-gencomm\"\n"
    );
    let _ = writeln!(
        t,
        "[[units]]\nid = \"hvac-1\"\nlink = \"bus\"\nslave = 7\nprofile = \"coolmaster-va\""
    );
    t
}

/// The signed bundle: four users with site-wide grants, policy `independent` with every feature.
pub fn bundle(
    key: &ring::signature::Ed25519KeyPair,
    users: &[DemoUser],
    seq: u64,
    issued_at: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut us = Vec::new();
    let mut gs = Vec::new();
    for u in users {
        us.push(serde_json::json!({
            "id": u.id, "email": u.email, "name": format!("Demo {}", u.role), "active": true,
            "password": fleet::hash_password(&u.password, DEMO_ITERATIONS)?,
        }));
        gs.push(serde_json::json!({
            "id": format!("g-{}", u.id.trim_start_matches("u-")), "user": u.id, "role": u.role,
            "scope": {"site": SITE},
        }));
    }
    let desc = serde_json::json!({
        "site": SITE, "seq": seq, "issued_at": issued_at,
        "policy": {"management": "independent",
                   "features": ["view", "control", "diagnose", "configure", "manage_users"]},
        "users": us, "grants": gs, "revoked": [],
    });
    Ok(fleet::sign_bundle_description(
        key,
        KID,
        &serde_json::to_vec(&desc)?,
    )?)
}

/// One instruction line: a shell command, the HTTP status it gets, and (for a login) the
/// variable to put the returned token in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub command: String,
    pub expect: u16,
    pub sets: Option<&'static str>,
}

impl Step {
    /// `  $ <command>    # expect <status>[, then: export VAR=<token>]`
    pub fn line(&self) -> String {
        match self.sets {
            Some(v) => format!(
                "  $ {}    # expect {}, then: export {v}=<token>",
                self.command, self.expect
            ),
            None => format!("  $ {}    # expect {}", self.command, self.expect),
        }
    }
}

/// The walk-through printed by the demo.
pub fn steps(cert: &Path, base: &str, users: &[DemoUser]) -> Vec<Step> {
    let curl = format!("curl -sS --cacert '{}'", cert.display());
    let json = "-H 'content-type: application/json'";
    let by_role = |r: &str| users.iter().find(|u| u.role == r);
    let login = |u: &DemoUser| Step {
        command: format!(
            "{curl} -X POST {base}/session {json} -d '{{\"email\":\"{}\",\"password\":\"{}\"}}'",
            u.email, u.password
        ),
        expect: 201,
        sets: Some(u.token_var),
    };
    let bearer = |u: &DemoUser| format!("-H \"authorization: Bearer ${}\"", u.token_var);
    let mut out = Vec::new();
    let (Some(viewer), Some(control), Some(tech), Some(admin)) = (
        by_role("viewer"),
        by_role("control-only"),
        by_role("technician"),
        by_role("admin"),
    ) else {
        return out;
    };
    out.push(login(control));
    out.push(Step {
        command: format!("{curl} {base}/units {}", bearer(control)),
        expect: 200,
        sets: None,
    });
    out.push(Step {
        command: format!(
            "{curl} -X PUT {base}/units/hvac-1/points/setpoint {} {json} -d '{{\"value\":22.5}}'",
            bearer(control)
        ),
        expect: 200,
        sets: None,
    });
    // The generator powers up in stop mode: a start there is refused (409
    // not_possible_in_mode, nothing sent); select manual, then start, which is read back.
    for (cmd, expect) in [("start", 409), ("manual", 200), ("start", 200)] {
        out.push(Step {
            command: format!(
                "{curl} -X POST {base}/units/gen-1/commands/{cmd} {}",
                bearer(control)
            ),
            expect,
            sets: None,
        });
    }
    out.push(login(viewer));
    out.push(Step {
        command: format!("{curl} {base}/units/gen-1 {}", bearer(viewer)),
        expect: 200,
        sets: None,
    });
    out.push(Step {
        command: format!(
            "{curl} -X POST {base}/units/gen-1/commands/stop {}",
            bearer(viewer)
        ),
        expect: 403,
        sets: None,
    });
    out.push(login(tech));
    out.push(Step {
        command: format!("{curl} {base}/units/gen-1/diagnostics {}", bearer(tech)),
        expect: 200,
        sets: None,
    });
    out.push(login(admin));
    out.push(Step {
        command: format!("{curl} '{base}/audit?limit=5' {}", bearer(admin)),
        expect: 200,
        sets: None,
    });
    out
}

/// Runs `sitegate demo` until SIGINT/SIGTERM; returns the exit code.
pub fn run(args: DemoArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sitegate-demo")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(async move {
        match run_async(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run_async(args: DemoArgs) -> anyhow::Result<i32> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut signals = Signals::install()?;
    let state = match args.state_dir.clone() {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("sitegate-demo-{}", crate::util::random_hex(4))),
    };
    check_state_dir(&state)?;
    std::fs::create_dir_all(&state)
        .map_err(|e| anyhow::anyhow!("cannot create `{}`: {e}", state.display()))?;
    let state = std::fs::canonicalize(&state)?;
    let key = fleet_key(&state)?;

    // The simulated bus.
    let stop_sim = CancellationToken::new();
    let sim = SimServer::start_tcp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![SimUnit::generator(3), SimUnit::hvac(7)],
        stop_sim.clone(),
    )
    .await?;
    let sim_addr = sim
        .addr
        .ok_or_else(|| anyhow::anyhow!("the simulator has no address"))?;

    let listen = pick_listen(args.listen);
    let config_path = state.join("sitegate.toml");
    let text = config_text(
        &state,
        listen,
        sim_addr,
        &fleet::public_key_b64(&key),
        args.mqtt.as_deref(),
    );
    crate::util::write_public(&config_path, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", config_path.display()))?;
    let cfg = match super::shared::load_config(&config_path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // The certificate names localhost (and the listen address when it is not loopback).
    let mut names = crate::tls::default_names();
    if !listen.ip().is_loopback() && !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    let tls = crate::tls::ensure_self_signed(&state, &names)?;

    let daemon = Daemon::start(cfg, Arc::new(SystemClock), Notifier::from_env(&|_| None)).await?;
    let Some(running) = daemon.site.clone() else {
        anyhow::bail!("the demo config is not provisioned");
    };

    let users = users();
    let now = SystemClock.now();
    // A fresh seq on every start, so a kept state dir takes the new passwords.
    let seq = u64::try_from(now.unix_timestamp()).unwrap_or(1).max(1);
    let envelope = bundle(&key, &users, seq, &rfc3339(now))?;
    let running2 = running.clone();
    let applied =
        tokio::task::spawn_blocking(move || running2.apply_envelope(None, &envelope, "demo"))
            .await?;
    if let Err(r) = applied {
        anyhow::bail!("the demo bundle was rejected ({}): {}", r.reason, r.message);
    }

    let port = daemon.api_addr.port();
    let host = if daemon.api_addr.ip().is_loopback() || daemon.api_addr.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        match daemon.api_addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    let base = format!("https://{host}:{port}/api/v1");
    print_intro(&state, &config_path, &base, &tls, sim_addr, &users, &args);
    for s in steps(&tls.cert_path, &base, &users) {
        println!("{}", s.line());
    }
    println!();
    println!(
        "Press Ctrl-C to stop. The state dir is kept: {}",
        state.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    tokio::select! {
        _ = signals.wait() => {}
        _ = daemon.stopped() => {}
    }
    let code = daemon.stop(true).await;
    stop_sim.cancel();
    Ok(code)
}

fn print_intro(
    state: &Path,
    config: &Path,
    base: &str,
    tls: &crate::tls::TlsMaterial,
    sim: SocketAddr,
    users: &[DemoUser],
    args: &DemoArgs,
) {
    println!("sitegate demo is running");
    println!("  state dir:   {}", state.display());
    println!("  config:      {}", config.display());
    println!("  API:         {base}");
    println!("  TLS cert:    {}", tls.cert_path.display());
    println!("  TLS sha256:  {}", tls.fingerprint);
    println!("  Modbus sim:  {sim} (generator gen-1 at slave 3, HVAC hvac-1 at slave 7)");
    match &args.mqtt {
        Some(u) => {
            println!("  MQTT:        {u} (events wait in the outbox while it is down)");
            println!("  MQTT topics: sitegate/v1/{SITE}/{GATEWAY}/# (status, telemetry, events)");
        }
        None => println!("  MQTT:        off (events wait in the outbox; pass --mqtt URL)"),
    }
    println!(
        "  fleet key:   {} (kid `{KID}`)",
        state.join("demo-fleet.pk8").display()
    );
    println!();
    println!(
        "Users (site-wide grants; demo passwords use {DEMO_ITERATIONS} PBKDF2 rounds, \
         not the 600,000 a real bundle should use):"
    );
    for u in users {
        println!("  {:<13} {:<20} password {}", u.role, u.email, u.password);
    }
    println!();
    println!("Try it (run the lines in order; after each login, export the \"token\" it returns):");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid_and_the_bundle_verifies() {
        let dir = std::env::temp_dir().join(format!("sg-demo-{}", crate::util::random_hex(4)));
        let key = fleet::keypair_from_seed(&[3u8; 32]).unwrap();
        let text = config_text(
            &dir,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:5020".parse().unwrap(),
            &fleet::public_key_b64(&key),
            Some("mqtt://127.0.0.1:1"),
        );
        let cfg = crate::config::Config::parse(&text, &dir, &|p| {
            p == "dse-gencomm" || p == "coolmaster-va"
        })
        .unwrap();
        assert_eq!(cfg.units.len(), 2);
        let env = bundle(&key, &users(), 7, "2026-11-26T00:00:00Z").unwrap();
        let pk = fleet::public_key(&key).unwrap();
        let vb = crate::grants::VerifiedBundle::verify(&env, &move |k: &str| {
            if k == KID {
                Ok(pk)
            } else {
                Err(crate::grants::KeyError::Unknown)
            }
        })
        .unwrap();
        assert_eq!(vb.bundle().users.len(), 4);
    }

    #[test]
    fn every_step_line_carries_its_expected_status() {
        let u = users();
        let s = steps(
            Path::new("/s/tls/cert.pem"),
            "https://localhost:1/api/v1",
            &u,
        );
        assert_eq!(s.iter().filter(|x| x.sets.is_some()).count(), 4);
        assert!(s.iter().any(|x| x.expect == 403));
        for x in &s {
            assert!(x.line().starts_with("  $ curl "), "{}", x.line());
            assert!(x.line().contains(&format!("# expect {}", x.expect)));
        }
    }
}
