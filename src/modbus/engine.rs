//! The engine: one task per link that owns its transport and serializes its bus, the unit state
//! (online/offline, degraded back-off, learnt gap splits), the cache of the latest value of every
//! point, and the cloneable [`ModbusEngine`] handle the rest of the process uses.
//!
//! Priorities on a link: commands and writes, then interactive reads, then polling; a poll cycle
//! runs one request at a time so a command waits at most one transaction. A write, once started,
//! is never cancelled: shutdown is checked only between transactions. Links never wait on each
//! other. The engine does not authorize: callers check capabilities first.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep;
use tokio_modbus::client::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Event};
use crate::config::{Link, LinkKind, Unit};
use crate::model::{GroupId, LinkId, UnitId};

use super::codec::{self, Encoded, Raw, ValueError};
use super::link::{self, LinkStats, ModbusError, Op, Reply};
use super::profile::{CommandCondition, Profile, ProfileRegistry, Quality, RegKind};
use super::scheduler::{self, Block};

/// Interval of the read-back of a command's result.
const CONFIRM_POLL: Duration = Duration::from_millis(100);

/// Consecutive failed poll cycles after which a unit is offline.
const OFFLINE_AFTER: u32 = 2;
/// Longest back-off of a unit that keeps failing (degraded mode).
const MAX_DEGRADED: Duration = Duration::from_secs(60);
/// Transport reconnect back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Pause before retrying a failed read.
const RETRY_BASE: Duration = Duration::from_millis(25);

/// A unit as configured, with its current availability.
#[derive(Debug, Clone, Serialize)]
pub struct UnitInfo {
    pub id: UnitId,
    pub name: String,
    pub group: Option<GroupId>,
    pub profile: String,
    pub link: LinkId,
    pub slave: u8,
    /// `None` until the first poll cycle decided.
    pub online: Option<bool>,
}

/// The cached value of one point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointValue {
    /// `null` unless the quality is good (or stale: the last good value).
    pub value: Value,
    pub unit: Option<String>,
    pub quality: Quality,
    /// When the value was read (Unix ms), if ever.
    pub at_ms: Option<u64>,
    pub age_ms: Option<u64>,
}

/// The latest values of every point of a unit.
#[derive(Debug, Clone, Serialize)]
pub struct UnitSnapshot {
    pub unit: UnitId,
    pub online: Option<bool>,
    pub points: BTreeMap<String, PointValue>,
}

/// Pushed to subscribers (MQTT telemetry and availability).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UnitUpdate {
    /// Points whose value or quality changed (beyond the point's deadband).
    Values {
        unit: UnitId,
        points: BTreeMap<String, PointValue>,
    },
    Availability {
        unit: UnitId,
        online: bool,
    },
}

/// What a raw read returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawValues {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Errors of the engine's read-side calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the link `{0}` is busy; try again")]
    Busy(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Modbus(#[from] ModbusError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why a write or command was refused before it reached the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    #[error("unknown point `{0}`")]
    UnknownPoint(String),
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    /// The value failed type/range/enum validation (HTTP 422); nothing was sent.
    #[error("invalid value for `{point}`: {source}")]
    Invalid {
        point: String,
        #[source]
        source: ValueError,
    },
    #[error("the link `{0}` is busy; try again")]
    Busy(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The controller does not report the command as supported; nothing was sent.
    #[error("{0}")]
    NotSupported(String),
    /// The command is not possible in the device's present state (e.g. a start in stop mode);
    /// nothing was sent.
    #[error("{0}")]
    NotPossible(String),
}

/// How a write that reached the bus ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WriteStatus {
    /// Written and read back equal (commands: written; control keys are not readable).
    Ok,
    /// Written, but the read-back differs (the device clamped or refused it silently).
    Mismatch,
    /// Written, but the read-back failed, so the result is unverified.
    Unverified { reason: String },
    /// The device answered with an exception: nothing was written.
    Exception { code: u8, name: String },
    /// No answer: the write may or may not have taken effect.
    Timeout,
    /// The link failed (connect, I/O, garbled answer).
    Failed { reason: String },
}

impl WriteStatus {
    fn from_error(e: &ModbusError) -> WriteStatus {
        match e {
            ModbusError::Exception(c) => WriteStatus::Exception {
                code: *c,
                name: link::exception_name(*c).into(),
            },
            ModbusError::Timeout => WriteStatus::Timeout,
            other => WriteStatus::Failed {
                reason: other.to_string(),
            },
        }
    }
    pub fn is_ok(&self) -> bool {
        matches!(self, WriteStatus::Ok)
    }
}

/// The result of a write or command that was validated and sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteOutcome {
    #[serde(flatten)]
    pub status: WriteStatus,
    /// The value written (engineering units), or the command name.
    pub written: Value,
    /// What the read-back returned (engineering units), if it ran.
    pub read_back: Option<Value>,
    pub duration_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Shared state.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Cached {
    value: Value,
    /// The value last published to subscribers (deadbands compare against it, so a slow drift
    /// is published once it adds up).
    published: Value,
    quality: Quality,
    at: Option<(Instant, u64)>,
}

struct UnitShared {
    cfg: Unit,
    profile: Arc<Profile>,
    link: usize,
    /// Index among its link's units.
    local: usize,
    state: Mutex<UnitState>,
}

struct UnitState {
    online: Option<bool>,
    values: Vec<Cached>,
}

struct LinkHandle {
    name: LinkId,
    cmd_tx: mpsc::Sender<Job>,
    int_tx: mpsc::Sender<Job>,
    stats: Arc<Mutex<LinkStats>>,
}

struct Inner {
    units: Vec<Arc<UnitShared>>,
    by_id: HashMap<UnitId, usize>,
    links: Vec<LinkHandle>,
    updates: broadcast::Sender<UnitUpdate>,
}

/// The handle to the running engine (cheap to clone).
#[derive(Clone)]
pub struct ModbusEngine {
    inner: Arc<Inner>,
}

struct Job {
    unit: usize,
    kind: JobKind,
}

type WriteReply = Result<Option<Result<Reply, ModbusError>>, ModbusError>;

enum JobKind {
    Write {
        ops: Vec<Op>,
        readback: Option<Op>,
        /// Outer error: a write failed. `Some`: the read-back's own result.
        reply: oneshot::Sender<WriteReply>,
    },
    Raw {
        op: Op,
        reply: oneshot::Sender<Result<Reply, ModbusError>>,
    },
    Refresh {
        reply: oneshot::Sender<Result<(), ModbusError>>,
    },
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ModbusEngine {
    /// Builds the engine and spawns one task per link (and one audit writer) on `tracker`.
    /// Must be called inside a tokio runtime.
    pub fn start(
        links: &[Link],
        units: &[Unit],
        registry: Arc<ProfileRegistry>,
        audit: Audit,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<ModbusEngine, EngineError> {
        let (updates, _) = broadcast::channel(1024);
        let (audit_tx, mut audit_rx) = mpsc::unbounded_channel::<Event>();
        let mut shared: Vec<Arc<UnitShared>> = Vec::new();
        let mut per_link: Vec<Vec<Arc<UnitShared>>> = vec![Vec::new(); links.len()];
        let mut problems = Vec::new();
        for u in units {
            let Some(li) = links.iter().position(|l| l.name == u.link) else {
                problems.push(format!("unit `{}`: unknown link `{}`", u.id, u.link));
                continue;
            };
            let Some(profile) = registry.get(&u.profile) else {
                problems.push(format!("unit `{}`: unknown profile `{}`", u.id, u.profile));
                continue;
            };
            // The unit's own copy of the profile, moved to its VA or base offset.
            let profile = if u.va.is_some() || u.base_offset != 0 {
                match u.placed(&profile) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        problems.push(format!("unit `{}`: {e}", u.id));
                        continue;
                    }
                }
            } else {
                profile
            };
            let values = vec![
                Cached {
                    value: Value::Null,
                    published: Value::Null,
                    quality: Quality::Unknown,
                    at: None,
                };
                profile.points.len()
            ];
            let us = Arc::new(UnitShared {
                cfg: u.clone(),
                profile,
                link: li,
                local: per_link[li].len(),
                state: Mutex::new(UnitState {
                    online: None,
                    values,
                }),
            });
            per_link[li].push(us.clone());
            shared.push(us);
        }
        if !problems.is_empty() {
            return Err(EngineError::Config(problems.join("; ")));
        }
        let mut handles = Vec::new();
        for (li, link) in links.iter().enumerate() {
            let (cmd_tx, cmd_rx) = mpsc::channel(32);
            let (int_tx, int_rx) = mpsc::channel(64);
            let stats = Arc::new(Mutex::new(LinkStats::new(link)));
            let now = Instant::now();
            let sched = per_link[li]
                .iter()
                .enumerate()
                .map(|(i, _)| UnitSched {
                    boundaries: BTreeSet::new(),
                    plan: None,
                    // Stagger first polls so a bus with many units does not burst.
                    next_poll: now + Duration::from_millis(15 * i as u64),
                    fails: 0,
                    cycle_ok: false,
                    cycle_failed: false,
                })
                .collect();
            let task = LinkTask {
                link: link.clone(),
                units: per_link[li].clone(),
                sched,
                ctx: None,
                next_connect: now,
                reconnect_backoff: RECONNECT_MIN,
                ever_connected: false,
                stats: stats.clone(),
                cmd_rx,
                int_rx,
                shutdown: shutdown.child_token(),
                updates: updates.clone(),
                audit_tx: audit_tx.clone(),
                queue: VecDeque::new(),
                no_merge: BTreeSet::new(),
            };
            tracker.spawn(task.run());
            handles.push(LinkHandle {
                name: link.name.clone(),
                cmd_tx,
                int_tx,
                stats,
            });
        }
        drop(audit_tx);
        tracker.spawn(async move {
            // Ends when every link task has ended (they hold the senders): nothing is lost.
            while let Some(ev) = audit_rx.recv().await {
                let _ = audit.record(ev).await;
            }
        });
        let by_id = shared
            .iter()
            .enumerate()
            .map(|(i, u)| (u.cfg.id.clone(), i))
            .collect();
        Ok(ModbusEngine {
            inner: Arc::new(Inner {
                units: shared,
                by_id,
                links: handles,
                updates,
            }),
        })
    }

    fn unit(&self, id: &UnitId) -> Option<&Arc<UnitShared>> {
        self.inner
            .by_id
            .get(id)
            .and_then(|&i| self.inner.units.get(i))
    }

    /// Every configured unit, in config order.
    pub fn units(&self) -> Vec<UnitInfo> {
        self.inner
            .units
            .iter()
            .map(|u| UnitInfo {
                id: u.cfg.id.clone(),
                name: u.cfg.name.clone(),
                group: u.cfg.group.clone(),
                profile: u.cfg.profile.clone(),
                link: u.cfg.link.clone(),
                slave: u.cfg.slave,
                online: lock(&u.state).online,
            })
            .collect()
    }

    pub fn profile_of(&self, id: &UnitId) -> Option<Arc<Profile>> {
        self.unit(id).map(|u| u.profile.clone())
    }

    /// The cached values of a unit; a value older than three poll intervals (or of an offline
    /// unit) is reported `stale`.
    pub fn snapshot(&self, id: &UnitId) -> Option<UnitSnapshot> {
        let u = self.unit(id)?;
        let st = lock(&u.state);
        let stale_after = (u.cfg.poll_interval * 3).max(Duration::from_secs(5));
        let faulty = unit_faulty(&u.profile, |i| {
            st.values.get(i).map(|c| (c.value.clone(), c.quality))
        });
        let points = u
            .profile
            .points
            .iter()
            .zip(st.values.iter())
            .map(|(p, c)| {
                let age = c.at.map(|(i, _)| i.elapsed());
                let quality = if c.quality == Quality::Good
                    && (st.online == Some(false)
                        || age.is_some_and(|a| a > stale_after)
                        || (faulty && !p.unit_fault))
                {
                    Quality::Stale
                } else {
                    c.quality
                };
                (
                    p.name.clone(),
                    PointValue {
                        value: c.value.clone(),
                        unit: p.unit.clone(),
                        quality,
                        at_ms: c.at.map(|(_, ms)| ms),
                        age_ms: age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
                    },
                )
            })
            .collect();
        Some(UnitSnapshot {
            unit: u.cfg.id.clone(),
            online: st.online,
            points,
        })
    }

    fn submit(&self, u: &UnitShared, kind: JobKind, command: bool) -> Result<(), EngineError> {
        let Some(l) = self.inner.links.get(u.link) else {
            return Err(EngineError::ShuttingDown);
        };
        let tx = if command { &l.cmd_tx } else { &l.int_tx };
        tx.try_send(Job {
            unit: u.local,
            kind,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::Busy(l.name.to_string()),
            mpsc::error::TrySendError::Closed(_) => EngineError::ShuttingDown,
        })
    }

    /// Reads every point of the unit now (interactive priority) and returns the snapshot.
    pub async fn read_fresh(
        &self,
        id: &UnitId,
        timeout: Duration,
    ) -> Result<UnitSnapshot, EngineError> {
        let u = self
            .unit(id)
            .ok_or_else(|| EngineError::UnknownUnit(id.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.submit(u, JobKind::Refresh { reply: tx }, false)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(EngineError::Modbus(ModbusError::Timeout)),
            Ok(Err(_)) => Err(EngineError::ShuttingDown),
            Ok(Ok(Err(e))) => Err(EngineError::Modbus(e)),
            Ok(Ok(Ok(()))) => self
                .snapshot(id)
                .ok_or_else(|| EngineError::UnknownUnit(id.to_string())),
        }
    }

    /// Validates `value` for `point`, writes it, reads it back and compares.
    pub async fn write_point(
        &self,
        id: &UnitId,
        point: &str,
        value: Value,
    ) -> Result<WriteOutcome, WriteError> {
        let u = self
            .unit(id)
            .ok_or_else(|| WriteError::UnknownUnit(id.to_string()))?;
        let pi = u
            .profile
            .point_index(point)
            .ok_or_else(|| WriteError::UnknownPoint(point.to_string()))?;
        let p = &u.profile.points[pi];
        // INVARIANT: nothing reaches the bus unless the codec accepted the value.
        let enc = codec::encode(p, &value).map_err(|source| WriteError::Invalid {
            point: point.to_string(),
            source,
        })?;
        let (op, expected) = match enc {
            Encoded::Bit(b) => (
                Op::WriteCoils {
                    addr: p.address,
                    values: vec![b],
                },
                Reply::Bits(vec![b]),
            ),
            Encoded::Words(w) => (
                Op::WriteRegisters {
                    addr: p.address,
                    values: w.clone(),
                },
                Reply::Words(w),
            ),
        };
        let readback = Op::Read {
            kind: p.kind,
            addr: p.address,
            count: p.width(),
        };
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.submit(
            u,
            JobKind::Write {
                ops: vec![op],
                readback: Some(readback),
                reply: tx,
            },
            true,
        )
        .map_err(write_err)?;
        let res = rx.await.map_err(|_| WriteError::ShuttingDown)?;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, read_back) = match res {
            Err(e) => (WriteStatus::from_error(&e), None),
            Ok(None) => (
                WriteStatus::Unverified {
                    reason: "no read-back".into(),
                },
                None,
            ),
            Ok(Some(Err(e))) => (
                WriteStatus::Unverified {
                    reason: format!("read-back failed: {e}"),
                },
                None,
            ),
            Ok(Some(Ok(reply))) => {
                let shown = match &reply {
                    Reply::Bits(b) => codec::decode(p, &Raw::Bits(b.as_slice())).0,
                    Reply::Words(w) => codec::decode(p, &Raw::Words(w.as_slice())).0,
                    Reply::Written => Value::Null,
                };
                let same = match (&reply, &expected) {
                    (Reply::Bits(a), Reply::Bits(b)) => a.first() == b.first(),
                    (a, b) => a == b,
                };
                (
                    if same {
                        WriteStatus::Ok
                    } else {
                        WriteStatus::Mismatch
                    },
                    Some(shown),
                )
            }
        };
        Ok(WriteOutcome {
            status,
            written: value,
            read_back,
            duration_ms,
        })
    }

    /// Reads one point now (an interactive read), decoded.
    async fn read_point_now(
        &self,
        id: &UnitId,
        profile: &Profile,
        point: &str,
    ) -> Result<(Value, Quality), ModbusError> {
        let Some(p) = profile.point(point) else {
            return Err(ModbusError::Protocol(format!("no point `{point}`")));
        };
        let raw = self
            .raw_read(id, p.kind, p.address, p.width())
            .await
            .map_err(|e| match e {
                EngineError::Modbus(m) => m,
                other => ModbusError::Protocol(other.to_string()),
            })?;
        Ok(match raw {
            RawValues::Words(w) => codec::decode(p, &Raw::Words(&w)),
            RawValues::Bits(b) => codec::decode(p, &Raw::Bits(&b)),
        })
    }

    /// Whether the controller reports a command as supported, from the cached value of its
    /// flags point (`None`: not read yet). Commands without `supported_if` are always offered.
    pub fn command_offered(&self, id: &UnitId, name: &str) -> Option<bool> {
        let u = self.unit(id)?;
        let cmd = u.profile.command(name)?;
        let Some(sup) = &cmd.supported_if else {
            return Some(true);
        };
        let i = u.profile.point_index(&sup.point)?;
        let st = lock(&u.state);
        let c = st.values.get(i)?;
        (c.quality == Quality::Good)
            .then(|| c.value.as_u64())
            .flatten()
            .map(|v| v & u64::from(sup.mask) != 0)
    }

    /// Runs a profile command: checks that the controller supports it and that it is possible
    /// now (both read fresh), writes in order (FC16/FC15), then reads its result back within the
    /// profile's bound.
    pub async fn run_command(&self, id: &UnitId, name: &str) -> Result<WriteOutcome, WriteError> {
        let u = self
            .unit(id)
            .ok_or_else(|| WriteError::UnknownUnit(id.to_string()))?;
        let cmd = u
            .profile
            .command(name)
            .ok_or_else(|| WriteError::UnknownCommand(name.to_string()))?;
        let started = Instant::now();
        let not_sent = |e: ModbusError| WriteOutcome {
            status: WriteStatus::from_error(&e),
            written: Value::Null,
            read_back: None,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        if let Some(sup) = &cmd.supported_if {
            let (v, q) = match self.read_point_now(id, &u.profile, &sup.point).await {
                Ok(vq) => vq,
                Err(e) => return Ok(not_sent(e)),
            };
            let set = v.as_u64().is_some_and(|r| r & u64::from(sup.mask) != 0);
            if q != Quality::Good || !set {
                return Err(WriteError::NotSupported(format!(
                    "the controller does not report command `{name}` as supported (`{}` = {v}, needs bits {:#06x})",
                    sup.point, sup.mask
                )));
            }
        }
        if let Some(cond) = &cmd.allowed_when {
            let (v, q) = match self.read_point_now(id, &u.profile, &cond.point).await {
                Ok(vq) => vq,
                Err(e) => return Ok(not_sent(e)),
            };
            if q != Quality::Good || !cond.matches(&v) {
                return Err(WriteError::NotPossible(format!(
                    "command `{name}` is not possible while `{}` is {v} (possible in: {})",
                    cond.point,
                    cond.values.join(", ")
                )));
            }
        }
        let ops = cmd
            .writes
            .iter()
            .map(|w| match w.kind {
                RegKind::Coil => Op::WriteCoils {
                    addr: w.address,
                    values: w.values.iter().map(|v| *v != 0).collect(),
                },
                _ => Op::WriteRegisters {
                    addr: w.address,
                    values: w.values.clone(),
                },
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        self.submit(
            u,
            JobKind::Write {
                ops,
                readback: None,
                reply: tx,
            },
            true,
        )
        .map_err(write_err)?;
        let res = rx.await.map_err(|_| WriteError::ShuttingDown)?;
        let mut status = match res {
            Ok(_) => WriteStatus::Ok,
            Err(e) => WriteStatus::from_error(&e),
        };
        let mut read_back = None;
        if let (WriteStatus::Ok, Some(conf)) = (&status, &cmd.confirm) {
            // The result, read back until it shows or the bound passes (never unbounded).
            let deadline = Instant::now() + conf.within;
            let cond = CommandCondition {
                point: conf.point.clone(),
                values: conf.values.clone(),
            };
            status = loop {
                let last = self.read_point_now(id, &u.profile, &conf.point).await;
                if let Ok((v, Quality::Good)) = &last {
                    read_back = Some(v.clone());
                    if cond.matches(v) {
                        break WriteStatus::Ok;
                    }
                }
                if Instant::now() >= deadline {
                    break WriteStatus::Unverified {
                        reason: format!(
                            "`{}` is {} {} ms after the command, expected one of: {}",
                            conf.point,
                            match &last {
                                Ok((v, q)) if *q == Quality::Good => v.to_string(),
                                Ok((_, q)) => format!("of quality {}", q.as_str()),
                                Err(e) => format!("unreadable ({e})"),
                            },
                            conf.within.as_millis(),
                            conf.values.join(", ")
                        ),
                    };
                }
                sleep(CONFIRM_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
            };
        }
        Ok(WriteOutcome {
            status,
            written: Value::String(name.to_string()),
            read_back,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Reads raw registers or bits (technicians, capability `diagnose`).
    pub async fn raw_read(
        &self,
        id: &UnitId,
        kind: RegKind,
        addr: u16,
        count: u16,
    ) -> Result<RawValues, EngineError> {
        let u = self
            .unit(id)
            .ok_or_else(|| EngineError::UnknownUnit(id.to_string()))?;
        if count == 0 || count > kind.max_read() {
            return Err(EngineError::BadRequest(format!(
                "count must be 1..={} for {}",
                kind.max_read(),
                kind.as_str()
            )));
        }
        if u32::from(addr) + u32::from(count) > 65536 {
            return Err(EngineError::BadRequest(
                "the range ends beyond address 65535".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.submit(
            u,
            JobKind::Raw {
                op: Op::Read { kind, addr, count },
                reply: tx,
            },
            false,
        )?;
        match rx.await.map_err(|_| EngineError::ShuttingDown)?? {
            Reply::Bits(mut b) => {
                b.truncate(usize::from(count));
                Ok(RawValues::Bits(b))
            }
            Reply::Words(w) => Ok(RawValues::Words(w)),
            Reply::Written => Err(EngineError::Modbus(ModbusError::Protocol(
                "unexpected reply".into(),
            ))),
        }
    }

    /// Statistics of every link.
    pub fn link_stats(&self) -> Vec<LinkStats> {
        self.inner
            .links
            .iter()
            .map(|l| {
                let mut s = lock(&l.stats).clone();
                s.queued = (l.cmd_tx.max_capacity() - l.cmd_tx.capacity() + l.int_tx.max_capacity()
                    - l.int_tx.capacity()) as u64;
                s
            })
            .collect()
    }

    /// Value and availability changes.
    pub fn subscribe(&self) -> broadcast::Receiver<UnitUpdate> {
        self.inner.updates.subscribe()
    }
}

fn write_err(e: EngineError) -> WriteError {
    match e {
        EngineError::Busy(l) => WriteError::Busy(l),
        _ => WriteError::ShuttingDown,
    }
}

// ---------------------------------------------------------------------------------------------
// The link task.
// ---------------------------------------------------------------------------------------------

struct UnitSched {
    /// Addresses where a read block must start (learnt from exception 02).
    boundaries: BTreeSet<(RegKind, u16)>,
    plan: Option<Vec<Block>>,
    next_poll: Instant,
    /// Consecutive failed cycles.
    fails: u32,
    cycle_ok: bool,
    cycle_failed: bool,
}

struct PollItem {
    unit: usize,
    block: Block,
}

struct LinkTask {
    link: Link,
    units: Vec<Arc<UnitShared>>,
    sched: Vec<UnitSched>,
    ctx: Option<Context>,
    next_connect: Instant,
    reconnect_backoff: Duration,
    ever_connected: bool,
    stats: Arc<Mutex<LinkStats>>,
    cmd_rx: mpsc::Receiver<Job>,
    int_rx: mpsc::Receiver<Job>,
    shutdown: CancellationToken,
    updates: broadcast::Sender<UnitUpdate>,
    audit_tx: mpsc::UnboundedSender<Event>,
    /// Reads of the poll cycle in progress.
    queue: VecDeque<PollItem>,
    /// Slave ids where a read merged across units failed: their units are read one by one.
    no_merge: BTreeSet<u8>,
}

enum BlockResult {
    Ok,
    /// Exception 02 on a multi-point block: these blocks replace it.
    Split(Vec<Block>),
    /// The device answered with an exception (it is alive).
    Exception,
    /// No usable answer.
    Failed(ModbusError),
}

impl LinkTask {
    async fn run(mut self) {
        let mut pending: Option<Job> = None;
        loop {
            let job = pending
                .take()
                .or_else(|| self.cmd_rx.try_recv().ok())
                .or_else(|| self.int_rx.try_recv().ok());
            if let Some(job) = job {
                // INVARIANT: a job, once taken, runs to the end (a write is never cut off).
                self.run_job(job).await;
                continue;
            }
            if self.shutdown.is_cancelled() {
                break;
            }
            if let Some(item) = self.queue.pop_front() {
                self.poll_block(item).await;
                continue;
            }
            let now = Instant::now();
            let next = self
                .sched
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.next_poll)
                .map(|(i, s)| (i, s.next_poll));
            if let Some((i, due)) = next
                && due <= now
            {
                self.start_cycle(i);
                continue;
            }
            let wake = next.map_or(now + Duration::from_secs(3600), |(_, d)| d);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(j) = self.cmd_rx.recv() => pending = Some(j),
                Some(j) = self.int_rx.recv() => pending = Some(j),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        tracing::debug!(link = %self.link.name, "link task stopped");
    }

    fn slave(&self, unit: usize) -> u8 {
        self.units.get(unit).map_or(0, |u| u.cfg.slave)
    }

    /// Runs `op`, retrying failures that are not exceptions up to `retries` times. Writes are
    /// never retried (a timed-out write may have taken effect).
    async fn exec(
        &mut self,
        unit: usize,
        op: &Op,
        retries: u32,
        force: bool,
    ) -> Result<Reply, ModbusError> {
        let slave = self.slave(unit);
        let mut attempt = 0;
        loop {
            let res = self.exec_once(slave, op, force).await;
            match &res {
                Err(e)
                    if e.breaks_transport()
                        && !op.is_write()
                        && attempt < retries
                        && !self.shutdown.is_cancelled() =>
                {
                    attempt += 1;
                    sleep(RETRY_BASE * 2u32.saturating_pow(attempt - 1)).await;
                }
                _ => return res,
            }
        }
    }

    async fn exec_once(&mut self, slave: u8, op: &Op, force: bool) -> Result<Reply, ModbusError> {
        if self.ctx.is_none() {
            let now = Instant::now();
            if now < self.next_connect && !force {
                return Err(ModbusError::Transport(format!(
                    "link `{}` is down; reconnecting",
                    self.link.name
                )));
            }
            match link::connect(&self.link).await {
                Ok(c) => {
                    self.ctx = Some(c);
                    self.reconnect_backoff = RECONNECT_MIN;
                    let mut st = lock(&self.stats);
                    st.connected = true;
                    if self.ever_connected {
                        st.reconnects += 1;
                    }
                    self.ever_connected = true;
                }
                Err(e) => {
                    self.next_connect = Instant::now() + self.reconnect_backoff;
                    self.reconnect_backoff = (self.reconnect_backoff * 2).min(RECONNECT_MAX);
                    let mut st = lock(&self.stats);
                    st.connected = false;
                    st.last_error = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(ModbusError::Transport("not connected".into()));
        };
        let started = Instant::now();
        let fut = link::transact(ctx, slave, op, self.link.timeout);
        let res = if op.is_write() || force {
            // INVARIANT: a write (and the rest of its job, such as the read-back) is never cut
            // off by shutdown; its own timeout bounds it. Only poll reads are abandoned.
            fut.await
        } else {
            let stop = self.shutdown.clone();
            tokio::select! {
                r = fut => r,
                _ = stop.cancelled() => Err(ModbusError::Transport("shutting down".into())),
            }
        };
        lock(&self.stats).record(op, started, &res);
        if let Err(e) = &res
            && e.breaks_transport()
        {
            // A late answer would be taken for the next request's: start afresh.
            self.ctx = None;
            lock(&self.stats).connected = false;
            if *e == ModbusError::Timeout && !matches!(self.link.kind, LinkKind::Tcp { .. }) {
                // RTU answers carry no transaction id: let a late answer arrive and be discarded
                // (the port is cleared on reopen) before the bus is used again.
                let settle = (self.link.timeout / 2)
                    .clamp(Duration::from_millis(50), Duration::from_secs(1));
                sleep(settle).await;
            }
        }
        if !self.link.inter_frame_delay.is_zero() {
            sleep(self.link.inter_frame_delay).await;
        }
        res
    }

    async fn run_job(&mut self, job: Job) {
        let unit = job.unit;
        let answered = self.run_job_inner(job).await;
        if answered {
            // The unit answered a command or interactive read: whatever the poll cycle thought,
            // it is reachable, so leave degraded mode and poll it now.
            if let Some(s) = self.sched.get_mut(unit)
                && s.fails > 0
            {
                s.fails = 0;
                s.next_poll = Instant::now();
                self.set_online(unit, true, None);
            }
        }
    }

    /// Runs one job; returns whether the device answered (a reply or an exception).
    async fn run_job_inner(&mut self, job: Job) -> bool {
        match job.kind {
            JobKind::Write {
                ops,
                readback,
                reply,
            } => {
                let mut result: WriteReply = Ok(None);
                for op in &ops {
                    if let Err(e) = self.exec(job.unit, op, 0, true).await {
                        result = Err(e);
                        break;
                    }
                }
                if result.is_ok()
                    && let Some(rb) = readback
                {
                    let r = self.exec(job.unit, &rb, self.link.retries, true).await;
                    if let (Ok(reply), Op::Read { kind, addr, count }) = (&r, &rb) {
                        let block = self.block_for(job.unit, *kind, *addr, *count);
                        self.store(job.unit, &block, reply);
                    }
                    result = Ok(Some(r));
                }
                let answered = result.as_ref().err().is_none_or(|e| !e.unit_unreachable());
                let _ = reply.send(result);
                answered
            }
            JobKind::Raw { op, reply } => {
                let r = self.exec(job.unit, &op, self.link.retries, true).await;
                let answered = r.as_ref().err().is_none_or(|e| !e.unit_unreachable());
                let _ = reply.send(r);
                answered
            }
            JobKind::Refresh { reply } => {
                let mut blocks: VecDeque<Block> = self.plan(job.unit).into();
                let mut result = Ok(());
                while let Some(b) = blocks.pop_front() {
                    match self.read_block(job.unit, &b).await {
                        BlockResult::Ok | BlockResult::Exception => {}
                        BlockResult::Split(more) => {
                            for m in more.into_iter().rev() {
                                blocks.push_front(m);
                            }
                        }
                        BlockResult::Failed(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let answered = result.is_ok();
                let _ = reply.send(result);
                answered
            }
        }
    }

    /// The points of `unit` that a raw range covers completely.
    fn block_for(&self, unit: usize, kind: RegKind, addr: u16, count: u16) -> Block {
        let points = self
            .units
            .get(unit)
            .map(|u| {
                u.profile
                    .points
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.kind == kind
                            && p.address >= addr
                            && p.end() <= u32::from(addr) + u32::from(count)
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        Block {
            kind,
            start: addr,
            count,
            points,
        }
    }

    fn plan(&mut self, unit: usize) -> Vec<Block> {
        let Some(u) = self.units.get(unit) else {
            return Vec::new();
        };
        let s = &mut self.sched[unit];
        if s.plan.is_none() {
            s.plan = Some(scheduler::plan(
                &u.profile,
                0..u.profile.points.len(),
                self.link.max_gap,
                &s.boundaries,
            ));
        }
        s.plan.clone().unwrap_or_default()
    }

    /// Starts the cycle of `unit` and of the units sharing its slave id that are due within half
    /// their interval, so that their reads can be merged (indoor units behind one gateway).
    fn start_cycle(&mut self, unit: usize) {
        self.start_unit_cycle(unit);
        let slave = self.slave(unit);
        let now = Instant::now();
        for other in 0..self.units.len() {
            let due = self.sched.get(other).is_some_and(|s| {
                s.fails < OFFLINE_AFTER
                    && s.next_poll <= now + self.units[other].cfg.poll_interval / 2
            });
            if other != unit
                && due
                && self.slave(other) == slave
                && !self.queue.iter().any(|i| i.unit == other)
            {
                self.start_unit_cycle(other);
            }
        }
    }

    fn start_unit_cycle(&mut self, unit: usize) {
        let mut blocks = self.plan(unit);
        let s = &mut self.sched[unit];
        s.cycle_ok = false;
        s.cycle_failed = false;
        if s.fails >= OFFLINE_AFTER {
            // Degraded: one probe request per cycle until the unit answers.
            blocks.truncate(1);
        }
        if blocks.is_empty() {
            s.next_poll = Instant::now() + self.units[unit].cfg.poll_interval;
            return;
        }
        self.queue
            .extend(blocks.into_iter().map(|block| PollItem { unit, block }));
    }

    /// Queued blocks of other units on the same slave id and table that one request can read
    /// together with `item` (gaps up to `max_gap`, at most the protocol maximum); removed from
    /// the queue.
    fn take_companions(&mut self, item: &PollItem) -> Vec<PollItem> {
        let slave = self.slave(item.unit);
        if self.no_merge.contains(&slave) {
            return Vec::new();
        }
        let kind = item.block.kind;
        let gap = u32::from(self.link.max_gap);
        // The smallest limit of the units involved (a device's own limit, else the protocol's).
        let max = self
            .units
            .iter()
            .filter(|u| u.cfg.slave == slave)
            .map(|u| u.profile.max_read(kind))
            .min()
            .unwrap_or(kind.max_read());
        let mut lo = u32::from(item.block.start);
        let mut hi = lo + u32::from(item.block.count);
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            let fits = self.queue.get(i).and_then(|q| {
                let (s, e) = (
                    u32::from(q.block.start),
                    u32::from(q.block.start) + u32::from(q.block.count),
                );
                let (nlo, nhi) = (lo.min(s), hi.max(e));
                (q.unit != item.unit
                    && self.slave(q.unit) == slave
                    && q.block.kind == kind
                    && s <= hi + gap
                    && e + gap >= lo
                    && nhi - nlo <= u32::from(max))
                .then_some((nlo, nhi))
            });
            match fits {
                Some((nlo, nhi)) => {
                    (lo, hi) = (nlo, nhi);
                    if let Some(q) = self.queue.remove(i) {
                        out.push(q);
                    }
                    // The span grew: earlier items may fit now.
                    i = 0;
                }
                None => i += 1,
            }
        }
        out
    }

    /// One read for blocks of several units on one slave id; each unit stores its own slice.
    /// Any failure puts the blocks back to be read one by one (and stops merging on that slave
    /// id when the device refused the merged range).
    async fn poll_merged(&mut self, item: PollItem, companions: Vec<PollItem>) {
        let mut items = companions;
        items.push(item);
        let lo = items.iter().map(|i| i.block.start).min().unwrap_or(0);
        let hi = items
            .iter()
            .map(|i| u32::from(i.block.start) + u32::from(i.block.count))
            .max()
            .unwrap_or(0);
        let kind = items.first().map_or(RegKind::Holding, |i| i.block.kind);
        let op = Op::Read {
            kind,
            addr: lo,
            count: u16::try_from(hi - u32::from(lo)).unwrap_or(u16::MAX),
        };
        let first = items.first().map_or(0, |i| i.unit);
        let retries = if self.sched[first].fails >= OFFLINE_AFTER {
            0
        } else {
            self.link.retries
        };
        match self.exec(first, &op, retries, false).await {
            Ok(reply) => {
                for it in &items {
                    let off = usize::from(it.block.start - lo);
                    let n = usize::from(it.block.count);
                    let part = match &reply {
                        Reply::Words(w) => w.get(off..off + n).map(|s| Reply::Words(s.to_vec())),
                        Reply::Bits(b) => b.get(off..off + n).map(|s| Reply::Bits(s.to_vec())),
                        Reply::Written => None,
                    };
                    match part {
                        Some(p) => self.store(it.unit, &it.block, &p),
                        None => self.mark_error(it.unit, &it.block),
                    }
                    self.sched[it.unit].cycle_ok = true;
                }
                for it in &items {
                    if !self.queue.iter().any(|i| i.unit == it.unit) {
                        self.finish_cycle(it.unit);
                    }
                }
            }
            Err(ModbusError::Exception(2)) => {
                let slave = self.slave(first);
                tracing::info!(link = %self.link.name, slave,
                    "exception 02 on a read merged across units; reading them one by one");
                self.no_merge.insert(slave);
                for it in items.into_iter().rev() {
                    self.queue.push_front(it);
                }
            }
            Err(_) => {
                // Judge each unit on its own read (a dead indoor unit, a dead gateway).
                for it in items.into_iter().rev() {
                    self.poll_block_alone(it).await;
                }
            }
        }
    }

    async fn poll_block(&mut self, item: PollItem) {
        let companions = self.take_companions(&item);
        if companions.is_empty() {
            self.poll_block_alone(item).await;
        } else {
            self.poll_merged(item, companions).await;
        }
    }

    async fn poll_block_alone(&mut self, item: PollItem) {
        let unit = item.unit;
        match self.read_block(unit, &item.block).await {
            BlockResult::Ok | BlockResult::Exception => self.sched[unit].cycle_ok = true,
            BlockResult::Split(more) => {
                self.sched[unit].cycle_ok = true;
                for b in more.into_iter().rev() {
                    self.queue.push_front(PollItem { unit, block: b });
                }
            }
            BlockResult::Failed(_) => {
                self.sched[unit].cycle_failed = true;
                // The unit is not answering: spend no more bus time on it this cycle.
                self.queue.retain(|i| i.unit != unit);
            }
        }
        if !self.queue.iter().any(|i| i.unit == unit) {
            self.finish_cycle(unit);
        }
    }

    fn finish_cycle(&mut self, unit: usize) {
        let interval = self.units[unit].cfg.poll_interval;
        let s = &mut self.sched[unit];
        let now = Instant::now();
        if s.cycle_ok {
            s.fails = 0;
            s.next_poll = now + interval;
            self.set_online(unit, true, None);
        } else {
            s.fails = s.fails.saturating_add(1);
            if s.fails >= OFFLINE_AFTER {
                let exp = (s.fails - OFFLINE_AFTER).min(8);
                s.next_poll = now + (interval * 2u32.pow(exp)).min(MAX_DEGRADED).max(interval);
                let reason = lock(&self.stats).last_error.clone();
                self.set_online(unit, false, reason);
            } else {
                s.next_poll = now + interval;
            }
        }
    }

    fn set_online(&mut self, unit: usize, online: bool, reason: Option<String>) {
        let Some(u) = self.units.get(unit) else {
            return;
        };
        let changed = {
            let mut st = lock(&u.state);
            let changed = st.online != Some(online);
            st.online = Some(online);
            changed
        };
        if !changed {
            return;
        }
        tracing::info!(unit = %u.cfg.id, link = %self.link.name, online, "unit availability changed");
        let mut detail = serde_json::json!({
            "link": self.link.name.as_str(),
            "slave": u.cfg.slave,
        });
        if let (Some(r), Some(obj)) = (reason, detail.as_object_mut()) {
            obj.insert("reason".into(), Value::String(r));
        }
        let ev = Event::new(
            if online {
                "unit_online"
            } else {
                "unit_offline"
            },
            "ok",
        )
        .actor("system")
        .unit(u.cfg.id.as_str())
        .detail(detail);
        let _ = self.audit_tx.send(ev);
        let _ = self.updates.send(UnitUpdate::Availability {
            unit: u.cfg.id.clone(),
            online,
        });
    }

    /// Reads one block and stores its points; learns a split on exception 02.
    async fn read_block(&mut self, unit: usize, b: &Block) -> BlockResult {
        let retries = if self.sched[unit].fails >= OFFLINE_AFTER {
            0
        } else {
            self.link.retries
        };
        let op = Op::Read {
            kind: b.kind,
            addr: b.start,
            count: b.count,
        };
        match self.exec(unit, &op, retries, false).await {
            Err(e) if e.unit_unreachable() => BlockResult::Failed(e),
            Ok(reply) => {
                self.store(unit, b, &reply);
                BlockResult::Ok
            }
            Err(ModbusError::Exception(2)) if b.points.len() > 1 => {
                let Some(u) = self.units.get(unit).cloned() else {
                    return BlockResult::Ok;
                };
                let splits = b.split_points(&u.profile);
                if splits.is_empty() {
                    self.mark_error(unit, b);
                    return BlockResult::Exception;
                }
                tracing::info!(unit = %u.cfg.id, start = b.start, count = b.count,
                    "exception 02 on a coalesced read; splitting it for this unit");
                let s = &mut self.sched[unit];
                s.boundaries.extend(splits.iter().copied());
                s.plan = None;
                let more = scheduler::plan(
                    &u.profile,
                    b.points.iter().copied(),
                    self.link.max_gap,
                    &s.boundaries,
                );
                BlockResult::Split(more)
            }
            Err(_) => {
                self.mark_error(unit, b);
                BlockResult::Exception
            }
        }
    }

    fn mark_error(&mut self, unit: usize, b: &Block) {
        let Some(u) = self.units.get(unit) else {
            return;
        };
        let mut changed = BTreeMap::new();
        {
            let mut st = lock(&u.state);
            for &i in &b.points {
                if let (Some(c), Some(p)) = (st.values.get_mut(i), u.profile.points.get(i))
                    && c.quality != Quality::Error
                {
                    c.quality = Quality::Error;
                    c.value = Value::Null;
                    c.published = Value::Null;
                    changed.insert(
                        p.name.clone(),
                        PointValue {
                            value: Value::Null,
                            unit: p.unit.clone(),
                            quality: Quality::Error,
                            at_ms: c.at.map(|(_, ms)| ms),
                            age_ms: None,
                        },
                    );
                }
            }
        }
        if !changed.is_empty() {
            let _ = self.updates.send(UnitUpdate::Values {
                unit: u.cfg.id.clone(),
                points: changed,
            });
        }
    }

    /// Decodes a reply into the cache; publishes the points that changed beyond their deadband.
    fn store(&mut self, unit: usize, b: &Block, reply: &Reply) {
        let Some(u) = self.units.get(unit) else {
            return;
        };
        let now = (Instant::now(), unix_ms());
        let mut changed = BTreeMap::new();
        {
            let mut st = lock(&u.state);
            let mut decoded = Vec::with_capacity(b.points.len());
            for &i in &b.points {
                let Some(p) = u.profile.points.get(i) else {
                    continue;
                };
                let off = usize::from(p.address.saturating_sub(b.start));
                let w = usize::from(p.width());
                let vq = match reply {
                    Reply::Words(words) => match words.get(off..off + w) {
                        Some(s) => codec::decode(p, &Raw::Words(s)),
                        None => (Value::Null, Quality::Error),
                    },
                    Reply::Bits(bits) => match bits.get(off..off + w) {
                        Some(s) => codec::decode(p, &Raw::Bits(s)),
                        None => (Value::Null, Quality::Error),
                    },
                    Reply::Written => continue,
                };
                decoded.push((i, vq));
            }
            // A gateway that reports its device as not answering keeps serving the last values:
            // they are stale, not good.
            let faulty = unit_faulty(&u.profile, |i| {
                decoded
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, vq)| vq.clone())
                    .or_else(|| st.values.get(i).map(|c| (c.value.clone(), c.quality)))
            });
            for (i, (value, quality)) in decoded {
                let Some(p) = u.profile.points.get(i) else {
                    continue;
                };
                let quality = if faulty && !p.unit_fault && quality == Quality::Good {
                    Quality::Stale
                } else {
                    quality
                };
                let Some(c) = st.values.get_mut(i) else {
                    continue;
                };
                let differs = c.quality != quality
                    || match (c.published.as_f64(), value.as_f64(), p.deadband) {
                        (Some(a), Some(v), Some(db)) => (a - v).abs() > db,
                        _ => c.published != value,
                    };
                if differs {
                    c.value = value.clone();
                    c.published = value.clone();
                    c.quality = quality;
                    changed.insert(
                        p.name.clone(),
                        PointValue {
                            value,
                            unit: p.unit.clone(),
                            quality,
                            at_ms: Some(now.1),
                            age_ms: Some(0),
                        },
                    );
                } else if c.value != value {
                    // Within the deadband: keep the cache exact, publish nothing.
                    c.value = value;
                }
                c.at = Some(now);
            }
        }
        if !changed.is_empty() {
            let _ = self.updates.send(UnitUpdate::Values {
                unit: u.cfg.id.clone(),
                points: changed,
            });
        }
    }
}

/// Whether a `unit_fault` point of the profile currently reads true with good quality.
fn unit_faulty(profile: &Profile, value_of: impl Fn(usize) -> Option<(Value, Quality)>) -> bool {
    profile.points.iter().enumerate().any(|(i, p)| {
        p.unit_fault
            && value_of(i).is_some_and(|(v, q)| q == Quality::Good && v == Value::Bool(true))
    })
}
