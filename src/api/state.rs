//! The shared state of every request: the engine ports, the audit trail, metrics, the clock and
//! the limits from `[api]`. Every module of the API reads it; it imports none of them but the
//! ports and the rate limiter it holds.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;

use super::ports::{AuthPort, AuthzPort, BusinessPort, DelegationPort, UnitsPort};
use super::rate::RateLimiter;
use crate::audit::Audit;
use crate::clock::SharedClock;
use crate::config;
use crate::metrics::Metrics;

/// The engines the API talks to.
#[derive(Clone)]
pub struct Ports {
    pub auth: Arc<dyn AuthPort>,
    pub authz: Arc<dyn AuthzPort>,
    pub units: Arc<dyn UnitsPort>,
    pub delegation: Arc<dyn DelegationPort>,
    pub businesses: Arc<dyn BusinessPort>,
}

/// Limits taken from `[api]` in the config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub fresh_read_timeout: Duration,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

impl Limits {
    pub fn from_config(cfg: &config::Api) -> Self {
        Limits {
            max_body_bytes: cfg.max_body_bytes,
            request_timeout: cfg.request_timeout,
            fresh_read_timeout: cfg.fresh_read_timeout,
            rate_per_sec: cfg.rate_limit_per_sec,
            rate_burst: cfg.rate_limit_burst,
        }
    }
}

/// Shared state of every request: the ports, the audit trail, metrics, the clock and limits.
#[derive(Clone)]
pub struct ApiState(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub(super) ports: Ports,
    pub(super) audit: Audit,
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock: SharedClock,
    pub(super) limits: Limits,
    pub(super) cors_origins: Vec<HeaderValue>,
    pub(super) rate: RateLimiter,
    /// Shared by the LAN face and the console face: one scan at a time on the box.
    pub(super) scans: Arc<super::scan_jobs::Scans>,
    /// The local console face (`super::console`): callers are the connection's Unix user, not a
    /// session, and the authorization port is the console's fixed one.
    pub(super) console: bool,
    pub(super) config_file: Option<ConfigFile>,
}

/// The config file the daemon runs on, for the commissioning routes: they edit it and then ask
/// the daemon's run loop for the reload that SIGHUP performs.
#[derive(Clone)]
pub struct ConfigFile {
    pub path: std::path::PathBuf,
    /// Notified once per applied change; the run loop reloads (several changes in a row may be
    /// applied by one reload, which reads the file as it is then).
    pub reload: Arc<tokio::sync::Notify>,
}

impl ApiState {
    pub fn new(
        ports: Ports,
        audit: Audit,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        cfg: &config::Api,
    ) -> Self {
        Self::with_config_file(ports, audit, metrics, clock, cfg, None)
    }

    /// [`ApiState::new`] with the config file the commissioning routes edit (without one they
    /// answer `503 config_unavailable`).
    pub fn with_config_file(
        ports: Ports,
        audit: Audit,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        cfg: &config::Api,
        config_file: Option<ConfigFile>,
    ) -> Self {
        let limits = Limits::from_config(cfg);
        let cors_origins = cfg
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        ApiState(Arc::new(Inner {
            rate: RateLimiter::new(limits.rate_per_sec, limits.rate_burst),
            ports,
            audit,
            metrics,
            clock,
            limits,
            cors_origins,
            scans: Arc::default(),
            console: false,
            config_file,
        }))
    }

    /// The state of the local console face: the same engines, audit trail, metrics, clock,
    /// limits and scans, with `authz` answering for console principals only.
    pub(super) fn console_face(&self, authz: Arc<dyn AuthzPort>) -> Self {
        let i = &self.0;
        let mut ports = i.ports.clone();
        ports.authz = authz;
        ApiState(Arc::new(Inner {
            ports,
            audit: i.audit.clone(),
            metrics: i.metrics.clone(),
            clock: i.clock.clone(),
            limits: i.limits.clone(),
            cors_origins: Vec::new(),
            rate: RateLimiter::new(i.limits.rate_per_sec, i.limits.rate_burst),
            scans: i.scans.clone(),
            console: true,
            // The console never edits the configuration.
            config_file: None,
        }))
    }

    /// The units port (the console serves its own checks from it).
    pub(super) fn units(&self) -> &Arc<dyn super::ports::UnitsPort> {
        &self.0.ports.units
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }
}
