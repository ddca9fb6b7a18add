//! The audit trail: an append-only, hash-chained record of everything that matters (logins,
//! commands and their results, denials, grant changes, delegations, unit online/offline, alarms).
//!
//! Each record is written in the same SQLite transaction as its copy in the MQTT outbox, so an
//! event that is in the audit log is also on its way to the cloud, and neither can exist without
//! the other. The chain (`hash = SHA-256(prev_hash ‖ canonical record)`) makes a deleted or edited
//! row detectable with [`verify_chain`].
//!
//! This module never records secrets: callers pass identifiers and reasons, never passwords,
//! tokens or key material.

use std::sync::{Arc, Mutex};

use ring::digest;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::clock::{SharedClock, rfc3339, unix_ms};
use crate::outbox::{self, Class};
use crate::store::{Store, StoreError};

/// Hash that starts the chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Machine-readable kind, e.g. `login`, `command`, `grant_rejected`, `unit_offline`.
    pub kind: &'static str,
    /// Who did it: a user id, `installer`, or `system`.
    pub actor: Option<String>,
    /// The unit it concerns, if any.
    pub unit: Option<String>,
    /// `ok`, `denied`, `failed`, `rejected`, `raised`, `cleared`, …
    pub outcome: &'static str,
    /// Kind-specific details (reason codes, point names, values). Never secrets.
    pub detail: Value,
}

impl Event {
    pub fn new(kind: &'static str, outcome: &'static str) -> Self {
        Event {
            kind,
            actor: None,
            unit: None,
            outcome,
            detail: Value::Null,
        }
    }
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
    pub fn unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// A stored audit record (also the payload of the MQTT `…/events` message).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Record {
    pub seq: i64,
    pub id: String,
    pub at: String,
    pub kind: String,
    pub actor: Option<String>,
    pub unit: Option<String>,
    pub outcome: String,
    pub detail: Value,
    pub hash: String,
}

/// The fields that the chain hash covers, in a fixed order.
#[derive(Serialize)]
struct Canonical<'a> {
    id: &'a str,
    at_ms: i64,
    kind: &'a str,
    actor: Option<&'a str>,
    unit: Option<&'a str>,
    outcome: &'a str,
    detail: &'a Value,
}

fn chain_hash(prev: &str, c: &Canonical<'_>) -> String {
    let body = serde_json::to_vec(c).unwrap_or_default();
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(b"\n");
    ctx.update(&body);
    hex::encode(ctx.finish().as_ref())
}

/// Appends audit records and queues them for MQTT.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    clock: SharedClock,
    /// `sitegate/v1/{site}/{gateway}/events`, or `None` before provisioning (records then stay
    /// local only).
    events_topic: Option<Arc<str>>,
    ids: Arc<Mutex<IdSource>>,
}

/// Record ids: a random per-boot prefix and a counter, unique across restarts without a lookup.
struct IdSource {
    prefix: String,
    next: u64,
}

impl Audit {
    pub fn new(store: Store, clock: SharedClock, events_topic: Option<String>) -> Self {
        Audit {
            store,
            clock,
            events_topic: events_topic.map(Arc::from),
            ids: Arc::new(Mutex::new(IdSource {
                prefix: crate::util::random_hex(6),
                next: 0,
            })),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn next_id(&self) -> String {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.next += 1;
        format!("a-{}-{}", ids.prefix, ids.next)
    }

    /// Appends `event` inside the caller's transaction (so that it commits or rolls back with the
    /// change it describes) and queues it on the outbox.
    pub fn record_in(&self, conn: &Connection, event: &Event) -> Result<Record, StoreError> {
        let at = self.clock.now();
        append(
            conn,
            &self.next_id(),
            at,
            event,
            self.events_topic.as_deref(),
        )
    }

    /// Appends `event` in its own transaction (blocking).
    pub fn record_blocking(&self, event: &Event) -> Result<Record, StoreError> {
        let this = self.clone();
        let event = event.clone();
        self.store.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rec = this.record_in(&tx, &event)?;
            tx.commit()?;
            Ok(rec)
        })
    }

    /// Appends `event` in its own transaction on the blocking pool. A failure to record is logged
    /// and returned; callers that cannot do anything about it may ignore the result.
    pub async fn record(&self, event: Event) -> Result<Record, StoreError> {
        let this = self.clone();
        let kind = event.kind;
        let res = self
            .store
            .call(move |conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let rec = this.record_in(&tx, &event)?;
                tx.commit()?;
                Ok(rec)
            })
            .await;
        if let Err(e) = &res {
            tracing::error!(kind, error = %e, "could not write audit record");
        }
        res
    }
}

fn append(
    conn: &Connection,
    id: &str,
    at: OffsetDateTime,
    event: &Event,
    topic: Option<&str>,
) -> Result<Record, StoreError> {
    let prev: String = conn
        .query_row(
            "SELECT hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_else(|| GENESIS.to_string());
    let at_ms = unix_ms(at);
    let canonical = Canonical {
        id,
        at_ms,
        kind: event.kind,
        actor: event.actor.as_deref(),
        unit: event.unit.as_deref(),
        outcome: event.outcome,
        detail: &event.detail,
    };
    let hash = chain_hash(&prev, &canonical);
    let detail = serde_json::to_string(&event.detail).unwrap_or_else(|_| "null".into());
    conn.execute(
        "INSERT INTO audit(id, at_ms, kind, actor, unit, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id,
            at_ms,
            event.kind,
            event.actor,
            event.unit,
            event.outcome,
            detail,
            prev,
            hash
        ],
    )?;
    let record = Record {
        seq: conn.last_insert_rowid(),
        id: id.to_string(),
        at: rfc3339(crate::clock::from_unix_ms(at_ms)),
        kind: event.kind.to_string(),
        actor: event.actor.clone(),
        unit: event.unit.clone(),
        outcome: event.outcome.to_string(),
        detail: event.detail.clone(),
        hash,
    };
    if let Some(topic) = topic {
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        outbox::enqueue(conn, Class::Event, &record.id, topic, &payload, true, false)?;
    }
    Ok(record)
}

/// A filter for [`query`].
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only records about these units (`None` = any unit, including records without one).
    pub units: Option<Vec<String>>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    /// Only records with `seq` below this (paging backwards).
    pub before_seq: Option<i64>,
    pub since_ms: Option<i64>,
    pub limit: u32,
}

/// Newest-first page of audit records matching `q`.
pub fn query(conn: &Connection, q: &Query) -> Result<Vec<Record>, StoreError> {
    let mut sql = String::from(
        "SELECT seq, id, at_ms, kind, actor, unit, outcome, detail, hash FROM audit WHERE 1=1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(units) = &q.units {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(" AND unit IN (");
        for (i, u) in units.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('?');
            args.push(u.clone().into());
        }
        sql.push(')');
    }
    if let Some(kind) = &q.kind {
        sql.push_str(" AND kind = ?");
        args.push(kind.clone().into());
    }
    if let Some(actor) = &q.actor {
        sql.push_str(" AND actor = ?");
        args.push(actor.clone().into());
    }
    if let Some(b) = q.before_seq {
        sql.push_str(" AND seq < ?");
        args.push(b.into());
    }
    if let Some(s) = q.since_ms {
        sql.push_str(" AND at_ms >= ?");
        args.push(s.into());
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    args.push(i64::from(q.limit.clamp(1, 1000)).into());
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), record_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Maps `seq, id, at_ms, kind, actor, unit, outcome, detail, hash` to a [`Record`] (the same
/// document that was queued on MQTT when the record was appended).
fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let detail: String = r.get(7)?;
    Ok(Record {
        seq: r.get(0)?,
        id: r.get(1)?,
        at: rfc3339(crate::clock::from_unix_ms(r.get(2)?)),
        kind: r.get(3)?,
        actor: r.get(4)?,
        unit: r.get(5)?,
        outcome: r.get(6)?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
        hash: r.get(8)?,
    })
}

/// The records with `from <= seq <= to`, oldest first (MQTT backfill).
pub fn range(conn: &Connection, from: i64, to: i64) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, at_ms, kind, actor, unit, outcome, detail, hash FROM audit
         WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![from, to], record_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Walks the whole chain; returns the number of records, or the `seq` of the first record whose
/// hash does not match its content and predecessor.
pub fn verify_chain(conn: &Connection) -> Result<Result<u64, i64>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, id, at_ms, kind, actor, unit, outcome, detail, prev_hash, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let id: String = r.get(1)?;
        let kind: String = r.get(3)?;
        let actor: Option<String> = r.get(4)?;
        let unit: Option<String> = r.get(5)?;
        let outcome: String = r.get(6)?;
        let detail: String = r.get(7)?;
        let prev_hash: String = r.get(8)?;
        let hash: String = r.get(9)?;
        let detail: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
        let c = Canonical {
            id: &id,
            at_ms: r.get(2)?,
            kind: &kind,
            actor: actor.as_deref(),
            unit: unit.as_deref(),
            outcome: &outcome,
            detail: &detail,
        };
        if prev_hash != prev || chain_hash(&prev, &c) != hash {
            return Ok(Err(seq));
        }
        prev = hash;
        n += 1;
    }
    Ok(Ok(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use serde_json::json;

    fn audit() -> (tempfile::TempDir, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::new(
            time::macros::datetime!(2026-11-26 12:00 UTC),
        ));
        let a = Audit::new(store, clock, Some("sitegate/v1/s/g/events".into()));
        (dir, a)
    }

    #[test]
    fn records_are_chained_and_queued() {
        let (_d, a) = audit();
        for i in 0..5 {
            a.record_blocking(
                &Event::new("command", "ok")
                    .actor("u-1")
                    .unit("gen-1")
                    .detail(json!({ "i": i })),
            )
            .unwrap();
        }
        a.store()
            .with_conn(|c| {
                assert_eq!(verify_chain(c)?, Ok(5));
                let n: i64 = c.query_row(
                    "SELECT COUNT(*) FROM outbox WHERE class = 'event'",
                    [],
                    |r| r.get(0),
                )?;
                assert_eq!(n, 5);
                let page = query(
                    c,
                    &Query {
                        units: Some(vec!["gen-1".into()]),
                        limit: 2,
                        ..Query::default()
                    },
                )?;
                assert_eq!(page.len(), 2);
                assert!(page[0].seq > page[1].seq);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn an_edited_row_breaks_the_chain() {
        let (_d, a) = audit();
        for _ in 0..3 {
            a.record_blocking(&Event::new("login", "ok").actor("u-1"))
                .unwrap();
        }
        a.store()
            .with_conn(|c| {
                c.execute("UPDATE audit SET actor = 'u-2' WHERE seq = 2", [])?;
                assert_eq!(verify_chain(c)?, Err(2));
                Ok(())
            })
            .unwrap();
    }
}
