//! The ports through which the LAN API reaches the engines: authentication (sessions), the
//! authorization decision, the Modbus units, and delegation.
//!
//! The API depends only on these traits, so it can be built and tested without the engines, and
//! each engine implements one small trait when it is wired in `app`. The traits are object safe
//! (`Arc<dyn …>`); async operations return a boxed future ([`BoxFut`]); operations that are
//! naturally synchronous (the authorization decision over an immutable index, reading the
//! cached unit state) are plain functions.
//!
//! Nothing here performs I/O or holds policy: it is vocabulary only.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::model::{CapSet, Capability, GrantId, GroupId, LinkId, Role, Scope, UnitId, UserId};

/// The future type returned by async port methods.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

/// A live session, as the auth engine vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub user: UserId,
    pub expires_at: OffsetDateTime,
}

/// A password login on a device: the bearer token, the session, and a new device cookie.
pub type DeviceLogin = (String, SessionInfo, Option<String>);

/// Why authentication failed: the auth engine's own error, used as is. The API maps each variant
/// to its status and code in one place ([`super::error`]); a login never says whether the
/// account exists.
pub use crate::auth::AuthError;

/// A throttled or locked login, as site admins see it (`GET /lockouts`): the auth engine's own
/// record, shown as is.
pub use crate::auth::Lockout;

/// Sessions: login, bearer check, logout. Implemented by the `auth` engine.
pub trait AuthPort: Send + Sync + 'static {
    /// Verifies an email and password (offline, against the bundle's verifier), applies the
    /// per-account and per-address throttles, audits the attempt, and on success opens a session.
    /// Returns the bearer token (shown once; stored only as a hash) and the session.
    fn login_password<'a>(
        &'a self,
        email: &'a str,
        password: &'a str,
        client_ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), AuthError>>;

    /// As [`AuthPort::login_password`], presenting the device cookie of an earlier successful
    /// login (OWASP "device cookies": a client that logged in before keeps its own failure
    /// budget). Also returns a new device cookie for the client to keep. The default ignores the
    /// cookie and issues none.
    fn login_password_on_device<'a>(
        &'a self,
        email: &'a str,
        password: &'a str,
        client_ip: IpAddr,
        device: Option<&'a str>,
    ) -> BoxFut<'a, Result<DeviceLogin, AuthError>> {
        let _ = device;
        Box::pin(async move {
            self.login_password(email, password, client_ip)
                .await
                .map(|(token, session)| (token, session, None))
        })
    }

    /// Verifies a cloud-signed installer token envelope (the exact bytes received) and opens a
    /// session for the user it names.
    fn login_token<'a>(
        &'a self,
        envelope: &'a [u8],
        client_ip: IpAddr,
    ) -> BoxFut<'a, Result<(String, SessionInfo), AuthError>>;

    /// Resolves a bearer token to its session (expiry judged by the engine's clock).
    fn authenticate<'a>(&'a self, bearer: &'a str) -> BoxFut<'a, Result<SessionInfo, AuthError>>;

    /// Ends the session of this bearer token (idempotent: an unknown token is `Invalid`).
    fn logout<'a>(&'a self, bearer: &'a str) -> BoxFut<'a, Result<(), AuthError>>;

    /// Current login throttles and lockouts; only for site admins (the `admin` role on the site)
    /// and the site owner.
    fn lockouts<'a>(&'a self, actor: &'a UserId) -> BoxFut<'a, Result<Vec<Lockout>, AuthError>> {
        let _ = actor;
        Box::pin(async { Err(AuthError::Store("lockouts are not kept here".into())) })
    }

    /// Clears one lockout by its key (audited); only for site admins and the site owner.
    fn clear_lockout<'a>(
        &'a self,
        actor: &'a UserId,
        key: &'a str,
    ) -> BoxFut<'a, Result<(), AuthError>> {
        let _ = (actor, key);
        Box::pin(async { Err(AuthError::Store("lockouts are not kept here".into())) })
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

/// What a decision is about, and the decision: the authorization engine's own types, used as
/// is. A denial is a value (`Decision::Deny`) whose reason has a stable code from a bounded set
/// (`DenyReason::code`), used as a metrics label and in audit records, never shown with more
/// detail to the caller.
pub use crate::authz::{Decision, DenyReason, Target};

/// One grant as shown to a user (in `/me` and in delegation listings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantInfo {
    pub id: GrantId,
    pub user: UserId,
    /// The grantee's email, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub role: Role,
    pub scope: Scope,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// `cloud`, `local` or `token`.
    pub origin: &'static str,
    /// For local grants: who delegated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegator: Option<UserId>,
}

/// The caller as the authorization engine sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub user: UserId,
    pub email: String,
    pub name: String,
    /// Capabilities that hold at site level (for site-wide operations).
    pub site: CapSet,
    /// Effective capabilities per unit (units with none are omitted).
    pub units: Vec<(UnitId, CapSet)>,
    /// The caller's currently valid grants.
    pub grants: Vec<GrantInfo>,
    /// The site's management mode (`pro` or `independent`), if a bundle is applied.
    pub management: Option<crate::model::Management>,
    /// The service business the user belongs to, and whether the site owner suspended it here
    /// (a suspended user's capabilities are all empty).
    pub business: Option<crate::model::BusinessId>,
    pub business_suspended: bool,
    /// The user is the site owner (may suspend and restore businesses).
    pub owner: bool,
}

/// The decision engine. Implemented by `authz` over its immutable index: synchronous, no I/O.
pub trait AuthzPort: Send + Sync + 'static {
    /// May `user` use `capability` on `target` now? Default deny.
    fn decide(&self, user: &UserId, capability: Capability, target: &Target) -> Decision;

    /// The units on which `user` has at least `view`, with the effective capabilities on each.
    fn visible_units(&self, user: &UserId) -> Vec<(UnitId, CapSet)>;

    /// The user's profile and effective capabilities; `None` if the user is unknown or inactive.
    fn me(&self, user: &UserId) -> Option<Me>;

    /// Every grant in force on this box now (from the cloud's bundle, installer tokens and local
    /// delegations; revoked, expired and not yet valid ones left out, and those of inactive
    /// users), with the user's email. The API filters it to what the caller may see.
    fn roles(&self) -> Vec<GrantInfo> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Units (Modbus engine)
// ---------------------------------------------------------------------------------------------

/// A unit of the inventory with its current reachability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitSummary {
    pub id: UnitId,
    pub name: String,
    /// Device profile name (e.g. `dse-gencomm`, `coolmaster-va`).
    pub profile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    pub link: LinkId,
    pub online: bool,
    /// Last successful transaction with the unit.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
    /// How often the box polls the unit (a value older than this, plus its delivery, is stale).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
}

/// One enum value of a point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnumLabel {
    pub value: i64,
    pub label: String,
}

/// A named point of a unit's profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointInfo {
    pub name: String,
    pub label: String,
    /// Engineering unit (`°C`, `V`, `rpm`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `bool`, `u16`, `i16`, `u32`, `i32`, `f32` or `enum`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Capability needed to read the point (`view` or `diagnose`).
    pub read: Capability,
    /// Capability needed to write it (`control` or `configure`); `None` = read-only.
    pub write: Option<Capability>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enum_labels: Vec<EnumLabel>,
}

/// A profile command that is not a plain point write (e.g. a generator start key sequence).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandInfo {
    pub name: String,
    pub label: String,
    /// Capability needed to run it.
    pub capability: Capability,
}

/// The parts of a unit's profile the API shows and authorizes against.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnitProfile {
    pub points: Vec<PointInfo>,
    pub commands: Vec<CommandInfo>,
}

/// Quality of a reading: the one vocabulary of the box (API, MQTT telemetry, `units test`, docs),
/// defined with the profiles whose sentinels produce it.
pub use crate::modbus::Quality;

/// One point value from the cache (or a fresh read).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub point: String,
    /// `null` when the quality carries no number.
    pub value: Value,
    pub quality: Quality,
    /// When the value was read from the device.
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("unknown unit")]
    UnknownUnit,
    #[error("the unit did not answer in time")]
    Timeout,
    /// Modbus exception 1–3 (`illegal function`, `illegal data address`, `illegal data value`):
    /// the device refused the request itself, e.g. a raw read of an address it does not have.
    #[error("the device refused the request: {0}")]
    Refused(String),
    /// Any other Modbus exception (e.g. `server device failure`).
    #[error("device exception: {0}")]
    Exception(String),
    #[error("link error: {0}")]
    Transport(String),
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteOutcome {
    /// The value as validated and written (after scaling/enum resolution, in engineering units).
    pub written: Value,
    /// The value read back from the device after the write.
    pub read_back: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandOutcome {
    pub command: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Why a write or command failed: the engine's refusal before the bus
/// ([`crate::modbus::WriteError`]) and the bus outcome ([`crate::modbus::WriteStatus`]) in one
/// vocabulary, so a caller handles one result. The API maps each variant to its status in one
/// place ([`super::error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    /// The value fails the point's type, range or enum (nothing reached the bus) → 422.
    #[error("{0}")]
    Validation(String),
    /// No such point on the unit → 404 `point_not_found`.
    #[error("unknown point")]
    UnknownPoint,
    /// No such command on the unit → 404 `command_not_found`.
    #[error("unknown command")]
    UnknownCommand,
    /// The unit did not answer in time → 504.
    #[error("the unit did not answer in time")]
    Timeout,
    /// The device answered with a Modbus exception → 502.
    #[error("device exception: {0}")]
    Exception(String),
    /// The read-back differs from what was written → 502.
    #[error("read-back mismatch: {0}")]
    Mismatch(String),
    /// The link failed (connection refused, serial error, framing) → 502.
    #[error("link error: {0}")]
    Transport(String),
    /// The link's request queue is full (many concurrent writers on one bus); nothing reached
    /// the bus → 503 with `Retry-After`.
    #[error("{0}")]
    Busy(String),
    /// The controller does not report the command as supported; nothing was sent → 409.
    #[error("{0}")]
    NotSupported(String),
    /// Not possible in the device's present state (a start in stop mode); nothing sent → 409.
    #[error("{0}")]
    NotPossible(String),
}

/// Register kinds for raw diagnostic reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    Coil,
    Discrete,
    Input,
    Holding,
}

/// Counters of one Modbus link.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LinkStats {
    pub link: String,
    /// `tcp`, `rtu` or `rtu-over-tcp`.
    pub kind: String,
    pub connected: bool,
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub exceptions: u64,
    pub retries: u64,
    /// Requests waiting for the bus.
    pub queue_depth: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Diagnostics of one unit and its link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostics {
    pub unit: UnitId,
    pub slave: u8,
    pub online: bool,
    pub consecutive_failures: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub link: LinkStats,
}

/// The Modbus engine as the API uses it. Implemented by `modbus`.
///
/// The engine owns validation: `write_point` must check type, range and enum and return
/// `WriteFailure::Validation` before anything is queued for the bus. The API authorizes first
/// (capability from [`PointInfo::write`]) and never calls `write_point` for a denied caller.
pub trait UnitsPort: Send + Sync + 'static {
    /// Every unit of the inventory with its reachability (cached; no bus traffic).
    fn units(&self) -> Vec<UnitSummary>;

    /// One unit (cached), or `None` if it does not exist.
    fn unit(&self, unit: &UnitId) -> Option<UnitSummary>;

    /// The unit's points and commands.
    fn profile(&self, unit: &UnitId) -> Option<UnitProfile>;

    /// One point of the unit's profile (as [`UnitsPort::profile`] lists it), or `None`. The
    /// command path asks for the one point it writes instead of copying the whole profile.
    fn point(&self, unit: &UnitId, point: &str) -> Option<PointInfo> {
        self.profile(unit)?
            .points
            .into_iter()
            .find(|p| p.name == point)
    }

    /// The cached values of every point of the unit (no bus traffic).
    fn snapshot(&self, unit: &UnitId) -> Option<Vec<Reading>>;

    /// Reads every point of the unit now, as an interactive read (ahead of polling), within
    /// `timeout`; returns the fresh values.
    fn read_fresh<'a>(
        &'a self,
        unit: &'a UnitId,
        timeout: Duration,
    ) -> BoxFut<'a, Result<Vec<Reading>, ReadError>>;

    /// Validates `value` for `point`, writes it, reads it back.
    fn write_point<'a>(
        &'a self,
        unit: &'a UnitId,
        point: &'a str,
        value: Value,
    ) -> BoxFut<'a, Result<WriteOutcome, WriteFailure>>;

    /// Runs a profile command (e.g. `start`, `stop`, `auto`, `reset_faults`).
    fn run_command<'a>(
        &'a self,
        unit: &'a UnitId,
        command: &'a str,
    ) -> BoxFut<'a, Result<CommandOutcome, WriteFailure>>;

    /// Unit and link diagnostics (cached counters).
    fn diagnostics(&self, unit: &UnitId) -> Option<Diagnostics>;

    /// The configured links, by name.
    fn links(&self) -> Vec<LinkId> {
        Vec::new()
    }

    /// Scans a link for devices: probes slave ids `from..=to` (read-only), waiting `per_id` for
    /// each id's first answer, through the link's own task (never a second transport on a bus
    /// the daemon polls); `cancel` is looked at between ids. The default cannot scan.
    fn scan<'a>(
        &'a self,
        link: &'a LinkId,
        from: u8,
        to: u8,
        per_id: Duration,
        cancel: &'a tokio_util::sync::CancellationToken,
        progress: ScanProgress<'a>,
    ) -> BoxFut<'a, Result<ScanDone, ScanFailure>> {
        let _ = (link, from, to, per_id, cancel, progress);
        Box::pin(async { Err(ScanFailure::Unavailable) })
    }

    /// Reads `count` raw registers (or coils, as 0/1) starting at the 0-based `address`.
    /// The API has already bounded `count` (125 registers, 2000 bits) and the address range.
    fn read_raw<'a>(
        &'a self,
        unit: &'a UnitId,
        kind: RegisterKind,
        address: u16,
        count: u16,
        timeout: Duration,
    ) -> BoxFut<'a, Result<Vec<u16>, ReadError>>;
}

/// A device a scan found at one slave id of a link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanFound {
    pub slave: u8,
    /// The device's identification texts (vendor, product code, revision), empty when it does
    /// not implement FC43.
    pub identity: Vec<String>,
    /// The suggested profile, if one matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// How the profile was matched (`signature registers`, `device identification (FC43)`,
    /// `register map fits (unconfirmed)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_by: Option<String>,
    /// The unit of the configuration at this link and slave id, if there is one (to test it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitId>,
}

/// How a scan ended (all ids probed, or cancelled after `probed`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScanDone {
    pub found: Vec<ScanFound>,
    pub probed: usize,
    pub cancelled: bool,
}

/// Why a scan stopped before its last id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanFailure {
    /// No link by that name.
    #[error("unknown link")]
    UnknownLink,
    /// The link's transport cannot be opened or broke.
    #[error("{0}")]
    Link(String),
    /// This box cannot scan (shutting down, or no engine).
    #[error("scanning is not available")]
    Unavailable,
}

/// Progress of a scan: `(probed, total, found so far)`, after every id.
pub type ScanProgress<'a> = &'a mut (dyn FnMut(usize, usize, &[ScanFound]) + Send);

// ---------------------------------------------------------------------------------------------
// Delegation
// ---------------------------------------------------------------------------------------------

/// A request to delegate a local grant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegateRequest {
    /// The grantee's login email: an existing user of the site (accounts come from the cloud).
    pub email: String,
    /// Accepted and not used: the user's name comes from the cloud's bundle.
    #[serde(default)]
    pub name: Option<String>,
    /// Initial password for a new local user (hashed by the engine, never logged).
    #[serde(default)]
    pub password: Option<String>,
    pub role: Role,
    pub scope: Scope,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A request for access, sent upward for approval.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub role: Role,
    pub scope: Scope,
    /// Free text for the approver (bounded by the API to 500 characters).
    #[serde(default)]
    pub message: Option<String>,
}

/// Result of a delegation or revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelegationOutcome {
    /// Took effect at once (independent site, or revocation by the delegator).
    Applied(Option<GrantInfo>),
    /// Sent upward; takes effect when a signed bundle includes it.
    Pending { request_id: String },
}

/// Why a delegation operation was refused: the delegation engine's own error, used as is (the
/// API maps each variant to its status and code in [`super::error`]).
pub use crate::delegation::DelegationError;

/// An access request (or a pending pro-site delegation) with its status, as the delegation
/// engine keeps it.
pub use crate::delegation::PendingRequest;

/// Local grants and access requests. Implemented by `grants` (signing, storing, reporting
/// upward) together with `authz` (ceiling and scope checks).
pub trait DelegationPort: Send + Sync + 'static {
    /// Grants the actor may manage (inside the scopes where it holds `manage_users`).
    fn list<'a>(&'a self, actor: &'a UserId)
    -> BoxFut<'a, Result<Vec<GrantInfo>, DelegationError>>;

    /// Delegates a local grant.
    fn create<'a>(
        &'a self,
        actor: &'a UserId,
        request: DelegateRequest,
    ) -> BoxFut<'a, Result<DelegationOutcome, DelegationError>>;

    /// Revokes a grant the actor manages.
    fn revoke<'a>(
        &'a self,
        actor: &'a UserId,
        grant: &'a GrantId,
    ) -> BoxFut<'a, Result<DelegationOutcome, DelegationError>>;

    /// The access requests (and pending pro-site delegations) the actor may see: their own, and
    /// every one on a scope where they hold `manage_users`. Newest first, with their status.
    fn list_requests<'a>(
        &'a self,
        actor: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<PendingRequest>, DelegationError>>;

    /// Records and sends upward a request for access; returns the request id.
    fn request_access<'a>(
        &'a self,
        actor: &'a UserId,
        request: AccessRequest,
    ) -> BoxFut<'a, Result<String, DelegationError>>;
}

// ---------------------------------------------------------------------------------------------
// Service businesses (the site owner's suspension)
// ---------------------------------------------------------------------------------------------

/// The site owner's control over service businesses. Implemented over
/// [`crate::business::Businesses`] in `adapters` (the domain never imports the API); every
/// method checks that the actor is the site owner first.
pub trait BusinessPort: Send + Sync + 'static {
    /// Businesses known on this box, with their suspension.
    fn list<'a>(
        &'a self,
        actor: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<crate::business::BusinessInfo>, crate::business::BusinessError>>;

    /// Suspends every grant of the business's users.
    fn suspend<'a>(
        &'a self,
        actor: &'a UserId,
        business: &'a str,
        note: Option<String>,
    ) -> BoxFut<'a, Result<crate::business::Change, crate::business::BusinessError>>;

    /// Lifts a suspension.
    fn restore<'a>(
        &'a self,
        actor: &'a UserId,
        business: &'a str,
    ) -> BoxFut<'a, Result<crate::business::Suspension, crate::business::BusinessError>>;
}
