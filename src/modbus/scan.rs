//! Finding units on a bus: probe slave ids one by one and propose a profile for each that
//! answers (by its signature registers, its device identification, or, last, a profile whose
//! whole read plan answers).
//!
//! The probing logic is written once over [`Prober`], one Modbus transaction at a time: the
//! command line (`sitegate scan`, the daemon stopped) drives its own transport, the daemon
//! (`POST /api/v1/scans`) sends each transaction through the link's own task, between its poll
//! reads, so a scan never fights the poller for the bus. A scan never writes.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::link::{ModbusError, Op, Reply};
use super::profile::{Profile, ProfileRegistry};
use super::scheduler;
use crate::model::SlaveId;

/// The future a [`Prober`] returns.
pub type ProbeFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One transaction of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read device identification (FC43/14, basic objects).
    DeviceId,
    /// A read (never a write).
    Read(Op),
}

/// The answer to a [`Step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Identity(Vec<(u8, String)>),
    Reply(Reply),
}

/// Runs probe transactions on one bus. The outer error stops the scan (the transport cannot be
/// opened); the inner one is the device's answer (or its silence) to this transaction.
pub trait Prober: Send {
    type Stop: Send;
    fn step<'a>(
        &'a mut self,
        slave: SlaveId,
        step: Step,
        timeout: Duration,
    ) -> ProbeFut<'a, Result<Result<Answer, ModbusError>, Self::Stop>>;
}

/// What a probe found at one slave id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub slave: SlaveId,
    /// Device identification objects (id, text), empty when the device does not implement FC43.
    pub identity: Vec<(u8, String)>,
    /// Profile name and how it was identified.
    pub profile: Option<(String, &'static str)>,
}

/// Ids probed between two progress reports of the command line.
pub const PROGRESS_EVERY: usize = 10;

async fn read<P: Prober>(
    p: &mut P,
    slave: SlaveId,
    op: Op,
    t: Duration,
) -> Result<Option<Reply>, P::Stop> {
    Ok(match p.step(slave, Step::Read(op), t).await? {
        Ok(Answer::Reply(r)) => Some(r),
        _ => None,
    })
}

/// Probes one id; `Ok(None)` when nothing answers.
pub async fn identify<P: Prober>(
    p: &mut P,
    slave: SlaveId,
    t: Duration,
    profiles: &[Arc<Profile>],
) -> Result<Option<Found>, P::Stop> {
    let identity = match p.step(slave, Step::DeviceId, t).await? {
        Ok(Answer::Identity(id)) => id,
        // Alive, without FC43.
        Err(ModbusError::Exception(_)) => Vec::new(),
        _ => return Ok(None),
    };
    let vendor = identity
        .iter()
        .find(|(id, _)| *id == 0)
        .map(|(_, v)| v.to_lowercase());
    let mut profile = None;
    for prof in profiles.iter().filter(|p| !p.signature.is_empty()) {
        let mut all = true;
        for s in &prof.signature {
            let op = Op::Read {
                kind: s.kind,
                addr: s.address,
                count: 1,
            };
            match read(p, slave, op, t).await? {
                Some(Reply::Words(w)) if w.first() == Some(&s.value) => {}
                Some(Reply::Bits(b)) if b.first() == Some(&(s.value != 0)) => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            profile = Some((prof.name.clone(), "signature registers"));
            break;
        }
    }
    if profile.is_none()
        && let Some(v) = &vendor
    {
        profile = profiles
            .iter()
            .find(|p| {
                p.manufacturer
                    .as_deref()
                    .is_some_and(|m| !v.is_empty() && m.to_lowercase().contains(v.as_str()))
            })
            .map(|p| (p.name.clone(), "device identification (FC43)"));
    }
    if profile.is_none() {
        // Last resort: a profile without signature whose whole read plan answers.
        'outer: for prof in profiles.iter().filter(|p| p.signature.is_empty()) {
            let blocks = scheduler::plan(prof, 0..prof.points.len(), 0, &BTreeSet::new());
            for b in &blocks {
                let op = Op::Read {
                    kind: b.kind,
                    addr: b.start,
                    count: b.count,
                };
                if read(p, slave, op, t).await?.is_none() {
                    continue 'outer;
                }
            }
            if !blocks.is_empty() {
                profile = Some((prof.name.clone(), "register map fits (unconfirmed)"));
                break;
            }
        }
    }
    Ok(Some(Found {
        slave,
        identity,
        profile,
    }))
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub found: Vec<Found>,
    pub probed: usize,
    /// Stopped by `cancel` before the last id.
    pub cancelled: bool,
}

/// Probes `from..=to` and returns what answered. `progress(probed, total, found)` is called
/// after every id; `cancel` is looked at between ids; `pace` is waited between ids.
#[expect(
    clippy::too_many_arguments,
    reason = "the bus, the range and the scan's controls"
)]
pub async fn scan<P: Prober>(
    p: &mut P,
    from: SlaveId,
    to: SlaveId,
    per_id: Duration,
    registry: &ProfileRegistry,
    pace: Duration,
    cancel: &CancellationToken,
    progress: &mut (dyn FnMut(usize, usize, &[Found]) + Send),
) -> Result<Scanned, P::Stop> {
    let profiles: Vec<Arc<Profile>> = registry.iter().cloned().collect();
    let mut found = Vec::new();
    let total = usize::from(to.get().saturating_sub(from.get())) + 1;
    let mut probed = 0;
    for slave in SlaveId::range(from, to) {
        if cancel.is_cancelled() {
            return Ok(Scanned {
                found,
                probed,
                cancelled: true,
            });
        }
        if let Some(f) = identify(p, slave, per_id, &profiles).await? {
            found.push(f);
        }
        probed += 1;
        progress(probed, total, &found);
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    Ok(Scanned {
        found,
        probed,
        cancelled: false,
    })
}
