//! The link task: one per Modbus link. It owns the link's transport and serializes its bus:
//! commands and writes first, then interactive reads, then the poll cycles of its units
//! (coalesced per unit and merged across units sharing a slave id). It keeps the unit state
//! (online/offline, degraded back-off, learnt gap splits) and writes every value it reads into
//! the cache the [`ModbusEngine`](super::ModbusEngine) handle serves from.
//!
//! A write, once started, is never cancelled: shutdown is checked only between transactions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio::time::sleep;
use tokio_modbus::client::Context;
use tokio_util::sync::CancellationToken;

use crate::audit::Event;
use crate::config::{Link, LinkKind};
use crate::model::SlaveId;

use super::super::codec::{self, Raw};
use super::super::link::{self, LinkStats, ModbusError, Op, Reply};
use super::super::profile::{Quality, RegKind};
use super::super::scan::{Answer, Step};
use super::super::scheduler::{self, Block};
use super::{Job, JobKind, PointValue, UnitShared, UnitUpdate, WriteReply, lock, unit_faulty};

/// Consecutive failed poll cycles after which a unit is offline.
const OFFLINE_AFTER: u32 = 2;
/// Longest back-off of a unit that keeps failing (degraded mode).
const MAX_DEGRADED: Duration = Duration::from_secs(60);
/// Transport reconnect back-off bounds.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Pause before retrying a failed read.
const RETRY_BASE: Duration = Duration::from_millis(25);
/// Longest back-off of a point whose register is absent (exception 02 on a read of that point
/// alone): it is read again after 1, 2, 4 … poll cycles, at most this long apart.
const ABSENT_MAX: Duration = Duration::from_secs(600);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct UnitSched {
    /// Addresses where a read block must start (learnt from exception 02).
    boundaries: BTreeSet<(RegKind, u16)>,
    plan: Option<Vec<Block>>,
    next_poll: Instant,
    /// Consecutive failed cycles.
    fails: u32,
    cycle_ok: bool,
    cycle_failed: bool,
    /// Poll cycles started (the clock of the absent points' back-off).
    cycle: u64,
    /// Points whose register answered exception 02 on its own read, by point index.
    absent: BTreeMap<usize, Absent>,
    /// Changes read since the last publication: one update per unit and poll cycle, however
    /// many blocks the cycle reads.
    pending: BTreeMap<String, PointValue>,
}

/// The back-off of one absent point.
struct Absent {
    /// Cycles skipped after the last failed read (1, 2, 4 … up to the cap).
    skip: u64,
    /// The first cycle that reads the point again.
    retry_at: u64,
}

struct PollItem {
    unit: usize,
    block: Block,
}

pub(super) struct LinkTask {
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
    no_merge: BTreeSet<SlaveId>,
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
    /// The task of one link, serving `units` (the link's units, in config order) and the jobs of
    /// both queues. Run it with [`LinkTask::run`].
    #[expect(
        clippy::too_many_arguments,
        reason = "the channels and shared state of one task"
    )]
    pub(super) fn new(
        link: Link,
        units: Vec<Arc<UnitShared>>,
        stats: Arc<Mutex<LinkStats>>,
        cmd_rx: mpsc::Receiver<Job>,
        int_rx: mpsc::Receiver<Job>,
        shutdown: CancellationToken,
        updates: broadcast::Sender<UnitUpdate>,
        audit_tx: mpsc::UnboundedSender<Event>,
    ) -> LinkTask {
        let now = Instant::now();
        let sched = (0..units.len())
            .map(|i| UnitSched {
                boundaries: BTreeSet::new(),
                plan: None,
                // Stagger first polls so a bus with many units does not burst.
                next_poll: now + Duration::from_millis(15 * i as u64),
                fails: 0,
                cycle_ok: false,
                cycle_failed: false,
                cycle: 0,
                absent: BTreeMap::new(),
                pending: BTreeMap::new(),
            })
            .collect();
        LinkTask {
            link,
            units,
            sched,
            ctx: None,
            next_connect: now,
            reconnect_backoff: RECONNECT_MIN,
            ever_connected: false,
            stats,
            cmd_rx,
            int_rx,
            shutdown,
            updates,
            audit_tx,
            queue: VecDeque::new(),
            no_merge: BTreeSet::new(),
        }
    }

    pub(super) async fn run(mut self) {
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

    /// The slave id of one of this link's units. `None` only for an index the task does not
    /// hold, which nothing is ever sent to: there is no fallback address (0 would broadcast).
    fn slave(&self, unit: usize) -> Option<SlaveId> {
        self.units.get(unit).map(|u| u.cfg.slave)
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
        let Some(slave) = self.slave(unit) else {
            return Err(ModbusError::Protocol(format!(
                "no unit #{unit} on link `{}`",
                self.link.name
            )));
        };
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

    /// Opens the transport unless it is open (inside the reconnect back-off only when `force`).
    async fn ensure_connected(&mut self, force: bool) -> Result<(), ModbusError> {
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
        Ok(())
    }

    /// After a transaction that broke the transport: drop it (a late answer would be taken
    /// for the next request's) and, on RTU, let the late answer pass.
    async fn after_broken(&mut self, e: &ModbusError) {
        self.ctx = None;
        lock(&self.stats).connected = false;
        if *e == ModbusError::Timeout && !matches!(self.link.kind, LinkKind::Tcp { .. }) {
            // RTU answers carry no transaction id: let a late answer arrive and be discarded
            // (the port is cleared on reopen) before the bus is used again.
            let settle =
                (self.link.timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
            sleep(settle).await;
        }
    }

    async fn exec_once(
        &mut self,
        slave: SlaveId,
        op: &Op,
        force: bool,
    ) -> Result<Reply, ModbusError> {
        self.ensure_connected(force).await?;
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
            self.after_broken(e).await;
        }
        if !self.link.inter_frame_delay.is_zero() {
            sleep(self.link.inter_frame_delay).await;
        }
        res
    }

    /// One scan transaction at any slave id, bounded by its own `timeout`. Not counted in the
    /// link statistics: silence is the expected answer at most ids, and the counters describe
    /// the link's units.
    async fn probe(
        &mut self,
        slave: SlaveId,
        step: &Step,
        timeout: Duration,
    ) -> Result<Answer, ModbusError> {
        self.ensure_connected(true).await?;
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(ModbusError::Transport("not connected".into()));
        };
        let res = match step {
            Step::DeviceId => link::read_device_id(ctx, slave, timeout)
                .await
                .map(Answer::Identity),
            Step::Read(op) => link::transact(ctx, slave, op, timeout)
                .await
                .map(Answer::Reply),
        };
        if let Err(e) = &res
            && e.breaks_transport()
        {
            self.after_broken(e).await;
        }
        if !self.link.inter_frame_delay.is_zero() {
            sleep(self.link.inter_frame_delay).await;
        }
        res
    }

    async fn run_job(&mut self, job: Job) {
        let unit = job.unit;
        let answered = self.run_job_inner(job).await;
        // What a write's read-back or a fresh read found goes out now, not with the next cycle.
        self.publish(unit);
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
            JobKind::Probe {
                slave,
                step,
                timeout,
                reply,
            } => {
                let r = self.probe(slave, &step, timeout).await;
                let _ = reply.send(r);
                // Not about any of the link's units.
                false
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
        let Some(slave) = self.slave(unit) else {
            return;
        };
        let now = Instant::now();
        for other in 0..self.units.len() {
            let due = self.sched.get(other).is_some_and(|s| {
                s.fails < OFFLINE_AFTER
                    && s.next_poll <= now + self.units[other].cfg.poll_interval / 2
            });
            if other != unit
                && due
                && self.slave(other) == Some(slave)
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
        s.cycle += 1;
        if !s.absent.is_empty() {
            // Absent registers cost the bus nothing until their back-off ends.
            let cycle = s.cycle;
            blocks.retain(|b| {
                !b.points
                    .iter()
                    .all(|i| s.absent.get(i).is_some_and(|a| a.retry_at > cycle))
            });
        }
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
        let Some(slave) = self.slave(item.unit) else {
            return Vec::new();
        };
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
                    && self.slave(q.unit) == Some(slave)
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
                if let Some(slave) = self.slave(first) {
                    tracing::info!(link = %self.link.name, slave = slave.get(),
                        "exception 02 on a read merged across units; reading them one by one");
                    self.no_merge.insert(slave);
                }
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
        self.publish(unit);
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
                    self.mark_absent(unit, b);
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
            Err(ModbusError::Exception(2)) => {
                self.mark_absent(unit, b);
                BlockResult::Exception
            }
            Err(_) => {
                self.mark_error(unit, b);
                BlockResult::Exception
            }
        }
    }

    /// The points of `b` answered exception 02 (illegal data address) on a read of their own:
    /// the device has no such register. They get quality `unimplemented` (published once, like
    /// any quality change; logged once) and are read again only after a back-off of 1, 2, 4 …
    /// poll cycles, at most [`ABSENT_MAX`] apart. A good read (a later cycle, a write's
    /// read-back, a fresh read) clears it; a reload starts afresh.
    fn mark_absent(&mut self, unit: usize, b: &Block) {
        let Some(u) = self.units.get(unit).cloned() else {
            return;
        };
        let cap = u64::try_from(ABSENT_MAX.as_millis() / u.cfg.poll_interval.as_millis().max(1))
            .unwrap_or(u64::MAX)
            .max(1);
        let s = &mut self.sched[unit];
        for &i in &b.points {
            let cycle = s.cycle;
            match s.absent.get_mut(&i) {
                Some(a) => {
                    a.skip = a.skip.saturating_mul(2).min(cap);
                    a.retry_at = cycle.saturating_add(a.skip).saturating_add(1);
                }
                None => {
                    if let Some(p) = u.profile.points.get(i) {
                        tracing::info!(unit = %u.cfg.id, point = %p.name, kind = p.kind.as_str(),
                            address = p.address,
                            "the device answers exception 02 (illegal data address) for this point: \
                             it is reported `unimplemented` and read again with a back-off");
                    }
                    s.absent.insert(
                        i,
                        Absent {
                            skip: 1,
                            retry_at: cycle.saturating_add(2),
                        },
                    );
                }
            }
        }
        self.set_quality(unit, b, Quality::Unimplemented);
    }

    /// Queues the unit's changes read since its last publication as one update.
    fn publish(&mut self, unit: usize) {
        let (Some(u), Some(s)) = (self.units.get(unit), self.sched.get_mut(unit)) else {
            return;
        };
        if s.pending.is_empty() {
            return;
        }
        let points = std::mem::take(&mut s.pending);
        let _ = self.updates.send(UnitUpdate::Values {
            unit: u.cfg.id.clone(),
            points,
        });
    }

    fn mark_error(&mut self, unit: usize, b: &Block) {
        self.set_quality(unit, b, Quality::Error);
    }

    /// Sets the points of `b` to `quality` without a value; the ones that changed are queued
    /// for publication.
    fn set_quality(&mut self, unit: usize, b: &Block, quality: Quality) {
        let (Some(u), Some(s)) = (self.units.get(unit), self.sched.get_mut(unit)) else {
            return;
        };
        let mut st = lock(&u.state);
        for &i in &b.points {
            if let (Some(c), Some(p)) = (st.values.get_mut(i), u.profile.points.get(i))
                && c.quality != quality
            {
                c.quality = quality;
                c.value = Value::Null;
                c.published = Value::Null;
                s.pending.insert(
                    p.name.clone(),
                    PointValue {
                        value: Value::Null,
                        unit: p.unit.clone(),
                        quality,
                        at_ms: c.at.map(|(_, ms)| ms),
                        age_ms: None,
                    },
                );
            }
        }
    }

    /// Decodes a reply into the cache; publishes the points that changed beyond their deadband.
    fn store(&mut self, unit: usize, b: &Block, reply: &Reply) {
        let (Some(u), Some(s)) = (self.units.get(unit), self.sched.get_mut(unit)) else {
            return;
        };
        let now = (Instant::now(), unix_ms());
        let changed = &mut s.pending;
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
                if s.absent.remove(&i).is_some() {
                    tracing::info!(unit = %u.cfg.id, point = %p.name,
                        "the point's register answers again; it is polled every cycle");
                }
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
    }
}
