//! The engine: the unit state shared with the link tasks, the cache of the latest value of every
//! point, and the cloneable [`ModbusEngine`] handle the rest of the process uses. Each link is
//! served by its own task (`engine/link_task.rs`), which owns the link's transport and
//! serializes its bus; the handle talks to it over channels.
//!
//! Priorities on a link: commands and writes, then interactive reads, then polling; a poll cycle
//! runs one request at a time so a command waits at most one transaction. A write, once started,
//! is never cancelled: shutdown is checked only between transactions. Links never wait on each
//! other. The engine does not authorize: callers check capabilities first.

mod link_task;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Event};
use crate::config::{Link, Unit};
use crate::model::{GroupId, LinkId, SlaveId, UnitId};

use super::codec::{self, Encoded, Raw, ValueError};
use super::link::{self, LinkStats, ModbusError, Op, Reply};
use super::profile::{CommandCondition, Profile, ProfileRegistry, Quality, RegKind};
use super::scan::{self, Answer, Found, ProbeFut, Prober, Scanned, Step};
use link_task::LinkTask;

/// Interval of the read-back of a command's result.
const CONFIRM_POLL: Duration = Duration::from_millis(100);

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
    /// How often the unit is polled.
    pub poll_interval: Duration,
}

/// What [`ModbusEngine::units`] and [`ModbusEngine::unit_info`] say of one unit.
fn unit_info_of(u: &UnitShared) -> UnitInfo {
    UnitInfo {
        id: u.cfg.id.clone(),
        name: u.cfg.name.clone(),
        group: u.cfg.group.clone(),
        profile: u.cfg.profile.clone(),
        link: u.cfg.link.clone(),
        slave: u.cfg.slave.get(),
        online: lock(&u.state).online,
        poll_interval: u.cfg.poll_interval,
    }
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

/// Writes and commands queued per link before the engine answers `Busy` (`503 link_busy`).
/// Above the 50 concurrent writers of the LAN API's load target: with group commit their
/// answers, and so their next requests, arrive in bursts, and a queue of 32 refused ~20 % of
/// them (docs/PERFORMANCE.md). A full queue on RS-485 at 9600 baud (≈ 20–50 ms per write and
/// read-back) drains in ≈ 1.3–3.2 s, inside the API's request timeout.
const COMMAND_QUEUE: usize = 64;

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
    /// Every profile, for proposing one to a unit a scan finds.
    registry: Arc<ProfileRegistry>,
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
    /// One transaction of a scan, at any slave id (`Job::unit` is not used).
    Probe {
        slave: SlaveId,
        step: Step,
        timeout: Duration,
        reply: oneshot::Sender<Result<Answer, ModbusError>>,
    },
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
        let registry_kept = registry.clone();
        for (li, link) in links.iter().enumerate() {
            let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
            let (int_tx, int_rx) = mpsc::channel(64);
            let stats = Arc::new(Mutex::new(LinkStats::new(link)));
            let task = LinkTask::new(
                link.clone(),
                per_link[li].clone(),
                stats.clone(),
                cmd_rx,
                int_rx,
                shutdown.child_token(),
                updates.clone(),
                audit_tx.clone(),
            );
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
                registry: registry_kept,
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
        self.inner.units.iter().map(|u| unit_info_of(u)).collect()
    }

    /// One configured unit (as [`ModbusEngine::units`] lists it), without copying the others.
    pub fn unit_info(&self, id: &UnitId) -> Option<UnitInfo> {
        self.unit(id).map(|u| unit_info_of(u))
    }

    /// The newest read time (unix ms) among the unit's cached values that are not in error:
    /// the same as the newest `at_ms` of a [`ModbusEngine::snapshot`] without `Error` quality,
    /// without copying the values.
    pub fn last_seen_ms(&self, id: &UnitId) -> Option<u64> {
        let u = self.unit(id)?;
        let st = lock(&u.state);
        u.profile
            .points
            .iter()
            .zip(st.values.iter())
            .filter(|(_, c)| c.quality != Quality::Error)
            .filter_map(|(_, c)| c.at.map(|(_, ms)| ms))
            .max()
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

    /// Scans slave ids `from..=to` on `link` through the link's own task: each probe
    /// transaction waits its turn behind commands and between poll reads, so polling goes on
    /// during a scan. Progress after every id; `cancel` is looked at between ids. A transport
    /// that cannot be opened stops the scan with the reason.
    pub async fn scan(
        &self,
        link: &LinkId,
        from: SlaveId,
        to: SlaveId,
        per_id: Duration,
        cancel: &CancellationToken,
        progress: &mut (dyn FnMut(usize, usize, &[Found]) + Send),
    ) -> Result<Scanned, ScanError> {
        let Some(index) = self.inner.links.iter().position(|l| l.name == *link) else {
            return Err(ScanError::UnknownLink);
        };
        let mut p = EngineProber {
            engine: self,
            link: index,
        };
        let registry = self.inner.registry.clone();
        scan::scan(
            &mut p,
            from,
            to,
            per_id,
            &registry,
            Duration::ZERO,
            cancel,
            progress,
        )
        .await
    }

    /// The links, in config order.
    pub fn link_names(&self) -> Vec<LinkId> {
        self.inner.links.iter().map(|l| l.name.clone()).collect()
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

/// Why a scan stopped before its last id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("unknown link")]
    UnknownLink,
    /// The link's transport failed (cannot be opened, or broke): nothing more can be probed.
    #[error("{0}")]
    Link(String),
    #[error("shutting down")]
    ShuttingDown,
}

/// Probes through a link task's interactive queue.
struct EngineProber<'e> {
    engine: &'e ModbusEngine,
    link: usize,
}

impl Prober for EngineProber<'_> {
    type Stop = ScanError;
    fn step<'a>(
        &'a mut self,
        slave: SlaveId,
        step: Step,
        timeout: Duration,
    ) -> ProbeFut<'a, Result<Result<Answer, ModbusError>, ScanError>> {
        Box::pin(async move {
            let Some(l) = self.engine.inner.links.get(self.link) else {
                return Err(ScanError::ShuttingDown);
            };
            let (tx, rx) = oneshot::channel();
            let job = Job {
                unit: usize::MAX,
                kind: JobKind::Probe {
                    slave,
                    step,
                    timeout,
                    reply: tx,
                },
            };
            // Wait for room rather than fail: a scan is not in a hurry.
            if l.int_tx.send(job).await.is_err() {
                return Err(ScanError::ShuttingDown);
            }
            match rx.await {
                Err(_) => Err(ScanError::ShuttingDown),
                // The transport cannot be opened, or broke: no id behind it can answer.
                Ok(Err(ModbusError::Transport(e))) => Err(ScanError::Link(e)),
                Ok(r) => Ok(r),
            }
        })
    }
}

fn write_err(e: EngineError) -> WriteError {
    match e {
        EngineError::Busy(l) => WriteError::Busy(l),
        _ => WriteError::ShuttingDown,
    }
}

/// Whether a `unit_fault` point of the profile currently reads true with good quality.
fn unit_faulty(profile: &Profile, value_of: impl Fn(usize) -> Option<(Value, Quality)>) -> bool {
    profile.points.iter().enumerate().any(|(i, p)| {
        p.unit_fault
            && value_of(i).is_some_and(|(v, q)| q == Quality::Good && v == Value::Bool(true))
    })
}
