//! The MQTT northbound link: one connection to the fleet broker (TLS, mutual TLS,
//! username/password), grant and key updates in, status / availability / telemetry / events /
//! requests out, everything outbound through the SQLite outbox.
//!
//! It owns the rumqttc event loop, the reconnect policy (exponential backoff with jitter, clean
//! session and resubscription on every connect), the retained `…/status` with its last will, and
//! the outbox drain (a bounded in-flight window; a row leaves the outbox only on its PUBACK).
//! It must never verify grants itself (it hands the bytes to a [`GrantSink`]), never block the
//! event loop on SQLite (that runs on the blocking pool), never drop an event or a request, and
//! never log a password or key material. See `docs/mqtt.md` for the wire contract.

pub mod backfill;
mod live;
mod session;
mod telemetry;
mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use telemetry::{
    PointSample, PointValue, Quality, Reason, Telemetry, TelemetryMessage, should_send,
};

use crate::audit::Audit;
pub use crate::config::{BACKFILL_RATE, RECONNECT_MIN, RECONNECT_STABLE};
use crate::config::{Mqtt, Site};
use crate::model::UnitId;
use crate::outbox::{self, Class};
use crate::store::{Store, StoreError};
pub use tls::{read_password, tls_client_config};

/// Largest inbound payload handed to the [`GrantSink`]; a bigger grants/keys message is rejected
/// on `…/grants/state` with reason `too_large` (and audited) without being parsed.
pub const MAX_INBOUND_BYTES: usize = 1024 * 1024;

/// rumqttc's own packet limit: beyond it the connection is dropped (a memory bound against a
/// hostile broker), so it sits above [`MAX_INBOUND_BYTES`] to let that limit answer first.
const MAX_PACKET_BYTES: usize = 2 * MAX_INBOUND_BYTES;

/// Largest outbound payload. A queued row above it can never be sent (the broker or rumqttc would
/// drop the connection on every try), so the drain removes it and audits `mqtt_message_unsendable`.
pub const MAX_OUTBOUND_BYTES: usize = 1024 * 1024;

/// Telemetry snapshots (on connect, on request) come at most this often; requests in between are
/// served by one snapshot at the end of the interval.
pub const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Publishes in flight (sent, PUBACK not yet seen) at most.
pub const INFLIGHT_WINDOW: u16 = 128;

/// The last will (a clean shutdown publishes `{"online":false,"reason":"shutdown",…}` instead).
pub const OFFLINE_STATUS: &[u8] = br#"{"online":false}"#;

/// The retained `…/units/{unit}/availability` a clean stop leaves (the box no longer reads it).
pub const AVAILABILITY_UNKNOWN: &[u8] = b"unknown";

/// What arrived on a subscribed topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundKind {
    /// `…/grants`: a signed bundle envelope.
    Grants,
    /// `…/keys`: a signed trust key set envelope.
    Keys,
}

impl InboundKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InboundKind::Grants => "grants",
            InboundKind::Keys => "keys",
        }
    }
}

/// Where inbound grant and key envelopes go (the grants engine implements it; the lead wires it).
///
/// `apply` runs on the blocking pool, one message at a time in arrival order. It receives the
/// exact payload bytes and must be idempotent (QoS 1 and retained messages arrive again on every
/// reconnect, possibly reordered with respect to messages sent long ago). It returns the state
/// document to publish retained on `…/grants/state`; because only the newest retained message
/// survives, the document should describe the whole state (applied bundle seq, key set seq, and
/// the outcome of this message: applied, duplicate, or rejected with its reason).
pub trait GrantSink: Send + Sync + 'static {
    fn apply(&self, kind: InboundKind, bytes: Vec<u8>) -> serde_json::Value;
}

/// Why the MQTT client could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot read {what} `{}`: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tls set-up: {0}")]
    Tls(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode a message: {0}")]
    Encode(String),
}

/// The topics of this box, all under `sitegate/v1/{site}/{gateway}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub root: String,
    pub status: String,
    pub grants: String,
    /// `…/grants/parts/+` (cloud → box, retained): the parts of a bundle sent in parts, whose
    /// signed manifest comes on `…/grants` (docs/grants.md, "Bundles in parts").
    pub grants_parts: String,
    pub keys: String,
    pub grants_state: String,
    pub events: String,
    /// `…/events/backfill` (cloud → box): requests to send stored events again.
    pub backfill: String,
    /// `…/snapshot` (cloud → box): asks for a full telemetry snapshot.
    pub snapshot: String,
    pub requests: String,
}

impl Topics {
    pub fn new(site: &Site) -> Topics {
        let root = site.topic_root();
        Topics {
            status: format!("{root}/status"),
            grants: format!("{root}/grants"),
            grants_parts: format!("{root}/grants/parts/+"),
            keys: format!("{root}/keys"),
            grants_state: format!("{root}/grants/state"),
            events: format!("{root}/events"),
            backfill: format!("{root}/events/backfill"),
            snapshot: format!("{root}/snapshot"),
            requests: format!("{root}/requests"),
            root,
        }
    }
    /// `…/telemetry/{unit}`.
    pub fn telemetry(&self, unit: &str) -> String {
        format!("{}/telemetry/{unit}", self.root)
    }
    /// Is `topic` one of `…/grants/parts/{i}`?
    pub fn is_grants_part(&self, topic: &str) -> bool {
        topic
            .strip_prefix(self.grants.as_str())
            .and_then(|t| t.strip_prefix("/parts/"))
            .is_some_and(|i| !i.is_empty() && !i.contains('/'))
    }
    /// `…/units/{unit}/availability`.
    pub fn availability(&self, unit: &str) -> String {
        format!("{}/units/{unit}/availability", self.root)
    }
}

/// Counters for metrics (monotonic since start unless noted).
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    inbound: AtomicU64,
    inflight: AtomicU64,
}

/// A snapshot of the client's counters and queue depths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MqttStats {
    pub connected: bool,
    /// Publishes written to the broker connection (resends included).
    pub sent: u64,
    /// PUBACKs received (rows removed from the outbox).
    pub acked: u64,
    /// Telemetry messages dropped from a full backlog, ever (persistent).
    pub telemetry_dropped: u64,
    /// Successful connects after the first one.
    pub reconnects: u64,
    /// Grant/key messages received.
    pub inbound: u64,
    /// Publishes awaiting their PUBACK now.
    pub inflight: u64,
    /// Rows queued per class (`event`, `request`, `telemetry`, `state`).
    pub depth: Vec<(String, u64)>,
}

/// State shared by the tasks and the handle.
pub(crate) struct Shared {
    topics: Topics,
    store: Store,
    wake: Notify,
    connected: AtomicBool,
    stats: Counters,
    /// Random per-start prefix of the message ids this process makes.
    boot_id: String,
    started: Instant,
    since: String,
    next_id: AtomicU64,
    availability: Mutex<HashMap<String, bool>>,
    /// Per unit, the seq of the newest telemetry message (in the status heartbeat).
    telemetry_seq: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Asks the heartbeat task for a full telemetry snapshot (connect, `…/snapshot`).
    snapshot: Notify,
    /// The outcome of the newest grants/keys message (`last_message` of `…/grants/state`); held
    /// while a state document is queued, so documents from the MQTT path and from other apply
    /// paths queue in a consistent order.
    grants_msg: tokio::sync::Mutex<Option<serde_json::Value>>,
    /// Telemetry and status heartbeats waiting in memory (see [`live`]).
    live: Mutex<live::LiveQueue>,
    /// Wakes the drain when a live message was queued (no outbox read needed).
    live_wake: Notify,
    /// The telemetry backlog bound (`mqtt.telemetry_backlog_max`).
    backlog_max: u64,
}

impl Shared {
    #[cfg(test)]
    fn for_test(store: Store) -> Arc<Shared> {
        Shared::for_test_with_backlog(store, 1000)
    }

    #[cfg(test)]
    fn for_test_with_backlog(store: Store, backlog_max: u64) -> Arc<Shared> {
        let site = Site {
            id: crate::model::SiteId::new("s-1").unwrap(),
            gateway: crate::model::GatewayId::new("gw-1").unwrap(),
            name: None,
        };
        Arc::new(Shared {
            topics: Topics::new(&site),
            store,
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            stats: Counters::default(),
            boot_id: "test".into(),
            started: Instant::now(),
            since: String::new(),
            next_id: AtomicU64::new(0),
            availability: Mutex::new(HashMap::new()),
            telemetry_seq: Mutex::new(std::collections::BTreeMap::new()),
            snapshot: Notify::new(),
            grants_msg: tokio::sync::Mutex::new(None),
            live: Mutex::new(live::LiveQueue::new(backlog_max)),
            live_wake: Notify::new(),
            backlog_max,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, live::LiveQueue> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a live message (kept in memory, see [`live`]) and wakes the drain.
    fn push_live(&self, class: Class, topic: String, payload: Vec<u8>, retain: bool) {
        let id = self.msg_id(if class == Class::State { "s" } else { "t" });
        let dropped = self.live().push(class, id, topic, payload, retain);
        self.note_live_dropped(dropped);
        self.live_wake.notify_one();
    }

    fn note_live_dropped(&self, dropped: u64) {
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                max = self.backlog_max,
                "telemetry backlog full; dropped the oldest messages"
            );
        }
    }

    fn msg_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{prefix}-{}-{n}", self.boot_id)
    }

    /// The retained `…/status` document of a running box.
    fn online_status(&self) -> serde_json::Value {
        serde_json::json!({
            "online": true,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "since": self.since,
            "telemetry_dropped": self.stats.dropped.load(Ordering::Relaxed),
            "telemetry_seq": *self.telemetry_seq.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    /// Queues `doc` on `…/grants/state`. A document with `last_message` (the MQTT path) records
    /// it as the newest message outcome; one without (another apply path) gets that outcome added.
    async fn enqueue_grants_state(self: &Arc<Self>, mut doc: serde_json::Value) {
        let mut last = self.grants_msg.lock().await;
        if let Some(o) = doc.as_object_mut() {
            match o.get("last_message") {
                Some(m) => *last = Some(m.clone()),
                None => {
                    if let Some(m) = last.as_ref() {
                        o.insert("last_message".into(), m.clone());
                    }
                }
            }
        }
        let payload = doc.to_string().into_bytes();
        if let Err(e) = self
            .enqueue_state(self.topics.grants_state.clone(), payload)
            .await
        {
            tracing::error!(error = %e, "cannot queue the grants state");
        }
    }

    /// Queues the retained availability of every unit set so far (after a reconnect: a broker
    /// that crashed may have lost them).
    async fn enqueue_all_availability(self: &Arc<Self>) {
        let all: Vec<(String, bool)> = self
            .availability
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(u, o)| (u.clone(), *o))
            .collect();
        for (unit, online) in all {
            let payload: &[u8] = if online { b"online" } else { b"offline" };
            if let Err(e) = self
                .enqueue_state(self.topics.availability(&unit), payload.to_vec())
                .await
            {
                tracing::error!(error = %e, "cannot queue a unit's availability");
            }
        }
    }

    /// Queues a retained state message (replacing any queued one for the same topic).
    async fn enqueue_state(
        self: &Arc<Self>,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<(), MqttError> {
        let id = self.msg_id("s");
        self.store
            .call(move |c| {
                outbox::enqueue(c, Class::State, &id, &topic, &payload, true, true)?;
                Ok(())
            })
            .await?;
        self.wake.notify_one();
        Ok(())
    }
}

/// Builds and starts the MQTT client.
pub struct MqttClient;

impl MqttClient {
    /// Reads the credentials (failing with the path of any unreadable certificate, key or
    /// password file), then spawns the connection, drain, inbound and heartbeat tasks on
    /// `tracker`. They stop when `shutdown` is cancelled (publishing an offline status and
    /// disconnecting cleanly when connected). Must be called inside a tokio runtime.
    pub fn start(
        cfg: &Mqtt,
        site: &Site,
        store: Store,
        audit: Audit,
        sink: Arc<dyn GrantSink>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<MqttHandle, MqttError> {
        let topics = Topics::new(site);
        let options = options(cfg, &topics)?;
        let dropped = store.with_conn(|c| outbox::telemetry_dropped(c))?;
        let shared = Arc::new(Shared {
            topics,
            store,
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            stats: Counters {
                dropped: AtomicU64::new(dropped),
                ..Counters::default()
            },
            boot_id: crate::util::random_hex(6),
            started: Instant::now(),
            since: crate::clock::rfc3339(time::OffsetDateTime::now_utc()),
            next_id: AtomicU64::new(0),
            availability: Mutex::new(HashMap::new()),
            telemetry_seq: Mutex::new(std::collections::BTreeMap::new()),
            snapshot: Notify::new(),
            grants_msg: tokio::sync::Mutex::new(None),
            live: Mutex::new(live::LiveQueue::new(cfg.telemetry_backlog_max)),
            live_wake: Notify::new(),
            backlog_max: cfg.telemetry_backlog_max,
        });
        let telemetry = Telemetry::new(shared.clone(), cfg.telemetry_interval);
        session::spawn(session::Parts {
            shared: shared.clone(),
            options,
            audit,
            sink,
            shutdown: shutdown.clone(),
            tracker,
            reconnect: session::Schedule {
                min: cfg.reconnect_min,
                max: cfg.reconnect_max,
                stable: cfg.reconnect_stable,
            },
            backfill_rate: cfg.backfill_rate,
        });
        // Heartbeat: telemetry snapshots and a fresh status (uptime, drop count).
        {
            let telemetry = telemetry.clone();
            let shared = shared.clone();
            let every = cfg.telemetry_interval.max(Duration::from_secs(1));
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                let mut last_snapshot: Option<Instant> = None;
                loop {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        () = shared.snapshot.notified() => {
                            // Requests closer together than SNAPSHOT_MIN_INTERVAL are served by
                            // one snapshot at the end of the interval (a bound on the traffic
                            // that requests can cause).
                            if let Some(wait) = last_snapshot
                                .map(|t: Instant| SNAPSHOT_MIN_INTERVAL.saturating_sub(t.elapsed()))
                                .filter(|w| !w.is_zero())
                            {
                                tokio::select! {
                                    biased;
                                    () = shutdown.cancelled() => break,
                                    () = tokio::time::sleep(wait) => {}
                                }
                            }
                            last_snapshot = Some(Instant::now());
                            let now = time::OffsetDateTime::now_utc();
                            if let Err(e) = telemetry.snapshot(now).await {
                                tracing::warn!(error = %e, "telemetry snapshot failed");
                            }
                            continue;
                        }
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = telemetry.heartbeat(time::OffsetDateTime::now_utc()).await {
                        tracing::warn!(error = %e, "telemetry heartbeat failed");
                    }
                    if shared.connected.load(Ordering::Relaxed) {
                        // A live message: the next heartbeat replaces it anyway.
                        let doc = shared.online_status().to_string().into_bytes();
                        shared.push_live(Class::State, shared.topics.status.clone(), doc, true);
                    }
                }
            });
        }
        Ok(MqttHandle { shared, telemetry })
    }
}

/// Builds the rumqttc options from the config (reading the password and TLS files).
fn options(cfg: &Mqtt, topics: &Topics) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    // rumqttc asserts on keep-alive below 1 s; config validation refuses it, this is belt and braces.
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
    // A clean session on every connect: the outbox, not the broker session, holds what must be
    // resent, and the subscriptions are made again after each CONNACK.
    o.set_clean_session(true);
    o.set_max_packet_size(MAX_PACKET_BYTES, MAX_OUTBOUND_BYTES + 64 * 1024);
    o.set_inflight(INFLIGHT_WINDOW);
    o.set_request_channel_capacity(usize::from(INFLIGHT_WINDOW) + 16);
    o.set_last_will(LastWill::new(
        topics.status.clone(),
        OFFLINE_STATUS.to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(p) => tls::read_password(p)?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if cfg.tls {
        let config = tls::client_config(cfg)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(o)
}

/// The running client, as the rest of the daemon sees it. Cheap to clone.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
    telemetry: Telemetry,
}

impl MqttHandle {
    /// The telemetry input (deadband and heartbeat decisions).
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// The topics of this box.
    pub fn topics(&self) -> &Topics {
        &self.shared.topics
    }

    /// Whether the broker connection is up now.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Queues the retained `online`/`offline` availability of `unit` when it differs from the
    /// last one set.
    pub async fn set_availability(&self, unit: &UnitId, online: bool) -> Result<(), MqttError> {
        {
            let mut map = self
                .shared
                .availability
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if map.insert(unit.to_string(), online) == Some(online) {
                return Ok(());
            }
        }
        let payload: &[u8] = if online { b"online" } else { b"offline" };
        self.shared
            .enqueue_state(
                self.shared.topics.availability(unit.as_str()),
                payload.to_vec(),
            )
            .await
    }

    /// Publishes `…/grants/state` now and after every change seen on `changes` (the grants
    /// engine's watch channel fires on every successful apply, whatever its source: MQTT, the
    /// LAN API, setup, the demo), with the document `state` returns. The first publish also
    /// covers applies made while the daemon was stopped (`sitegate grants apply`). The
    /// `last_message` of the newest MQTT grants/keys message is kept in every document.
    pub fn follow_grants<T: Send + Sync + 'static>(
        &self,
        mut changes: tokio::sync::watch::Receiver<T>,
        state: impl Fn() -> serde_json::Value + Send + 'static,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let shared = self.shared.clone();
        changes.mark_unchanged();
        tracker.spawn(async move {
            loop {
                shared.enqueue_grants_state(state()).await;
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    changed = changes.changed() => if changed.is_err() { break },
                }
            }
        });
    }

    /// Queues a pending access request or delegation on `…/requests` (see
    /// [`outbox::enqueue_request`]; use that inside your own transaction instead when the request
    /// is stored in the same change).
    pub async fn request(&self, id: &str, payload: serde_json::Value) -> Result<(), MqttError> {
        let root = self.shared.topics.root.clone();
        let id = id.to_string();
        self.shared
            .store
            .call(move |c| outbox::enqueue_request(c, &root, &id, &payload))
            .await?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Tells the drain that rows were queued (it also looks by itself every 100 ms).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Counters and queue depths, for `/metrics` and health.
    pub async fn stats(&self) -> Result<MqttStats, MqttError> {
        let depth = self
            .shared
            .store
            .call(|c| {
                outbox::CLASSES
                    .iter()
                    .map(|cl| Ok((cl.as_str().to_string(), outbox::class_depth(c, *cl)?)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        let depth = live_depth(depth, &self.shared.live());
        let s = &self.shared.stats;
        Ok(MqttStats {
            connected: self.connected(),
            sent: s.sent.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            telemetry_dropped: s.dropped.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            inbound: s.inbound.load(Ordering::Relaxed),
            inflight: s.inflight.load(Ordering::Relaxed),
            depth,
        })
    }
}

/// Adds the live messages waiting in memory to the outbox depth per class.
fn live_depth(mut depth: Vec<(String, u64)>, q: &live::LiveQueue) -> Vec<(String, u64)> {
    for (class, n) in depth.iter_mut() {
        *n += q.count(class);
    }
    depth
}
