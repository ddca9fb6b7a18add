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

/// Longest string stored in any audit field (actor, unit, and every string inside `detail`:
/// values, messages, emails, ids), in bytes. A longer one keeps its first bytes (cut at a
/// character boundary) followed by [`TRUNCATION_MARKER`] and the number of bytes left out, e.g.
/// `abc…[+64744 bytes]`. Refused input often echoes the refused value in its error message; this
/// keeps a flood of refusals from filling the log and the outbox.
pub const MAX_FIELD_BYTES: usize = 256;
/// What follows a cut string: `…[+<bytes left out> bytes]`.
pub const TRUNCATION_MARKER: &str = "…[+";
/// Most entries kept per object or array inside `detail`; the rest are replaced by one marker
/// entry (`"…": "+<n> entries"` in an object, `"…[+<n> items]"` in an array).
pub const MAX_DETAIL_ENTRIES: usize = 32;
/// Deepest nesting kept inside `detail`; anything deeper becomes the string `"…[nested]"`.
pub const MAX_DETAIL_DEPTH: usize = 4;

/// Cuts `s` to [`MAX_FIELD_BYTES`] with the truncation marker.
pub fn cap_str(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_FIELD_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}{TRUNCATION_MARKER}{} bytes]",
        &s[..end],
        s.len() - end
    ))
}

/// `detail` with every string capped, and objects/arrays bounded in entries and depth.
fn cap_value(v: &Value, depth: usize) -> Value {
    match v {
        Value::String(s) => Value::String(cap_str(s).into_owned()),
        Value::Array(_) | Value::Object(_) if depth >= MAX_DETAIL_DEPTH => {
            Value::String("…[nested]".into())
        }
        Value::Array(a) => {
            let mut out: Vec<Value> = a
                .iter()
                .take(MAX_DETAIL_ENTRIES)
                .map(|x| cap_value(x, depth + 1))
                .collect();
            if a.len() > MAX_DETAIL_ENTRIES {
                out.push(Value::String(format!(
                    "…[+{} items]",
                    a.len() - MAX_DETAIL_ENTRIES
                )));
            }
            Value::Array(out)
        }
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            for (k, x) in o.iter().take(MAX_DETAIL_ENTRIES) {
                out.insert(cap_str(k).into_owned(), cap_value(x, depth + 1));
            }
            if o.len() > MAX_DETAIL_ENTRIES {
                out.insert(
                    "…".into(),
                    Value::String(format!("+{} entries", o.len() - MAX_DETAIL_ENTRIES)),
                );
            }
            Value::Object(out)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
    }
}

/// The event as it is stored: every field bounded (see [`MAX_FIELD_BYTES`]). Applied to every
/// record on its one way in ([`Audit::record_in`]), so no caller can store an unbounded field.
pub fn bounded(event: &Event) -> Event {
    Event {
        kind: event.kind,
        actor: event.actor.as_deref().map(|a| cap_str(a).into_owned()),
        unit: event.unit.as_deref().map(|u| cap_str(u).into_owned()),
        outcome: event.outcome,
        detail: cap_value(&event.detail, 0),
    }
}

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
    /// Records waiting for the group commit of [`Audit::record`].
    group: Arc<Mutex<Group>>,
}

/// A record waiting for its group commit, and who waits for the outcome.
type Waiting = (
    Event,
    tokio::sync::oneshot::Sender<Result<Record, StoreError>>,
);

/// Group commit: records handed to [`Audit::record`] while a commit is running wait here and go
/// into the next transaction together. One writer at a time (`running`).
#[derive(Default)]
struct Group {
    queue: Vec<Waiting>,
    running: bool,
}

/// Most records in one group commit (bounds the time the connection is held).
const GROUP_MAX: usize = 256;

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
            group: Arc::new(Mutex::new(Group::default())),
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

    /// Appends `event` durably (committed with `synchronous=FULL`) before it returns, on the
    /// blocking pool. A failure to record is logged and returned; callers that cannot do anything
    /// about it may ignore the result.
    ///
    /// Group commit: records that arrive while a commit is running are written together in the
    /// next transaction, one fsync for all of them, and each caller gets its answer only once
    /// that transaction committed. A lone record costs one transaction as before; under load
    /// (50 clients sending commands) the fsync is shared instead of paid per command. If a group
    /// fails, its records are retried one by one so one bad record cannot fail the others.
    pub async fn record(&self, event: Event) -> Result<Record, StoreError> {
        let kind = event.kind;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
            g.queue.push((event, tx));
            !std::mem::replace(&mut g.running, true)
        };
        if start {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.commit_groups());
        }
        let res = rx.await.unwrap_or(Err(StoreError::TaskFailed));
        if let Err(e) = &res {
            tracing::error!(kind, error = %e, "could not write audit record");
        }
        res
    }

    /// The group writer: commits what is queued, in groups, until the queue is empty.
    fn commit_groups(&self) {
        loop {
            let batch: Vec<Waiting> = {
                let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
                if g.queue.is_empty() {
                    g.running = false;
                    return;
                }
                let n = g.queue.len().min(GROUP_MAX);
                g.queue.drain(..n).collect()
            };
            let together = self.store.with_conn(|conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut recs = Vec::with_capacity(batch.len());
                for (event, _) in &batch {
                    recs.push(self.record_in(&tx, event)?);
                }
                tx.commit()?;
                Ok(recs)
            });
            match together {
                Ok(recs) => {
                    for ((_, reply), rec) in batch.into_iter().zip(recs) {
                        let _ = reply.send(Ok(rec));
                    }
                }
                Err(_) if batch.len() > 1 => {
                    for (event, reply) in batch {
                        let _ = reply.send(self.record_blocking(&event));
                    }
                }
                Err(e) => {
                    if let Some((_, reply)) = batch.into_iter().next() {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
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
        .prepare_cached("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| GENESIS.to_string());
    let event = &bounded(event);
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
    conn.prepare_cached(
        "INSERT INTO audit(id, at_ms, kind, actor, unit, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        id,
        at_ms,
        event.kind,
        event.actor,
        event.unit,
        event.outcome,
        detail,
        prev,
        hash
    ])?;
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
    match topic {
        Some(topic) => {
            queue_backlog(conn, topic, record.seq)?;
            let payload = serde_json::to_vec(&record).unwrap_or_default();
            outbox::enqueue(conn, Class::Event, &record.id, topic, &payload, true, false)?;
        }
        None => {
            if Store::meta_get(conn, META_UNQUEUED_FROM)?.is_none() {
                Store::meta_set(conn, META_UNQUEUED_FROM, &record.seq.to_string())?;
            }
        }
    }
    Ok(record)
}

/// `meta` key: the first `seq` appended while there was no events topic (an unprovisioned box
/// running its first-boot setup). Those records are queued, in order, before the next record
/// that has a topic, so the cloud receives the chain from its start.
pub const META_UNQUEUED_FROM: &str = "audit.unqueued_from";

/// Queues the records appended without a topic (see [`META_UNQUEUED_FROM`]) on `topic`, up to
/// (not including) `before`, the record being appended.
fn queue_backlog(conn: &Connection, topic: &str, before: i64) -> Result<(), StoreError> {
    let Some(from) = Store::meta_get(conn, META_UNQUEUED_FROM)? else {
        return Ok(());
    };
    let from: i64 = from.parse().unwrap_or(1);
    let records = {
        let mut stmt = conn.prepare(
            "SELECT seq, id, at_ms, kind, actor, unit, outcome, detail, hash
             FROM audit WHERE seq >= ?1 AND seq < ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map([from, before], row_record)?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    for record in &records {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        outbox::enqueue(conn, Class::Event, &record.id, topic, &payload, true, false)?;
    }
    conn.execute("DELETE FROM meta WHERE key = ?1", [META_UNQUEUED_FROM])?;
    Ok(())
}

/// A record from a `SELECT seq, id, at_ms, kind, actor, unit, outcome, detail, hash` row.
fn row_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
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
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row_record)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The records with `from <= seq <= to`, oldest first (MQTT backfill).
pub fn range(conn: &Connection, from: i64, to: i64) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, at_ms, kind, actor, unit, outcome, detail, hash FROM audit
         WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![from, to], row_record)?;
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
    fn records_made_without_a_topic_are_queued_first_once_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let clock: SharedClock = Arc::new(ManualClock::new(
            time::macros::datetime!(2026-11-26 12:00 UTC),
        ));
        let setup = Audit::new(store.clone(), clock.clone(), None);
        for _ in 0..2 {
            setup
                .record_blocking(&Event::new("setup", "denied"))
                .unwrap();
        }
        let site = Audit::new(store.clone(), clock, Some("t/events".into()));
        for _ in 0..2 {
            site.record_blocking(&Event::new("daemon_started", "ok"))
                .unwrap();
        }
        store
            .with_conn(|c| {
                let mut stmt = c.prepare(
                    "SELECT topic, payload FROM outbox WHERE class = 'event' ORDER BY rowid",
                )?;
                let queued: Vec<(String, i64)> = stmt
                    .query_map([], |r| {
                        let p: Vec<u8> = r.get(1)?;
                        let v: Value = serde_json::from_slice(&p).unwrap();
                        Ok((r.get(0)?, v["seq"].as_i64().unwrap()))
                    })?
                    .collect::<Result<_, _>>()?;
                let t = "t/events".to_string();
                assert_eq!(
                    queued,
                    vec![(t.clone(), 1), (t.clone(), 2), (t.clone(), 3), (t, 4)]
                );
                assert_eq!(Store::meta_get(c, META_UNQUEUED_FROM)?, None);
                Ok(())
            })
            .unwrap();
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

    #[test]
    fn every_stored_field_is_capped_with_a_marker_and_the_chain_still_verifies() {
        let (_d, a) = audit();
        let big = "é".repeat(40_000); // 80,000 bytes, 2-byte characters
        let many: Vec<Value> = (0..100).map(|i| json!(i)).collect();
        let mut wide = serde_json::Map::new();
        for i in 0..40 {
            wide.insert(format!("k{i:02}"), json!(i));
        }
        let rec = a
            .record_blocking(
                &Event::new("command", "rejected")
                    .actor(big.clone())
                    .unit("u".repeat(300))
                    .detail(json!({
                        "error": big, "list": many, "wide": wide,
                        "deep": {"a": {"b": {"c": {"d": 1}}}},
                        "small": "kept as is",
                    })),
            )
            .unwrap();
        // 256 bytes is 128 two-byte characters; the rest is counted in the marker.
        let cut = format!("{}…[+79744 bytes]", "é".repeat(128));
        assert_eq!(rec.actor.as_deref(), Some(cut.as_str()));
        assert_eq!(rec.unit, Some(format!("{}…[+44 bytes]", "u".repeat(256))));
        assert_eq!(rec.detail["error"], json!(cut));
        assert_eq!(rec.detail["small"], json!("kept as is"));
        let list = rec.detail["list"].as_array().unwrap();
        assert_eq!(list.len(), MAX_DETAIL_ENTRIES + 1);
        assert_eq!(list[MAX_DETAIL_ENTRIES], json!("…[+68 items]"));
        assert_eq!(rec.detail["wide"].as_object().unwrap().len(), 33);
        assert_eq!(rec.detail["wide"]["…"], json!("+8 entries"));
        assert_eq!(rec.detail["deep"]["a"]["b"]["c"], json!("…[nested]"));
        a.store()
            .with_conn(|c| {
                let (actor, detail_len): (String, i64) = c.query_row(
                    "SELECT actor, length(CAST(detail AS BLOB)) FROM audit",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                assert_eq!(actor, cut);
                let stored = serde_json::to_string(&rec.detail).unwrap();
                assert_eq!(detail_len, stored.len() as i64);
                assert_eq!(verify_chain(c)?, Ok(1));
                Ok(())
            })
            .unwrap();
    }
}
