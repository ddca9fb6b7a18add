//! Process signals: SIGTERM and SIGINT stop, SIGHUP reloads the config.
//!
//! The daemon's run loop and the long-running tools (`sitegate sim`, `sitegate demo`) wait here;
//! this module only reports signals, it never acts on them.

/// The signal handlers, installed once.
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
