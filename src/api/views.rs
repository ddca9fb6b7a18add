//! The response bodies of the API, one typed struct per body (`docs/openapi.json` names each
//! under `components/schemas`), and the builders the unit routes and the live stream share.
//!
//! Bodies are written with [`Sorted`]: object keys in byte order at every level, as the API has
//! always written them (clients and the contract run see the same bytes whatever the field order
//! of a struct). The login body is the one exception: [`SessionOut`] keeps its field order.
//!
//! Nothing here decides access: the builders take the capabilities the caller was found to hold.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::error::ApiError;
use super::ports::{
    CommandInfo, Diagnostics, GrantInfo, Lockout, PendingRequest, PointInfo, Reading, RegisterKind,
    ScanFound, UnitProfile, UnitSummary,
};
use super::scan_jobs::{Scan, ScanStatus};
use crate::audit::Record;
use crate::business::{BusinessInfo, Suspension};
use crate::clock::{rfc3339, unix_ms};
use crate::modbus::Quality;
use crate::model::{BusinessId, CapSet, Capability, GrantId, LinkId, Management, UnitId, UserId};

/// A JSON body with its object keys sorted at every level (the API's canonical form).
pub struct Sorted<T>(pub T);

impl<T: Serialize> IntoResponse for Sorted<T> {
    fn into_response(self) -> Response {
        // `serde_json::Value` keeps object keys in a sorted map.
        match serde_json::to_value(&self.0) {
            Ok(v) => Json(v).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "response body does not serialize");
                ApiError::internal().into_response()
            }
        }
    }
}

/// A [`Sorted`] body with a status other than 200.
pub struct WithStatus<T>(pub StatusCode, pub T);

impl<T: Serialize> IntoResponse for WithStatus<T> {
    fn into_response(self) -> Response {
        let mut resp = Sorted(self.1).into_response();
        if resp.status() == StatusCode::OK {
            *resp.status_mut() = self.0;
        }
        resp
    }
}

/// The canonical text of a body, for event streams.
pub fn sorted_text<T: Serialize>(body: &T) -> Option<String> {
    serde_json::to_value(body).ok().map(|v| v.to_string())
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// `POST /session` (201).
#[derive(Debug, Serialize)]
pub struct SessionOut {
    pub token: String,
    pub token_type: &'static str,
    pub user: UserId,
    pub expires_at: String,
    /// A device cookie to present at this client's next password login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// `POST /web/session` (201) and `GET /web/session`: the session behind the cookie, never its
/// token.
#[derive(Debug, Serialize)]
pub struct WebSession {
    pub user: UserId,
    pub expires_at: String,
    pub csrf_token: String,
}

/// `GET /me`.
#[derive(Debug, Serialize)]
pub struct MeOut {
    pub user: MeUser,
    pub session: MeSession,
    pub management: Option<Management>,
    pub site: SiteCaps,
    pub units: Vec<UnitCaps>,
    pub grants: Vec<GrantInfo>,
}

#[derive(Debug, Serialize)]
pub struct MeUser {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub business: Option<BusinessId>,
    pub business_suspended: bool,
    pub owner: bool,
}

#[derive(Debug, Serialize)]
pub struct MeSession {
    pub expires_at: String,
}

#[derive(Debug, Serialize)]
pub struct SiteCaps {
    pub capabilities: CapSet,
}

#[derive(Debug, Serialize)]
pub struct UnitCaps {
    pub unit: UnitId,
    pub capabilities: CapSet,
}

// ---------------------------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------------------------

/// `GET /units`.
#[derive(Debug, Serialize)]
pub struct UnitList {
    pub units: Vec<UnitListed>,
}

/// One unit of `GET /units`: its summary and the caller's capabilities on it.
#[derive(Debug, Serialize)]
pub struct UnitListed {
    #[serde(flatten)]
    pub summary: UnitSummary,
    pub capabilities: CapSet,
}

/// One unit as `GET /units/{unit}` and each message of the live stream show it.
#[derive(Debug, Serialize)]
pub struct UnitView {
    #[serde(flatten)]
    pub summary: UnitSummary,
    pub capabilities: CapSet,
    pub points: Vec<PointView>,
    pub commands: Vec<CommandView>,
    /// `GET /units/{unit}` only: whether the values were read now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fresh: Option<bool>,
}

/// A point the caller may read, with its value.
#[derive(Debug, Serialize)]
pub struct PointView {
    #[serde(flatten)]
    pub info: PointInfo,
    /// The caller holds the point's write capability.
    pub writable: bool,
    /// `null` when there is no reading or its quality carries no number.
    pub value: Value,
    pub quality: Quality,
    pub read_at: Option<String>,
    pub age_ms: Option<i64>,
}

/// A profile command, with whether the caller may run it.
#[derive(Debug, Serialize)]
pub struct CommandView {
    pub name: String,
    pub label: String,
    pub capability: Capability,
    pub allowed: bool,
}

/// Builds a unit's view: the points the caller may read (with their values) and the profile's
/// commands with whether the caller may run them.
pub fn unit_view(
    summary: UnitSummary,
    profile: &UnitProfile,
    readings: &[Reading],
    caps: CapSet,
    now: OffsetDateTime,
) -> UnitView {
    let points = profile
        .points
        .iter()
        .filter(|p| caps.contains(p.read))
        .map(|p| point_view(p, readings.iter().find(|r| r.point == p.name), now, caps))
        .collect();
    let commands = profile
        .commands
        .iter()
        .map(|c: &CommandInfo| CommandView {
            name: c.name.clone(),
            label: c.label.clone(),
            capability: c.capability,
            allowed: caps.contains(c.capability),
        })
        .collect();
    UnitView {
        summary,
        capabilities: caps,
        points,
        commands,
        fresh: None,
    }
}

fn point_view(p: &PointInfo, r: Option<&Reading>, now: OffsetDateTime, caps: CapSet) -> PointView {
    let (value, quality, read_at) = match r {
        Some(r) => (r.value.clone(), r.quality, r.read_at),
        None => (Value::Null, Quality::Unknown, None),
    };
    PointView {
        info: p.clone(),
        writable: p.write.is_some_and(|w| caps.contains(w)),
        value,
        quality,
        read_at: read_at.map(rfc3339),
        age_ms: read_at.map(|t| (unix_ms(now) - unix_ms(t)).max(0)),
    }
}

/// One message of `GET /units/stream` (event `units`).
#[derive(Debug, Serialize)]
pub struct StreamMessage {
    pub seq: u64,
    pub at: String,
    pub interval_ms: u64,
    /// The first message of a connection: `units` holds every visible unit.
    pub full: bool,
    /// Units shaped like `GET /units/{unit}` without `age_ms`: all of them when `full`, else
    /// those that appeared or whose shape changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Value>,
    /// Units no longer visible since the previous message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Units whose only changes are point values, qualities and read times.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<StreamPatch>,
}

/// A unit of the stream whose only changes are point values, qualities and read times. Points
/// are named by their index in the unit's `points` as last sent in full.
#[derive(Debug, Serialize)]
pub struct StreamPatch {
    pub id: String,
    pub last_seen: Value,
    /// `[index, value, quality, read_at]` per point whose value or quality changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Value>,
    /// `[read_at, index, …]` per new read time of the points only read again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read_at: Vec<Vec<Value>>,
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// `PUT /units/{unit}/points/{point}`.
#[derive(Debug, Serialize)]
pub struct WriteOut {
    pub unit: UnitId,
    pub point: String,
    pub written: Value,
    pub read_back: Value,
    pub at: String,
}

/// `POST /units/{unit}/commands/{command}`.
#[derive(Debug, Serialize)]
pub struct CommandOut {
    pub unit: UnitId,
    pub command: String,
    pub at: String,
}

// ---------------------------------------------------------------------------------------------
// Diagnostics and audit
// ---------------------------------------------------------------------------------------------

/// `GET /units/{unit}/diagnostics`.
#[derive(Debug, Serialize)]
pub struct DiagnosticsOut {
    #[serde(flatten)]
    pub diagnostics: Diagnostics,
    /// The raw read asked for with `kind` and `address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawRead>,
}

#[derive(Debug, Serialize)]
pub struct RawRead {
    pub kind: RegisterKind,
    pub address: u16,
    pub count: u16,
    pub values: Vec<u16>,
}

/// `GET /audit`.
#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub records: Vec<Record>,
    /// The `before` of the next page; `null` on the last one.
    pub next_before: Option<i64>,
}

/// `POST /units/{unit}/test`: every point of the unit read now, and whether each is good.
#[derive(Debug, Serialize)]
pub struct UnitTestOut {
    pub unit: UnitId,
    /// Every point read with quality `good`.
    pub passed: bool,
    /// Points whose quality is not `good`.
    pub failures: usize,
    pub points: Vec<TestedPoint>,
    pub at: String,
    pub duration_ms: u64,
}

/// One point of a unit test.
#[derive(Debug, Serialize)]
pub struct TestedPoint {
    pub point: String,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub value: Value,
    pub quality: Quality,
}

/// `POST /scans` (202), `GET /scans/{id}`, `DELETE /scans/{id}`.
#[derive(Debug, Serialize)]
pub struct ScanView {
    pub id: String,
    pub link: LinkId,
    pub from: u8,
    pub to: u8,
    pub timeout_ms: u64,
    pub started_by: UserId,
    pub started_at: String,
    pub status: ScanStatus,
    pub probed: usize,
    pub total: usize,
    pub found: Vec<ScanFound>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl ScanView {
    pub fn of(scan: &Scan) -> ScanView {
        let p = scan.progress();
        ScanView {
            id: scan.id.clone(),
            link: scan.link.clone(),
            from: scan.from,
            to: scan.to,
            timeout_ms: scan.timeout_ms,
            started_by: scan.started_by.clone(),
            started_at: rfc3339(scan.started_at),
            status: p.status,
            probed: p.probed,
            total: scan.total(),
            found: p.found,
            error: p.error,
            finished_at: p.finished_at.map(rfc3339),
        }
    }
}

/// `GET /scans`: the links that can be scanned and the recent scans, newest first.
#[derive(Debug, Serialize)]
pub struct ScanList {
    pub links: Vec<LinkId>,
    pub scans: Vec<ScanView>,
}

// ---------------------------------------------------------------------------------------------
// Grants, access requests, lockouts, businesses
// ---------------------------------------------------------------------------------------------

/// `GET /audit/verify`.
#[derive(Debug, Serialize)]
pub struct AuditVerify {
    /// Every record matches its content and its predecessor.
    pub intact: bool,
    /// Records checked (0 when the chain is broken).
    pub records: u64,
    /// The `seq` of the first record that does not match.
    pub broken_at: Option<i64>,
    pub checked_at: String,
}

/// `GET /roles`.
#[derive(Debug, Serialize)]
pub struct RoleList {
    pub roles: Vec<GrantInfo>,
    /// The `after` of the next page; `null` on the last one.
    pub next_after: Option<String>,
}

/// `GET /grants`.
#[derive(Debug, Serialize)]
pub struct GrantList {
    pub grants: Vec<GrantInfo>,
}

/// `POST /grants` (201 `active`, 202 `pending`), `DELETE /grants/{id}` (200 `revoked`, 202
/// `pending`) and `POST /access-requests` (202 `pending`).
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GrantChange {
    /// In force now; `null` when the engine returned no grant.
    Active { grant: Option<GrantInfo> },
    /// Sent upward for approval.
    Pending { request_id: String },
    /// Revoked now.
    Revoked { grant: GrantId },
}

/// `GET /access-requests`.
#[derive(Debug, Serialize)]
pub struct RequestList {
    pub requests: Vec<PendingRequest>,
}

/// `GET /lockouts`.
#[derive(Debug, Serialize)]
pub struct LockoutList {
    pub lockouts: Vec<Lockout>,
}

/// `GET /businesses`.
#[derive(Debug, Serialize)]
pub struct BusinessList {
    pub businesses: Vec<BusinessInfo>,
}

/// `PUT /businesses/{business}/suspension` and `DELETE …/suspension`.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SuspensionChange {
    Suspended {
        suspension: Suspension,
    },
    Restored {
        business: BusinessId,
        suspended_at: String,
    },
}

/// `GET /healthz`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
}

pub use crate::config_edit::{LinkEntry, UnitEntry};

/// `GET /config/links`.
#[derive(Debug, Serialize)]
pub struct ConfigLinks {
    pub links: Vec<LinkEntry>,
}

/// `GET /config/units`.
#[derive(Debug, Serialize)]
pub struct ConfigUnits {
    pub units: Vec<UnitEntry>,
}

/// A change of the config file, written and waiting for the reload that applies it: the link or
/// unit as added, or as it was before its removal.
#[derive(Debug, Serialize)]
pub struct ConfigChange {
    /// `link_added`, `link_removed`, `unit_added` or `unit_removed`.
    pub change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitEntry>,
}
