//! The MQTT outbox: every message that must reach the cloud is a row here before it is sent.
//!
//! A row is deleted only when the broker acknowledged it (PUBACK for QoS 1), so a broker outage
//! or a power cut loses nothing: after a restart, unacknowledged rows are sent again with the same
//! `msg_id` (at-least-once; the cloud de-duplicates by that id). Events and requests are never
//! dropped; the telemetry backlog is bounded and drops oldest first, counting what it dropped.

use rusqlite::{Connection, params};

use crate::store::{Store, StoreError};

/// What kind of message a row is; decides drop policy and drain fairness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Audit events (QoS 1, never dropped).
    Event,
    /// Access requests and delegations for approval (QoS 1, never dropped).
    Request,
    /// Telemetry (bounded backlog, oldest dropped first).
    Telemetry,
    /// Retained state (status, availability, grants/state): only the newest per topic matters.
    State,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Event => "event",
            Class::Request => "request",
            Class::Telemetry => "telemetry",
            Class::State => "state",
        }
    }
    pub fn parse(s: &str) -> Option<Class> {
        match s {
            "event" => Some(Class::Event),
            "request" => Some(Class::Request),
            "telemetry" => Some(Class::Telemetry),
            "state" => Some(Class::State),
            _ => None,
        }
    }
}

/// Queues one message inside the caller's transaction. `msg_id` must be unique and stable: it is
/// what the cloud de-duplicates on. A retained `State` message replaces any queued message for
/// the same topic (only the newest state matters).
pub fn enqueue(
    conn: &Connection,
    class: Class,
    msg_id: &str,
    topic: &str,
    payload: &[u8],
    qos1: bool,
    retain: bool,
) -> Result<(), StoreError> {
    if class == Class::State {
        conn.execute(
            "DELETE FROM outbox WHERE class = 'state' AND topic = ?1",
            [topic],
        )?;
    }
    let now = crate::clock::unix_ms(time::OffsetDateTime::now_utc());
    conn.execute(
        "INSERT INTO outbox(msg_id, class, topic, payload, qos, retain, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            msg_id,
            class.as_str(),
            topic,
            payload,
            i64::from(qos1),
            i64::from(retain),
            now
        ],
    )?;
    Ok(())
}

/// Number of queued rows per class, for metrics and health.
pub fn depth(store: &Store) -> Result<Vec<(String, i64)>, StoreError> {
    store.with_conn(|c| {
        let mut stmt = c.prepare("SELECT class, COUNT(*) FROM outbox GROUP BY class")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
}
