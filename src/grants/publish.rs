//! `sitegate fleet publish`: delivers a signed bundle to one site over MQTT, the way a cloud
//! should (a reference for integrators, and the tool the fleet tests and bench use).
//!
//! Everything goes retained with QoS 1, so a box that is offline gets it at its next connect. A
//! bundle in parts goes part by part on `…/grants/parts/{i}` and its manifest last on `…/grants`
//! (the box accepts either order); then the retained parts a previous, larger set left behind are
//! cleared (an empty retained message), so boxes do not receive stale parts on every reconnect.
//! This module signs nothing and never logs payloads.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

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

/// Parses `mqtt://host:port` (port 1883 when absent).
fn parse_broker(url: &str) -> Result<(String, u16), GrantError> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        invalid(format!(
            "--broker `{url}`: only `mqtt://host:port` is supported"
        ))
    })?;
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse()
                .map_err(|_| invalid(format!("--broker `{url}`: bad port")))?,
        )),
        None => Ok((rest.to_string(), 1883)),
    }
}

/// Publishes `messages` under `root` (`sitegate/v1/{site}/{gateway}`); returns a one-line report.
pub fn publish(broker: &str, root: &str, messages: Messages) -> Result<String, GrantError> {
    let (host, port) = parse_broker(broker)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| invalid(format!("cannot start a runtime: {e}")))?;
    rt.block_on(run(host, port, root.to_string(), messages))
}

async fn run(
    host: String,
    port: u16,
    root: String,
    messages: Messages,
) -> Result<String, GrantError> {
    let mut o = MqttOptions::new(
        format!("sitegate-fleet-{}", crate::util::random_hex(6)),
        host,
        port,
    );
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
            ("127.0.0.1".to_string(), 18830)
        );
        assert_eq!(
            parse_broker("mqtt://broker.example").unwrap(),
            ("broker.example".to_string(), 1883)
        );
        assert!(parse_broker("mqtts://x:1").is_err());
    }
}
