//! Shared helpers for API tests and the load bench: in-memory implementations of the session and
//! unit ports (units with a bus-write counter), the REAL authorization engine and delegation
//! service behind their real adapters, and a harness that serves the real router on 127.0.0.1:0.
//!
//! The lead replaces these with the real engines in the daemon-level integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on broken fixtures"
)]

pub mod broker;
pub mod client;
pub mod daemon;
pub mod fleet;
pub mod modbus;
pub mod mqtt;
pub mod pki;
pub mod signing;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sitegate::api::ports::*;
use sitegate::api::{self, ApiState, Ports, Serving};
use sitegate::audit::Audit;
use sitegate::clock::{Clock, ManualClock, SharedClock};
use sitegate::config::{self, ApiMode};
use sitegate::metrics::Metrics;
use sitegate::model::*;
use sitegate::store::Store;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
pub fn unit(s: &str) -> UnitId {
    UnitId::new(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------------

pub struct MemAuth {
    clock: Arc<ManualClock>,
    /// email → (user, password)
    users: HashMap<String, (UserId, String)>,
    sessions: Mutex<HashMap<String, SessionInfo>>,
    failures: Mutex<HashMap<String, u32>>,
    ttl: time::Duration,
    next: AtomicU64,
}

impl MemAuth {
    pub fn new(clock: Arc<ManualClock>) -> Self {
        let mut users = HashMap::new();
        for (email, id) in [
            ("viewer@example.com", "u-viewer"),
            ("control@example.com", "u-control"),
            ("tech@example.com", "u-tech"),
            ("admin@example.com", "u-admin"),
            ("nobody@example.com", "u-nobody"),
        ] {
            users.insert(email.to_string(), (uid(id), "correct horse".to_string()));
        }
        MemAuth {
            clock,
            users,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            ttl: time::Duration::hours(1),
            next: AtomicU64::new(1),
        }
    }

    fn open(&self, user: UserId) -> (String, SessionInfo) {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let token = format!("tok-{n}-{}", sitegate::util::random_hex(16));
        let s = SessionInfo {
            user,
            expires_at: self.clock.now() + self.ttl,
        };
        self.sessions
            .lock()
            .unwrap()
            .insert(token.clone(), s.clone());
        (token, s)
    }
}

impl AuthPort for MemAuth {
    fn login_password<'a>(
        &'a self,
        email: &'a str,
        password: &'a str,
        _ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), AuthError>> {
        Box::pin(async move {
            let key = email.to_lowercase();
            if self
                .failures
                .lock()
                .unwrap()
                .get(&key)
                .copied()
                .unwrap_or(0)
                >= 5
            {
                return Err(AuthError::Throttled {
                    retry_after: Duration::from_secs(30),
                });
            }
            match self.users.get(&key) {
                Some((user, pw)) if pw == password => Ok(self.open(user.clone())),
                _ => {
                    *self.failures.lock().unwrap().entry(key).or_insert(0) += 1;
                    Err(AuthError::InvalidCredentials)
                }
            }
        })
    }

    fn login_token<'a>(
        &'a self,
        envelope: &'a [u8],
        _ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), AuthError>> {
        Box::pin(async move {
            if envelope == br#"{"v":1,"kind":"token","sig":"good"}"# {
                Ok(self.open(uid("u-tech")))
            } else {
                Err(AuthError::InvalidCredentials)
            }
        })
    }

    fn authenticate<'a>(&'a self, bearer: &'a str) -> BoxFut<'a, Result<SessionInfo, AuthError>> {
        Box::pin(async move {
            let sessions = self.sessions.lock().unwrap();
            match sessions.get(bearer) {
                None => Err(AuthError::Unauthenticated),
                Some(s) if s.expires_at <= self.clock.now() => Err(AuthError::SessionExpired),
                Some(s) => Ok(s.clone()),
            }
        })
    }

    fn logout<'a>(&'a self, bearer: &'a str) -> BoxFut<'a, Result<(), AuthError>> {
        Box::pin(async move {
            match self.sessions.lock().unwrap().remove(bearer) {
                Some(_) => Ok(()),
                None => Err(AuthError::Unauthenticated),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Authz: the real decision engine (`sitegate::authz::Authz`) behind the real adapter, fed a site
// state equal to what a bundle would give: the API tests judge handlers by the same rules as the
// daemon.
// ---------------------------------------------------------------------------------------------

/// The users of [`MemAuth`] with their cloud grants, and the inventory:
/// hvac-1 (group floor1), hvac-2 (group floor2), gen-1 (no group).
pub fn site_inputs(now: OffsetDateTime) -> sitegate::authz::Inputs {
    use sitegate::access::{AccessState, Grant, Origin, Policy, User};
    let site = SiteId::new("s-1").unwrap();
    let floor = |g: &str| GroupId::new(g).unwrap();
    let g = |id: &str, user: &str, role: Role, scope: Scope| Grant {
        id: GrantId::new(id).unwrap(),
        user: uid(user),
        role,
        scope,
        not_before: None,
        expires_at: None,
        origin: Origin::Cloud,
    };
    let grants = vec![
        g(
            "g-viewer",
            "u-viewer",
            Role::Viewer,
            Scope::Group(floor("floor1")),
        ),
        g(
            "g-control",
            "u-control",
            Role::ControlOnly,
            Scope::Group(floor("floor1")),
        ),
        g(
            "g-control-gen",
            "u-control",
            Role::ControlOnly,
            Scope::Unit(unit("gen-1")),
        ),
        g(
            "g-tech",
            "u-tech",
            Role::Technician,
            Scope::Unit(unit("hvac-1")),
        ),
        g(
            "g-tech-gen",
            "u-tech",
            Role::Technician,
            Scope::Unit(unit("gen-1")),
        ),
        g("g-admin", "u-admin", Role::Admin, Scope::Site(site.clone())),
    ];
    let users = ["viewer", "control", "tech", "admin", "nobody"]
        .into_iter()
        .map(|n| User {
            id: uid(&format!("u-{n}")),
            email: format!("{n}@example.com"),
            name: n.to_string(),
            active: true,
            password: None,
            business: None,
            owner: false,
        })
        .collect();
    let state = AccessState {
        site: Some(site.clone()),
        seq: 1,
        issued_at: Some(now - time::Duration::minutes(1)),
        last_trusted_time: Some(now - time::Duration::minutes(1)),
        policy: Policy {
            management: Management::Independent,
            features: CapSet::ALL,
            max_offline: Default::default(),
        },
        users,
        grants,
        ..Default::default()
    };
    sitegate::authz::Inputs {
        site: Some(site),
        state: Arc::new(state),
        inventory: vec![
            (unit("hvac-1"), Some(floor("floor1"))),
            (unit("hvac-2"), Some(floor("floor2"))),
            (unit("gen-1"), None),
        ],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Units: an HVAC profile and a generator profile, with validation before the (counted) bus.
// ---------------------------------------------------------------------------------------------

pub struct MemUnits {
    clock: Arc<ManualClock>,
    values: Mutex<HashMap<(UnitId, String), Value>>,
    /// Writes that reached the "bus" (after validation).
    pub bus_writes: AtomicU64,
    /// Commands that reached the bus.
    pub bus_commands: AtomicU64,
    /// Delay of a fresh read (a slow unit).
    pub fresh_delay: Mutex<Duration>,
    /// Make writes to this point fail with a Modbus exception.
    pub failing_point: Mutex<Option<String>>,
}

fn point(
    name: &str,
    kind: &str,
    read: Capability,
    write: Option<Capability>,
    range: Option<(f64, f64)>,
) -> PointInfo {
    PointInfo {
        name: name.into(),
        label: name.replace('_', " "),
        unit: None,
        kind: kind.into(),
        read,
        write,
        min: range.map(|r| r.0),
        max: range.map(|r| r.1),
        enum_labels: Vec::new(),
    }
}

impl MemUnits {
    pub fn new(clock: Arc<ManualClock>) -> Self {
        let mut values = HashMap::new();
        for u in ["hvac-1", "hvac-2"] {
            values.insert((unit(u), "setpoint".into()), json!(21.5));
            values.insert((unit(u), "room_temp".into()), json!(22.1));
            values.insert((unit(u), "filter_hours".into()), json!(1200));
            values.insert((unit(u), "lock_bits".into()), json!(0));
        }
        values.insert((unit("gen-1"), "rpm".into()), json!(0));
        MemUnits {
            clock,
            values: Mutex::new(values),
            bus_writes: AtomicU64::new(0),
            bus_commands: AtomicU64::new(0),
            fresh_delay: Mutex::new(Duration::ZERO),
            failing_point: Mutex::new(None),
        }
    }

    fn is_hvac(u: &UnitId) -> bool {
        u.as_str().starts_with("hvac")
    }

    pub fn value(&self, u: &str, p: &str) -> Option<Value> {
        self.values
            .lock()
            .unwrap()
            .get(&(unit(u), p.to_string()))
            .cloned()
    }

    fn readings(&self, u: &UnitId) -> Vec<Reading> {
        let at = self.clock.now() - time::Duration::seconds(2);
        self.values
            .lock()
            .unwrap()
            .iter()
            .filter(|((uu, _), _)| uu == u)
            .map(|((_, p), v)| Reading {
                point: p.clone(),
                value: v.clone(),
                quality: Quality::Good,
                read_at: Some(at),
            })
            .collect()
    }
}

impl UnitsPort for MemUnits {
    fn units(&self) -> Vec<UnitSummary> {
        ["gen-1", "hvac-1", "hvac-2"]
            .iter()
            .filter_map(|u| self.unit(&unit(u)))
            .collect()
    }

    fn unit(&self, u: &UnitId) -> Option<UnitSummary> {
        let (profile, group) = match u.as_str() {
            "hvac-1" => ("coolmaster-va", Some("floor1")),
            "hvac-2" => ("coolmaster-va", Some("floor2")),
            "gen-1" => ("dse-gencomm", None),
            _ => return None,
        };
        Some(UnitSummary {
            id: u.clone(),
            name: u.to_string(),
            profile: profile.into(),
            group: group.map(|g| GroupId::new(g).unwrap()),
            link: LinkId::new("bus1").unwrap(),
            online: true,
            last_seen: Some(self.clock.now()),
            poll_interval_ms: None,
        })
    }

    fn profile(&self, u: &UnitId) -> Option<UnitProfile> {
        self.unit(u)?;
        use Capability::*;
        Some(if Self::is_hvac(u) {
            UnitProfile {
                points: vec![
                    point("setpoint", "f32", View, Some(Control), Some((16.0, 30.0))),
                    point("room_temp", "f32", View, None, None),
                    point("filter_hours", "u16", Diagnose, None, None),
                    point("lock_bits", "u16", View, Some(Configure), Some((0.0, 15.0))),
                ],
                commands: vec![],
            }
        } else {
            UnitProfile {
                points: vec![point("rpm", "u16", View, None, None)],
                commands: vec![
                    CommandInfo {
                        name: "start".into(),
                        label: "Start".into(),
                        capability: Control,
                    },
                    CommandInfo {
                        name: "reset_faults".into(),
                        label: "Reset fault latches".into(),
                        capability: Configure,
                    },
                ],
            }
        })
    }

    fn snapshot(&self, u: &UnitId) -> Option<Vec<Reading>> {
        self.unit(u)?;
        Some(self.readings(u))
    }

    fn read_fresh<'a>(
        &'a self,
        u: &'a UnitId,
        _timeout: Duration,
    ) -> BoxFut<'a, Result<Vec<Reading>, ReadError>> {
        Box::pin(async move {
            let delay = *self.fresh_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            self.unit(u).ok_or(ReadError::UnknownUnit)?;
            Ok(self.readings(u))
        })
    }

    fn write_point<'a>(
        &'a self,
        u: &'a UnitId,
        p: &'a str,
        value: Value,
    ) -> BoxFut<'a, Result<WriteOutcome, WriteFailure>> {
        Box::pin(async move {
            let profile = self.profile(u).ok_or(WriteFailure::UnknownPoint)?;
            let info = profile
                .points
                .iter()
                .find(|x| x.name == p)
                .ok_or(WriteFailure::UnknownPoint)?;
            // Validation before the bus.
            let Some(n) = value.as_f64() else {
                return Err(WriteFailure::Validation(format!("`{p}` needs a number")));
            };
            if let (Some(min), Some(max)) = (info.min, info.max) {
                if !(min..=max).contains(&n) {
                    return Err(WriteFailure::Validation(format!(
                        "{n} is outside {min}..={max} for `{p}`"
                    )));
                }
            }
            if self.failing_point.lock().unwrap().as_deref() == Some(p) {
                self.bus_writes.fetch_add(1, Ordering::SeqCst);
                return Err(WriteFailure::Exception("illegal data value".into()));
            }
            self.bus_writes.fetch_add(1, Ordering::SeqCst);
            self.values
                .lock()
                .unwrap()
                .insert((u.clone(), p.to_string()), value.clone());
            Ok(WriteOutcome {
                written: value.clone(),
                read_back: value,
                at: self.clock.now(),
            })
        })
    }

    fn run_command<'a>(
        &'a self,
        u: &'a UnitId,
        command: &'a str,
    ) -> BoxFut<'a, Result<CommandOutcome, WriteFailure>> {
        Box::pin(async move {
            let profile = self.profile(u).ok_or(WriteFailure::UnknownCommand)?;
            if !profile.commands.iter().any(|c| c.name == command) {
                return Err(WriteFailure::UnknownCommand);
            }
            self.bus_commands.fetch_add(1, Ordering::SeqCst);
            Ok(CommandOutcome {
                command: command.into(),
                at: self.clock.now(),
            })
        })
    }

    fn diagnostics(&self, u: &UnitId) -> Option<Diagnostics> {
        self.unit(u)?;
        Some(Diagnostics {
            unit: u.clone(),
            slave: 1,
            online: true,
            consecutive_failures: 0,
            last_success: Some(self.clock.now()),
            last_error: None,
            link: LinkStats {
                link: "bus1".into(),
                kind: "tcp".into(),
                connected: true,
                requests: 10,
                ..LinkStats::default()
            },
        })
    }

    fn read_raw<'a>(
        &'a self,
        _u: &'a UnitId,
        _kind: RegisterKind,
        address: u16,
        count: u16,
        _timeout: Duration,
    ) -> BoxFut<'a, Result<Vec<u16>, ReadError>> {
        Box::pin(async move { Ok((0..count).map(|i| address.wrapping_add(i)).collect()) })
    }
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

pub fn api_config(mode: ApiMode) -> config::Api {
    config::Api {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mode,
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(10),
        rate_limit_per_sec: 10_000,
        rate_limit_burst: 10_000,
        cors_origins: Vec::new(),
        fresh_read_timeout: Duration::from_millis(300),
        console_socket: None,
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub auth: Arc<MemAuth>,
    /// The access-state owner over the site (the only writer of the index the API reads).
    pub authz: sitegate::authz::owner::Access,
    /// Stages the owner's access state, as a newer bundle would.
    pub stage: sitegate::authz::owner::Stage,
    pub units: Arc<MemUnits>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub state: ApiState,
    pub serving: Serving,
    pub shutdown: CancellationToken,
    pub base: String,
    pub http: reqwest::Client,
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(api_config(ApiMode::Plain)).await
    }

    pub async fn start_with(cfg: config::Api) -> Harness {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
        let shared: SharedClock = clock.clone();
        let store = Store::open_in(dir.path()).unwrap();
        let audit = Audit::new(store.clone(), shared.clone(), None);
        let auth = Arc::new(MemAuth::new(clock.clone()));
        let (authz, writers, stage) =
            sitegate::authz::owner::Access::staged(site_inputs(clock.now()));
        let units = Arc::new(MemUnits::new(clock.clone()));
        let delegations = sitegate::delegation::Delegations::new(
            store.clone(),
            audit.clone(),
            writers.local,
            shared.clone(),
            dir.path(),
            None,
        )
        .unwrap();
        let delegation = Arc::new(sitegate::app::adapters::DelegationAdapter {
            delegations,
            authz: authz.authz(),
        });
        let businesses = Arc::new(
            sitegate::business::Businesses::new(
                store.clone(),
                audit.clone(),
                writers.suspensions,
                shared.clone(),
                None,
            )
            .unwrap(),
        );
        let metrics = Arc::new(Metrics::new());
        let state = ApiState::new(
            Ports {
                auth: auth.clone(),
                authz: Arc::new(sitegate::app::adapters::AuthzAdapter {
                    authz: authz.authz(),
                    clock: shared.clone(),
                }),
                units: units.clone(),
                delegation,
                businesses,
            },
            audit,
            metrics.clone(),
            shared,
            &cfg,
        );
        let shutdown = CancellationToken::new();
        let serving = api::serve(state.clone(), &cfg, dir.path(), shutdown.clone())
            .await
            .unwrap();
        let scheme = if serving.tls_fingerprint.is_some() {
            "https"
        } else {
            "http"
        };
        let base = format!("{scheme}://127.0.0.1:{}/api/v1", serving.addr.port());
        Harness {
            dir,
            clock,
            auth,
            authz,
            stage,
            units,
            store,
            metrics,
            state,
            serving,
            shutdown,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Revokes a cloud grant, as a newer bundle would.
    pub fn revoke(&self, id: &str) {
        self.stage.update(|i| {
            let mut st = (*i.state).clone();
            st.seq += 1;
            st.revoked.insert(GrantId::new(id).unwrap());
            i.state = Arc::new(st);
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(&self, email: &str) -> String {
        let r = self
            .http
            .post(self.url("/session"))
            .json(&json!({ "email": email, "password": "correct horse" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "login of {email}");
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Audit records, newest first (read straight from the store).
    pub fn audit(&self) -> Vec<sitegate::audit::Record> {
        self.store
            .with_conn(|c| {
                sitegate::audit::query(
                    c,
                    &sitegate::audit::Query {
                        limit: 1000,
                        ..Default::default()
                    },
                )
            })
            .unwrap()
    }
}
