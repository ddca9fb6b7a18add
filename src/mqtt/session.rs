//! The connection and the outbox drain, as two tasks:
//!
//! - the poll task owns rumqttc's `EventLoop`, forwards every event, and on an error waits with
//!   exponential backoff and jitter before the next connect (rumqttc itself reconnects on the
//!   next `poll()` without any delay);
//! - the drain task owns the `AsyncClient` and the in-flight bookkeeping: which outbox row each
//!   packet id carries, so that a PUBACK deletes exactly that row.
//!
//! Packet ids: rumqttc assigns them when it takes a request off its channel, strictly in channel
//! order, and reports each as `Outgoing::Publish(pkid)` (or `Outgoing::AwaitAck(pkid)` when the
//! id is still in use, the publish then follows as `Outgoing::Publish(pkid)` once its PUBACK
//! arrived). Only the drain task submits publishes, so a FIFO of submitted rows matched against
//! those events maps each pkid to its row. INVARIANT: the FIFO and the channel hold the same
//! requests in the same order; on a connection error the drain forgets every in-flight row and
//! acknowledges, and only then does the poll task empty rumqttc's queues (`clean()` +
//! `pending.clear()`), so nothing submitted for a dead connection survives into the next one.
//! Unacknowledged rows stay in SQLite and are read again (at-least-once).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, StateError, SubscribeFilter, SubscribeReasonCode,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::live::{self, LiveRow};
use super::{
    GrantSink, INFLIGHT_WINDOW, InboundKind, MAX_INBOUND_BYTES, MAX_OUTBOUND_BYTES, Shared,
};
use crate::audit::{Audit, Event as AuditEvent};
use crate::outbox::{self, Row};

/// How often the drain looks at the outbox without being told (a safety net: every insert into
/// the outbox wakes it through `Store::outbox_inserted`, so this only bounds a missed wake-up).
/// Also how often the live queue's spill is considered while nothing else happens.
const TICK: Duration = Duration::from_millis(1000);
/// Acknowledged rows are deleted as soon as the previous delete committed, at most this many per
/// transaction: the rows a `kill -9` leaves acknowledged but queued (sent again: duplicates) are
/// those acknowledged during one commit.
const ACK_BATCH: usize = 256;
/// How long a clean shutdown waits for the offline status and the DISCONNECT to go out.
const STOP_GRACE: Duration = Duration::from_secs(2);

pub(super) struct Parts<'a> {
    pub shared: Arc<Shared>,
    pub options: MqttOptions,
    pub audit: Audit,
    pub sink: Arc<dyn GrantSink>,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub tracker: &'a TaskTracker,
    pub reconnect: Schedule,
    pub backfill_rate: u32,
}

/// The reconnect schedule (see [`Backoff`]); from `config::Mqtt`, shortened by tests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    /// Cap of the first delay after a drop; each failed attempt doubles the cap.
    pub min: Duration,
    /// Ceiling of the cap.
    pub max: Duration,
    /// A connection that lasted this long after its CONNACK resets the cap to `min`.
    pub stable: Duration,
}

enum Msg {
    Event(Event),
    Down {
        error: ConnectionError,
        ack: oneshot::Sender<()>,
    },
}

pub(super) fn spawn(p: Parts<'_>) {
    let (client, eventloop) = AsyncClient::new(p.options, usize::from(INFLIGHT_WINDOW) + 16);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let (in_tx, in_rx) = mpsc::channel(8);
    let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
    let (bf_tx, bf_rx) = mpsc::channel(super::backfill::QUEUE);
    p.tracker.spawn(super::backfill::run(
        bf_rx,
        p.shared.clone(),
        p.audit.clone(),
        p.backfill_rate,
        p.shutdown.clone(),
    ));
    let poll_stop = CancellationToken::new();
    p.tracker
        .spawn(poll_loop(eventloop, ev_tx, poll_stop.clone(), p.reconnect));
    p.tracker.spawn(inbound_loop(
        in_rx,
        p.shared.clone(),
        p.sink,
        p.audit.clone(),
    ));
    let drain = Drain {
        shared: p.shared,
        client,
        audit: p.audit,
        in_tx,
        bf_tx,
        connected: false,
        ever_connected: false,
        down_streak: 0,
        fifo: VecDeque::new(),
        collided: None,
        by_pkid: HashMap::new(),
        ready: VecDeque::new(),
        acked: Vec::new(),
        deleting: None,
        cursors: [0; 4],
        clear: [false; 4],
        ready_n: [0; 4],
        spilling: None,
        spill_epoch: 0,
        prefer_live: true,
        maybe_more: true,
        generation: 0,
        fetching: false,
        fetch_tx,
    };
    p.tracker
        .spawn(drain.run(ev_rx, fetch_rx, p.shutdown, poll_stop));
}

/// Reconnect delays with full jitter: each delay is uniform in [0, c], where the cap
/// c = min(max(min, 2·t), max) grows with t, the time since the connection was lost (the first
/// failure of the streak). Only an outage grows it; a connection that stayed up `stable` after
/// its CONNACK resets it, so every drop after a working period starts again at a sub-second
/// delay however long an earlier outage was. One that a broker accepts and drops at once (a
/// duplicate client id kicking us out) continues the streak, so such a pair slows down.
///
/// Full jitter, because a broker restart drops a whole fleet at the same instant: uniform over
/// the whole window spreads their CONNECTs evenly (see docs/PERFORMANCE.md, "Fleet"). The cap
/// follows elapsed time rather than doubling per attempt, because with full jitter a run of
/// short draws would otherwise inflate the cap within moments; this way the box retries at most
/// T + min(2·T + min, max) after the drop when the broker is back at T, as with a [c/2, c]
/// schedule. Each draw comes from the OS random generator (`getrandom`, seeded per device by the
/// kernel), so no two boxes share a sequence even when they booted from one image at one second.
struct Backoff {
    min: Duration,
    max: Duration,
    /// When the current streak of failures began.
    since: Option<std::time::Instant>,
}

impl Backoff {
    fn new(s: Schedule) -> Backoff {
        let min = s.min.max(Duration::from_millis(1));
        let max = s.max.max(min);
        Backoff {
            min,
            max,
            since: None,
        }
    }
    fn reset(&mut self) {
        self.since = None;
    }
    /// The cap of the next delay at `now`.
    fn cap(&mut self, now: std::time::Instant) -> Duration {
        let since = *self.since.get_or_insert(now);
        (now.saturating_duration_since(since) * 2).clamp(self.min, self.max)
    }
    fn delay_at(&mut self, now: std::time::Instant) -> Duration {
        let cap = self.cap(now);
        let r = u64::from_le_bytes(crate::util::random_bytes::<8>());
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX).max(1);
        Duration::from_micros(r % (cap_us + 1))
    }
    fn delay(&mut self) -> Duration {
        self.delay_at(std::time::Instant::now())
    }
}

async fn poll_loop(
    mut el: EventLoop,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
    schedule: Schedule,
) {
    let mut backoff = Backoff::new(schedule);
    let mut up_since: Option<tokio::time::Instant> = None;
    loop {
        let r = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = el.poll() => r,
        };
        match r {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                    up_since = Some(tokio::time::Instant::now());
                }
                let disconnect = matches!(ev, Event::Outgoing(Outgoing::Disconnect));
                if tx.send(Msg::Event(ev)).await.is_err() {
                    break;
                }
                if disconnect {
                    // Poll on until the broker closes the connection (it does on DISCONNECT), so
                    // the DISCONNECT and the publishes before it (the shutdown status, unknown
                    // availability) leave the socket before the event loop is dropped; bounded.
                    let _ = tokio::time::timeout(STOP_GRACE, async {
                        while el.poll().await.is_ok() {}
                    })
                    .await;
                    break;
                }
            }
            Err(error) => {
                // A connection that stayed up `stable` resets the backoff; one that a broker
                // accepts and drops at once (a duplicate client id kicking us out) counts as a
                // failed attempt, so such a pair slows down instead of looping.
                if up_since
                    .take()
                    .is_some_and(|t| t.elapsed() >= schedule.stable)
                {
                    backoff.reset();
                }
                let (ack, acked) = oneshot::channel();
                if tx.send(Msg::Down { error, ack }).await.is_err() {
                    break;
                }
                // INVARIANT: the drain has forgotten its in-flight rows; drop whatever was
                // submitted for the dead connection (and rumqttc's own retransmit queue: the
                // outbox resends from SQLite).
                let _ = acked.await;
                el.clean();
                el.pending.clear();
                let delay = backoff.delay();
                tracing::debug!(
                    delay_ms = delay.as_millis() as u64,
                    "mqtt reconnect backoff"
                );
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A row handed to rumqttc: an outbox row (deleted on its PUBACK) or a live message (kept here
/// until its PUBACK, so that a dropped connection can put it back in the live queue).
#[derive(Debug)]
struct Sent {
    seq: i64,
    qos1: bool,
    live: Option<LiveRow>,
}

/// The result of a background outbox read, tagged with the connection generation and the spill
/// epoch it was made in.
type Fetched = (u64, u64, Result<Vec<Row>, crate::store::StoreError>);

struct Drain {
    shared: Arc<Shared>,
    client: AsyncClient,
    audit: Audit,
    in_tx: mpsc::Sender<(InboundKind, Vec<u8>)>,
    /// Backfill requests, to `backfill::run`.
    bf_tx: mpsc::Sender<Vec<u8>>,
    connected: bool,
    ever_connected: bool,
    /// Connection errors since the last successful connect (for log and audit rate).
    down_streak: u64,
    /// Read from the outbox, fairly interleaved, not yet submitted.
    ready: VecDeque<Row>,
    /// Submitted, no packet id yet (channel order).
    fifo: VecDeque<Sent>,
    /// Submitted, its packet id still in use: rumqttc sends it when that id is acknowledged.
    collided: Option<Sent>,
    /// Sent, waiting for the PUBACK.
    by_pkid: HashMap<u16, Sent>,
    /// Acknowledged, not yet deleted.
    acked: Vec<i64>,
    /// The delete of acknowledged rows running in the background, if any.
    deleting: Option<tokio::task::JoinHandle<()>>,
    /// Per class, the highest seq read into `ready` on this connection.
    cursors: [i64; 4],
    /// Per class, whether the newest read found no outbox row past the cursor: live messages of
    /// the class may go out (with none of the class left in `ready`) without overtaking older
    /// outbox rows.
    clear: [bool; 4],
    /// Rows per class in `ready`.
    ready_n: [usize; 4],
    /// The spill of live messages to the outbox running in the background, if any.
    spilling: Option<tokio::task::JoinHandle<()>>,
    /// Bumped on every spill: a read started before it may have missed the spilled rows.
    spill_epoch: u64,
    /// Alternates live messages and outbox rows when both wait.
    prefer_live: bool,
    /// Whether the outbox may hold rows past the cursors.
    maybe_more: bool,
    /// Bumped on every disconnect: a read started for an older connection is discarded.
    generation: u64,
    /// A background read is running.
    fetching: bool,
    fetch_tx: mpsc::UnboundedSender<Fetched>,
}

impl Drain {
    fn inflight(&self) -> usize {
        self.fifo.len() + self.by_pkid.len() + usize::from(self.collided.is_some())
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut fetch_rx: mpsc::UnboundedReceiver<Fetched>,
        shutdown: CancellationToken,
        poll_stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                m = rx.recv() => match m {
                    Some(Msg::Event(ev)) => self.on_event(ev).await,
                    Some(Msg::Down { error, ack }) => {
                        self.on_down(error).await;
                        let _ = ack.send(());
                    }
                    None => break,
                },
                Some(f) = fetch_rx.recv() => self.on_fetched(f).await,
                () = self.shared.wake.notified() => self.maybe_more = true,
                () = self.shared.store.outbox_inserted().notified() => self.maybe_more = true,
                () = self.shared.live_wake.notified() => {}
                _ = tick.tick() => self.maybe_more = true,
            }
            self.pump();
        }
        self.stop(rx, poll_stop).await;
    }

    /// Never waits on SQLite: deletes acknowledged rows in the background (as soon as the
    /// previous delete is done), tops up the in-flight window from the rows already read, and
    /// starts the next read before those run out.
    fn pump(&mut self) {
        if !self.acked.is_empty() {
            self.flush_acks_background();
        }
        self.maybe_spill();
        self.submit_ready();
        if self.connected
            && self.maybe_more
            && !self.fetching
            && self.spilling.is_none()
            && self.ready.len() < usize::from(INFLIGHT_WINDOW) / 2
        {
            self.start_fetch();
        }
    }

    /// Reads the next rows (fairly interleaved across classes) on the blocking pool; the result
    /// comes back through `fetch_tx`. Small reads keep the interleave fresh: new telemetry waits
    /// at most for the rows already read.
    fn start_fetch(&mut self) {
        self.fetching = true;
        let after = self.cursors;
        let generation = self.generation;
        let epoch = self.spill_epoch;
        let room = usize::from(INFLIGHT_WINDOW);
        let store = self.shared.store.clone();
        let tx = self.fetch_tx.clone();
        tokio::spawn(async move {
            let r = store
                .call(move |c| outbox::next_batch(c, &after, room))
                .await;
            let _ = tx.send((generation, epoch, r));
        });
    }

    async fn on_fetched(&mut self, (generation, epoch, result): Fetched) {
        if generation != self.generation {
            return; // read for a connection that is gone; the cursors were reset
        }
        self.fetching = false;
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return; // retried on the next tick
            }
        };
        self.maybe_more = rows.len() >= usize::from(INFLIGHT_WINDOW);
        if epoch == self.spill_epoch {
            // A class with no row in a fair read has none past the cursor (every class with rows
            // gets at least one place in the batch).
            let mut seen = [false; 4];
            for row in &rows {
                seen[row.class.index()] = true;
            }
            for (c, s) in self.clear.iter_mut().zip(seen) {
                *c = !s;
            }
        }
        for row in rows {
            let c = &mut self.cursors[row.class.index()];
            *c = (*c).max(row.seq);
            if let Some(reason) = unsendable(&row) {
                self.drop_unsendable(&row, reason).await;
                continue;
            }
            self.ready_n[row.class.index()] += 1;
            self.ready.push_back(row);
        }
    }

    /// Hands ready outbox rows and live messages to rumqttc while the window has room,
    /// alternating between them when both wait.
    fn submit_ready(&mut self) {
        if !self.connected {
            return;
        }
        while self.inflight() < usize::from(INFLIGHT_WINDOW) {
            let live = if self.prefer_live || self.ready.is_empty() {
                self.take_live()
            } else {
                None
            };
            self.prefer_live = !self.prefer_live;
            let (topic, payload, qos1, retain, sent) = match live {
                Some(row) => (
                    row.topic.clone(),
                    row.payload.clone(),
                    true,
                    row.retain,
                    Sent {
                        seq: 0,
                        qos1: true,
                        live: Some(row),
                    },
                ),
                None => {
                    let Some(row) = self.ready.pop_front() else {
                        if self.live_waiting() {
                            continue;
                        }
                        break;
                    };
                    self.ready_n[row.class.index()] -= 1;
                    let sent = Sent {
                        seq: row.seq,
                        qos1: row.qos1,
                        live: None,
                    };
                    (row.topic, row.payload, row.qos1, row.retain, sent)
                }
            };
            let qos = if qos1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            // The channel holds the whole window, so this only fails if the event loop is gone.
            if let Err(e) = self.client.try_publish(topic, qos, retain, payload) {
                tracing::warn!(error = %e, "cannot hand a message to the mqtt client");
                // Outbox rows are read again after the reconnect that follows; a live message
                // goes back to its queue.
                if let Some(row) = sent.live {
                    self.shared.live().restore(vec![row]);
                }
                break;
            }
            self.fifo.push_back(sent);
        }
        self.shared
            .stats
            .inflight
            .store(self.inflight() as u64, Ordering::Relaxed);
    }

    /// Whether the next live message may go out now: no outbox row of its class waits before it
    /// (read or unread) and no spill is writing to the outbox.
    fn live_open(&self, class: outbox::Class) -> bool {
        let c = class.index();
        self.spilling.is_none() && self.clear[c] && self.ready_n[c] == 0
    }

    /// Whether a live message could be taken now (the window loop continues for it).
    fn live_waiting(&self) -> bool {
        let front = self.shared.live().front().map(|r| r.class);
        front.is_some_and(|c| self.live_open(c))
    }

    /// The next live message, if it may go out now (FIFO: a blocked one holds back the rest).
    fn take_live(&mut self) -> Option<LiveRow> {
        let mut q = self.shared.live();
        loop {
            let class = q.front()?.class;
            if !self.live_open(class) {
                return None;
            }
            let row = q.pop()?;
            if let Some(reason) = live_unsendable(&row) {
                tracing::error!(
                    msg_id = %row.msg_id,
                    bytes = row.payload.len(),
                    reason,
                    "live message cannot be sent; dropped"
                );
                continue;
            }
            return Some(row);
        }
    }

    /// Writes the live queue to the outbox in the background when it is due: while disconnected
    /// once the oldest message is [`live::SPILL_AGE`] old, and always at [`live::SPILL_ROWS`].
    /// Outbox reads wait for the spill to commit, and no live message leaves meanwhile, so the
    /// spilled rows keep their place in line.
    fn maybe_spill(&mut self) {
        if let Some(h) = &self.spilling {
            if !h.is_finished() {
                return;
            }
            self.spilling = None;
            self.maybe_more = true;
        }
        let due = {
            let q = self.shared.live();
            q.queued() >= live::SPILL_ROWS
                || (!self.connected && q.oldest_age().is_some_and(|a| a >= live::SPILL_AGE))
        };
        if !due {
            return;
        }
        let (rows, dropped) = self.shared.live().take_all();
        self.spill_epoch += 1;
        self.clear = [false; 4];
        let shared = self.shared.clone();
        self.spilling = Some(tokio::spawn(async move {
            spill_rows(&shared, rows, dropped).await;
        }));
    }

    /// Starts deleting the acknowledged rows on the blocking pool without waiting, so PUBACKs
    /// keep flowing during the commit's fsync. One delete runs at a time; rows acknowledged
    /// meanwhile wait for the next one. A crash before the delete commits only means a resend.
    fn flush_acks_background(&mut self) {
        if self.deleting.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if self.acked.is_empty() {
            return;
        }
        let n = self.acked.len().min(ACK_BATCH);
        let seqs: Vec<i64> = self.acked.drain(..n).collect();
        let store = self.shared.store.clone();
        self.deleting = Some(tokio::spawn(async move {
            let n = seqs.len();
            if let Err(e) = store.call(move |c| outbox::delete_acked(c, &seqs)).await {
                // The rows stay queued and are sent again after a reconnect (a duplicate, not a
                // loss); keep going.
                tracing::error!(error = %e, rows = n, "cannot delete acknowledged outbox rows");
            }
        }));
    }

    /// Waits for a background delete, then deletes the rest: before the outbox is read from the
    /// start again (reconnect) and on stop.
    async fn flush_acks(&mut self) {
        loop {
            if let Some(h) = self.deleting.take() {
                let _ = h.await;
            }
            if self.acked.is_empty() {
                break;
            }
            self.flush_acks_background();
        }
    }

    /// Removes a row that can never be sent (it would block its class forever) and audits it.
    async fn drop_unsendable(&mut self, row: &Row, reason: &'static str) {
        tracing::error!(
            msg_id = %row.msg_id,
            bytes = row.payload.len(),
            reason,
            "outbox message cannot be sent; removed"
        );
        self.acked.push(row.seq);
        let _ = self
            .audit
            .record(
                AuditEvent::new("mqtt_message_unsendable", "failed")
                    .actor("system")
                    .detail(json!({
                        "msg_id": row.msg_id,
                        "topic": row.topic,
                        "bytes": row.payload.len(),
                        "reason": reason,
                        "limit": MAX_OUTBOUND_BYTES,
                    })),
            )
            .await;
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected().await,
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(s) = self.by_pkid.remove(&ack.pkid) {
                    if s.live.is_none() {
                        self.acked.push(s.seq);
                    }
                    self.shared.stats.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.shared.topics.snapshot => {
                self.shared.stats.inbound.fetch_add(1, Ordering::Relaxed);
                self.shared.snapshot.notify_one();
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.shared.topics.backfill => {
                if p.payload.is_empty() {
                    return;
                }
                self.shared.stats.inbound.fetch_add(1, Ordering::Relaxed);
                let size = p.payload.len();
                if self.bf_tx.try_send(p.payload.to_vec()).is_err() {
                    super::backfill::refuse(&self.audit, super::backfill::Refusal::Busy, size)
                        .await;
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let kind = if p.topic == self.shared.topics.grants
                    || self.shared.topics.is_grants_part(&p.topic)
                {
                    InboundKind::Grants
                } else if p.topic == self.shared.topics.keys {
                    InboundKind::Keys
                } else {
                    tracing::debug!(topic = %p.topic, "ignoring a message on an unexpected topic");
                    return;
                };
                if p.payload.is_empty() {
                    // An empty retained message only clears the retained slot.
                    tracing::debug!(kind = kind.as_str(), "ignoring an empty message");
                    return;
                }
                self.shared.stats.inbound.fetch_add(1, Ordering::Relaxed);
                // Backpressure: a slow sink slows the event loop instead of piling up memory.
                let _ = self.in_tx.send((kind, p.payload.to_vec())).await;
            }
            Event::Incoming(Packet::SubAck(s))
                if s.return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                // The return codes follow the order of the filters (see `on_connected`).
                let refused: Vec<String> = self
                    .subscriptions()
                    .into_iter()
                    .zip(s.return_codes.iter())
                    .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                    .map(|(t, _)| t)
                    .collect();
                tracing::error!(
                    topics = ?refused,
                    "the broker refused a subscription; check its ACL"
                );
                let _ = self
                    .audit
                    .record(
                        AuditEvent::new("mqtt_subscribe_refused", "failed")
                            .actor("system")
                            .detail(json!({ "topics": refused })),
                    )
                    .await;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let sent = match self.collided.take() {
                    Some(s) => Some(s),
                    None => self.fifo.pop_front(),
                };
                let Some(sent) = sent else {
                    // The offline status on shutdown: not an outbox row.
                    return;
                };
                self.shared.stats.sent.fetch_add(1, Ordering::Relaxed);
                if sent.qos1 {
                    self.by_pkid.insert(pkid, sent);
                } else if sent.live.is_none() {
                    self.acked.push(sent.seq);
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                tracing::debug!(pkid, "packet id still in use; publish deferred");
                self.collided = self.fifo.pop_front();
            }
            _ => {}
        }
    }

    /// The topics subscribed after every CONNACK, in this order.
    fn subscriptions(&self) -> Vec<String> {
        let t = &self.shared.topics;
        vec![
            t.grants.clone(),
            t.keys.clone(),
            t.backfill.clone(),
            t.snapshot.clone(),
            // After `…/grants`: retained parts then usually arrive after their manifest (the box
            // takes either order).
            t.grants_parts.clone(),
        ]
    }

    async fn on_connected(&mut self) {
        self.connected = true;
        self.shared.connected.store(true, Ordering::Relaxed);
        if self.ever_connected {
            self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        self.down_streak = 0;
        tracing::info!("connected to the mqtt broker");
        let filters = self
            .subscriptions()
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "cannot subscribe to grants/keys/backfill");
        }
        let status = self.shared.online_status().to_string().into_bytes();
        if let Err(e) = self
            .shared
            .enqueue_state(self.shared.topics.status.clone(), status)
            .await
        {
            tracing::error!(error = %e, "cannot queue the online status");
        }
        self.shared.enqueue_all_availability().await;
        self.shared.snapshot.notify_one();
        self.maybe_more = true;
    }

    async fn on_down(&mut self, error: ConnectionError) {
        let was_connected = self.connected;
        self.connected = false;
        self.shared.connected.store(false, Ordering::Relaxed);
        self.flush_acks().await;
        // INVARIANT: after this nothing of the old connection is tracked; every unacknowledged
        // outbox row is read again from SQLite on the next connection, every unacknowledged live
        // message is back at the front of the live queue.
        self.generation += 1;
        self.fetching = false;
        self.ready.clear();
        self.restore_live_inflight();
        self.cursors = [0; 4];
        self.clear = [false; 4];
        self.ready_n = [0; 4];
        self.shared.stats.inflight.store(0, Ordering::Relaxed);
        self.down_streak += 1;
        let first = self.down_streak == 1;
        match &error {
            ConnectionError::ConnectionRefused(code) => {
                let reason = refused_reason(*code);
                tracing::warn!(
                    reason,
                    attempt = self.down_streak,
                    "the mqtt broker refused the connection"
                );
                // Audit the first refusal of a streak and then every 100th: a broker that refuses
                // for days must not flood the audit trail.
                if first || self.down_streak % 100 == 0 {
                    let _ = self
                        .audit
                        .record(
                            AuditEvent::new("mqtt_refused", "failed")
                                .actor("system")
                                .detail(json!({ "reason": reason, "attempt": self.down_streak })),
                        )
                        .await;
                }
            }
            ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
            )) => {
                tracing::error!(
                    bytes = n,
                    "the broker sent a message larger than the packet limit; dropping the connection"
                );
                if first {
                    let _ = self
                        .audit
                        .record(
                            AuditEvent::new("mqtt_inbound_too_large", "rejected")
                                .actor("system")
                                .detail(json!({ "bytes": n, "limit": super::MAX_PACKET_BYTES })),
                        )
                        .await;
                }
            }
            other if was_connected => {
                tracing::warn!(error = %other, "mqtt connection lost; reconnecting");
            }
            other if first => {
                tracing::warn!(error = %other, "cannot connect to the mqtt broker; retrying");
            }
            other => {
                tracing::debug!(error = %other, attempt = self.down_streak, "mqtt connect failed");
            }
        }
    }

    /// Forgets every submitted row, putting unacknowledged live messages back in the live queue.
    fn restore_live_inflight(&mut self) {
        let back: Vec<LiveRow> = self
            .fifo
            .drain(..)
            .chain(self.collided.take())
            .chain(self.by_pkid.drain().map(|(_, s)| s))
            .filter_map(|s| s.live)
            .collect();
        if !back.is_empty() {
            self.shared.live().restore(back);
        }
    }

    /// On shutdown: publish the offline status and DISCONNECT (so the broker does not send the
    /// will), wait briefly for PUBACKs, then stop the poll task.
    async fn stop(mut self, mut rx: mpsc::Receiver<Msg>, poll_stop: CancellationToken) {
        if self.connected {
            // Not the bare will: the cloud can tell a clean stop from a crash or a lost link.
            let doc = json!({
                "online": false,
                "reason": "shutdown",
                "version": env!("CARGO_PKG_VERSION"),
                "since": self.shared.since,
            });
            // Nothing is known about the units once the box stops reading them.
            let units: Vec<String> = self
                .shared
                .availability
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            for unit in units {
                let _ = self.client.try_publish(
                    self.shared.topics.availability(&unit),
                    QoS::AtLeastOnce,
                    true,
                    super::AVAILABILITY_UNKNOWN.to_vec(),
                );
            }
            let _ = self.client.try_publish(
                self.shared.topics.status.clone(),
                QoS::AtLeastOnce,
                true,
                doc.to_string().into_bytes(),
            );
            let _ = self.client.try_disconnect();
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Msg::Event(Event::Outgoing(Outgoing::Disconnect)))) => break,
                    Ok(Some(Msg::Event(ev))) => self.on_event(ev).await,
                    Ok(Some(Msg::Down { ack, .. })) => {
                        let _ = ack.send(());
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        self.flush_acks().await;
        // What was not delivered survives the restart: the live queue goes to the outbox.
        if let Some(h) = self.spilling.take() {
            let _ = h.await;
        }
        self.restore_live_inflight();
        let (mut rows, dropped) = self.shared.live().take_all();
        // A status heartbeat is made afresh after the restart; only telemetry is kept.
        rows.retain(|r| r.class == outbox::Class::Telemetry);
        if !rows.is_empty() || dropped > 0 {
            spill_rows(&self.shared, rows, dropped).await;
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        poll_stop.cancel();
    }
}

/// Why a queued row can never be published, if it can't: rumqttc refuses wildcard topics and the
/// broker drops the connection on an oversized packet or a NUL in the topic.
fn unsendable(row: &Row) -> Option<&'static str> {
    if row.payload.len() > MAX_OUTBOUND_BYTES {
        Some("too_large")
    } else if row.topic.is_empty() || row.topic.contains(['+', '#', '\0']) {
        Some("invalid_topic")
    } else {
        None
    }
}

/// [`unsendable`] for a live message.
fn live_unsendable(row: &LiveRow) -> Option<&'static str> {
    if row.payload.len() > MAX_OUTBOUND_BYTES {
        Some("too_large")
    } else if row.topic.is_empty() || row.topic.contains(['+', '#', '\0']) {
        Some("invalid_topic")
    } else {
        None
    }
}

/// Writes live messages to the outbox in one transaction (see [`live::spill`]).
async fn spill_rows(shared: &Arc<Shared>, rows: Vec<LiveRow>, dropped: u64) {
    let n = rows.len();
    let max = shared.backlog_max;
    match shared
        .store
        .call(move |c| live::spill(c, &rows, dropped, max))
        .await
    {
        Ok(trimmed) => {
            shared.note_live_dropped(trimmed);
            tracing::debug!(rows = n, "live messages written to the outbox");
        }
        Err(e) => {
            // Lost: counted as dropped telemetry (events never pass through here).
            shared.note_live_dropped(n as u64);
            tracing::error!(error = %e, rows = n, "cannot write live messages to the outbox");
        }
    }
}

fn refused_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "success",
        ConnectReturnCode::RefusedProtocolVersion => "protocol_version",
        ConnectReturnCode::BadClientId => "client_id_rejected",
        ConnectReturnCode::ServiceUnavailable => "service_unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad_username_or_password",
        ConnectReturnCode::NotAuthorized => "not_authorized",
    }
}

/// Hands inbound envelopes to the sink, one at a time in arrival order, and queues the returned
/// state document retained on `…/grants/state`.
async fn inbound_loop(
    mut rx: mpsc::Receiver<(InboundKind, Vec<u8>)>,
    shared: Arc<Shared>,
    sink: Arc<dyn GrantSink>,
    audit: Audit,
) {
    while let Some((kind, bytes)) = rx.recv().await {
        let size = bytes.len();
        let doc = if size > MAX_INBOUND_BYTES {
            tracing::warn!(
                kind = kind.as_str(),
                bytes = size,
                "inbound message too large; rejected"
            );
            let _ = audit
                .record(
                    AuditEvent::new("mqtt_inbound_too_large", "rejected")
                        .actor("system")
                        .detail(json!({ "kind": kind, "bytes": size, "limit": MAX_INBOUND_BYTES })),
                )
                .await;
            json!({
                "kind": kind,
                "outcome": "rejected",
                "reason": "too_large",
                "bytes": size,
                "limit": MAX_INBOUND_BYTES,
            })
        } else {
            let sink = sink.clone();
            match tokio::task::spawn_blocking(move || sink.apply(kind, bytes)).await {
                Ok(doc) => doc,
                Err(e) => {
                    // A panicking sink must not take the MQTT link down with it.
                    tracing::error!(kind = kind.as_str(), error = %e, "the grant sink failed");
                    json!({ "kind": kind, "outcome": "rejected", "reason": "internal_error" })
                }
            }
        };
        shared.enqueue_grants_state(doc).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_cap_that_follows_the_outage_and_resets() {
        let min = Duration::from_millis(250);
        let mut b = Backoff::new(Schedule {
            min,
            max: Duration::from_secs(4),
            stable: Duration::from_secs(2),
        });
        let t0 = std::time::Instant::now();
        assert_eq!(b.cap(t0), min);
        assert_eq!(b.cap(t0 + Duration::from_millis(100)), min);
        assert_eq!(b.cap(t0 + Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(b.cap(t0 + Duration::from_secs(60)), Duration::from_secs(4));
        for i in 0..50 {
            let d = b.delay_at(t0 + Duration::from_millis(i * 100));
            assert!(d <= Duration::from_secs(4), "{d:?}");
        }
        b.reset();
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(b.cap(t1), min);
        assert!(b.delay_at(t1) <= min);
        // Full jitter: over many draws the delays cover the lower part of the window too.
        let late = t1 + Duration::from_secs(10);
        let low = (0..200)
            .filter(|_| b.delay_at(late) < Duration::from_secs(1))
            .count();
        assert!(low > 0, "no delay below a quarter of the cap in 200 draws");
    }

    #[test]
    fn rows_that_could_block_the_drain_forever_are_recognised() {
        let row = |topic: &str, len: usize| Row {
            seq: 1,
            msg_id: "m".into(),
            class: crate::outbox::Class::Event,
            topic: topic.into(),
            payload: vec![b'x'; len],
            qos1: true,
            retain: false,
        };
        assert_eq!(unsendable(&row("a/b", 10)), None);
        assert_eq!(unsendable(&row("a/+/b", 10)), Some("invalid_topic"));
        assert_eq!(unsendable(&row("a/#", 10)), Some("invalid_topic"));
        assert_eq!(unsendable(&row("", 10)), Some("invalid_topic"));
        assert_eq!(
            unsendable(&row("a/b", MAX_OUTBOUND_BYTES + 1)),
            Some("too_large")
        );
    }
}
