//! Installer tools on the command line: `sitegate units test` (read every readable point of a
//! unit and print a table) and `sitegate scan` (probe slave ids on a link and propose `[[units]]`
//! entries).
//!
//! When the daemon runs, they go through its local console socket (see `super::console`): the
//! link task probes and reads between its poll reads, so they never fight it for the bus. With no
//! daemon, or with `--direct`, they talk to the bus themselves (two processes cannot share one
//! RS-485 port: `--direct` needs the daemon stopped on a serial link). They never write to a
//! device. A transport that does not open is named with a hint (and with the daemon as the likely
//! holder when its API answers), and is a failure: never "0 units answered" with exit 0.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use axum::http::Method;

use super::console::CallError;
use crate::audit::Audit;
use crate::config::{Config, EX_CONFIG, Unit};
use crate::modbus::link::{self, ModbusError};
use crate::modbus::profile::ProfileRegistry;
use crate::modbus::scan::{self, Answer, Found, PROGRESS_EVERY, ProbeFut, Prober, Step};
use crate::modbus::{ModbusEngine, Quality};
use crate::model::SlaveId;

#[derive(Debug, Clone, clap::Args)]
pub struct UnitsTestArgs {
    /// The unit to test (default: every unit of the config).
    pub unit: Option<String>,
    #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Time allowed per unit (when the bus is opened directly; through the daemon, its
    /// `[api] fresh_read_timeout_ms` applies).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Open the bus directly even when the daemon is running (it must not hold the port).
    #[arg(long)]
    pub direct: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// The link (bus) to scan, by name from the config.
    #[arg(long)]
    pub link: String,
    #[arg(long, short, default_value = super::shared::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Slave ids to probe: `N` or `FROM-TO` (default 1-247).
    #[arg(long, default_value = "1-247")]
    pub range: String,
    /// How long to wait for each id's first answer (through the daemon: 20 to 2000).
    #[arg(long, default_value_t = 200)]
    pub timeout_ms: u64,
    /// Open the bus directly even when the daemon is running (it must not hold the port).
    #[arg(long)]
    pub direct: bool,
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

fn load(path: &Path) -> Result<(Config, ProfileRegistry), i32> {
    super::shared::load_with_profiles(path)
}

/// The units a bus tool works on: every unit of the config, or the one named, polled only when
/// the tool asks (fresh reads). `Err(1)` after saying so when there is none.
pub(super) fn tool_units(
    cfg: &Config,
    unit: Option<&str>,
    config: &Path,
) -> Result<Vec<Unit>, i32> {
    let units: Vec<Unit> = cfg
        .units
        .iter()
        .filter(|u| unit.is_none_or(|n| u.id.as_str() == n))
        .cloned()
        .map(|mut u| {
            u.poll_interval = Duration::from_secs(24 * 3600);
            u
        })
        .collect();
    if units.is_empty() {
        eprintln!(
            "no unit `{}` in `{}`",
            unit.unwrap_or_default(),
            config.display()
        );
        return Err(1);
    }
    Ok(units)
}

/// A Modbus engine of a bus tool's own (scratch store, no cloud), for `units test` and
/// `units watch`.
pub(super) struct ToolEngine {
    pub engine: ModbusEngine,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl ToolEngine {
    /// Opens each link of `units` once first, so a transport that cannot open is named, with a
    /// hint, instead of every unit on it failing alike; then starts the engine. `Err` is the
    /// exit code, after saying why.
    pub(super) async fn start(
        cfg: &Config,
        units: &[Unit],
        reg: ProfileRegistry,
    ) -> Result<Self, i32> {
        let links: BTreeSet<&str> = units.iter().map(|u| u.link.as_str()).collect();
        for name in links {
            let Some(l) = cfg.links.iter().find(|l| l.name.as_str() == name) else {
                continue;
            };
            if let Err(e) = link::open(l).await {
                report_open_error(name, &e, cfg);
                return Err(1);
            }
        }
        let store = crate::store::Store::open(Path::new(":memory:")).map_err(|e| {
            eprintln!("cannot open a scratch store: {e}");
            1
        })?;
        let audit = Audit::new(store, Arc::new(crate::clock::SystemClock), None);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let engine = ModbusEngine::start(
            &cfg.links,
            units,
            Arc::new(reg),
            audit,
            stop.clone(),
            &tracker,
        )
        .map_err(|e| {
            eprintln!("{e}");
            EX_CONFIG
        })?;
        Ok(ToolEngine {
            engine,
            stop,
            tracker,
        })
    }

    /// Stops the engine's tasks (bounded).
    pub(super) async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tracker.wait()).await;
    }
}

/// `sitegate units test`: exit 0 when every point read with good quality, 1 otherwise.
pub fn units_test(args: UnitsTestArgs) -> i32 {
    let (cfg, reg) = match load(&args.config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let units = match tool_units(&cfg, args.unit.as_deref(), &args.config) {
        Ok(u) => u,
        Err(code) => return code,
    };
    let Some(rt) = runtime() else { return 1 };
    rt.block_on(async move {
        if let Some(socket) = cfg.api.console_socket.as_deref().filter(|_| !args.direct) {
            match units_test_through_daemon(socket, &units, &reg).await {
                Ok(code) => return code,
                Err(CallError::NoDaemon) => {}
                Err(e) => return super::console::report(socket, &e),
            }
        }
        let tool = match ToolEngine::start(&cfg, &units, reg).await {
            Ok(t) => t,
            Err(code) => return code,
        };
        let engine = &tool.engine;
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
                    let rows = snap.points.iter().map(|(name, v)| TestRow {
                        point: name.clone(),
                        value: v.value.to_string(),
                        unit: v.unit.clone().unwrap_or_default(),
                        quality: v.quality.as_str().to_string(),
                        read: profile
                            .as_ref()
                            .and_then(|p| p.point(name))
                            .map(|p| p.read.as_str())
                            .unwrap_or("")
                            .to_string(),
                    });
                    failures += print_test_table(rows);
                }
            }
        }
        tool.stop().await;
        test_verdict(failures)
    })
}

/// One point of a unit test as printed.
struct TestRow {
    point: String,
    value: String,
    unit: String,
    quality: String,
    read: String,
}

/// Prints the table of one unit's points (in the order given); returns how many failed.
fn print_test_table(rows: impl Iterator<Item = TestRow>) -> usize {
    println!(
        "  {:<32} {:>14} {:<6} {:<14} read",
        "point", "value", "unit", "quality"
    );
    let mut failures = 0;
    for r in rows {
        // Anything but `good` fails the test, sentinels included: a point that reads
        // `unimplemented` or `open_circuit` is wiring or profile work before the installer
        // leaves.
        if r.quality != Quality::Good.as_str() {
            failures += 1;
        }
        println!(
            "  {:<32} {:>14} {:<6} {:<14} {}",
            r.point, r.value, r.unit, r.quality, r.read
        );
    }
    failures
}

/// The last line of a unit test and its exit code.
fn test_verdict(failures: usize) -> i32 {
    if failures == 0 {
        println!("all points read with good quality");
        0
    } else {
        println!("{failures} failure(s): unit(s) not answering or point(s) not good");
        1
    }
}

/// `units test` through the running daemon (`POST /api/v1/units/{unit}/test` on its console):
/// the same table and exit code as on the bus. `Err(NoDaemon)` before anything is printed
/// when no daemon answers.
async fn units_test_through_daemon(
    socket: &Path,
    units: &[Unit],
    reg: &ProfileRegistry,
) -> Result<i32, CallError> {
    let mut failures = 0;
    for (i, u) in units.iter().enumerate() {
        let uri = format!(
            "/api/v1/units/{}/test",
            super::console::segment(u.id.as_str())
        );
        let answer = match super::console::call(socket, Method::POST, &uri, None).await {
            Ok(a) => a,
            // The daemon went away after the first unit: say so, never mix in the bus.
            Err(CallError::NoDaemon) if i > 0 => {
                return Ok(super::console::report(socket, &CallError::NoDaemon));
            }
            Err(e) => return Err(e),
        };
        println!(
            "unit `{}` ({}, link `{}`, slave {})",
            u.id, u.profile, u.link, u.slave
        );
        match answer {
            (200, v) => {
                let profile = reg.get(&u.profile);
                let mut rows: Vec<TestRow> = v["points"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let point = p["point"].as_str().unwrap_or_default().to_string();
                        TestRow {
                            value: p["value"].to_string(),
                            unit: p["unit"].as_str().unwrap_or_default().to_string(),
                            quality: p["quality"].as_str().unwrap_or("unknown").to_string(),
                            read: profile
                                .as_ref()
                                .and_then(|pr| pr.point(&point))
                                .map(|pp| pp.read.as_str())
                                .unwrap_or("")
                                .to_string(),
                            point,
                        }
                    })
                    .collect();
                // The order of the bus path (by point name).
                rows.sort_by(|a, b| a.point.cmp(&b.point));
                failures += print_test_table(rows.into_iter());
            }
            // The console may diagnose every unit the daemon runs: a refusal means the daemon
            // does not run this one (its config is another file, or was edited and not reloaded).
            (403, v) if v["error"] == "forbidden" => {
                failures += 1;
                println!(
                    "  FAILED: the running daemon has no unit `{}`: its configuration is not this \
                     file, or was changed and not reloaded (`systemctl reload sitegate`); \
                     `--direct` tests it on the bus",
                    u.id
                );
            }
            (status, v) => {
                failures += 1;
                println!("  FAILED: {}", super::console::message(status, &v));
            }
        }
    }
    Ok(test_verdict(failures))
}

fn parse_range(s: &str) -> Result<(SlaveId, SlaveId), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let p = |x: &str| {
        x.trim()
            .parse::<u8>()
            .ok()
            .and_then(|v| SlaveId::new(v).ok())
            .ok_or_else(|| format!("`{x}` is not a slave id (1..=247)"))
    };
    let (a, b) = (p(a)?, p(b)?);
    if a > b {
        return Err(format!("range `{s}` is empty"));
    }
    Ok((a, b))
}

/// The command line's prober: its own transport, opened on first use and re-opened after a
/// transaction that broke it (a late answer must not be taken for the next id's).
struct CtxProber<'a> {
    link: &'a crate::config::Link,
    ctx: Option<tokio_modbus::client::Context>,
}

impl Prober for CtxProber<'_> {
    type Stop = link::OpenError;
    fn step<'b>(
        &'b mut self,
        slave: SlaveId,
        step: Step,
        t: Duration,
    ) -> ProbeFut<'b, Result<Result<Answer, ModbusError>, link::OpenError>> {
        Box::pin(async move {
            let c = match &mut self.ctx {
                Some(c) => c,
                None => self.ctx.insert(link::open(self.link).await?),
            };
            let r = match &step {
                Step::DeviceId => link::read_device_id(c, slave, t)
                    .await
                    .map(Answer::Identity),
                Step::Read(op) => link::transact(c, slave, op, t).await.map(Answer::Reply),
            };
            if let Err(e) = &r
                && e.breaks_transport()
            {
                self.ctx = None;
            }
            if !self.link.inter_frame_delay.is_zero() {
                tokio::time::sleep(self.link.inter_frame_delay).await;
            }
            Ok(r)
        })
    }
}

/// Probes `from..=to` on a link and returns what answered. The transport is opened first, and
/// re-opened after an id that did not answer; if it cannot be, the scan stops with the reason
/// (a scan of a link that cannot be opened has found nothing, not "no units").
/// `progress(probed, total, found)` is called every [`PROGRESS_EVERY`] ids and after the last.
pub async fn scan_link(
    link_cfg: &crate::config::Link,
    from: SlaveId,
    to: SlaveId,
    per_id: Duration,
    registry: &ProfileRegistry,
    progress: &mut (dyn FnMut(usize, usize, usize) + Send),
) -> Result<Vec<Found>, link::OpenError> {
    let mut p = CtxProber {
        link: link_cfg,
        ctx: Some(link::open(link_cfg).await?),
    };
    let mut every = |probed: usize, total: usize, found: &[Found]| {
        if probed % PROGRESS_EVERY == 0 || probed == total {
            progress(probed, total, found.len());
        }
    };
    let never = CancellationToken::new();
    let done = scan::scan(
        &mut p,
        from,
        to,
        per_id,
        registry,
        Duration::ZERO,
        &never,
        &mut every,
    )
    .await?;
    Ok(done.found)
}

/// Prints a transport failure with its hint, and says so when the daemon is running (it holds
/// the serial port, or a gateway's only connection).
pub(super) fn report_open_error(link_name: &str, e: &link::OpenError, cfg: &Config) {
    eprintln!("error: link `{link_name}`: {e}");
    let daemon = daemon_answers(cfg);
    match (e.failure, daemon) {
        (link::OpenFailure::Busy, Some(addr)) => eprintln!(
            "hint: the sitegate daemon is running (its API answers on {addr}) and holds this \
             port; scan and test through it: without `--direct` the command goes through its \
             console socket ({}), or use the web page's Scan screen; or stop it first: \
             `systemctl stop sitegate`",
            console_note(cfg)
        ),
        (link::OpenFailure::Refused | link::OpenFailure::TimedOut, Some(addr)) => {
            eprintln!("hint: {}", e.failure.hint());
            eprintln!(
                "hint: the sitegate daemon is running (its API answers on {addr}); a gateway \
                 that takes one connection at a time refuses a second: scan and test through \
                 the daemon (without `--direct`, through its console socket {}; or the web \
                 page's Scan screen), or `systemctl stop sitegate`",
                console_note(cfg)
            );
        }
        (failure, _) => eprintln!("hint: {}", failure.hint()),
    }
}

/// Where the daemon's console socket is, as the hints name it.
fn console_note(cfg: &Config) -> String {
    match &cfg.api.console_socket {
        Some(p) => format!("`{}`", p.display()),
        None => "`[api] console_socket` is `off` in this config".into(),
    }
}

/// The daemon's API address when something accepts connections there (the daemon of this
/// config is most likely running).
fn daemon_answers(cfg: &Config) -> Option<std::net::SocketAddr> {
    let mut addr = cfg.api.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        .ok()
        .map(|_| addr)
}

/// What a scan found at one id, as printed.
struct Proposal {
    slave: u8,
    identity: Vec<String>,
    /// Profile name and how it was matched.
    profile: Option<(String, String)>,
}

/// `sitegate scan`: prints proposed `[[units]]` entries. Through the running daemon when its
/// console answers (the link task probes between its poll reads), else on the bus directly.
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
    let started = std::time::Instant::now();
    let mut progress = |probed: usize, total: usize, found: usize| {
        eprintln!(
            "scan: probed {probed}/{total} id(s), {found} answered, {:.1} s",
            started.elapsed().as_secs_f64()
        );
    };
    if let Some(socket) = cfg.api.console_socket.as_deref().filter(|_| !args.direct) {
        match rt.block_on(scan_through_daemon(socket, &args, from, to, &mut progress)) {
            Ok(Ok(found)) => return print_proposals(&args.link, from, to, &found),
            Ok(Err(code)) => return code,
            Err(CallError::NoDaemon) => {}
            Err(e) => return super::console::report(socket, &e),
        }
    }
    let found = match rt.block_on(scan_link(
        link_cfg,
        from,
        to,
        Duration::from_millis(args.timeout_ms.max(10)),
        &reg,
        &mut progress,
    )) {
        Ok(found) => found,
        Err(e) => {
            report_open_error(&args.link, &e, &cfg);
            return 1;
        }
    };
    let found: Vec<Proposal> = found
        .iter()
        .map(|f| Proposal {
            slave: f.slave.get(),
            identity: f.identity.iter().map(|(_, v)| v.clone()).collect(),
            profile: f
                .profile
                .as_ref()
                .map(|(p, how)| (p.clone(), (*how).to_string())),
        })
        .collect();
    print_proposals(&args.link, from, to, &found)
}

/// Prints the proposed entries; exit 0 when a unit answered, 1 (with what to check) otherwise.
fn print_proposals(link: &str, from: SlaveId, to: SlaveId, found: &[Proposal]) -> i32 {
    println!(
        "# scan of link `{link}`, slave ids {from}..={to}: {} unit(s) answered",
        found.len()
    );
    for f in found {
        println!();
        if !f.identity.is_empty() {
            println!("# identifies as: {}", f.identity.join(" / "));
        }
        println!("[[units]]");
        println!("id = \"{link}-{}\"", f.slave);
        println!("link = \"{link}\"");
        println!("slave = {}", f.slave);
        match &f.profile {
            Some((p, how)) => println!("profile = \"{p}\"  # by {how}"),
            None => println!("# profile = \"?\"  # answers, but no profile matched"),
        }
    }
    if found.is_empty() {
        eprintln!("error: no unit answered on link `{link}` (slave ids {from}..={to})");
        eprintln!(
            "hint: check the slave ids, the serial settings (baud, parity, stop bits) against \
             the devices, the A/B wiring and termination, and --timeout-ms for slow devices"
        );
        return 1;
    }
    0
}

/// Bounds of the daemon's wait per id (`POST /api/v1/scans`).
const DAEMON_SCAN_TIMEOUT_MS: (u64, u64) = (20, 2000);
/// How often a scan through the daemon asks for its progress.
const SCAN_POLL: Duration = Duration::from_millis(100);

/// A scan through the running daemon: starts it, prints progress as the bus path does (every
/// [`PROGRESS_EVERY`] ids and at the end), and cancels it on Ctrl-C. `Err(NoDaemon)` before
/// anything is printed when no daemon answers; `Ok(Err(code))` after saying why it failed.
async fn scan_through_daemon(
    socket: &Path,
    args: &ScanArgs,
    from: SlaveId,
    to: SlaveId,
    progress: &mut (dyn FnMut(usize, usize, usize) + Send),
) -> Result<Result<Vec<Proposal>, i32>, CallError> {
    use super::console::{call, message};
    let body = serde_json::json!({
        "link": args.link,
        "from": from.get(),
        "to": to.get(),
        "timeout_ms": args.timeout_ms.clamp(DAEMON_SCAN_TIMEOUT_MS.0, DAEMON_SCAN_TIMEOUT_MS.1),
    });
    let (status, view) = call(socket, Method::POST, "/api/v1/scans", Some(&body)).await?;
    if status != 202 {
        eprintln!(
            "error: the daemon did not start the scan: {}",
            message(status, &view)
        );
        if status == 409 {
            eprintln!("hint: one scan runs at a time on the box; wait for it or cancel it");
        }
        return Ok(Err(1));
    }
    let id = view["id"].as_str().unwrap_or_default().to_string();
    let uri = format!("/api/v1/scans/{}", super::console::segment(&id));
    let mut reported = 0usize;
    let mut view = view;
    loop {
        let probed = view["probed"].as_u64().map_or(0, |n| n as usize);
        let total = view["total"].as_u64().map_or(0, |n| n as usize);
        let found = view["found"].as_array().map_or(0, Vec::len);
        let running = view["status"] == "running";
        // Every PROGRESS_EVERY ids passed since the last look, and the last id once.
        while reported + PROGRESS_EVERY <= probed && reported + PROGRESS_EVERY < total {
            reported += PROGRESS_EVERY;
            progress(reported, total, found);
        }
        if !running {
            if view["status"] == "done" && reported < total {
                progress(total, total, found);
            }
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_POLL) => {}
            _ = tokio::signal::ctrl_c() => {
                let _ = call(socket, Method::DELETE, &uri, None).await;
                eprintln!("scan `{id}` cancelled on the daemon");
                return Ok(Err(130));
            }
        }
        let (status, next) = call(socket, Method::GET, &uri, None).await?;
        if status != 200 {
            eprintln!("error: scan `{id}`: {}", message(status, &next));
            return Ok(Err(1));
        }
        view = next;
    }
    match view["status"].as_str() {
        Some("done") => {}
        Some("failed") => {
            let why = view["error"].as_str().unwrap_or("the scan failed");
            eprintln!("error: {why}");
            eprintln!("hint: the daemon's link task could not probe the bus; see its log");
            return Ok(Err(1));
        }
        other => {
            eprintln!(
                "error: scan `{id}` ended as `{}` on the daemon",
                other.unwrap_or("?")
            );
            return Ok(Err(1));
        }
    }
    let found = view["found"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| Proposal {
            slave: f["slave"]
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .unwrap_or(0),
            identity: f["identity"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
            profile: f["profile"].as_str().map(|p| {
                (
                    p.to_string(),
                    f["matched_by"].as_str().unwrap_or_default().to_string(),
                )
            }),
        })
        .collect();
    Ok(Ok(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_ranges_parse_and_reject_bad_ids() {
        let got = |s: &str| parse_range(s).map(|(a, b)| (a.get(), b.get()));
        assert_eq!(got("1-247"), Ok((1, 247)));
        assert_eq!(got("5"), Ok((5, 5)));
        assert!(parse_range("0-3").is_err());
        assert!(parse_range("9-3").is_err());
        assert!(parse_range("1-300").is_err());
    }
}
