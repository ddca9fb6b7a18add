//! Wiring: builds every component from the config, spawns the tasks, and owns the shutdown
//! sequence (signal → cancel every task → wait, bounded → STOPPING=1 → exit).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Event};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::notify::Notifier;
use crate::store::Store;

/// How long tasks get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

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

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
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
        match Daemon::start(cfg, Arc::new(SystemClock), notifier.clone()).await {
            Ok(d) => d.run_until_signal().await,
            Err(e) => {
                tracing::error!(error = %e, "start-up failed");
                1
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// A started daemon: its tasks are running.
pub struct Daemon {
    pub store: Store,
    pub audit: Audit,
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
    notifier: Notifier,
}

impl Daemon {
    /// Opens the store and starts every task. Returns once the daemon is ready to serve.
    pub async fn start(
        cfg: Config,
        clock: SharedClock,
        notifier: Notifier,
    ) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
            anyhow::anyhow!("cannot create state dir `{}`: {e}", cfg.state_dir.display())
        })?;
        let store = {
            let dir = cfg.state_dir.clone();
            tokio::task::spawn_blocking(move || Store::open_in(&dir)).await??
        };
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

        audit
            .record(
                Event::new("daemon_started", "ok")
                    .actor("system")
                    .detail(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })),
            )
            .await?;
        notifier.ready();
        tracing::info!(state_dir = %cfg.state_dir.display(), "sitegate is running");
        Ok(Daemon {
            store,
            audit,
            shutdown,
            tasks,
            notifier,
        })
    }

    /// Waits for SIGTERM or SIGINT, then shuts down.
    pub async fn run_until_signal(self) -> i32 {
        wait_for_signal().await;
        self.stop().await
    }

    /// Cancels every task and waits for them, at most [`SHUTDOWN_GRACE`].
    pub async fn stop(self) -> i32 {
        tracing::info!("shutting down");
        self.notifier.stopping();
        self.shutdown.cancel();
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

/// Resolves on the first SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("received SIGTERM"),
                _ = i.recv() => tracing::info!("received SIGINT"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; waiting for ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
