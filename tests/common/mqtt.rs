//! A third-party MQTT subscriber that records what it receives, bounded polling, and the site
//! and client configs the MQTT tests use.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a test failure"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A third-party subscriber (rumqttc, QoS 1) that records everything it receives and reconnects
/// by itself until dropped.
pub struct Collector {
    pub msgs: Arc<Mutex<Vec<Received>>>,
    pub connected: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Collector {
    /// Subscribes to `filter` on 127.0.0.1:`port`. `persistent` keeps the broker session (and the
    /// messages queued for it) across the subscriber's and the broker's restarts.
    pub fn start(
        port: u16,
        client_id: &str,
        filter: &str,
        persistent: bool,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Collector {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(!persistent);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(4 << 20, 4 << 20);
        if let Some(cfg) = tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(cfg)));
        }
        let (client, mut el) = AsyncClient::new(o, 100);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = CancellationToken::new();
        {
            let msgs = msgs.clone();
            let connected = connected.clone();
            let stop = stop.clone();
            let filter = filter.to_string();
            tokio::spawn(async move {
                loop {
                    let ev = tokio::select! {
                        () = stop.cancelled() => break,
                        ev = el.poll() => ev,
                    };
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            connected.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            msgs.lock().unwrap().push(Received {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                        Ok(_) => {}
                        Err(_) => {
                            connected.store(false, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        Collector {
            msgs,
            connected,
            stop,
        }
    }

    pub async fn wait_subscribed(&self) {
        let c = self.connected.clone();
        wait_for(
            "the subscriber to subscribe",
            Duration::from_secs(10),
            || c.load(std::sync::atomic::Ordering::SeqCst),
        )
        .await;
    }

    /// Messages received on `topic` so far.
    pub fn on(&self, topic: &str) -> Vec<Received> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Received> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits until a message on `topic` satisfies `pred`; returns it.
    pub async fn wait_message(
        &self,
        topic: &str,
        limit: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> Received {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self.on(topic).into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for a message on `{topic}`; got {:?}",
                self.on(topic)
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The site of every test: topic root `sitegate/v1/s-1/gw-1`.
pub fn site() -> sitegate::config::Site {
    sitegate::config::Site {
        id: "s-1".parse().unwrap(),
        gateway: "gw-1".parse().unwrap(),
        name: None,
    }
}

/// A plain-TCP client config for the broker on `port`, quick to reconnect.
pub fn mqtt_config(port: u16, client_id: &str) -> sitegate::config::Mqtt {
    sitegate::config::Mqtt {
        host: "127.0.0.1".into(),
        port,
        tls: false,
        client_id: client_id.into(),
        username: None,
        password_file: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        keep_alive: Duration::from_secs(5),
        telemetry_interval: Duration::from_secs(60),
        telemetry_backlog_max: 50_000,
        reconnect_max: Duration::from_secs(1),
        reconnect_min: Duration::from_millis(100),
        reconnect_stable: Duration::from_secs(1),
        backfill_rate: 500,
    }
}

/// Publishes every `(topic, payload)` in order with QoS 1 (retained when `retain`) as a
/// third-party client, and waits for all their PUBACKs: what a cloud does.
pub async fn publish_all(port: u16, msgs: Vec<(String, Vec<u8>)>, retain: bool) {
    let mut o = MqttOptions::new(format!("test-cloud-{}", rand_suffix()), "127.0.0.1", port);
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut el) = AsyncClient::new(o, 64);
    let total = msgs.len();
    let publisher = {
        let client = client.clone();
        async move {
            for (topic, payload) in msgs {
                client
                    .publish(topic, QoS::AtLeastOnce, retain, payload)
                    .await
                    .unwrap();
            }
        }
    };
    let acks = async {
        let mut acked = 0;
        while acked < total {
            match tokio::time::timeout(Duration::from_secs(20), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publishing: {e}"),
                Err(_) => panic!("no PUBACK within 20 s ({acked} of {total})"),
            }
        }
    };
    tokio::join!(publisher, acks);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

/// Publishes one retained message with QoS 1 and waits for its PUBACK.
pub async fn publish_retained(port: u16, topic: &str, payload: Vec<u8>) {
    publish_all(port, vec![(topic.to_string(), payload)], true).await;
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The topic root of [`site`].
pub const ROOT: &str = "sitegate/v1/s-1/gw-1";

/// A grant sink that applies nothing: it answers `{"sink":"called"}` (published on
/// `…/grants/state`, so a test can see that a message reached it).
pub struct NoSink;

impl sitegate::mqtt::GrantSink for NoSink {
    fn apply(&self, _: sitegate::mqtt::InboundKind, _: Vec<u8>) -> serde_json::Value {
        serde_json::json!({"sink": "called"})
    }
}

/// The MQTT client of one box in-process (SQLite store in `dir`, audit), with a grant sink
/// ([`NoSink`] unless the test brings its own).
pub struct Running {
    pub shutdown: CancellationToken,
    pub tracker: tokio_util::task::TaskTracker,
    pub handle: sitegate::mqtt::MqttHandle,
    pub audit: sitegate::audit::Audit,
    pub store: sitegate::store::Store,
}

impl Running {
    /// Starts the client; audit records go to `…/events` when `events`.
    pub fn start(dir: &std::path::Path, cfg: sitegate::config::Mqtt, events: bool) -> Running {
        Running::start_with_sink(dir, cfg, events, Arc::new(NoSink))
    }

    /// Starts the client with `sink` for what arrives on `…/grants` and `…/keys`.
    pub fn start_with_sink(
        dir: &std::path::Path,
        cfg: sitegate::config::Mqtt,
        events: bool,
        sink: Arc<dyn sitegate::mqtt::GrantSink>,
    ) -> Running {
        let store = sitegate::store::Store::open_in(dir).unwrap();
        let audit = sitegate::audit::Audit::new(
            store.clone(),
            Arc::new(sitegate::clock::SystemClock),
            events.then(|| format!("{ROOT}/events")),
        );
        let shutdown = CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let handle = sitegate::mqtt::MqttClient::start(
            &cfg,
            &site(),
            store.clone(),
            audit.clone(),
            sink,
            shutdown.clone(),
            &tracker,
        )
        .unwrap();
        Running {
            shutdown,
            tracker,
            handle,
            audit,
            store,
        }
    }

    /// Stops the client and waits for its tasks.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Waits until the client is connected.
    pub async fn wait_connected(&self) {
        let h = self.handle.clone();
        wait_for("the box to connect", Duration::from_secs(10), || {
            h.connected()
        })
        .await;
    }
}

/// The `[mqtt]` section of a daemon config for a broker on 127.0.0.1:`port`.
pub fn mqtt_toml(port: u16, client_id: &str) -> String {
    format!("\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"{client_id}\"\n")
}

/// A third-party observer subscribed to everything under [`ROOT`] (not persistent), once its
/// subscription is in place.
pub async fn observer(port: u16, client_id: &str) -> Collector {
    let c = Collector::start(port, client_id, &format!("{ROOT}/#"), false, None);
    c.wait_subscribed().await;
    c
}
