//! Backfill: the cloud asks for the audit records `from..=to` on `…/events/backfill` and the box
//! queues them again on `…/events` through the outbox, in `seq` order, with their original ids
//! and hashes, at a bounded rate and never more than a bounded backlog ahead of the drain.
//!
//! Who may ask is decided by the broker's ACL (only the cloud may publish on the topic); the box
//! bounds what a request can cost (one span of at most [`MAX_SPAN`] records, one request at a
//! time, [`QUEUE`] waiting, a rate) and audits every refused request.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::audit::{self, Audit, Event as AuditEvent};
use crate::outbox::{self, Class};
use crate::store::StoreError;

/// Most records one request may span (`to - from + 1`).
pub const MAX_SPAN: i64 = 10_000;
/// Largest request payload read.
pub const MAX_REQUEST_BYTES: usize = 1024;
/// Requests waiting behind the running one; more are refused (`busy`).
pub(super) const QUEUE: usize = 4;
/// Records queued per step.
const CHUNK: i64 = 100;
/// The next step waits while this many events are queued (the drain is behind).
const HIGH_WATER: u64 = 1000;
/// How often a waiting step looks at the outbox again.
const POLL: Duration = Duration::from_millis(100);

/// A backfill request, as the cloud sends it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub from: i64,
    pub to: i64,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// Why a request was refused (the `reason` of `mqtt_backfill_rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a JSON object with integer `from` and `to` (and an optional `request_id` of at most 64
    /// characters `[A-Za-z0-9._-]`), or larger than [`MAX_REQUEST_BYTES`].
    Malformed,
    /// `from` below 1 or `to` below `from`.
    BadRange,
    /// More than [`MAX_SPAN`] records.
    TooLarge,
    /// [`QUEUE`] requests already wait.
    Busy,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadRange => "bad_range",
            Refusal::TooLarge => "too_large",
            Refusal::Busy => "busy",
        }
    }
}

/// Parses and checks a request (size first, then the JSON, then the range).
pub fn parse(bytes: &[u8]) -> Result<Request, Refusal> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::Malformed);
    }
    let r: Request = serde_json::from_slice(bytes).map_err(|_| Refusal::Malformed)?;
    if let Some(id) = &r.request_id {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(Refusal::Malformed);
        }
    }
    if r.from < 1 || r.to < r.from {
        return Err(Refusal::BadRange);
    }
    if r.to - r.from >= MAX_SPAN {
        return Err(Refusal::TooLarge);
    }
    Ok(r)
}

/// Audits a refused request (the payload itself is not copied: it is outside data).
pub(super) async fn refuse(audit: &Audit, reason: Refusal, bytes: usize) {
    tracing::warn!(reason = reason.as_str(), bytes, "backfill request refused");
    let _ = audit
        .record(
            AuditEvent::new("mqtt_backfill_rejected", "rejected")
                .actor("system")
                .detail(json!({ "reason": reason.as_str(), "bytes": bytes, "max_span": MAX_SPAN })),
        )
        .await;
}

/// Runs the requests one at a time until `stop`.
pub(super) async fn run(
    mut rx: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    audit: Audit,
    rate: u32,
    stop: CancellationToken,
) {
    loop {
        let bytes = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            b = rx.recv() => match b { Some(b) => b, None => break },
        };
        let req = match parse(&bytes) {
            Ok(r) => r,
            Err(reason) => {
                refuse(&audit, reason, bytes.len()).await;
                continue;
            }
        };
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = fill(&shared, &req, rate) => r,
        };
        let (result, detail) = match outcome {
            Ok(queued) => (
                "ok",
                json!({ "from": req.from, "to": req.to, "request_id": req.request_id,
                        "queued": queued.queued, "already_queued": queued.already_queued,
                        "found": queued.found }),
            ),
            Err(e) => {
                tracing::error!(error = %e, "backfill failed");
                (
                    "failed",
                    json!({ "from": req.from, "to": req.to, "request_id": req.request_id,
                            "error": "storage" }),
                )
            }
        };
        let _ = audit
            .record(
                AuditEvent::new("mqtt_backfill", result)
                    .actor("system")
                    .detail(detail),
            )
            .await;
    }
}

/// What one request queued.
#[derive(Debug, Clone, Copy, Default)]
struct Filled {
    /// Records found in the range.
    found: u64,
    /// Rows queued for it.
    queued: u64,
    /// Records still queued from their first send (sent anyway, not queued twice).
    already_queued: u64,
}

/// Queues the records of `req` in steps of [`CHUNK`], each after the event backlog fell below
/// [`HIGH_WATER`], at most `rate` records per second.
async fn fill(shared: &Arc<Shared>, req: &Request, rate: u32) -> Result<Filled, StoreError> {
    let rate = i64::from(rate.max(1));
    let chunk = CHUNK.min(rate);
    let pause = Duration::from_millis(u64::try_from(chunk * 1000 / rate).unwrap_or(1000));
    let topic = shared.topics.events.clone();
    let mut done = Filled::default();
    let mut next = req.from;
    while next <= req.to {
        loop {
            let depth = shared
                .store
                .call(|c| outbox::class_depth(c, Class::Event))
                .await?;
            if depth < HIGH_WATER {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let end = (next + chunk - 1).min(req.to);
        let topic = topic.clone();
        let step = shared
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let mut f = Filled::default();
                for rec in audit::range(&tx, next, end)? {
                    let payload =
                        serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    f.found += 1;
                    if outbox::enqueue_backfill(&tx, &rec.id, &topic, &payload)? {
                        f.queued += 1;
                    } else {
                        f.already_queued += 1;
                    }
                }
                tx.commit()?;
                Ok(f)
            })
            .await?;
        done.found += step.found;
        done.queued += step.queued;
        done.already_queued += step.already_queued;
        shared.wake.notify_one();
        next = end + 1;
        if next <= req.to {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_is_read() {
        assert_eq!(
            parse(br#"{"from":5,"to":9,"request_id":"r-1"}"#),
            Ok(Request {
                from: 5,
                to: 9,
                request_id: Some("r-1".into())
            })
        );
        assert_eq!(parse(br#"{"from":5,"to":5}"#).map(|r| r.to), Ok(5));
        assert_eq!(parse(b"not json"), Err(Refusal::Malformed));
        assert_eq!(parse(br#"{"from":1}"#), Err(Refusal::Malformed));
        assert_eq!(
            parse(br#"{"from":1,"to":2,"extra":1}"#),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            parse(br#"{"from":1,"to":2,"request_id":"a/b"}"#),
            Err(Refusal::Malformed)
        );
        assert_eq!(parse(br#"{"from":1.5,"to":2}"#), Err(Refusal::Malformed));
        assert_eq!(parse(br#"{"from":0,"to":2}"#), Err(Refusal::BadRange));
        assert_eq!(parse(br#"{"from":9,"to":2}"#), Err(Refusal::BadRange));
        assert_eq!(parse(br#"{"from":1,"to":10000}"#).map(|r| r.to), Ok(10_000));
        assert_eq!(parse(br#"{"from":1,"to":10001}"#), Err(Refusal::TooLarge));
        let big = format!(r#"{{"from":1,"to":2,"request_id":"{}"}}"#, "a".repeat(2000));
        assert_eq!(parse(big.as_bytes()), Err(Refusal::Malformed));
    }

    #[test]
    fn backfilled_rows_carry_the_stored_record_and_skip_ids_still_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_in(dir.path()).unwrap();
        let a = Audit::new(
            store.clone(),
            Arc::new(crate::clock::SystemClock),
            Some("t/events".into()),
        );
        let first = a
            .record_blocking(&AuditEvent::new("x", "ok").detail(json!({"b": 1, "a": [2]})))
            .unwrap();
        let second = a.record_blocking(&AuditEvent::new("y", "ok")).unwrap();
        store
            .with_conn(|c| {
                let original: Vec<u8> = c.query_row(
                    "SELECT payload FROM outbox WHERE msg_id = ?1",
                    [&first.id],
                    |r| r.get(0),
                )?;
                c.execute("DELETE FROM outbox WHERE msg_id = ?1", [&first.id])?;
                let recs = audit::range(c, 1, 2)?;
                assert_eq!(recs, vec![first.clone(), second.clone()]);
                let again = serde_json::to_vec(&recs[0]).unwrap();
                assert_eq!(again, original, "the same bytes as the first send");
                assert!(enqueue_backfill_ok(c, &recs[0], &again)?);
                assert!(!enqueue_backfill_ok(c, &recs[1], b"{}")?, "still queued");
                assert_eq!(outbox::class_depth(c, Class::Event)?, 2);
                Ok(())
            })
            .unwrap();
    }

    fn enqueue_backfill_ok(
        c: &rusqlite::Connection,
        rec: &audit::Record,
        payload: &[u8],
    ) -> Result<bool, StoreError> {
        outbox::enqueue_backfill(c, &rec.id, "t/events", payload)
    }
}
