//! `GET /api/v1/units/stream`: the units the caller may view, pushed as server-sent events.
//!
//! Every message re-checks the session and asks the authorization port again for every unit
//! (each unit is built exactly like `GET /units/{unit}`: same points filtered by the read
//! capability, same `writable` and `allowed` flags): a revoking bundle, an expiry or a logout
//! takes effect on the next message (at most [`INTERVAL`] later). A session that no longer
//! authenticates gets one `end` event and the stream closes.
//!
//! What is sent is a delta against what this connection sent before. The first message of a
//! connection is a full snapshot (`"full": true`, every visible unit). Later messages carry only
//! what changed: `units` (units that appeared, or whose shape changed: capabilities, points,
//! flags, commands, reachability; in full), `removed` (units no longer visible: revoked, expired,
//! or gone from the inventory) and `patches` (units whose only changes are point values,
//! qualities and read times: `last_seen`, the changed points as `[index, value, quality,
//! read_at]`, and the points only read again as `[read_at, index, …]` per read time). A message
//! with none of them is a heartbeat, so the page still knows the stream is alive. Points carry
//! `read_at`, never an age, so an unchanged unit needs no resending for its age to be known
//! (age = message `at` − `read_at`, plus the time since the message arrived). A dropped
//! connection needs nothing to resume: the browser's `EventSource` reconnects (after `retry`)
//! and the new connection starts with a full snapshot.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::Value;

use super::extract::Caller;
use super::guard::caps_on;
use super::ports::Target;
use super::state::ApiState;
use super::views::{StreamMessage, StreamPatch, UnitView, sorted_text, unit_view};
use crate::clock::rfc3339;
use crate::model::{Capability, UserId};

/// Time between two messages.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// What the browser waits before reconnecting after a drop.
const RETRY: Duration = Duration::from_secs(2);

/// The snapshot of every unit `user` may view, decided now.
pub fn snapshot(state: &ApiState, user: &UserId) -> Vec<UnitView> {
    let ports = &state.0.ports;
    let now = state.0.clock.now();
    ports
        .units
        .units()
        .into_iter()
        .filter_map(|summary| {
            let target = Target::Unit(summary.id.clone());
            let caps = caps_on(state, user, &target);
            if !caps.contains(Capability::View) {
                return None;
            }
            let profile = ports.units.profile(&summary.id).unwrap_or_default();
            let readings = ports.units.snapshot(&summary.id).unwrap_or_default();
            Some(unit_view(summary, &profile, &readings, caps, now))
        })
        .collect()
}

/// One unit as the stream sends it: the view without `age_ms` (the page computes ages from
/// `read_at`), and apart, its shape (everything but `last_seen` and the points' value, quality
/// and `read_at`) and those changing parts.
struct Sent {
    /// The view as sent in full.
    full: Value,
    /// A change here resends the unit in full.
    shape: Value,
    last_seen: Value,
    /// Each point's `[value, quality]`, in the order of `points`.
    values: Vec<[Value; 2]>,
    /// Each point's `read_at`, in the order of `points`.
    read_at: Vec<Value>,
}

fn sent(view: &UnitView) -> Option<(String, Sent)> {
    let mut full = serde_json::to_value(view).ok()?;
    let id = full.get("id")?.as_str()?.to_string();
    if let Some(points) = full.get_mut("points").and_then(Value::as_array_mut) {
        for p in points.iter_mut().filter_map(Value::as_object_mut) {
            p.remove("age_ms");
        }
    }
    let mut shape = full.clone();
    let last_seen = shape
        .as_object_mut()
        .and_then(|u| u.remove("last_seen"))
        .unwrap_or(Value::Null);
    let mut values = Vec::new();
    let mut read_at = Vec::new();
    if let Some(points) = shape.get_mut("points").and_then(Value::as_array_mut) {
        for p in points.iter_mut().filter_map(Value::as_object_mut) {
            values.push([
                p.remove("value").unwrap_or(Value::Null),
                p.remove("quality").unwrap_or(Value::Null),
            ]);
            read_at.push(p.remove("read_at").unwrap_or(Value::Null));
        }
    }
    Some((
        id,
        Sent {
            full,
            shape,
            last_seen,
            values,
            read_at,
        },
    ))
}

/// The delta from `prev` (what this connection last sent; `None` before the first message) to
/// `now`: `(full units, removed ids, patches)`.
fn delta(
    prev: Option<&BTreeMap<String, Sent>>,
    now: &[(String, Sent)],
) -> (Vec<Value>, Vec<String>, Vec<StreamPatch>) {
    let Some(prev) = prev else {
        return (
            now.iter().map(|(_, s)| s.full.clone()).collect(),
            Vec::new(),
            Vec::new(),
        );
    };
    let mut units = Vec::new();
    let mut patches = Vec::new();
    for (id, s) in now {
        match prev.get(id) {
            // Appeared, or its capabilities, points, flags, commands or reachability changed.
            None => units.push(s.full.clone()),
            Some(p) if p.shape != s.shape => units.push(s.full.clone()),
            Some(p) => {
                // Same shape, so the same points in the same order: a point is named by its
                // index. A point whose value or quality changed is sent with both and its read
                // time; the points only read again share one entry per read time.
                let mut values: Vec<Value> = Vec::new();
                let mut read_at: Vec<Vec<Value>> = Vec::new();
                for (i, (v, t)) in s.values.iter().zip(&s.read_at).enumerate() {
                    if p.values.get(i) != Some(v) {
                        values.push(Value::Array(vec![
                            Value::from(i),
                            v[0].clone(),
                            v[1].clone(),
                            t.clone(),
                        ]));
                    } else if p.read_at.get(i) != Some(t) {
                        match read_at.iter_mut().find(|g| g.first() == Some(t)) {
                            Some(g) => g.push(Value::from(i)),
                            None => read_at.push(vec![t.clone(), Value::from(i)]),
                        }
                    }
                }
                if !values.is_empty() || !read_at.is_empty() || p.last_seen != s.last_seen {
                    patches.push(StreamPatch {
                        id: id.clone(),
                        last_seen: s.last_seen.clone(),
                        values,
                        read_at,
                    });
                }
            }
        }
    }
    let removed = prev
        .keys()
        .filter(|id| !now.iter().any(|(n, _)| n == *id))
        .cloned()
        .collect();
    (units, removed, patches)
}

enum Step {
    Running(u64, Option<BTreeMap<String, Sent>>),
    Done,
}

pub async fn units_stream(
    State(state): State<ApiState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let token = caller.token;
    let stream = futures_util::stream::unfold(Step::Running(0, None), move |step| {
        let state = state.clone();
        let token = token.clone();
        async move {
            let Step::Running(seq, prev) = step else {
                return None;
            };
            if seq > 0 {
                tokio::time::sleep(INTERVAL).await;
            }
            let user = match state.0.ports.auth.authenticate(&token).await {
                Ok(s) => s.user,
                Err(_) => {
                    let ev = Event::default()
                        .event("end")
                        .data(r#"{"error":"unauthenticated"}"#);
                    return Some((Ok(ev), Step::Done));
                }
            };
            let now: Vec<(String, Sent)> =
                snapshot(&state, &user).iter().filter_map(sent).collect();
            let full = prev.is_none();
            let (units, removed, patches) = delta(prev.as_ref(), &now);
            let body = StreamMessage {
                seq,
                at: rfc3339(state.0.clock.now()),
                interval_ms: u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX),
                full,
                units,
                removed,
                patches,
            };
            let ev = Event::default()
                .event("units")
                .id(seq.to_string())
                .retry(RETRY)
                .data(sorted_text(&body).unwrap_or_default());
            // Kept for the next delta: shapes, values and read times; the full views are not
            // needed again.
            let kept = now
                .into_iter()
                .map(|(id, mut s)| {
                    s.full = Value::Null;
                    (id, s)
                })
                .collect();
            Some((Ok(ev), Step::Running(seq + 1, Some(kept))))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
