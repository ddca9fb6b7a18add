//! Telemetry decisions: which point values are worth a message. A point is sent when it is new,
//! when its quality changed, or when its value moved beyond its deadband since the value last
//! SENT (so a slow drift still gets reported once it adds up). The heartbeat sends, for a unit
//! that sent nothing during the interval, only the points whose newest value was not sent yet
//! (an idle unit sends nothing); a full snapshot goes out on connect and on request. Every
//! message carries a per-unit `seq`, so the cloud can tell it missed one.
//!
//! This module never reads devices (the Modbus engine calls [`Telemetry::update`]) and never
//! talks to the broker: it only queues messages on the live queue (memory while the broker is
//! connected, spilled to the outbox in batches while it is not; see `mqtt::live`), whose
//! telemetry backlog is bounded.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{MqttError, Shared};
use crate::model::UnitId;
use crate::outbox;

/// How much a value is to be trusted: the box's one quality vocabulary (the same names in the
/// API, `units test` and docs), defined with the profiles whose sentinels produce it.
pub use crate::modbus::Quality;

/// One point value offered to [`Telemetry::update`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointSample {
    pub name: String,
    /// The scaled value (number, bool, enum name string, or null when there is none).
    pub value: Value,
    pub quality: Quality,
    /// For numbers: send only when the value moved by MORE than this since the value last sent.
    /// `None` (or a non-number value): send on any change.
    pub deadband: Option<f64>,
}

/// The value of one point in a telemetry message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointValue {
    pub value: Value,
    pub quality: Quality,
}

/// Why a telemetry message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The points that moved beyond their deadband (or changed quality).
    Change,
    /// The points whose newest value differs from the value last sent (changes inside the
    /// deadband); only for a unit that sent nothing during the interval and has such points.
    Heartbeat,
    /// Every known point: on each connect and when the cloud asks on `…/snapshot`.
    Snapshot,
}

/// The payload on `…/telemetry/{unit}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryMessage {
    pub msg_id: String,
    pub unit: String,
    pub at: String,
    pub reason: Reason,
    /// Per unit, +1 for every message of this process (with `msg_id`'s boot prefix, a gap tells
    /// the cloud it missed one; the status heartbeat carries the newest per unit).
    #[serde(default)]
    pub seq: u64,
    pub points: BTreeMap<String, PointValue>,
}

/// Whether `sample` must be sent, given the value last sent for the point.
pub fn should_send(last_sent: Option<&PointValue>, sample: &PointSample) -> bool {
    let Some(last) = last_sent else { return true };
    if last.quality != sample.quality {
        return true;
    }
    match (last.value.as_f64(), sample.value.as_f64(), sample.deadband) {
        (Some(old), Some(new), Some(band)) if band.is_finite() && band > 0.0 => {
            // NaN never compares greater: treat a NaN on either side as a change.
            if old.is_nan() || new.is_nan() {
                return true;
            }
            (new - old).abs() > band
        }
        _ => last.value != sample.value,
    }
}

#[derive(Default)]
struct UnitState {
    /// What the cloud last received per point.
    sent: HashMap<String, PointValue>,
    /// The newest value per point (what a heartbeat sends).
    latest: BTreeMap<String, PointValue>,
    last_send: Option<Instant>,
    /// The seq of the newest message queued for the unit.
    seq: u64,
}

/// Decides and queues telemetry. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    units: Mutex<HashMap<String, UnitState>>,
    interval: Duration,
    next_id: AtomicU64,
}

impl Telemetry {
    pub(super) fn new(shared: Arc<Shared>, interval: Duration) -> Telemetry {
        Telemetry {
            inner: Arc::new(Inner {
                shared,
                units: Mutex::new(HashMap::new()),
                interval,
                next_id: AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UnitState>> {
        self.inner.units.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers the newest values of some points of `unit` read at `at`. Queues one message with
    /// the points that changed beyond their deadband (or changed quality); returns how many
    /// points it queued (0: nothing worth sending).
    pub async fn update(
        &self,
        unit: &UnitId,
        points: &[PointSample],
        at: OffsetDateTime,
    ) -> Result<usize, MqttError> {
        let changed: BTreeMap<String, PointValue> = {
            let mut units = self.lock();
            let st = units.entry(unit.to_string()).or_default();
            let mut changed = BTreeMap::new();
            for s in points {
                let pv = PointValue {
                    value: s.value.clone(),
                    quality: s.quality,
                };
                if should_send(st.sent.get(&s.name), s) {
                    st.sent.insert(s.name.clone(), pv.clone());
                    changed.insert(s.name.clone(), pv.clone());
                }
                st.latest.insert(s.name.clone(), pv);
            }
            if !changed.is_empty() {
                st.last_send = Some(Instant::now());
            }
            changed
        };
        let n = changed.len();
        if n > 0 {
            self.queue(unit.as_str(), changed, Reason::Change, at)
                .await?;
        }
        Ok(n)
    }

    /// Queues, for every unit that sent nothing during the last interval, the points whose newest
    /// value was not sent yet (changes inside the deadband); an idle unit sends nothing (the
    /// status heartbeat carries its `seq`). Called by the client's heartbeat task; returns how
    /// many units it sent.
    pub async fn heartbeat(&self, at: OffsetDateTime) -> Result<usize, MqttError> {
        let due: Vec<(String, BTreeMap<String, PointValue>)> = {
            let mut units = self.lock();
            let now = Instant::now();
            let slack = self.inner.interval / 10;
            units
                .iter_mut()
                .filter(|(_, st)| {
                    st.last_send
                        .is_none_or(|t| now.duration_since(t) + slack >= self.inner.interval)
                })
                .filter_map(|(unit, st)| {
                    let unsent: BTreeMap<String, PointValue> = st
                        .latest
                        .iter()
                        .filter(|(k, v)| st.sent.get(*k) != Some(*v))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if unsent.is_empty() {
                        return None;
                    }
                    st.last_send = Some(now);
                    for (k, v) in &unsent {
                        st.sent.insert(k.clone(), v.clone());
                    }
                    Some((unit.clone(), unsent))
                })
                .collect()
        };
        let n = due.len();
        for (unit, points) in due {
            self.queue(&unit, points, Reason::Heartbeat, at).await?;
        }
        Ok(n)
    }

    /// Queues every known point of every unit (`reason: snapshot`): on connect and when the
    /// cloud asks. Returns how many units it sent.
    pub async fn snapshot(&self, at: OffsetDateTime) -> Result<usize, MqttError> {
        let all: Vec<(String, BTreeMap<String, PointValue>)> = {
            let mut units = self.lock();
            let now = Instant::now();
            units
                .iter_mut()
                .filter(|(_, st)| !st.latest.is_empty())
                .map(|(unit, st)| {
                    st.last_send = Some(now);
                    for (k, v) in &st.latest {
                        st.sent.insert(k.clone(), v.clone());
                    }
                    (unit.clone(), st.latest.clone())
                })
                .collect()
        };
        let n = all.len();
        for (unit, points) in all {
            self.queue(&unit, points, Reason::Snapshot, at).await?;
        }
        Ok(n)
    }

    async fn queue(
        &self,
        unit: &str,
        points: BTreeMap<String, PointValue>,
        reason: Reason,
        at: OffsetDateTime,
    ) -> Result<(), MqttError> {
        let shared = &self.inner.shared;
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let msg_id = format!("t-{}-{n}", shared.boot_id);
        let topic = shared.topics.telemetry(unit);
        // INVARIANT: the unit's seq is taken while the live queue is locked, so a unit's seqs
        // follow the order of the queue, hence the order they are sent (or spilled) in.
        let (dropped, seq) = {
            let mut live = shared.live();
            let seq = {
                let mut units = self.lock();
                let st = units.entry(unit.to_string()).or_default();
                st.seq += 1;
                st.seq
            };
            let msg = TelemetryMessage {
                msg_id,
                unit: unit.to_string(),
                at: crate::clock::rfc3339(at),
                reason,
                seq,
                points,
            };
            let payload = serde_json::to_vec(&msg).map_err(|e| MqttError::Encode(e.to_string()))?;
            let dropped = live.push(outbox::Class::Telemetry, msg.msg_id, topic, payload, false);
            (dropped, seq)
        };
        {
            let mut seqs = shared
                .telemetry_seq
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match seqs.get_mut(unit) {
                Some(e) => *e = (*e).max(seq),
                None => {
                    seqs.insert(unit.to_string(), seq);
                }
            }
        }
        shared.note_live_dropped(dropped);
        shared.live_wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: Value, q: Quality, band: Option<f64>) -> PointSample {
        PointSample {
            name: "p".into(),
            value: v,
            quality: q,
            deadband: band,
        }
    }
    fn pv(v: Value, q: Quality) -> PointValue {
        PointValue {
            value: v,
            quality: q,
        }
    }

    /// The telemetry messages waiting in the live queue, oldest first.
    fn queued(t: &Telemetry) -> Vec<TelemetryMessage> {
        t.inner
            .shared
            .live()
            .rows()
            .filter(|r| r.class == outbox::Class::Telemetry)
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_heartbeat_sends_the_latest_values_including_those_inside_the_deadband() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_in(dir.path()).unwrap();
        let t = Telemetry::new(Shared::for_test(store.clone()), Duration::ZERO);
        let unit = UnitId::new("hvac-1").unwrap();
        let now = OffsetDateTime::now_utc();
        let temp = |v: f64| PointSample {
            name: "room_temp".into(),
            value: json!(v),
            quality: Quality::Good,
            deadband: Some(0.5),
        };
        assert_eq!(t.update(&unit, &[temp(21.0)], now).await.unwrap(), 1);
        assert_eq!(t.update(&unit, &[temp(21.3)], now).await.unwrap(), 0);
        assert_eq!(t.heartbeat(now).await.unwrap(), 1);
        let q = queued(&t);
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].reason, Reason::Change);
        assert_eq!(q[1].reason, Reason::Heartbeat);
        assert_eq!(q[1].points["room_temp"].value, json!(21.3));
        // The heartbeat value is now the reference for the deadband.
        assert_eq!(t.update(&unit, &[temp(21.7)], now).await.unwrap(), 0);
        assert_eq!(t.update(&unit, &[temp(21.9)], now).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_idle_unit_sends_no_heartbeat_and_a_snapshot_sends_every_point() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_in(dir.path()).unwrap();
        let t = Telemetry::new(Shared::for_test(store.clone()), Duration::ZERO);
        let unit = UnitId::new("gen-1").unwrap();
        let now = OffsetDateTime::now_utc();
        let p = |n: &str, v: Value| PointSample {
            name: n.into(),
            value: v,
            quality: Quality::Good,
            deadband: None,
        };
        let pts = [p("rpm", json!(0)), p("running", json!(false))];
        assert_eq!(t.update(&unit, &pts, now).await.unwrap(), 2);
        assert_eq!(t.update(&unit, &pts, now).await.unwrap(), 0);
        assert_eq!(t.heartbeat(now).await.unwrap(), 0, "nothing unsent");
        assert_eq!(t.snapshot(now).await.unwrap(), 1);
        let q = queued(&t);
        assert_eq!(q.len(), 2);
        assert_eq!((q[0].reason, q[0].seq), (Reason::Change, 1));
        assert_eq!((q[1].reason, q[1].seq), (Reason::Snapshot, 2));
        assert_eq!(q[1].points.len(), 2);
    }

    #[tokio::test]
    async fn a_unit_that_sent_within_the_interval_gets_no_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_in(dir.path()).unwrap();
        let t = Telemetry::new(Shared::for_test(store.clone()), Duration::from_secs(3600));
        let unit = UnitId::new("gen-1").unwrap();
        let now = OffsetDateTime::now_utc();
        let p = PointSample {
            name: "rpm".into(),
            value: json!(1500),
            quality: Quality::Good,
            deadband: None,
        };
        t.update(&unit, &[p], now).await.unwrap();
        assert_eq!(t.heartbeat(now).await.unwrap(), 0);
        assert_eq!(queued(&t).len(), 1);
    }

    #[tokio::test]
    async fn a_full_backlog_drops_the_oldest_telemetry_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_in(dir.path()).unwrap();
        let shared = Shared::for_test_with_backlog(store.clone(), 10);
        let t = Telemetry::new(shared.clone(), Duration::from_secs(3600));
        let unit = UnitId::new("gen-1").unwrap();
        let now = OffsetDateTime::now_utc();
        for i in 0..25 {
            let p = PointSample {
                name: "rpm".into(),
                value: json!(i),
                quality: Quality::Good,
                deadband: None,
            };
            assert_eq!(t.update(&unit, &[p], now).await.unwrap(), 1);
        }
        let q = queued(&t);
        assert_eq!(q.len(), 10);
        assert_eq!(q[0].points["rpm"].value, json!(15), "oldest dropped first");
        assert_eq!(shared.stats.dropped.load(Ordering::Relaxed), 15);
        // The drop count becomes persistent with the next spill to the outbox.
        let (rows, dropped) = shared.live().take_all();
        store
            .with_conn(|c| super::super::live::spill(c, &rows, dropped, 10))
            .unwrap();
        let persisted = store.with_conn(|c| outbox::telemetry_dropped(c)).unwrap();
        assert_eq!(persisted, 15);
    }

    #[test]
    fn a_new_point_is_always_sent() {
        assert!(should_send(None, &s(json!(1), Quality::Good, Some(10.0))));
    }

    #[test]
    fn a_change_within_the_deadband_is_not_sent_but_drift_beyond_it_is() {
        let last = pv(json!(20.0), Quality::Good);
        assert!(!should_send(
            Some(&last),
            &s(json!(20.4), Quality::Good, Some(0.5))
        ));
        assert!(!should_send(
            Some(&last),
            &s(json!(19.5), Quality::Good, Some(0.5))
        ));
        assert!(should_send(
            Some(&last),
            &s(json!(20.6), Quality::Good, Some(0.5))
        ));
        assert!(should_send(
            Some(&last),
            &s(json!(19.4), Quality::Good, Some(0.5))
        ));
    }

    #[test]
    fn a_quality_change_is_sent_even_inside_the_deadband() {
        let last = pv(json!(20.0), Quality::Good);
        assert!(should_send(
            Some(&last),
            &s(json!(20.0), Quality::Stale, Some(5.0))
        ));
    }

    #[test]
    fn without_a_deadband_any_change_is_sent_and_no_change_is_not() {
        let last = pv(json!("auto"), Quality::Good);
        assert!(!should_send(
            Some(&last),
            &s(json!("auto"), Quality::Good, None)
        ));
        assert!(should_send(
            Some(&last),
            &s(json!("manual"), Quality::Good, Some(1.0))
        ));
        let last = pv(json!(3), Quality::Good);
        assert!(should_send(Some(&last), &s(json!(4), Quality::Good, None)));
        assert!(!should_send(Some(&last), &s(json!(3), Quality::Good, None)));
    }

    #[test]
    fn a_nonsense_deadband_falls_back_to_any_change() {
        let last = pv(json!(1.0), Quality::Good);
        assert!(should_send(
            Some(&last),
            &s(json!(1.5), Quality::Good, Some(f64::NAN))
        ));
        assert!(should_send(
            Some(&last),
            &s(json!(1.5), Quality::Good, Some(-1.0))
        ));
        assert!(!should_send(
            Some(&last),
            &s(json!(1.0), Quality::Good, Some(f64::INFINITY))
        ));
    }
}
