//! Finding units on a bus: probe slave ids one by one and propose a profile for each that
//! answers (by its signature registers, its device identification, or, last, a profile whose
//! whole read plan answers).
//!
//! The probing logic is written once over [`Prober`], one Modbus transaction at a time: the
//! command line with no daemon running (`sitegate scan`, or `--direct`) drives its own
//! transport; the daemon (`POST /api/v1/scans`, also what `sitegate scan` asks through the local
//! console when the daemon runs) sends each transaction through the link's own task, between
//! its poll reads, so a scan never fights the poller for the bus. A scan never writes.

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A bus where `alive` ids answer FC43 and nothing else, and `broken` stops the scan.
    struct Fake {
        alive: Vec<u8>,
        broken: Option<u8>,
        steps: usize,
    }

    impl Prober for Fake {
        type Stop = String;
        fn step<'a>(
            &'a mut self,
            slave: SlaveId,
            step: Step,
            _timeout: Duration,
        ) -> ProbeFut<'a, Result<Result<Answer, ModbusError>, String>> {
            Box::pin(async move {
                self.steps += 1;
                if self.broken == Some(slave.get()) {
                    return Err(format!("link down at {slave}"));
                }
                Ok(match step {
                    Step::DeviceId if self.alive.contains(&slave.get()) => {
                        Ok(Answer::Identity(vec![(0, "Acme".into())]))
                    }
                    Step::DeviceId => Err(ModbusError::Timeout),
                    Step::Read(_) => Err(ModbusError::Exception(2)),
                })
            })
        }
    }

    fn id(n: u8) -> SlaveId {
        SlaveId::new(n).unwrap()
    }

    #[tokio::test]
    async fn a_scan_reports_every_id_finds_who_answers_stops_when_cancelled_or_the_link_fails() {
        let registry = ProfileRegistry::builtin().unwrap();
        let never = CancellationToken::new();
        let mut seen = Vec::new();
        let mut bus = Fake {
            alive: vec![2, 4],
            broken: None,
            steps: 0,
        };
        let done = scan(
            &mut bus,
            id(1),
            id(5),
            Duration::from_millis(10),
            &registry,
            Duration::ZERO,
            &never,
            &mut |probed, total, found| seen.push((probed, total, found.len())),
        )
        .await
        .unwrap();
        let slaves: Vec<u8> = done.found.iter().map(|f| f.slave.get()).collect();
        assert_eq!(
            (slaves, done.probed, done.cancelled),
            (vec![2, 4], 5, false)
        );
        assert_eq!(
            seen,
            vec![(1, 5, 0), (2, 5, 1), (3, 5, 1), (4, 5, 2), (5, 5, 2)]
        );
        // Identified by nothing: no profile matched an "Acme" that answers no register.
        assert_eq!(done.found[0].profile, None);
        assert_eq!(done.found[0].identity, vec![(0, "Acme".to_string())]);

        // Cancelled after the second id: the third is never probed.
        let stop = CancellationToken::new();
        let mut bus = Fake {
            alive: vec![],
            broken: None,
            steps: 0,
        };
        let done = scan(
            &mut bus,
            id(1),
            id(247),
            Duration::from_millis(10),
            &registry,
            Duration::ZERO,
            &stop,
            &mut |probed, _, _| {
                if probed == 2 {
                    stop.cancel();
                }
            },
        )
        .await
        .unwrap();
        assert_eq!((done.probed, done.cancelled, bus.steps), (2, true, 2));

        // A link that fails stops the scan with the reason.
        let mut bus = Fake {
            alive: vec![1],
            broken: Some(3),
            steps: 0,
        };
        let err = scan(
            &mut bus,
            id(1),
            id(9),
            Duration::from_millis(10),
            &registry,
            Duration::ZERO,
            &never,
            &mut |_, _, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(err, "link down at 3");
    }
}
