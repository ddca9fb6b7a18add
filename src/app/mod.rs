//! Wiring: builds every component from the config, spawns the tasks, and owns the shutdown
//! sequence (signal → cancel every task → wait, bounded → STOPPING=1 → exit).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::{
    AuthAdapter, AuthzAdapter, DelegationAdapter, GrantsSink, GrantsTokens, UnitsAdapter,
};
use crate::api::{self, ApiState, Ports};
use crate::audit::{Audit, Event};
use crate::auth::{Auth, TokenVerifier};
use crate::authz::{Authz, Inputs};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, Site};
use crate::delegation::Delegations;
use crate::grants::GrantEngine;
use crate::metrics::Metrics;
use crate::modbus::{ModbusEngine, ProfileRegistry, UnitUpdate};
use crate::mqtt::{MqttClient, MqttHandle, PointSample};
use crate::notify::Notifier;
use crate::store::Store;

/// How long tasks get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// `[profiles] dir` of the config file at `path`, resolved against the file's directory as the
/// config resolves it; read before the config is validated, so that its units may name a profile
/// from that directory. `None` when unset, or when the file cannot be read or parsed (validating
/// it then says why).
pub fn profiles_dir_of(path: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let dir = Path::new(table.get("profiles")?.get("dir")?.as_str()?);
    Some(if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).join(dir)
    })
}

/// Names of the device profiles available (built-in plus those in `dir`).
/// A broken profile directory yields only the built-ins here; `ProfileRegistry::load` reports
/// its problems when the daemon starts.
pub fn profile_names(dir: Option<&Path>) -> HashSet<String> {
    match crate::modbus::ProfileRegistry::load(dir) {
        Ok(r) => r.names().into_iter().collect(),
        Err(_) => crate::modbus::ProfileRegistry::builtin()
            .map(|r| r.names().into_iter().collect())
            .unwrap_or_default(),
    }
}

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code. SIGHUP reloads the config
/// (see [`reload`]).
pub fn run_daemon(cfg: Config) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sitegate")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    let notifier = Notifier::from_process_env();
    let code = rt.block_on(async {
        // Signal handlers first, so that a SIGTERM during start-up is a clean exit too.
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return 1;
            }
        };
        let mut cfg = cfg;
        let mut listener = None;
        loop {
            tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting");
            let start = Daemon::start_on(
                cfg.clone(),
                Arc::new(SystemClock),
                notifier.clone(),
                listener,
            );
            let mut daemon = tokio::select! {
                res = start => match res {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "start-up failed");
                        return 1;
                    }
                },
                _ = signals.wait() => {
                    notifier.stopping();
                    tracing::info!("stopped during start-up");
                    return 0;
                }
            };
            loop {
                // A box provisioned through the first-boot setup endpoint stops its setup
                // server and starts again on the configuration that setup wrote.
                let sig = tokio::select! {
                    s = signals.next() => Some(s),
                    _ = daemon.stopped() => None,
                };
                match sig {
                    Some(Sig::Stop) => return daemon.stop(true).await,
                    Some(Sig::Reload) => match reload(daemon, cfg, &notifier).await {
                        Ok((d, c)) => (daemon, cfg) = (d, c),
                        Err(code) => return code,
                    },
                    None => break,
                }
            }
            let old_listen = cfg.api.listen;
            let kept = daemon.listener.as_ref().and_then(|l| l.try_clone().ok());
            daemon.stop(false).await;
            let Some(source) = cfg.source.clone() else {
                return 1;
            };
            cfg = match crate::cli::load_config(&source) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Keep the socket when setup left the listen address as it was.
            listener = kept.filter(|_| cfg.api.listen == old_listen);
            tracing::info!("provisioned; starting with the new configuration");
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// `systemctl reload` (SIGHUP): re-reads the config file. A config that fails validation, or
/// that changes what only a restart can change (site identity, state dir, listen address), is
/// refused — logged and audited as `config_reload_refused` — and the running daemon is kept.
/// Otherwise the engines (links, units, profiles, MQTT, API settings) are stopped and started
/// again on the new config while the API's listening socket stays open; sessions, grants and
/// the MQTT outbox live in the database and carry over. Audited as `config_reloaded`.
/// `Err` is an exit code: the new config failed to start and the old one then failed too.
async fn reload(daemon: Daemon, cfg: Config, notifier: &Notifier) -> Result<(Daemon, Config), i32> {
    tracing::info!("received SIGHUP; reloading the configuration");
    let Some(source) = cfg.source.clone() else {
        tracing::warn!("the configuration was not read from a file; nothing to reload");
        return Ok((daemon, cfg));
    };
    let path = source.clone();
    let read = tokio::task::spawn_blocking(move || crate::cli::read_config(&path))
        .await
        .unwrap_or_else(|e| Err(format!("cannot read the config: {e}")));
    let problems: Vec<String> = match &read {
        Ok(new) => restart_only_changes(&cfg, new),
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
            match Daemon::start_on(cfg.clone(), Arc::new(SystemClock), notifier.clone(), spare)
                .await
            {
                Ok(d) => Ok((d, cfg)),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the previous configuration failed to start again");
                    Err(1)
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

/// The config sections a reload changes (compared by their validated values), and the units
/// added and removed.
fn changes(old: &Config, new: &Config) -> serde_json::Value {
    fn differ<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut sections = Vec::new();
    let pairs: [(&str, bool); 8] = [
        ("log", old.log_level != new.log_level),
        ("api", differ(&old.api, &new.api)),
        ("auth", differ(&old.auth, &new.auth)),
        ("grants", differ(&old.grants, &new.grants)),
        ("mqtt", old.mqtt != new.mqtt),
        ("profiles", old.profiles_dir != new.profiles_dir),
        ("links", differ(&old.links, &new.links)),
        ("units", differ(&old.units, &new.units)),
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
    pub authz: Arc<Authz>,
    pub auth: Auth,
    pub delegations: Delegations,
    pub businesses: crate::business::Businesses,
    pub modbus: ModbusEngine,
    pub mqtt: Option<MqttHandle>,
    pub metrics: Arc<Metrics>,
    /// Where the Modbus server face listens, when configured.
    pub modbus_server: Option<crate::bms::Listening>,
}

impl Running {
    /// Applies a signed envelope (blocking: call from `spawn_blocking`) and swaps the
    /// authorization index before returning, so a login or command right after a successful
    /// apply is judged by it. (The watch task that follows the grants engine swaps it too; a
    /// second rebuild of the same state is harmless.)
    pub fn apply_envelope(
        &self,
        kind: Option<crate::grants::Kind>,
        bytes: &[u8],
        source: &str,
    ) -> Result<crate::grants::ApplyOutcome, crate::grants::Rejection> {
        apply_and_sync(&self.grants, &self.authz, kind, bytes, source)
    }
}

/// See [`Running::apply_envelope`].
pub fn apply_and_sync(
    grants: &GrantEngine,
    authz: &Authz,
    kind: Option<crate::grants::Kind>,
    bytes: &[u8],
    source: &str,
) -> Result<crate::grants::ApplyOutcome, crate::grants::Rejection> {
    let outcome = grants.apply(kind, bytes, source)?;
    authz.set_state(grants.snapshot());
    Ok(outcome)
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
        Daemon::start_on(cfg, clock, notifier, None).await
    }

    /// [`Daemon::start`] serving the API on `listener` when given (a reload keeps the socket).
    pub async fn start_on(
        cfg: Config,
        clock: SharedClock,
        notifier: Notifier,
        listener: Option<std::net::TcpListener>,
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
                let state = ApiState::new(
                    ports,
                    audit.clone(),
                    running.metrics.clone(),
                    clock.clone(),
                    &cfg.api,
                );
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
    let (grants, registry, authz, auth, delegations, businesses) = {
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
            let authz = Arc::new(Authz::new(Inputs {
                site: Some(site.id.clone()),
                state: grants.snapshot(),
                inventory,
                ..Inputs::default()
            }));
            let verifier: Arc<dyn TokenVerifier> = Arc::new(GrantsTokens(grants.clone()));
            let auth = Auth::new(
                store.clone(),
                audit.clone(),
                authz.clone(),
                clock.clone(),
                cfg.auth.clone(),
                Some(verifier),
            )?;
            let delegations = Delegations::new(
                store.clone(),
                audit.clone(),
                authz.clone(),
                clock.clone(),
                &cfg.state_dir,
                Some(format!("{}/requests", site.topic_root())),
            )?;
            // Suspensions are loaded before the API serves: a suspended business never gets a
            // window of access after a restart.
            let businesses = crate::business::Businesses::new(
                store,
                audit,
                authz.clone(),
                clock,
                Some(format!("{}/suspensions", site.topic_root())),
            )?;
            Ok((grants, registry, authz, auth, delegations, businesses))
        })
        .await??
    };

    let metrics = Arc::new(Metrics::new());
    set_grant_gauges(&metrics, &grants.snapshot());

    // Every applied bundle rebuilds and swaps the authorization index, updates the gauges, and
    // ends the sessions of users it deactivated or whose password it changed.
    {
        let mut rx = grants.subscribe();
        let authz = authz.clone();
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
                        authz.set_state(state.clone());
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
            Arc::new(GrantsSink {
                grants: grants.clone(),
                authz: authz.clone(),
            }),
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
        authz,
        auth,
        delegations,
        businesses,
        modbus,
        mqtt,
        metrics,
        modbus_server,
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
                .map(|(name, v)| crate::adapters::point_sample(name, v))
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
                        .map(|(name, v)| crate::adapters::point_sample(name, v))
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

/// Periodic upkeep: clock-rollback check, session pruning, metrics gauges.
fn spawn_housekeeping(
    running: &Running,
    store: Store,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let r = running.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
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
            if n % 12 == 0 {
                let g = r.grants.clone();
                let _ = tokio::task::spawn_blocking(move || g.check_clock()).await;
            }
            if n % 60 == 0 {
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

/// The daemon's signal handlers: SIGTERM and SIGINT stop it; SIGHUP reloads the config.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP (`systemctl reload`).
    Reload,
}

/// Resolves on the first SIGTERM or SIGINT (for tools such as `sitegate sim`).
pub async fn wait_for_signal() {
    match Signals::install() {
        Ok(mut s) => s.wait().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install signal handlers; waiting for ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT (a SIGHUP meanwhile is logged and ignored:
    /// used where there is nothing to reload, such as during start-up).
    pub async fn wait(&mut self) {
        while self.next().await == Sig::Reload {
            tracing::info!("received SIGHUP; nothing to reload here");
        }
    }

    /// The next signal.
    pub async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => { tracing::info!("received SIGTERM"); Sig::Stop }
            _ = self.int.recv() => { tracing::info!("received SIGINT"); Sig::Stop }
            _ = self.hup.recv() => Sig::Reload,
        }
    }
}
