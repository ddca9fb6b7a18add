//! Installer tools on the command line: `sitegate units test` (read every readable point of a
//! unit and print a table) and `sitegate scan` (probe slave ids on a link and propose `[[units]]`
//! entries).
//!
//! They talk to the bus directly, outside the daemon: on a serial link stop the daemon first (two
//! processes cannot share one RS-485 port). They never write to a device.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::link::{self, ModbusError, Op, Reply};
use super::profile::{Profile, ProfileRegistry};
use super::scheduler;
use super::{ModbusEngine, Quality};
use crate::audit::Audit;
use crate::config::{Config, EX_CONFIG};

#[derive(Debug, Clone, clap::Args)]
pub struct UnitsTestArgs {
    /// The unit to test (default: every unit of the config).
    pub unit: Option<String>,
    #[arg(long, short, default_value = crate::cli::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Time allowed per unit.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// The link (bus) to scan, by name from the config.
    #[arg(long)]
    pub link: String,
    #[arg(long, short, default_value = crate::cli::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Slave ids to probe: `N` or `FROM-TO` (default 1-247).
    #[arg(long, default_value = "1-247")]
    pub range: String,
    /// How long to wait for each id's first answer.
    #[arg(long, default_value_t = 200)]
    pub timeout_ms: u64,
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

fn load(path: &Path) -> Result<(Config, ProfileRegistry), i32> {
    let cfg = crate::cli::load_config(path)?;
    let reg = ProfileRegistry::load(cfg.profiles_dir.as_deref()).map_err(|e| {
        for p in e {
            eprintln!("{p}");
        }
        EX_CONFIG
    })?;
    Ok((cfg, reg))
}

/// `sitegate units test`: exit 0 when every point read with good quality, 1 otherwise.
pub fn units_test(args: UnitsTestArgs) -> i32 {
    let (cfg, reg) = match load(&args.config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let units: Vec<_> = cfg
        .units
        .iter()
        .filter(|u| args.unit.as_deref().is_none_or(|n| u.id.as_str() == n))
        .cloned()
        .map(|mut u| {
            // Only the reads this tool asks for.
            u.poll_interval = Duration::from_secs(24 * 3600);
            u
        })
        .collect();
    if units.is_empty() {
        eprintln!(
            "no unit `{}` in `{}`",
            args.unit.unwrap_or_default(),
            args.config.display()
        );
        return 1;
    }
    let Some(rt) = runtime() else { return 1 };
    rt.block_on(async move {
        let store = match crate::store::Store::open(Path::new(":memory:")) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot open a scratch store: {e}");
                return 1;
            }
        };
        let audit = Audit::new(store, Arc::new(crate::clock::SystemClock), None);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let engine = match ModbusEngine::start(
            &cfg.links,
            &units,
            Arc::new(reg),
            audit,
            stop.clone(),
            &tracker,
        ) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{e}");
                return EX_CONFIG;
            }
        };
        let mut failures = 0;
        for u in &units {
            println!(
                "unit `{}` ({}, link `{}`, slave {})",
                u.id, u.profile, u.link, u.slave
            );
            match engine
                .read_fresh(&u.id, Duration::from_millis(args.timeout_ms))
                .await
            {
                Err(e) => {
                    failures += 1;
                    println!("  FAILED: {e}");
                }
                Ok(snap) => {
                    let profile = engine.profile_of(&u.id);
                    println!(
                        "  {:<32} {:>14} {:<6} {:<14} read",
                        "point", "value", "unit", "quality"
                    );
                    for (name, v) in &snap.points {
                        let read = profile
                            .as_ref()
                            .and_then(|p| p.point(name))
                            .map(|p| p.read.as_str())
                            .unwrap_or("");
                        // Sentinels (unimplemented, open circuit…) are the device's own answer,
                        // not a failure of the read.
                        if matches!(
                            v.quality,
                            Quality::Error | Quality::Unknown | Quality::Stale
                        ) {
                            failures += 1;
                        }
                        println!(
                            "  {:<32} {:>14} {:<6} {:<14} {}",
                            name,
                            v.value.to_string(),
                            v.unit.clone().unwrap_or_default(),
                            v.quality.as_str(),
                            read
                        );
                    }
                }
            }
        }
        stop.cancel();
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
        if failures == 0 {
            println!("all points read");
            0
        } else {
            println!("{failures} failure(s)");
            1
        }
    })
}

fn parse_range(s: &str) -> Result<(u8, u8), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let p = |x: &str| {
        x.trim()
            .parse::<u8>()
            .ok()
            .filter(|v| (1..=247).contains(v))
            .ok_or_else(|| format!("`{x}` is not a slave id (1..=247)"))
    };
    let (a, b) = (p(a)?, p(b)?);
    if a > b {
        return Err(format!("range `{s}` is empty"));
    }
    Ok((a, b))
}

/// What a probe found at one slave id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub slave: u8,
    pub identity: Vec<(u8, String)>,
    /// Profile name and how it was identified.
    pub profile: Option<(String, &'static str)>,
}

async fn read_ok(
    ctx: &mut tokio_modbus::client::Context,
    slave: u8,
    op: &Op,
    t: Duration,
) -> Result<Reply, ModbusError> {
    link::transact(ctx, slave, op, t).await
}

/// Probes one id; `None` when nothing answers.
async fn probe(
    ctx: &mut Option<tokio_modbus::client::Context>,
    link_cfg: &crate::config::Link,
    slave: u8,
    t: Duration,
    profiles: &[Arc<Profile>],
) -> Option<Found> {
    if ctx.is_none() {
        *ctx = link::connect(link_cfg).await.ok();
    }
    let c = ctx.as_mut()?;
    let identity = match link::read_device_id(c, slave, t).await {
        Ok(id) => id,
        Err(ModbusError::Exception(_)) => Vec::new(),
        Err(_) => {
            // No answer (or garbage): re-open so a late answer cannot confuse the next id.
            *ctx = None;
            return None;
        }
    };
    let vendor = identity
        .iter()
        .find(|(id, _)| *id == 0)
        .map(|(_, v)| v.to_lowercase());
    let mut profile = None;
    for p in profiles {
        if !p.signature.is_empty() {
            let mut all = true;
            for s in &p.signature {
                let op = Op::Read {
                    kind: s.kind,
                    addr: s.address,
                    count: 1,
                };
                match read_ok(c, slave, &op, t).await {
                    Ok(Reply::Words(w)) if w.first() == Some(&s.value) => {}
                    Ok(Reply::Bits(b)) if b.first() == Some(&(s.value != 0)) => {}
                    _ => {
                        all = false;
                        break;
                    }
                }
            }
            if all {
                profile = Some((p.name.clone(), "signature registers"));
                break;
            }
        }
    }
    if profile.is_none()
        && let Some(v) = &vendor
    {
        profile = profiles
            .iter()
            .find(|p| {
                p.manufacturer
                    .as_deref()
                    .is_some_and(|m| !v.is_empty() && m.to_lowercase().contains(v.as_str()))
            })
            .map(|p| (p.name.clone(), "device identification (FC43)"));
    }
    if profile.is_none() {
        // Last resort: a profile without signature whose whole read plan answers.
        'outer: for p in profiles.iter().filter(|p| p.signature.is_empty()) {
            let blocks = scheduler::plan(p, 0..p.points.len(), 0, &BTreeSet::new());
            for b in &blocks {
                let op = Op::Read {
                    kind: b.kind,
                    addr: b.start,
                    count: b.count,
                };
                if read_ok(c, slave, &op, t).await.is_err() {
                    continue 'outer;
                }
            }
            if !blocks.is_empty() {
                profile = Some((p.name.clone(), "register map fits (unconfirmed)"));
                break;
            }
        }
    }
    Some(Found {
        slave,
        identity,
        profile,
    })
}

/// Probes `from..=to` on a link and returns what answered.
pub async fn scan_link(
    link_cfg: &crate::config::Link,
    from: u8,
    to: u8,
    per_id: Duration,
    registry: &ProfileRegistry,
) -> Vec<Found> {
    let profiles: Vec<Arc<Profile>> = registry.iter().cloned().collect();
    let mut ctx = None;
    let mut found = Vec::new();
    for slave in from..=to {
        if let Some(f) = probe(&mut ctx, link_cfg, slave, per_id, &profiles).await {
            found.push(f);
        }
        if !link_cfg.inter_frame_delay.is_zero() {
            tokio::time::sleep(link_cfg.inter_frame_delay).await;
        }
    }
    found
}

/// `sitegate scan`: prints proposed `[[units]]` entries.
pub fn scan(args: ScanArgs) -> i32 {
    let (cfg, reg) = match load(&args.config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(link_cfg) = cfg.links.iter().find(|l| l.name.as_str() == args.link) else {
        eprintln!("no link `{}` in `{}`", args.link, args.config.display());
        return 1;
    };
    let (from, to) = match parse_range(&args.range) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("--range: {e}");
            return 2;
        }
    };
    let Some(rt) = runtime() else { return 1 };
    let found = rt.block_on(scan_link(
        link_cfg,
        from,
        to,
        Duration::from_millis(args.timeout_ms.max(10)),
        &reg,
    ));
    println!(
        "# scan of link `{}`, slave ids {from}..={to}: {} unit(s) answered",
        args.link,
        found.len()
    );
    for f in &found {
        println!();
        if !f.identity.is_empty() {
            let id: Vec<String> = f.identity.iter().map(|(_, v)| v.clone()).collect();
            println!("# identifies as: {}", id.join(" / "));
        }
        println!("[[units]]");
        println!("id = \"{}-{}\"", args.link, f.slave);
        println!("link = \"{}\"", args.link);
        println!("slave = {}", f.slave);
        match &f.profile {
            Some((p, how)) => println!("profile = \"{p}\"  # by {how}"),
            None => println!("# profile = \"?\"  # answers, but no profile matched"),
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_ranges_parse_and_reject_bad_ids() {
        assert_eq!(parse_range("1-247"), Ok((1, 247)));
        assert_eq!(parse_range("5"), Ok((5, 5)));
        assert!(parse_range("0-3").is_err());
        assert!(parse_range("9-3").is_err());
        assert!(parse_range("1-300").is_err());
    }
}
