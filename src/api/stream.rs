//! `GET /api/v1/units/stream`: the units the caller may view, pushed as server-sent events.
//!
//! Every message is a full snapshot built exactly like `GET /units/{unit}` (same points filtered
//! by the read capability, same `writable` and `allowed` flags), and every message re-checks the
//! session and asks the authorization port again for every unit: a revoking bundle, an expiry or
//! a logout takes effect on the next message (at most [`INTERVAL`] later). A session that no
//! longer authenticates gets one `end` event and the stream closes. A dropped connection needs
//! nothing to resume: the browser's `EventSource` reconnects (after `retry`) and the first message
//! is again a complete snapshot.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::extract::Caller;
use super::guard::caps_on;
use super::ports::Target;
use super::state::ApiState;
use super::views::{StreamMessage, UnitView, sorted_text, unit_view};
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

enum Step {
    Running(u64),
    Done,
}

pub async fn units_stream(
    State(state): State<ApiState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let token = caller.token;
    let stream = futures_util::stream::unfold(Step::Running(0), move |step| {
        let state = state.clone();
        let token = token.clone();
        async move {
            let Step::Running(seq) = step else {
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
            let units = snapshot(&state, &user);
            let body = StreamMessage {
                seq,
                at: rfc3339(state.0.clock.now()),
                interval_ms: u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX),
                units,
            };
            let ev = Event::default()
                .event("units")
                .id(seq.to_string())
                .retry(RETRY)
                .data(sorted_text(&body).unwrap_or_default());
            Some((Ok(ev), Step::Running(seq + 1)))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
