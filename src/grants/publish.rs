//! `sitegate fleet publish`: delivers a signed bundle to one site over MQTT, the way a cloud
//! should (a reference for integrators, and the tool the fleet tests and bench use).
//!
//! Everything goes retained with QoS 1, so a box that is offline gets it at its next connect. A
//! bundle in parts goes part by part on `…/grants/parts/{i}` and its manifest last on `…/grants`
//! (the box accepts either order); then the retained parts a previous, larger set left behind are
//! cleared (an empty retained message), so boxes do not receive stale parts on every reconnect.
//! `mqtts://` connects over TLS with the CA roots and optional client certificate the caller
//! loaded (the same files and rules as the daemon's `[mqtt]` settings). This module signs nothing
//! and never logs payloads or passwords.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

use super::GrantError;
use super::fleet::{SplitBundle, announced_parts};

/// What to publish.
#[derive(Debug)]
pub enum Messages {
    /// A bundle envelope that fits in one message.
    Whole(Vec<u8>),
    /// A bundle cut into parts.
    Parts(SplitBundle),
}

/// How long to wait for the broker (connect, each PUBACK).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the retained message on `…/grants` after the SUBACK.
const RETAINED_WAIT: Duration = Duration::from_millis(500);

fn invalid(e: impl std::fmt::Display) -> GrantError {
    GrantError::Invalid(e.to_string())
}

/// How the tool signs in to the broker, besides its address.
#[derive(Default)]
pub struct Access {
    /// The TLS client configuration (CA roots, optional client certificate); required by
    /// `mqtts://` and refused with `mqtt://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// User name and password, if the broker asks for them.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tls", &self.tls.is_some())
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// Whether `url` names a TLS broker (`mqtts://`).
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("mqtts://")
}

/// Parses `mqtt://host[:port]` (port 1883 when absent) or `mqtts://host[:port]` (8883); answers
/// host, port and whether the scheme is TLS.
fn parse_broker(url: &str) -> Result<(String, u16, bool), GrantError> {
    let (rest, default_port, tls) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, 1883, false)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, 8883, true)
    } else {
        return Err(invalid(format!(
            "--broker `{url}`: only `mqtt://host[:port]` and `mqtts://host[:port]` are supported"
        )));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse()
                .map_err(|_| invalid(format!("--broker `{url}`: bad port")))?,
        ),
        None => (rest.to_string(), default_port),
    };
    Ok((host, port, tls))
}

/// Publishes `messages` under `root` (`sitegate/v1/{site}/{gateway}`); returns a one-line report.
pub fn publish(
    broker: &str,
    access: Access,
    root: &str,
    messages: Messages,
) -> Result<String, GrantError> {
    let (host, port, tls) = parse_broker(broker)?;
    match (tls, access.tls.is_some()) {
        (true, false) => {
            return Err(invalid(format!(
                "--broker `{broker}`: mqtts:// needs a TLS configuration"
            )));
        }
        (false, true) => {
            return Err(invalid(format!(
                "--broker `{broker}`: TLS settings need an `mqtts://` broker"
            )));
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| invalid(format!("cannot start a runtime: {e}")))?;
    rt.block_on(run(host, port, access, root.to_string(), messages))
}

async fn run(
    host: String,
    port: u16,
    access: Access,
    root: String,
    messages: Messages,
) -> Result<String, GrantError> {
    let mut o = MqttOptions::new(
        format!("sitegate-fleet-{}", crate::util::random_hex(6)),
        host,
        port,
    );
    if let Some(config) = access.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    if let Some((user, password)) = access.credentials {
        o.set_credentials(user, password);
    }
    o.set_max_packet_size(8 << 20, 8 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 64);
    let grants = format!("{root}/grants");
    let part_topic = |i: usize| format!("{root}/grants/parts/{i}");

    // The retained message on `…/grants` tells how many parts the previous set had.
    client
        .subscribe(grants.clone(), QoS::AtLeastOnce)
        .await
        .map_err(invalid)?;
    let mut previous = 0usize;
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(invalid(format!("mqtt: {e}"))),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, wait)
        .await
        .map_err(|_| invalid("no answer from the broker"))??;
    let deadline = tokio::time::Instant::now() + RETAINED_WAIT;
    while let Ok(ev) = tokio::time::timeout_at(deadline, el.poll()).await {
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == grants && p.retain => {
                previous = announced_parts(&p.payload);
                break;
            }
            Ok(_) => {}
            Err(e) => return Err(invalid(format!("mqtt: {e}"))),
        }
    }
    client.unsubscribe(grants.clone()).await.map_err(invalid)?;

    // Parts first, the manifest last; then clear what a larger previous set left behind.
    let mut queue: Vec<(String, Vec<u8>)> = Vec::new();
    let (count, report) = match messages {
        Messages::Whole(env) => {
            let n = env.len();
            queue.push((grants.clone(), env));
            (0, format!("published the bundle ({n} bytes) on `{grants}`"))
        }
        Messages::Parts(split) => {
            let n = split.parts.len();
            let largest = split.parts.iter().map(Vec::len).max().unwrap_or(0);
            for (i, p) in split.parts.into_iter().enumerate() {
                queue.push((part_topic(i), p));
            }
            queue.push((grants.clone(), split.manifest));
            (
                n,
                format!(
                    "published bundle seq {} in {n} parts (largest {largest} bytes) and its manifest on `{grants}`",
                    split.seq
                ),
            )
        }
    };
    for i in count..previous {
        queue.push((part_topic(i), Vec::new()));
    }
    let total = queue.len();
    let publisher = {
        let client = client.clone();
        async move {
            for (topic, payload) in queue {
                client
                    .publish(topic, QoS::AtLeastOnce, true, payload)
                    .await
                    .map_err(invalid)?;
            }
            Ok::<(), GrantError>(())
        }
    };
    let acks = async {
        let mut acked = 0usize;
        while acked < total {
            match tokio::time::timeout(TIMEOUT, el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(invalid(format!("mqtt: {e}"))),
                Err(_) => return Err(invalid("the broker stopped acknowledging")),
            }
        }
        Ok(())
    };
    let (p, a) = tokio::join!(publisher, acks);
    p?;
    a?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
    let cleared = previous.saturating_sub(count);
    Ok(if cleared > 0 {
        format!("{report}; cleared {cleared} stale parts")
    } else {
        report
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:18830").unwrap(),
            ("127.0.0.1".to_string(), 18830, false)
        );
        assert_eq!(
            parse_broker("mqtt://broker.example").unwrap(),
            ("broker.example".to_string(), 1883, false)
        );
        assert_eq!(
            parse_broker("mqtts://broker.example").unwrap(),
            ("broker.example".to_string(), 8883, true)
        );
        assert_eq!(
            parse_broker("mqtts://127.0.0.1:18883/").unwrap(),
            ("127.0.0.1".to_string(), 18883, true)
        );
        assert!(parse_broker("tcp://x:1").is_err());
        assert!(parse_broker("mqtts://x:port").is_err());
    }

    #[test]
    fn an_mqtts_broker_without_tls_settings_is_refused_before_connecting() {
        let e = publish(
            "mqtts://127.0.0.1:1",
            Access::default(),
            "sitegate/v1/s-1/gw-1",
            Messages::Whole(Vec::new()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mqtts:// needs a TLS configuration"), "{e}");
    }
}
