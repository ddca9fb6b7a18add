//! The MQTT outbox: every message that must reach the cloud is a row here before it is sent.
//!
//! A row is deleted only when the broker acknowledged it (PUBACK for QoS 1), so a broker outage
//! or a power cut loses nothing: after a restart, unacknowledged rows are sent again with the same
//! `msg_id` (at-least-once; the cloud de-duplicates by that id). Events and requests are never
//! dropped; the telemetry backlog is bounded and drops oldest first, counting what it dropped.

use rusqlite::{Connection, OptionalExtension, params};

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
        conn.prepare_cached("DELETE FROM outbox WHERE class = 'state' AND topic = ?1")?
            .execute([topic])?;
    }
    let now = crate::clock::unix_ms(time::OffsetDateTime::now_utc());
    conn.prepare_cached(
        "INSERT INTO outbox(msg_id, class, topic, payload, qos, retain, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        msg_id,
        class.as_str(),
        topic,
        payload,
        i64::from(qos1),
        i64::from(retain),
        now
    ])?;
    Ok(())
}

/// Queues an audit record again for MQTT backfill (an event, QoS 1, with its original id as
/// `msg_id`) unless a row with that id is still queued (it is sent anyway). Returns whether it
/// queued a row.
pub fn enqueue_backfill(
    conn: &Connection,
    msg_id: &str,
    topic: &str,
    payload: &[u8],
) -> Result<bool, StoreError> {
    let now = crate::clock::unix_ms(time::OffsetDateTime::now_utc());
    let n = conn.execute(
        "INSERT INTO outbox(msg_id, class, topic, payload, qos, retain, created_ms)
         VALUES (?1, 'event', ?2, ?3, 1, 0, ?4) ON CONFLICT(msg_id) DO NOTHING",
        params![msg_id, topic, payload, now],
    )?;
    Ok(n == 1)
}

/// Number of queued rows per class, for metrics and health.
pub fn depth(store: &Store) -> Result<Vec<(String, i64)>, StoreError> {
    store.with_conn(|c| {
        let mut stmt = c.prepare("SELECT class, COUNT(*) FROM outbox GROUP BY class")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
}

/// `meta` key holding the number of telemetry messages dropped from a full backlog, ever.
pub const META_TELEMETRY_DROPPED: &str = "outbox.telemetry_dropped";

/// Every class, in the order the drain serves them within one round (state first: it is small
/// and always the freshest truth; then live telemetry, requests and events interleaved).
pub const CLASSES: [Class; 4] = [Class::State, Class::Telemetry, Class::Request, Class::Event];

impl Class {
    /// Position in [`CLASSES`], for per-class arrays.
    pub fn index(self) -> usize {
        match self {
            Class::State => 0,
            Class::Telemetry => 1,
            Class::Request => 2,
            Class::Event => 3,
        }
    }
}

/// One queued message as the drain reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub seq: i64,
    pub msg_id: String,
    pub class: Class,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos1: bool,
    pub retain: bool,
}

/// Queues a pending access request or delegation for approval on `…/requests` (QoS 1, never
/// dropped), inside the caller's transaction. `id` is the stable message id the cloud
/// de-duplicates on: use a new id for every new message (a changed request is a new message).
/// The payload is `payload` with `"msg_id": id` added when it is a JSON object, or
/// `{"msg_id": id, "request": payload}` otherwise.
pub fn enqueue_request(
    conn: &Connection,
    topic_root: &str,
    id: &str,
    payload: &serde_json::Value,
) -> Result<(), StoreError> {
    let body = match payload {
        serde_json::Value::Object(map) => {
            let mut map = map.clone();
            map.insert("msg_id".into(), serde_json::Value::String(id.to_string()));
            serde_json::Value::Object(map)
        }
        other => serde_json::json!({ "msg_id": id, "request": other }),
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    enqueue(
        conn,
        Class::Request,
        id,
        &format!("{topic_root}/requests"),
        &bytes,
        true,
        false,
    )
}

/// Queues one telemetry message and keeps the telemetry backlog at most `max` rows by dropping
/// the oldest, inside the caller's transaction. Returns how many rows were dropped (also added to
/// the persistent counter [`META_TELEMETRY_DROPPED`]).
///
/// The trim costs a scan of the backlog, so callers that enqueue often pass `check = false` while
/// they know the backlog is well under `max` (see `mqtt::telemetry`).
pub fn enqueue_telemetry(
    conn: &Connection,
    msg_id: &str,
    topic: &str,
    payload: &[u8],
    max: u64,
    check: bool,
) -> Result<u64, StoreError> {
    enqueue(conn, Class::Telemetry, msg_id, topic, payload, true, false)?;
    if !check {
        return Ok(0);
    }
    trim_telemetry(conn, max)
}

/// Drops the oldest telemetry rows beyond `max`; returns how many it dropped.
pub fn trim_telemetry(conn: &Connection, max: u64) -> Result<u64, StoreError> {
    let offset = i64::try_from(max).unwrap_or(i64::MAX);
    // The seq of the newest row that no longer fits (index scan on (class, seq)).
    let cut: Option<i64> = conn
        .query_row(
            "SELECT seq FROM outbox WHERE class = 'telemetry' ORDER BY seq DESC LIMIT 1 OFFSET ?1",
            [offset],
            |r| r.get(0),
        )
        .optional()?;
    let Some(cut) = cut else { return Ok(0) };
    let n = conn.execute(
        "DELETE FROM outbox WHERE class = 'telemetry' AND seq <= ?1",
        [cut],
    )?;
    let n = n as u64;
    if n > 0 {
        let before = telemetry_dropped(conn)?;
        Store::meta_set(
            conn,
            META_TELEMETRY_DROPPED,
            &before.saturating_add(n).to_string(),
        )?;
    }
    Ok(n)
}

/// The persistent count of telemetry messages dropped from a full backlog.
pub fn telemetry_dropped(conn: &Connection) -> Result<u64, StoreError> {
    Ok(Store::meta_get(conn, META_TELEMETRY_DROPPED)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Number of queued rows of one class.
pub fn class_depth(conn: &Connection, class: Class) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE class = ?1",
        [class.as_str()],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The newest `seq` in the outbox (0 when empty): a cheap "anything new?" probe for the drain.
pub fn max_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM outbox", [], |r| r.get(0))?)
}

/// Reads up to `room` rows to send next, fairly: for each class the rows after `after[class]`
/// (in seq order, so each class keeps its order), then interleaved one by one across classes,
/// starting with state. A backlog in one class therefore takes at most its share of the window
/// while other classes have rows waiting: a 100,000-event backlog does not starve fresh
/// telemetry or state.
pub fn next_batch(
    conn: &Connection,
    after: &[i64; 4],
    room: usize,
) -> Result<Vec<Row>, StoreError> {
    if room == 0 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(room).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, msg_id, topic, payload, qos, retain FROM outbox
         WHERE class = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut per_class: Vec<std::collections::VecDeque<Row>> = Vec::with_capacity(4);
    for class in CLASSES {
        let rows = stmt.query_map(params![class.as_str(), after[class.index()], limit], |r| {
            Ok(Row {
                seq: r.get(0)?,
                msg_id: r.get(1)?,
                class,
                topic: r.get(2)?,
                payload: r.get(3)?,
                qos1: r.get::<_, i64>(4)? != 0,
                retain: r.get::<_, i64>(5)? != 0,
            })
        })?;
        per_class.push(rows.collect::<Result<_, _>>()?);
    }
    let mut out = Vec::with_capacity(room);
    while out.len() < room {
        let mut took = false;
        for q in per_class.iter_mut() {
            if out.len() >= room {
                break;
            }
            if let Some(row) = q.pop_front() {
                out.push(row);
                took = true;
            }
        }
        if !took {
            break;
        }
    }
    Ok(out)
}

/// Deletes acknowledged rows (one transaction).
///
/// The commit runs with `synchronous=NORMAL` (the connection is back to `FULL` afterwards): in
/// WAL mode that survives a process crash (`kill -9`) without waiting for an fsync, so acks are
/// recorded within a fraction of a millisecond and a crash resends only the rows acknowledged in
/// that moment. A power cut may undo the last such deletes: those rows are sent again (a
/// duplicate, never a loss); the next `FULL` commit makes them durable too.
pub fn delete_acked(conn: &mut Connection, seqs: &[i64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    let deleted = delete_in_tx(conn, seqs);
    let restored = conn.execute_batch("PRAGMA synchronous=FULL");
    deleted?;
    restored?;
    Ok(())
}

fn delete_in_tx(conn: &mut Connection, seqs: &[i64]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for s in seqs {
            stmt.execute([s])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn a_big_event_backlog_does_not_starve_telemetry_or_state() {
        let (_d, s) = store();
        s.with_conn(|c| {
            for i in 0..500 {
                enqueue(
                    c,
                    Class::Event,
                    &format!("e{i}"),
                    "t/events",
                    b"{}",
                    true,
                    false,
                )?;
            }
            enqueue(
                c,
                Class::Telemetry,
                "t1",
                "t/telemetry/u",
                b"{}",
                true,
                false,
            )?;
            enqueue(
                c,
                Class::Telemetry,
                "t2",
                "t/telemetry/u",
                b"{}",
                true,
                false,
            )?;
            enqueue(c, Class::State, "s1", "t/status", b"{}", true, true)?;
            let batch = next_batch(c, &[0; 4], 4)?;
            let ids: Vec<_> = batch.iter().map(|r| r.msg_id.as_str()).collect();
            assert_eq!(ids, ["s1", "t1", "e0", "t2"]);
            // The cursor skips what is already in flight.
            let after = [batch[0].seq, batch[3].seq, 0, batch[2].seq];
            let batch = next_batch(c, &after, 3)?;
            let ids: Vec<_> = batch.iter().map(|r| r.msg_id.as_str()).collect();
            assert_eq!(ids, ["e1", "e2", "e3"]);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn telemetry_backlog_drops_oldest_first_and_counts() {
        let (_d, s) = store();
        s.with_conn(|c| {
            enqueue(c, Class::Event, "e", "t/events", b"{}", true, false)?;
            let mut dropped = 0;
            for i in 0..25 {
                dropped +=
                    enqueue_telemetry(c, &format!("t{i}"), "t/telemetry/u", b"{}", 10, true)?;
            }
            assert_eq!(dropped, 15);
            assert_eq!(telemetry_dropped(c)?, 15);
            assert_eq!(class_depth(c, Class::Telemetry)?, 10);
            assert_eq!(class_depth(c, Class::Event)?, 1, "events are never dropped");
            let oldest: String = c.query_row(
                "SELECT msg_id FROM outbox WHERE class = 'telemetry' ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )?;
            assert_eq!(oldest, "t15");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_request_carries_its_msg_id_and_acked_rows_leave() {
        let (_d, s) = store();
        s.with_conn(|c| {
            enqueue_request(
                c,
                "sitegate/v1/s/g",
                "r-1",
                &serde_json::json!({"user": "u-1"}),
            )?;
            let b = next_batch(c, &[0; 4], 10)?;
            assert_eq!(b.len(), 1);
            assert_eq!(b[0].topic, "sitegate/v1/s/g/requests");
            let v: serde_json::Value = serde_json::from_slice(&b[0].payload).unwrap();
            assert_eq!(v["msg_id"], "r-1");
            assert_eq!(v["user"], "u-1");
            assert!(enqueue_request(c, "x", "r-1", &serde_json::json!(1)).is_err());
            delete_acked(c, &[b[0].seq])?;
            assert_eq!(max_seq(c)?, 0);
            let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
            assert_eq!(sync, 2, "back to FULL for every other write");
            Ok(())
        })
        .unwrap();
    }
}
