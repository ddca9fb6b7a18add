//! `/scans`: finding the devices on a link (installers and technicians, commissioning). A scan
//! probes slave ids through the link's own task, one transaction at a time between its poll
//! reads, never writes, runs in the background (one at a time on the box), shows its progress
//! and what it found with a suggested profile, and can be cancelled. Every route needs
//! `diagnose` on the whole site (a link is not a grant scope: it reaches every id on its bus).
//! Start, end and cancellation are audited (kind `scan`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ApiResult;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath as Path, Caller};
use crate::api::guard::require_on_site;
use crate::api::ports::ScanFailure;
use crate::api::scan_jobs::{Progress, Scan, ScanStatus};
use crate::api::state::ApiState;
use crate::api::views::{ScanList, ScanView, Sorted, WithStatus};
use crate::audit::Event;
use crate::model::{Capability, LinkId, UserId};

/// Bounds of the wait for each id's first answer.
const MIN_TIMEOUT_MS: u64 = 20;
const MAX_TIMEOUT_MS: u64 = 2000;
const DEFAULT_TIMEOUT_MS: u64 = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    link: String,
    #[serde(default = "first_id")]
    from: u8,
    #[serde(default = "last_id")]
    to: u8,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn first_id() -> u8 {
    1
}
fn last_id() -> u8 {
    247
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

async fn audit(state: &ApiState, user: &UserId, outcome: &'static str, detail: serde_json::Value) {
    let ev = Event::new("scan", outcome)
        .actor(user.as_str())
        .detail(detail);
    let _ = state.0.audit.record(ev).await;
}

/// The routes need `diagnose` on the site; a refusal is audited.
async fn authorize(state: &ApiState, user: &UserId, action: &'static str) -> Result<(), ApiError> {
    require_on_site(
        state,
        user,
        Capability::Diagnose,
        "scan",
        ("action", action),
        "scanning a link needs `diagnose` on the whole site",
    )
    .await
}

fn scan_not_found() -> ApiError {
    ApiError::not_found("scan_not_found", "no such scan")
}

/// `GET /scans`: the links and the recent scans, newest first.
pub async fn list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Sorted<ScanList>> {
    authorize(&state, &caller.session.user, "list").await?;
    Ok(Sorted(ScanList {
        links: state.0.ports.units.links(),
        scans: state
            .0
            .scans
            .all()
            .iter()
            .map(|s| ScanView::of(s))
            .collect(),
    }))
}

/// The rules of a scan request that do not depend on the box (the link is looked up after).
/// `from` and `to` are the two ends of the range, in either order.
pub(crate) fn check_scan(req: &ScanRequest) -> Result<(), ApiError> {
    if !(1..=247).contains(&req.from) || !(1..=247).contains(&req.to) {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "`from` and `to` must be slave ids 1..=247",
        ));
    }
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&req.timeout_ms) {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("`timeout_ms` must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"),
        ));
    }
    Ok(())
}

/// `POST /scans`: starts a scan (202) unless one is running (409 `scan_running`).
pub async fn start(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<ScanRequest>,
) -> ApiResult<WithStatus<ScanView>> {
    let user = caller.session.user.clone();
    authorize(&state, &user, "start").await?;
    let link = LinkId::new(req.link.clone())
        .ok()
        .filter(|l| state.0.ports.units.links().contains(l))
        .ok_or_else(|| {
            ApiError::unprocessable("invalid_request", "`link` names no link of this box")
        })?;
    check_scan(&req)?;
    let scan = Scan {
        id: crate::util::random_hex(8),
        link,
        // The two ends of the range, in either order.
        from: req.from.min(req.to),
        to: req.from.max(req.to),
        timeout_ms: req.timeout_ms,
        started_by: user.clone(),
        started_at: state.0.clock.now(),
        cancel: CancellationToken::new(),
        progress: std::sync::Mutex::new(Progress {
            status: ScanStatus::Running,
            probed: 0,
            found: Vec::new(),
            error: None,
            finished_at: None,
        }),
    };
    let scan = state.0.scans.start(scan).map_err(|running| {
        ApiError::new(
            StatusCode::CONFLICT,
            "scan_running",
            format!(
                "scan `{}` of link `{}` is running; cancel it or wait for it",
                running.id, running.link
            ),
        )
    })?;
    audit(
        &state,
        &user,
        "started",
        json!({ "scan": scan.id, "link": scan.link, "from": scan.from, "to": scan.to }),
    )
    .await;
    tokio::spawn(run(state.clone(), scan.clone()));
    Ok(WithStatus(StatusCode::ACCEPTED, ScanView::of(&scan)))
}

/// Runs a scan to its end and records how it ended.
async fn run(state: ApiState, scan: Arc<Scan>) {
    let progress_of = scan.clone();
    let mut progress = move |probed: usize, _total: usize, found: &[_]| {
        progress_of.set_progress(|p| {
            p.probed = probed;
            p.found = found.to_vec();
        });
    };
    let result = state
        .0
        .ports
        .units
        .scan(
            &scan.link,
            scan.from,
            scan.to,
            Duration::from_millis(scan.timeout_ms),
            &scan.cancel,
            &mut progress,
        )
        .await;
    let now = state.0.clock.now();
    let (outcome, detail) = match result {
        Ok(done) => {
            let status = if done.cancelled {
                ScanStatus::Cancelled
            } else {
                ScanStatus::Done
            };
            let found = done.found.len();
            let probed = done.probed;
            scan.set_progress(|p| {
                p.status = status;
                p.probed = probed;
                p.found = done.found;
                p.finished_at = Some(now);
            });
            (
                if done.cancelled { "cancelled" } else { "ok" },
                json!({ "scan": scan.id, "link": scan.link, "probed": probed, "found": found }),
            )
        }
        Err(e) => {
            let message = match &e {
                ScanFailure::Link(m) => format!("link `{}`: {m}", scan.link),
                other => other.to_string(),
            };
            scan.set_progress(|p| {
                p.status = ScanStatus::Failed;
                p.error = Some(message.clone());
                p.finished_at = Some(now);
            });
            (
                "failed",
                json!({ "scan": scan.id, "link": scan.link, "error": message }),
            )
        }
    };
    audit(&state, &scan.started_by, outcome, detail).await;
}

/// `GET /scans/{id}`: progress and findings.
pub async fn status(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Sorted<ScanView>> {
    authorize(&state, &caller.session.user, "read").await?;
    let scan = state.0.scans.get(&id).ok_or_else(scan_not_found)?;
    Ok(Sorted(ScanView::of(&scan)))
}

/// `DELETE /scans/{id}`: asks a running scan to stop after the id it is probing; the answer
/// is the scan as it is then (it reads `cancelled` once that id is done). Cancelling a finished
/// scan changes nothing.
pub async fn cancel(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Sorted<ScanView>> {
    let user = &caller.session.user;
    authorize(&state, user, "cancel").await?;
    let scan = state.0.scans.get(&id).ok_or_else(scan_not_found)?;
    if scan.progress().status == ScanStatus::Running && !scan.cancel.is_cancelled() {
        scan.cancel.cancel();
        audit(
            &state,
            user,
            "cancel_requested",
            json!({ "scan": scan.id, "link": scan.link }),
        )
        .await;
    }
    Ok(Sorted(ScanView::of(&scan)))
}
