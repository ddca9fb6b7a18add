//! `sitegate units watch`: live decoded values of one unit (or every unit), read directly on the
//! bus, one line per point whose value or quality changed (every point on the first round).
//!
//! Like `units test` it talks to the bus itself, outside the daemon, and never writes: on a serial
//! link stop the daemon first. While the daemon runs, watch its values through the API instead
//! (`GET /api/v1/units/stream`, see docs/operations.md). Bounded with `--count N` (rounds);
//! otherwise it runs until Ctrl-C.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::modbus::Quality;

#[derive(Debug, Clone, clap::Args)]
pub struct UnitsWatchArgs {
    /// The unit to watch (default: every unit of the config).
    pub unit: Option<String>,
    #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Time between two rounds of reads.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many rounds (default: until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// Time allowed per unit and round.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

/// What was last printed for one point.
type Shown = BTreeMap<(String, String), (Value, Quality)>;

/// `sitegate units watch`: exit 0 after `--count` rounds or Ctrl-C, 1 when a link cannot be
/// opened or the unit is unknown.
pub fn units_watch(args: UnitsWatchArgs) -> i32 {
    let (cfg, reg) = match super::shared::load_with_profiles(&args.config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let units = match super::units::tool_units(&cfg, args.unit.as_deref(), &args.config) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 1;
    };
    rt.block_on(async move {
        let tool = match super::units::ToolEngine::start(&cfg, &units, reg).await {
            Ok(t) => t,
            Err(code) => return code,
        };
        let engine = &tool.engine;
        for u in &units {
            println!(
                "watching unit `{}` ({}, link `{}`, slave {}) every {} ms",
                u.id, u.profile, u.link, u.slave, args.interval_ms
            );
        }
        let mut shown: Shown = BTreeMap::new();
        let mut failing: BTreeMap<String, String> = BTreeMap::new();
        let mut round = 0u64;
        let interval = Duration::from_millis(args.interval_ms);
        loop {
            round += 1;
            for u in &units {
                let id = u.id.to_string();
                match engine
                    .read_fresh(&u.id, Duration::from_millis(args.timeout_ms))
                    .await
                {
                    Err(e) => {
                        let why = e.to_string();
                        if failing.get(&id) != Some(&why) {
                            println!("{} {id} FAILED: {why}", now());
                            failing.insert(id, why);
                        }
                    }
                    Ok(snap) => {
                        if failing.remove(&id).is_some() {
                            println!("{} {id} answers again", now());
                        }
                        for (name, v) in &snap.points {
                            let key = (id.clone(), name.clone());
                            let cur = (v.value.clone(), v.quality);
                            if shown.get(&key) == Some(&cur) {
                                continue;
                            }
                            println!(
                                "{} {id} {name} = {}{} ({})",
                                now(),
                                v.value,
                                v.unit
                                    .as_deref()
                                    .map(|u| format!(" {u}"))
                                    .unwrap_or_default(),
                                v.quality.as_str()
                            );
                            shown.insert(key, cur);
                        }
                    }
                }
            }
            if args.count.is_some_and(|n| round >= n) {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        tool.stop().await;
        0
    })
}

/// The wall-clock time of a line, `HH:MM:SS.mmm` UTC.
fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}
