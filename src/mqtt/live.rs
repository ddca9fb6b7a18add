//! Live messages: telemetry and the periodic status, kept in memory instead of the SQLite outbox.
//!
//! Flash wear: committing every telemetry message to SQLite (insert, then delete on PUBACK, each
//! with its WAL frames and fsync) wrote about 5 GB a day for one 40-point unit. Telemetry is
//! worth persisting only while it cannot be delivered, so:
//!
//! - while the broker is connected, telemetry and the status heartbeat wait in this queue and the
//!   drain publishes them straight from memory: no disk write per message;
//! - while it is not, the drain writes the queue to the outbox in batches (one transaction every
//!   [`SPILL_AGE`] or [`SPILL_ROWS`] messages, whichever comes first), where the bounded
//!   telemetry backlog and its drop counter apply as before;
//! - on a clean stop the queue (and whatever was in flight) goes to the outbox too.
//!
//! What is lost in a crash or power cut: live messages not yet spilled (at most [`SPILL_AGE`] of
//! telemetry during an outage, and the in-flight window while connected). Events, audit records
//! and requests never pass through here: they are committed to the outbox before anything else
//! happens.
//!
//! Order: a unit's messages leave in the order they were made. The drain publishes a live row of
//! a class only when no outbox row of that class is waiting (read or unread), and rows in flight
//! when the connection drops go back to the front of the queue, so spilled rows always follow the
//! outbox rows they were made after.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::outbox::{self, Class};
use crate::store::{Store, StoreError};

/// While the broker is unreachable, queued live messages are written to the outbox once the
/// oldest is this old.
pub const SPILL_AGE: Duration = Duration::from_secs(5);

/// The queue is written to the outbox once it holds this many messages, connected or not (a slow
/// broker or an outbox backlog still draining).
pub const SPILL_ROWS: usize = 512;

/// One live message.
#[derive(Debug, Clone)]
pub(crate) struct LiveRow {
    /// Position in creation order (restores order when in-flight rows come back).
    pub n: u64,
    pub class: Class,
    pub msg_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub made: Instant,
}

/// The in-memory queue of live messages (in `Shared`, behind a mutex).
#[derive(Debug)]
pub(crate) struct LiveQueue {
    rows: VecDeque<LiveRow>,
    cap: usize,
    next_n: u64,
    /// Telemetry dropped from a full queue, not yet added to the persistent counter.
    pub dropped_unpersisted: u64,
}

impl LiveQueue {
    /// A queue holding at most `cap` messages (the telemetry backlog bound).
    pub fn new(cap: u64) -> LiveQueue {
        LiveQueue {
            rows: VecDeque::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX).max(1),
            next_n: 0,
            dropped_unpersisted: 0,
        }
    }

    /// Appends a message; drops the oldest when full. Returns how many telemetry messages it
    /// dropped.
    pub fn push(
        &mut self,
        class: Class,
        msg_id: String,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> u64 {
        let mut dropped = 0;
        while self.rows.len() >= self.cap {
            match self.rows.pop_front() {
                Some(r) if r.class == Class::Telemetry => dropped += 1,
                Some(_) => {}
                None => break,
            }
        }
        self.dropped_unpersisted += dropped;
        self.next_n += 1;
        self.rows.push_back(LiveRow {
            n: self.next_n,
            class,
            msg_id,
            topic,
            payload,
            retain,
            made: Instant::now(),
        });
        dropped
    }

    /// Puts rows that were in flight back at the front, in creation order.
    pub fn restore(&mut self, mut rows: Vec<LiveRow>) {
        rows.sort_by_key(|r| r.n);
        for r in rows.into_iter().rev() {
            self.rows.push_front(r);
        }
    }

    pub fn front(&self) -> Option<&LiveRow> {
        self.rows.front()
    }

    pub fn pop(&mut self) -> Option<LiveRow> {
        self.rows.pop_front()
    }

    pub fn queued(&self) -> usize {
        self.rows.len()
    }

    /// Queued messages of the class named `class` (for the depth figures).
    pub fn count(&self, class: &str) -> u64 {
        self.rows
            .iter()
            .filter(|r| r.class.as_str() == class)
            .count() as u64
    }

    /// How long the oldest message has waited.
    pub fn oldest_age(&self) -> Option<Duration> {
        self.rows.front().map(|r| r.made.elapsed())
    }

    /// Takes every queued message (and the unpersisted drop count) for a spill.
    pub fn take_all(&mut self) -> (Vec<LiveRow>, u64) {
        let dropped = std::mem::take(&mut self.dropped_unpersisted);
        (self.rows.drain(..).collect(), dropped)
    }

    /// The queued messages, oldest first (tests).
    #[cfg(test)]
    pub fn rows(&self) -> impl Iterator<Item = &LiveRow> {
        self.rows.iter()
    }
}

/// Writes `rows` to the outbox in one transaction (one fsync), trims the telemetry backlog to
/// `max` once, and adds `dropped` (drops from the memory queue) to the persistent drop counter.
/// Returns how many outbox rows the trim dropped.
pub(crate) fn spill(
    conn: &mut Connection,
    rows: &[LiveRow],
    dropped: u64,
    max: u64,
) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut telemetry = false;
    for r in rows {
        telemetry |= r.class == Class::Telemetry;
        outbox::enqueue(
            &tx, r.class, &r.msg_id, &r.topic, &r.payload, true, r.retain,
        )?;
    }
    let trimmed = if telemetry {
        outbox::trim_telemetry(&tx, max)?
    } else {
        0
    };
    if dropped > 0 {
        let before = outbox::telemetry_dropped(&tx)?;
        Store::meta_set(
            &tx,
            outbox::META_TELEMETRY_DROPPED,
            &before.saturating_add(dropped).to_string(),
        )?;
    }
    tx.commit()?;
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_restored_rows_go_first_in_order() {
        let mut q = LiveQueue::new(3);
        for i in 0..5 {
            q.push(Class::Telemetry, format!("t{i}"), "t".into(), vec![], false);
        }
        assert_eq!(q.dropped_unpersisted, 2);
        let a = q.pop().unwrap();
        let b = q.pop().unwrap();
        assert_eq!((a.msg_id.as_str(), b.msg_id.as_str()), ("t2", "t3"));
        q.restore(vec![b, a]);
        let ids: Vec<_> = q.rows().map(|r| r.msg_id.clone()).collect();
        assert_eq!(ids, ["t2", "t3", "t4"]);
    }

    #[test]
    fn a_spill_is_one_batch_in_order_with_the_drop_count_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_in(dir.path()).unwrap();
        let mut q = LiveQueue::new(100);
        for i in 0..20 {
            q.push(
                Class::Telemetry,
                format!("t{i}"),
                "t/x".into(),
                vec![],
                false,
            );
        }
        q.dropped_unpersisted = 3;
        let (rows, dropped) = q.take_all();
        let trimmed = s.with_conn(|c| spill(c, &rows, dropped, 10)).unwrap();
        assert_eq!(trimmed, 10);
        s.with_conn(|c| {
            let b = outbox::next_batch(c, &[0; 4], 100)?;
            let ids: Vec<_> = b.iter().map(|r| r.msg_id.as_str()).collect();
            assert_eq!(
                ids,
                [
                    "t10", "t11", "t12", "t13", "t14", "t15", "t16", "t17", "t18", "t19"
                ]
            );
            assert_eq!(outbox::telemetry_dropped(c)?, 13);
            Ok(())
        })
        .unwrap();
    }
}
