//! `sitegate units watch`: live decoded values of one unit (or every unit), read directly on the
//! bus, one line per point whose value or quality changed (every point on the first round).
//!
//! Like `units test` it never writes, and goes through the running daemon's local console when
//! it answers (fresh reads at interactive priority, between the daemon's poll reads); with no
//! daemon, or with `--direct`, it talks to the bus itself (on a serial link the daemon must then
//! be stopped). Bounded with `--count N` (rounds); otherwise it runs until Ctrl-C.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::Method;
use serde_json::Value;

use super::console::CallError;
use crate::config::Unit;

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
    /// Time allowed per unit and round (when the bus is opened directly; through the daemon,
    /// its `[api] fresh_read_timeout_ms` applies).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Open the bus directly even when the daemon is running (it must not hold the port).
    #[arg(long)]
    pub direct: bool,
}

/// What was last printed for one point: value and quality.
type Shown = BTreeMap<(String, String), (Value, String)>;

/// One point as read: name, value, engineering unit, quality.
type Read = (String, Value, Option<String>, String);

/// Where a round's values come from.
enum Source {
    /// The bus, opened by this process.
    Bus(super::units::ToolEngine),
    /// The running daemon's console (`GET /api/v1/units/{unit}?fresh=true`).
    Daemon(PathBuf),
}

impl Source {
    /// Every point of the unit, read now, by point name; `Err` says why not.
    async fn read(&self, unit: &Unit, timeout: Duration) -> Result<Vec<Read>, String> {
        match self {
            Source::Bus(tool) => {
                let snap = tool
                    .engine
                    .read_fresh(&unit.id, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(snap
                    .points
                    .into_iter()
                    .map(|(name, v)| (name, v.value, v.unit, v.quality.as_str().to_string()))
                    .collect())
            }
            Source::Daemon(socket) => {
                let uri = format!(
                    "/api/v1/units/{}?fresh=true",
                    super::console::segment(unit.id.as_str())
                );
                match super::console::call(socket, Method::GET, &uri, None).await {
                    Ok((200, v)) => {
                        let mut points: Vec<Read> = v["points"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|p| {
                                (
                                    p["name"].as_str().unwrap_or_default().to_string(),
                                    p["value"].clone(),
                                    p["unit"].as_str().map(str::to_string),
                                    p["quality"].as_str().unwrap_or("unknown").to_string(),
                                )
                            })
                            .collect();
                        // The order of the bus path (by point name).
                        points.sort_by(|a, b| a.0.cmp(&b.0));
                        Ok(points)
                    }
                    Ok((status, v)) => Err(super::console::message(status, &v)),
                    Err(CallError::NoDaemon) => Err("the daemon stopped answering".into()),
                    Err(CallError::Refused) => Err("the daemon's console refused this user".into()),
                    Err(CallError::Failed(m)) => Err(m),
                }
            }
        }
    }

    async fn stop(self) {
        if let Source::Bus(tool) = self {
            tool.stop().await;
        }
    }
}

/// `sitegate units watch`: exit 0 after `--count` rounds or Ctrl-C, 1 when a link cannot be
/// opened, the unit is unknown, or the daemon's console refuses this user. Through the running
/// daemon when its console answers (fresh reads between its poll reads), else on the bus.
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
        let mut source = None;
        if let Some(socket) = cfg.api.console_socket.as_deref().filter(|_| !args.direct) {
            match super::console::call(socket, Method::GET, "/api/v1/units", None).await {
                Ok(_) => source = Some(Source::Daemon(socket.to_path_buf())),
                Err(CallError::NoDaemon) => {}
                Err(e) => return super::console::report(socket, &e),
            }
        }
        let source = match source {
            Some(s) => s,
            None => match super::units::ToolEngine::start(&cfg, &units, reg).await {
                Ok(t) => Source::Bus(t),
                Err(code) => return code,
            },
        };
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
                match source.read(u, Duration::from_millis(args.timeout_ms)).await {
                    Err(why) => {
                        if failing.get(&id) != Some(&why) {
                            println!("{} {id} FAILED: {why}", now());
                            failing.insert(id, why);
                        }
                    }
                    Ok(points) => {
                        if failing.remove(&id).is_some() {
                            println!("{} {id} answers again", now());
                        }
                        for (name, value, unit, quality) in points {
                            let key = (id.clone(), name.clone());
                            let cur = (value, quality);
                            if shown.get(&key) == Some(&cur) {
                                continue;
                            }
                            println!(
                                "{} {id} {name} = {}{} ({})",
                                now(),
                                cur.0,
                                unit.as_deref().map(|u| format!(" {u}")).unwrap_or_default(),
                                cur.1
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
        source.stop().await;
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
