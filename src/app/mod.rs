//! Wiring: builds every component from the config, spawns the tasks, and owns the shutdown
//! sequence (signal → cancel every task → wait, bounded → STOPPING=1 → exit) and reloads.
//!
//! It sits above every domain module and below `cli` only: nothing but the CLI (and tests)
//! imports it. It never decides policy; errors come back typed ([`RunError`]) and the CLI turns
//! them into exit codes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod adapters;

use crate::api::{self, ApiState, Ports};
use crate::audit::{Audit, Event};
use crate::auth::{Auth, TokenVerifier};
use crate::authz::Authz;
use crate::authz::owner::Access;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, ConfigError, Site};
use crate::delegation::Delegations;
use crate::grants::GrantEngine;
use crate::metrics::Metrics;
use crate::modbus::{ModbusEngine, ProfileRegistry, UnitUpdate};
use crate::mqtt::{MqttClient, MqttHandle, PointSample};
use crate::notify::Notifier;
use crate::signal::{Sig, Signals};
use crate::store::Store;
use adapters::{
    AuthAdapter, AuthzAdapter, DelegationAdapter, GrantApplier, GrantsTokens, UnitsAdapter,
};

/// How long tasks get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// How long the async runtime waits for blocking work (SQLite, key files) when the daemon exits,
/// after the tasks themselves have stopped within [`SHUTDOWN_GRACE`].
pub const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How often the housekeeping task runs: outbox depth and Modbus link gauges, and business
/// suspensions made by the CLI (another process), which therefore bite within one tick.
pub const HOUSEKEEPING_TICK: Duration = Duration::from_secs(5);

/// How often housekeeping checks the clock against the persisted high-water mark (rollback).
pub const CLOCK_CHECK_EVERY: Duration = Duration::from_secs(60);

/// How often housekeeping expires stale access requests and prunes expired sessions.
pub const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// Why the daemon could not run or stopped abnormally. The CLI maps it to an exit code
/// ([`RunError::exit_code`]); a clean stop is `Ok(())`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("start-up failed: {0:#}")]
    StartUp(anyhow::Error),
    /// After first-boot setup, the configuration it wrote is not valid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The daemon was provisioned without reading its config from a file.
    #[error("the configuration was not read from a file; cannot restart on the provisioned one")]
    NoConfigFile,
    /// A reloaded configuration failed to start and the previous one failed to start again.
    #[error("the previous configuration failed to start again: {0:#}")]
    Restart(anyhow::Error),
}

impl RunError {
    /// Process exit code: 78 (EX_CONFIG) for an invalid configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => crate::config::EX_CONFIG,
            _ => 1,
        }
    }
}

/// The daemon's async runtime: two worker threads (the daemon is I/O bound: a few hundred Modbus
/// polls and API requests per second leave one core mostly idle) and a small blocking pool
/// (SQLite calls are serialized on one connection anyway). Every thread costs stack and, with
/// glibc, its own malloc arena, so this is the main lever on resident memory (see
/// docs/PERFORMANCE.md, memory budget). Benches build the same runtime.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .thread_name("sitegate")
        .build()
}

/// Runs the daemon until SIGTERM/SIGINT. SIGHUP reloads the config (see [`reload`]). Each
/// error is logged here as it happens; the caller only maps it to an exit code.
pub fn run_daemon(cfg: Config) -> Result<(), RunError> {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return Err(RunError::Runtime(e));
        }
    };
    let notifier = Notifier::from_process_env();
    let outcome = rt.block_on(async {
        // Signal handlers first, so that a SIGTERM during start-up is a clean exit too.
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return Err(RunError::Signals(e));
            }
        };
        let mut cfg = cfg;
        let mut listener = None;
        // Asked for by the commissioning routes after they changed the config file; kept across
        // reloads and restarts, so that a change made meanwhile is not lost.
        let reloads = Arc::new(tokio::sync::Notify::new());
        loop {
            tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting");
            let start = Daemon::start_on(
                cfg.clone(),
                Arc::new(SystemClock),
                notifier.clone(),
                listener,
                reloads.clone(),
            );
            let mut daemon = tokio::select! {
                res = start => match res {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "start-up failed");
                        return Err(RunError::StartUp(e));
                    }
                },
                _ = signals.wait() => {
                    notifier.stopping();
                    tracing::info!("stopped during start-up");
                    return Ok(());
                }
            };
            loop {
                // A box provisioned through the first-boot setup endpoint stops its setup
                // server and starts again on the configuration that setup wrote.
                let sig = tokio::select! {
                    s = signals.next() => Some((s, "SIGHUP")),
                    _ = reloads.notified() => Some((Sig::Reload, "a change of the config file through the API")),
                    _ = daemon.stopped() => None,
                };
                match sig {
                    Some((Sig::Stop, _)) => {
                        daemon.stop(true).await;
                        return Ok(());
                    }
                    Some((Sig::Reload, why)) => {
                        (daemon, cfg) = reload(daemon, cfg, &notifier, why, &reloads).await?;
                    }
                    None => break,
                }
            }
            let old_listen = cfg.api.listen;
            let kept = daemon.listener.as_ref().and_then(|l| l.try_clone().ok());
            daemon.stop(false).await;
            let Some(source) = cfg.source.clone() else {
                return Err(RunError::NoConfigFile);
            };
            cfg = match crate::config_load::load(&source) {
                Ok(c) => c,
                Err(e) => {
                    // The operator's report, as `check-config` prints it.
                    eprint!("{e}");
                    return Err(RunError::Config(e));
                }
            };
            // Keep the socket when setup left the listen address as it was.
            listener = kept.filter(|_| cfg.api.listen == old_listen);
            tracing::info!("provisioned; starting with the new configuration");
        }
    });
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    outcome
}

/// `systemctl reload` (SIGHUP), or a change of the config file through the commissioning routes
/// (`why` says which): re-reads the config file. A config that fails validation, or
/// that changes what only a restart can change (site identity, state dir, listen address), is
/// refused — logged and audited as `config_reload_refused` — and the running daemon is kept.
/// Otherwise the engines (links, units, profiles, MQTT, API settings) are stopped and started
/// again on the new config while the API's listening socket stays open; sessions, grants and
/// the MQTT outbox live in the database and carry over. Audited as `config_reloaded`.
/// `Err`: the new config failed to start and the old one then failed too.
async fn reload(
    daemon: Daemon,
    cfg: Config,
    notifier: &Notifier,
    why: &str,
    reloads: &Arc<tokio::sync::Notify>,
) -> Result<(Daemon, Config), RunError> {
    tracing::info!(cause = why, "reloading the configuration");
    let Some(source) = cfg.source.clone() else {
        tracing::warn!("the configuration was not read from a file; nothing to reload");
        return Ok((daemon, cfg));
    };
    let path = source.clone();
    let read = tokio::task::spawn_blocking(move || {
        crate::config_load::load(&path).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("cannot read the config: {e}")));
    let problems: Vec<String> = match &read {
        Ok(new) => restart_only_changes(&cfg, new)
            .into_iter()
            .chain(unusable_files(new))
            .collect(),
        Err(text) => text.lines().map(str::to_string).collect(),
    };
    let new = match read {
        Ok(new) if problems.is_empty() => new,
        _ => {
            refuse(&daemon.audit, &source, &problems).await;
            return Ok((daemon, cfg));
        }
    };
    let changed = changes(&cfg, &new);
    notifier.notify("RELOADING=1");
    let audit = daemon.audit.clone();
    let listener = daemon.listener.as_ref().and_then(|l| l.try_clone().ok());
    let spare = daemon.listener.as_ref().and_then(|l| l.try_clone().ok());
    daemon.stop(false).await;
    if crate::logging::set_level(&new.log_level) {
        tracing::info!(level = %new.log_level, "log level applied");
    }
    match Daemon::start_on(
        new.clone(),
        Arc::new(SystemClock),
        notifier.clone(),
        listener,
        reloads.clone(),
    )
    .await
    {
        Ok(d) => {
            tracing::info!(changed = ?changed, "configuration reloaded");
            let _ = d
                .audit
                .record(Event::new("config_reloaded", "ok").actor("system").detail(
                    serde_json::json!({
                        "config": source.display().to_string(),
                        "changed": changed,
                    }),
                ))
                .await;
            Ok((d, new))
        }
        Err(e) => {
            let problem = format!("the new configuration failed to start: {e:#}");
            tracing::error!(error = %problem, "reload refused; starting the previous configuration again");
            crate::logging::set_level(&cfg.log_level);
            refuse(&audit, &source, &[problem]).await;
            match Daemon::start_on(
                cfg.clone(),
                Arc::new(SystemClock),
                notifier.clone(),
                spare,
                reloads.clone(),
            )
            .await
            {
                Ok(d) => Ok((d, cfg)),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the previous configuration failed to start again");
                    Err(RunError::Restart(e))
                }
            }
        }
    }
}

/// Logs and audits a refused reload.
async fn refuse(audit: &Audit, source: &Path, problems: &[String]) {
    tracing::error!(
        config = %source.display(),
        problems = %problems.join("; "),
        "configuration reload refused; the running configuration stays"
    );
    let _ = audit
        .record(
            Event::new("config_reload_refused", "refused")
                .actor("system")
                .detail(serde_json::json!({
                    "config": source.display().to_string(),
                    "problems": problems,
                })),
        )
        .await;
}

/// Changes a reload cannot apply: they need a restart (or re-provisioning).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.site != new.site {
        out.push(
            "[site] changed: the site identity changes only by provisioning and a restart".into(),
        );
    }
    if old.state_dir != new.state_dir {
        out.push("state.dir changed: restart the service to move the state directory".into());
    }
    if old.api.listen != new.api.listen {
        out.push("api.listen changed: restart the service to move the LAN API".into());
    }
    out
}

/// Files the new config names that would stop it from starting, checked before the running
/// daemon is stopped: the Modbus/TLS listener's CA and CRLs (re-read by every reload, so that a
/// newly revoked BMS certificate is refused; a CRL file left half-written refuses the reload
/// and the running listener keeps the lists it has).
fn unusable_files(new: &Config) -> Vec<String> {
    let Some(tls) = new.modbus_server.as_ref().and_then(|b| b.tls.as_ref()) else {
        return Vec::new();
    };
    match crate::bms::tls::check_client_trust(&tls.files) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("modbus_server.tls: {e}")],
    }
}

/// The config sections a reload changes (compared by their validated values), and the units
/// added and removed.
fn changes(old: &Config, new: &Config) -> serde_json::Value {
    fn differ<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut sections = Vec::new();
    let pairs: [(&str, bool); 9] = [
        ("log", old.log_level != new.log_level),
        ("api", differ(&old.api, &new.api)),
        ("auth", differ(&old.auth, &new.auth)),
        ("grants", differ(&old.grants, &new.grants)),
        ("mqtt", old.mqtt != new.mqtt),
        ("profiles", old.profiles_dir != new.profiles_dir),
        ("links", differ(&old.links, &new.links)),
        ("units", differ(&old.units, &new.units)),
        ("modbus_server", old.modbus_server != new.modbus_server),
    ];
    for (name, changed) in pairs {
        if changed {
            sections.push(name);
        }
    }
    let ids =
        |c: &Config| -> HashSet<String> { c.units.iter().map(|u| u.id.to_string()).collect() };
    let (before, after) = (ids(old), ids(new));
    let mut added: Vec<&String> = after.difference(&before).collect();
    let mut removed: Vec<&String> = before.difference(&after).collect();
    added.sort();
    removed.sort();
    serde_json::json!({
        "sections": sections,
        "units_added": added,
        "units_removed": removed,
    })
}

/// A started daemon: its tasks are running.
pub struct Daemon {
    pub store: Store,
    pub audit: Audit,
    pub shutdown: CancellationToken,
    /// Present on a provisioned box.
    pub site: Option<Running>,
    /// Where the LAN API listens (the real port when the config said 0).
    pub api_addr: std::net::SocketAddr,
    /// SHA-256 fingerprint of the API's TLS certificate (`None` for plain HTTP).
    pub tls_fingerprint: Option<String>,
    /// The API's listening socket, kept across a configuration reload.
    listener: Option<std::net::TcpListener>,
    tasks: TaskTracker,
    notifier: Notifier,
}

/// The engines of a provisioned box.
#[derive(Clone)]
pub struct Running {
    pub grants: GrantEngine,
    /// The one owner of the access state and the authorization index (read-only here: its
    /// writers are with the components each kind of input belongs to).
    pub access: Access,
    /// Read-only handle on the index the owner publishes.
    pub authz: Arc<Authz>,
    pub auth: Auth,
    pub delegations: Delegations,
    pub businesses: crate::business::Businesses,
    pub modbus: ModbusEngine,
    pub mqtt: Option<MqttHandle>,
    pub metrics: Arc<Metrics>,
    /// Where the Modbus server face listens, when configured.
    pub modbus_server: Option<crate::bms::Listening>,
    /// Every envelope the daemon applies (MQTT, demo, tests) goes through it.
    pub applier: GrantApplier,
}

impl Running {
    /// Applies a signed envelope (blocking: call from `spawn_blocking`) and swaps the
    /// authorization index before returning, so a login or command right after a successful
    /// apply is judged by it. See [`GrantApplier`].
    pub fn apply_envelope(
        &self,
        kind: Option<crate::grants::Kind>,
        bytes: &[u8],
        source: &str,
    ) -> Result<crate::grants::ApplyOutcome, crate::grants::Rejection> {
        self.applier.apply(kind, bytes, source)
    }
}

/// Opens the store in `state_dir` on the blocking pool.
async fn open_store(state_dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create state dir `{}`: {e}", state_dir.display()))?;
    restrict_dir(state_dir);
    let dir = state_dir.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || Store::open_in(&dir)).await??)
}

/// The state directory holds keys and the database: owner only.
fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot restrict the state directory");
    }
}

impl Daemon {
    /// Opens the store and starts every task. Returns once the daemon is ready to serve.
    /// An unprovisioned box (no `[site]`) serves only the first-boot setup endpoint.
    pub async fn start(
        cfg: Config,
        clock: SharedClock,
        notifier: Notifier,
    ) -> anyhow::Result<Daemon> {
        let reloads = Arc::new(tokio::sync::Notify::new());
        Daemon::start_on(cfg, clock, notifier, None, reloads).await
    }

    /// [`Daemon::start`] serving the API on `listener` when given (a reload keeps the socket).
    /// The commissioning routes notify `reloads` after changing the config file; the run loop
    /// ([`run_daemon`]) waits on it next to SIGHUP (a daemon started on its own is not reloaded
    /// by it).
    pub async fn start_on(
        cfg: Config,
        clock: SharedClock,
        notifier: Notifier,
        listener: Option<std::net::TcpListener>,
        reloads: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Daemon> {
        let store = open_store(&cfg.state_dir).await?;
        let events_topic = cfg
            .site
            .as_ref()
            .map(|s| format!("{}/events", s.topic_root()));
        let audit = Audit::new(store.clone(), clock.clone(), events_topic);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        if let Some(every) = notifier.watchdog_interval() {
            let n = notifier.clone();
            let stop = shutdown.child_token();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => n.watchdog(),
                    }
                }
            });
        }

        let (site, serving) = match &cfg.site {
            Some(site) => {
                let running =
                    start_engines(&cfg, site, &store, &audit, &clock, &shutdown, &tasks).await?;
                // The API and authorization judge time on the grants engine's effective clock.
                let clock = running.grants.clock();
                let ports = Ports {
                    auth: Arc::new(AuthAdapter(running.auth.clone())),
                    authz: Arc::new(AuthzAdapter {
                        authz: running.authz.clone(),
                        clock: clock.clone(),
                    }),
                    units: Arc::new(UnitsAdapter(running.modbus.clone())),
                    delegation: Arc::new(DelegationAdapter {
                        delegations: running.delegations.clone(),
                        authz: running.authz.clone(),
                    }),
                    businesses: Arc::new(running.businesses.clone()),
                };
                let config_file = cfg.source.clone().map(|path| api::ConfigFile {
                    path,
                    reload: reloads.clone(),
                });
                let state = ApiState::with_config_file(
                    ports,
                    audit.clone(),
                    running.metrics.clone(),
                    clock.clone(),
                    &cfg.api,
                    config_file,
                );
                if let Some(path) = &cfg.api.console_socket {
                    // The console is a convenience for the tools on the box: without it they
                    // use the bus directly, so a socket that cannot be made never stops the
                    // daemon.
                    let app = api::console_router(&state);
                    match api::console::serve(app, audit.clone(), path, shutdown.child_token())
                        .await
                    {
                        Ok(task) => {
                            tasks.spawn(async move {
                                let _ = task.await;
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "no local console socket"),
                    }
                }
                let serving = api::serve_on(
                    state,
                    &cfg.api,
                    &cfg.state_dir,
                    shutdown.child_token(),
                    listener,
                )
                .await?;
                (Some(running), serving)
            }
            None => {
                let serving =
                    crate::setup::serve(&cfg, audit.clone(), shutdown.clone(), &tasks, listener)
                        .await?;
                (None, serving)
            }
        };
        let api_addr = serving.addr;
        let tls_fingerprint = serving.tls_fingerprint.clone();
        let listener = Some(serving.listener);
        tasks.spawn(async move {
            if let Ok(Err(e)) = serving.task.await {
                tracing::error!(error = %e, "the LAN API server failed");
            }
        });

        audit
            .record(
                Event::new("daemon_started", "ok")
                    .actor("system")
                    .detail(serde_json::json!({
                        "version": env!("CARGO_PKG_VERSION"),
                        "provisioned": site.is_some(),
                    })),
            )
            .await?;
        notifier.ready();
        tracing::info!(
            state_dir = %cfg.state_dir.display(),
            api = %api_addr,
            tls_fingerprint = tls_fingerprint.as_deref().unwrap_or("none (plain HTTP)"),
            units = cfg.units.len(),
            "sitegate is running"
        );
        Ok(Daemon {
            store,
            audit,
            shutdown,
            site,
            api_addr,
            tls_fingerprint,
            listener,
            tasks,
            notifier,
        })
    }

    /// Resolves when the daemon asks to stop by itself (first-boot setup finished).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }

    /// Cancels every task and waits for them, at most [`SHUTDOWN_GRACE`].
    /// `final_stop` tells systemd the service is stopping (not sent for an in-process restart).
    pub async fn stop(self, final_stop: bool) -> i32 {
        tracing::info!("shutting down");
        if final_stop {
            self.notifier.stopping();
        }
        self.shutdown.cancel();
        // Keep the clock's newest time for the next start.
        if let Some(running) = &self.site {
            let g = running.grants.clone();
            let _ = tokio::task::spawn_blocking(move || g.check_clock()).await;
        }
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "some tasks did not stop in time; exiting anyway"
            );
        }
        let _ = self
            .audit
            .record(Event::new("daemon_stopped", "ok").actor("system"))
            .await;
        0
    }
}

/// Builds the engines of a provisioned box and spawns their tasks.
async fn start_engines(
    cfg: &Config,
    site: &Site,
    store: &Store,
    audit: &Audit,
    clock: &SharedClock,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Running> {
    // The engines open SQLite and key files synchronously: build them on the blocking pool so a
    // signal during start-up is still handled at once.
    let (access, follower, applier, grants, registry, authz, auth, delegations, businesses) = {
        let (store, audit, clock, site, cfg) = (
            store.clone(),
            audit.clone(),
            clock.clone(),
            site.clone(),
            cfg.clone(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let grants = GrantEngine::open(
                store.clone(),
                audit.clone(),
                clock.clone(),
                site.id.clone(),
                &cfg.grants,
            )?;
            // From here on every component judges time on the engine's one effective clock.
            let clock = grants.clock();
            let registry = Arc::new(
                ProfileRegistry::load(cfg.profiles_dir.as_deref())
                    .map_err(|p| anyhow::anyhow!("device profiles: {}", p.join("; ")))?,
            );
            let inventory = cfg
                .units
                .iter()
                .map(|u| (u.id.clone(), u.group.clone()))
                .collect();
            // The one owner of the access state: over what the engine re-verified (the stored
            // bundle and installer tokens); local delegations and suspensions join it below,
            // before the API serves. Each of its writers goes to the one component its kind of
            // input belongs to.
            let (access, writers) = Access::open(grants.clone(), site.id.clone(), inventory);
            let authz = access.authz();
            let applier = GrantApplier::new(access.clone());
            let verifier: Arc<dyn TokenVerifier> = Arc::new(GrantsTokens(writers.tokens));
            let auth = Auth::new(
                store.clone(),
                audit.clone(),
                access.clone(),
                clock.clone(),
                cfg.auth.clone(),
                Some(verifier),
            )?;
            let delegations = Delegations::new(
                store.clone(),
                audit.clone(),
                writers.local,
                clock.clone(),
                &cfg.state_dir,
                Some(format!("{}/requests", site.topic_root())),
            )?;
            // Suspensions are loaded before the API serves: a suspended business never gets a
            // window of access after a restart.
            let businesses = crate::business::Businesses::new(
                store,
                audit,
                writers.suspensions,
                clock,
                Some(format!("{}/suspensions", site.topic_root())),
            )?;
            Ok((
                access,
                writers.follower,
                applier,
                grants,
                registry,
                authz,
                auth,
                delegations,
                businesses,
            ))
        })
        .await??
    };

    let metrics = Arc::new(Metrics::new());
    set_grant_gauges(&metrics, &grants.snapshot());

    // Every change of the access state (an applied bundle, token or key set, whatever its
    // source) reaches the authorization index through its owner — published once: an apply
    // publishes before returning and this task then finds it in force — and updates the gauges,
    // ends the sessions of users it deactivated or whose password it changed, and resolves
    // access requests.
    {
        let mut rx = grants.subscribe();
        let auth = auth.clone();
        let delegations = delegations.clone();
        let metrics = metrics.clone();
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = rx.changed() => {
                        if changed.is_err() { break }
                        let state = rx.borrow_and_update().clone();
                        set_grant_gauges(&metrics, &state);
                        follower.sync_grants();
                        if let Err(e) = auth.end_changed_sessions().await {
                            tracing::warn!(error = %e, "cannot end the sessions a bundle invalidated");
                        }
                        // Pending requests the new bundle grants or denies are resolved.
                        let d = delegations.clone();
                        if let Ok(Err(e)) =
                            tokio::task::spawn_blocking(move || d.resolve_requests(&state)).await
                        {
                            tracing::warn!(error = %e, "cannot resolve access requests");
                        }
                    }
                }
            }
        });
    }

    let modbus = ModbusEngine::start(
        &cfg.links,
        &cfg.units,
        registry,
        audit.clone(),
        shutdown.child_token(),
        tasks,
    )?;

    let mqtt = match &cfg.mqtt {
        Some(m) => Some(MqttClient::start(
            m,
            site,
            store.clone(),
            audit.clone(),
            Arc::new(applier.clone()),
            shutdown.child_token(),
            tasks,
        )?),
        None => None,
    };
    if let Some(mqtt) = &mqtt {
        spawn_unit_bridge(&modbus, mqtt.clone(), shutdown.child_token(), tasks);
        // `…/grants/state` after every apply, whatever its source.
        let g = grants.clone();
        mqtt.follow_grants(
            grants.subscribe(),
            move || g.state_json(),
            shutdown.child_token(),
            tasks,
        );
    }

    let modbus_server = match &cfg.modbus_server {
        Some(b) => {
            if b.tls.as_ref().is_some_and(|t| {
                t.files.cert
                    == cfg
                        .state_dir
                        .join(crate::tls::TLS_DIR)
                        .join(crate::tls::CERT_FILE)
            }) {
                // The listener uses the LAN API's certificate: make it if missing.
                crate::tls::ensure_self_signed(&cfg.state_dir, &crate::tls::default_names())?;
            }
            let face = Arc::new(
                crate::bms::Face::new(
                    modbus.clone(),
                    authz.clone(),
                    audit.clone(),
                    clock.clone(),
                    &b.units,
                    b.max_age,
                    b.read_timeout,
                )
                .with_metrics(metrics.clone()),
            );
            Some(crate::bms::serve(b, face, shutdown.child_token(), tasks).await?)
        }
        None => None,
    };

    let running = Running {
        grants,
        access,
        authz,
        auth,
        delegations,
        businesses,
        modbus,
        mqtt,
        metrics,
        modbus_server,
        applier,
    };
    spawn_housekeeping(&running, store.clone(), shutdown.child_token(), tasks);
    Ok(running)
}

/// The applied bundle's seq and issued_at as gauges (no age before the first bundle).
fn set_grant_gauges(metrics: &Metrics, state: &crate::access::AccessState) {
    metrics.set_grant(
        state.seq,
        state.issued_at.map_or(i64::MIN, crate::clock::unix_ms),
    );
}

/// Forwards the Modbus engine's value and availability changes to MQTT.
fn spawn_unit_bridge(
    modbus: &ModbusEngine,
    mqtt: MqttHandle,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    // Availability starts as unknown; publish each unit's state once it is decided.
    let mut rx = modbus.subscribe();
    // The engine polls from its start, and broadcasts a value only when it changes: values read
    // before this subscription would never reach the telemetry of a steady unit. Seed it with
    // what is cached now (taken after subscribing, so nothing falls between the two).
    let seed: Vec<(crate::model::UnitId, Vec<PointSample>)> = modbus
        .units()
        .into_iter()
        .filter_map(|u| {
            let snap = modbus.snapshot(&u.id)?;
            let samples: Vec<PointSample> = snap
                .points
                .iter()
                .filter(|(_, v)| v.quality != crate::modbus::Quality::Unknown)
                .map(|(name, v)| adapters::point_sample(name, v))
                .collect();
            (!samples.is_empty()).then_some((u.id, samples))
        })
        .collect();
    tasks.spawn(async move {
        for (unit, samples) in seed {
            let at = time::OffsetDateTime::now_utc();
            if let Err(e) = mqtt.telemetry().update(&unit, &samples, at).await {
                tracing::warn!(unit = %unit, error = %e, "cannot queue telemetry");
            }
        }
        loop {
            let update = tokio::select! {
                _ = stop.cancelled() => break,
                u = rx.recv() => u,
            };
            match update {
                Ok(UnitUpdate::Availability { unit, online }) => {
                    if let Err(e) = mqtt.set_availability(&unit, online).await {
                        tracing::warn!(unit = %unit, error = %e, "cannot queue availability");
                    }
                }
                Ok(UnitUpdate::Values { unit, points }) => {
                    let samples: Vec<PointSample> = points
                        .iter()
                        .map(|(name, v)| adapters::point_sample(name, v))
                        .collect();
                    let at = time::OffsetDateTime::now_utc();
                    if let Err(e) = mqtt.telemetry().update(&unit, &samples, at).await {
                        tracing::warn!(unit = %unit, error = %e, "cannot queue telemetry");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "telemetry bridge lagged; the heartbeat catches up"
                    );
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// [`CLOCK_CHECK_EVERY`] and [`PRUNE_EVERY`] in housekeeping ticks.
const CLOCK_CHECK_TICKS: u64 = CLOCK_CHECK_EVERY.as_secs() / HOUSEKEEPING_TICK.as_secs();
const PRUNE_TICKS: u64 = PRUNE_EVERY.as_secs() / HOUSEKEEPING_TICK.as_secs();

/// Periodic upkeep: clock-rollback check, session pruning, metrics gauges.
fn spawn_housekeeping(
    running: &Running,
    store: Store,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let r = running.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(HOUSEKEEPING_TICK);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            n += 1;
            let s = store.clone();
            if let Ok(Ok(depths)) =
                tokio::task::spawn_blocking(move || crate::outbox::depth(&s)).await
            {
                for class in ["event", "request", "telemetry", "state"] {
                    let d = depths
                        .iter()
                        .find(|(c, _)| c == class)
                        .map_or(0, |(_, d)| *d);
                    r.metrics
                        .set_outbox_depth(class, u64::try_from(d).unwrap_or(0));
                }
            }
            // A suspension or restoration made with the CLI (another process) bites within
            // one tick.
            let b = r.businesses.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || b.refresh()).await {
                tracing::warn!(error = %e, "cannot reload business suspensions");
            }
            for l in r.modbus.link_stats() {
                r.metrics.set_link(&l);
            }
            if n % CLOCK_CHECK_TICKS == 0 {
                let g = r.grants.clone();
                let _ = tokio::task::spawn_blocking(move || g.check_clock()).await;
            }
            if n % PRUNE_TICKS == 0 {
                // Requests pending longer than REQUEST_TTL expire.
                let (d, g) = (r.delegations.clone(), r.grants.clone());
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || d.resolve_requests(&g.snapshot())).await
                {
                    tracing::warn!(error = %e, "cannot resolve access requests");
                }
                if let Err(e) = r.auth.prune().await {
                    tracing::warn!(error = %e, "cannot prune expired sessions");
                }
            }
        }
    });
}
