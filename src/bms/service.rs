//! The Modbus server `Service`: one [`Session`] per connection, sharing one [`Face`].
//!
//! Every request is authorized before anything is read or written:
//! - the unit id must be exposed (else exception 0x0A, gateway path unavailable);
//! - every address of the range must belong to a point of the unit's profile (else 02);
//! - a read needs `view` and the point's read capability on EVERY point in the range, a write
//!   the point's write capability (and its read capability) on every point it covers (else 01,
//!   audited, nothing sent);
//! - a write must cover whole, unmasked, writable points; each value is decoded, validated by
//!   the engine (type, range, enum; else 03) and written through the link scheduler with
//!   read-back; a read-back that differs or fails is an error (04), never a silent success.
//!
//! Reads are answered from the face's raw register cache when every register of the range is
//! younger than `max_age`, otherwise read at interactive priority (behind commands) and cached.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};

use crate::audit::{Audit, Event};
use crate::authz::{Authz, Decision, Target};
use crate::clock::SharedClock;
use crate::modbus::codec::{self, Raw};
use crate::modbus::engine::{EngineError, RawValues, WriteError, WriteStatus};
use crate::modbus::profile::Point;
use crate::modbus::{ModbusEngine, ModbusError, RegKind};
use crate::model::{Capability, UnitId, UserId};

use super::Identity;

/// Raw registers served, by (unit, table, address): value and when it was read.
type RegCache = HashMap<(UnitId, RegKind, u16), (u16, Instant)>;
/// Refusals already audited on one connection (what was refused and why).
type RefusedReads = Arc<Mutex<HashSet<String>>>;
/// Distinct refusals audited per connection at most; a client cycling through more is only
/// logged (the audit trail and its MQTT copy must not be flooded by one client).
const MAX_AUDITED_REFUSALS: usize = 256;

/// What every connection shares: the engine, the decision engine, the audit trail, the exposed
/// units and the raw register cache.
pub struct Face {
    engine: ModbusEngine,
    authz: Arc<Authz>,
    audit: Audit,
    clock: SharedClock,
    units: HashMap<u8, UnitId>,
    max_age: Duration,
    read_timeout: Duration,
    cache: Mutex<RegCache>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Face {
    pub fn new(
        engine: ModbusEngine,
        authz: Arc<Authz>,
        audit: Audit,
        clock: SharedClock,
        units: &[(u8, UnitId)],
        max_age: Duration,
        read_timeout: Duration,
    ) -> Face {
        Face {
            engine,
            authz,
            audit,
            clock,
            units: units.iter().cloned().collect(),
            max_age,
            read_timeout,
            cache: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Counts this face's denials in `sitegate_authz_denials_total`, like the LAN API's.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Face {
        self.metrics = Some(metrics);
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, RegCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection: the shared face and the client's identity (set once its TLS handshake is
/// done; set at once for the plain listener).
pub struct Session {
    face: Arc<Face>,
    identity: Arc<OnceLock<Identity>>,
    peer: SocketAddr,
    /// Refusals already audited on this connection (a BMS polling a forbidden block or
    /// repeating a forbidden write every second is recorded once per connection, not once a
    /// second).
    refused_reads: RefusedReads,
    /// This connection's place under `max_connections`, given back when the connection ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Session {
    pub fn new(
        face: Arc<Face>,
        identity: Arc<OnceLock<Identity>>,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Session {
        Session {
            face,
            identity,
            peer,
            refused_reads: Arc::new(Mutex::new(HashSet::new())),
            _permit: permit,
        }
    }
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl tokio_modbus::server::Service for Session {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(id) = self.identity.get().cloned() else {
            // Not reachable: requests are read only after the handshake published the identity.
            return Box::pin(async { Err(ExceptionCode::IllegalFunction) });
        };
        let ctx = Ctx {
            face: self.face.clone(),
            id,
            peer: self.peer,
            slave: req.slave,
            refused_reads: self.refused_reads.clone(),
        };
        Box::pin(async move { ctx.handle(req.request).await })
    }
}

struct Ctx {
    face: Arc<Face>,
    id: Identity,
    peer: SocketAddr,
    slave: u8,
    refused_reads: RefusedReads,
}

/// A write request normalized: the kind and the raw values from `addr` on.
enum Words {
    Bits(Vec<bool>),
    Regs(Vec<u16>),
}

impl Ctx {
    async fn handle(&self, req: Request<'static>) -> Answer {
        let Some(unit) = self.face.units.get(&self.slave).cloned() else {
            return Err(ExceptionCode::GatewayPathUnavailable);
        };
        match req {
            Request::ReadCoils(a, n) => self
                .read(&unit, RegKind::Coil, a, n)
                .await
                .map(|v| Some(Response::ReadCoils(v.into_iter().map(|w| w != 0).collect()))),
            Request::ReadDiscreteInputs(a, n) => {
                self.read(&unit, RegKind::Discrete, a, n).await.map(|v| {
                    Some(Response::ReadDiscreteInputs(
                        v.into_iter().map(|w| w != 0).collect(),
                    ))
                })
            }
            Request::ReadHoldingRegisters(a, n) => self
                .read(&unit, RegKind::Holding, a, n)
                .await
                .map(|v| Some(Response::ReadHoldingRegisters(v))),
            Request::ReadInputRegisters(a, n) => self
                .read(&unit, RegKind::Input, a, n)
                .await
                .map(|v| Some(Response::ReadInputRegisters(v))),
            Request::WriteSingleCoil(a, b) => self
                .write(&unit, a, Words::Bits(vec![b]))
                .await
                .map(|()| Some(Response::WriteSingleCoil(a, b))),
            Request::WriteMultipleCoils(a, bs) => {
                let n = u16::try_from(bs.len()).unwrap_or(u16::MAX);
                self.write(&unit, a, Words::Bits(bs.into_owned()))
                    .await
                    .map(|()| Some(Response::WriteMultipleCoils(a, n)))
            }
            Request::WriteSingleRegister(a, w) => self
                .write(&unit, a, Words::Regs(vec![w]))
                .await
                .map(|()| Some(Response::WriteSingleRegister(a, w))),
            Request::WriteMultipleRegisters(a, ws) => {
                let n = u16::try_from(ws.len()).unwrap_or(u16::MAX);
                self.write(&unit, a, Words::Regs(ws.into_owned()))
                    .await
                    .map(|()| Some(Response::WriteMultipleRegisters(a, n)))
            }
            // Mask writes, read/write-multiple, diagnostics, device identification, custom
            // functions: not offered by this face.
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn actor(&self) -> String {
        match &self.id.client {
            Some(c) => format!("modbus:{}", crate::audit::cap_str(c)),
            None => format!("modbus:{}", self.peer.ip()),
        }
    }

    /// The bundle user a named client is bound to, if its name is a valid user id.
    fn bound(&self) -> Option<UserId> {
        self.id
            .client
            .as_deref()
            .and_then(|c| UserId::new(c.to_string()).ok())
    }

    /// Whether this refusal is the first of its kind on the connection (then it is audited).
    fn first_refusal(&self, key: String) -> bool {
        let mut seen = self.refused_reads.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&key) {
            return false;
        }
        if seen.len() >= MAX_AUDITED_REFUSALS {
            tracing::warn!(client = %self.actor(), "too many distinct refusals on one Modbus connection; further ones are logged only");
            return false;
        }
        seen.insert(key)
    }

    fn decide(&self, unit: &UnitId, cap: Capability, required: Capability) -> Decision {
        let ix = self.face.authz.index();
        let bound = self.bound();
        let d = ix.decide_with_role(
            self.id.role,
            bound.as_ref(),
            cap,
            &Target::Point {
                unit: unit.clone(),
                required,
            },
            self.face.clock.now(),
        );
        if let (Decision::Deny(why), Some(m)) = (d, &self.face.metrics) {
            m.observe_denial(cap.as_str(), why.code());
        }
        d
    }

    async fn audit(&self, kind: &'static str, outcome: &'static str, unit: &UnitId, detail: Value) {
        let mut d = json!({
            "via": "modbus",
            "peer": self.peer.to_string(),
            "role": self.id.role.as_str(),
            "unit_id": self.slave,
        });
        if !self.id.serial.is_empty() {
            d["cert_serial"] = json!(self.id.serial);
        }
        if let (Some(o), Some(e)) = (d.as_object_mut(), detail.as_object()) {
            o.extend(e.clone());
        }
        let ev = Event::new(kind, outcome)
            .actor(self.actor())
            .unit(unit.as_str())
            .detail(d);
        let _ = self.face.audit.record(ev).await;
    }

    async fn read(
        &self,
        unit: &UnitId,
        kind: RegKind,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > kind.max_read() {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let end = u32::from(addr) + u32::from(count);
        if end > 65536 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let Some(profile) = self.face.engine.profile_of(unit) else {
            return Err(ExceptionCode::GatewayPathUnavailable);
        };
        // Every address must belong to a point; every point touched must be readable.
        let mut touched: Vec<&Point> = Vec::new();
        for a in u32::from(addr)..end {
            let mut any = false;
            for p in profile.points.iter().filter(|p| p.kind == kind) {
                if u32::from(p.address) <= a && a < p.end() {
                    any = true;
                    if !touched.iter().any(|t| std::ptr::eq(*t, p)) {
                        touched.push(p);
                    }
                }
            }
            if !any {
                return Err(ExceptionCode::IllegalDataAddress);
            }
        }
        for p in &touched {
            if let Decision::Deny(why) = self.decide(unit, Capability::View, p.read) {
                tracing::info!(client = %self.actor(), unit = %unit, point = %p.name, reason = why.code(), "Modbus read refused");
                let key = format!(
                    "r/{}/{}/{addr}/{count}/{}",
                    self.slave,
                    kind.as_str(),
                    why.code()
                );
                if self.first_refusal(key) {
                    self.audit(
                        "modbus_read",
                        "denied",
                        unit,
                        json!({ "kind": kind.as_str(), "address": addr, "count": count, "point": p.name, "reason": why.code() }),
                    )
                    .await;
                }
                return Err(ExceptionCode::IllegalFunction);
            }
        }
        // Fresh enough in the cache?
        {
            let cache = self.face.cache();
            let cached: Option<Vec<u16>> = (addr..=addr.saturating_add(count - 1))
                .map(|a| {
                    cache
                        .get(&(unit.clone(), kind, a))
                        .filter(|(_, at)| at.elapsed() <= self.face.max_age)
                        .map(|(v, _)| *v)
                })
                .collect();
            if let Some(v) = cached {
                return Ok(v);
            }
        }
        let read = tokio::time::timeout(
            self.face.read_timeout,
            self.face.engine.raw_read(unit, kind, addr, count),
        )
        .await;
        let words: Vec<u16> = match read {
            Err(_) => return Err(ExceptionCode::GatewayTargetDevice),
            Ok(Err(e)) => return Err(engine_exception(&e)),
            Ok(Ok(RawValues::Words(w))) => w,
            Ok(Ok(RawValues::Bits(b))) => b.into_iter().map(u16::from).collect(),
        };
        if words.len() != usize::from(count) {
            return Err(ExceptionCode::ServerDeviceFailure);
        }
        let now = Instant::now();
        let mut cache = self.face.cache();
        for (i, w) in words.iter().enumerate() {
            let a = addr.wrapping_add(u16::try_from(i).unwrap_or(0));
            cache.insert((unit.clone(), kind, a), (*w, now));
        }
        Ok(words)
    }

    async fn write(&self, unit: &UnitId, addr: u16, words: Words) -> Result<(), ExceptionCode> {
        let (kind, n) = match &words {
            Words::Bits(b) => (RegKind::Coil, b.len()),
            Words::Regs(w) => (RegKind::Holding, w.len()),
        };
        let end = u32::from(addr) + u32::try_from(n).unwrap_or(u32::MAX);
        if n == 0 || end > 65536 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let Some(profile) = self.face.engine.profile_of(unit) else {
            return Err(ExceptionCode::GatewayPathUnavailable);
        };
        // Tile the range with whole points.
        let mut plan: Vec<(&Point, usize)> = Vec::new();
        let mut pos = u32::from(addr);
        while pos < end {
            let here: Vec<&Point> = profile
                .points
                .iter()
                .filter(|p| p.kind == kind && u32::from(p.address) <= pos && pos < p.end())
                .collect();
            let Some(p) = here.first().copied() else {
                return Err(ExceptionCode::IllegalDataAddress);
            };
            let refuse = if here.len() > 1 || p.mask.is_some() {
                Some("masked_point")
            } else if u32::from(p.address) != pos || p.end() > end {
                Some("partial_point")
            } else if p.write.is_none() {
                Some("point_read_only")
            } else {
                None
            };
            let offset = usize::try_from(pos - u32::from(addr)).unwrap_or(0);
            if let Some(reason) = refuse {
                tracing::info!(client = %self.actor(), unit = %unit, point = %p.name, reason, "Modbus write refused");
                if self.first_refusal(format!("w/{}/{}/{reason}", self.slave, p.name)) {
                    self.audit(
                        "command",
                        "denied",
                        unit,
                        json!({ "action": "write", "point": p.name, "address": addr, "count": n, "reason": reason }),
                    )
                    .await;
                }
                return Err(ExceptionCode::IllegalFunction);
            }
            plan.push((p, offset));
            pos = p.end();
        }
        // Authorize every point before anything is sent.
        for (p, _) in &plan {
            let cap = p.write.unwrap_or(Capability::Configure);
            if let Decision::Deny(why) = self.decide(unit, cap, p.read) {
                tracing::info!(client = %self.actor(), unit = %unit, point = %p.name, reason = why.code(), "Modbus write refused");
                if self.first_refusal(format!("w/{}/{}/{}", self.slave, p.name, why.code())) {
                    self.audit(
                        "command",
                        "denied",
                        unit,
                        json!({ "action": "write", "point": p.name, "capability": cap, "reason": why.code() }),
                    )
                    .await;
                }
                return Err(ExceptionCode::IllegalFunction);
            }
        }
        // Decode and validate every value before anything is sent: a request with one bad value
        // writes nothing.
        let mut values = Vec::with_capacity(plan.len());
        for (p, offset) in plan {
            let width = usize::from(p.width());
            let raw = match &words {
                Words::Bits(b) => b.get(offset..offset + width).map(Raw::Bits),
                Words::Regs(w) => w.get(offset..offset + width).map(Raw::Words),
            };
            let Some(raw) = raw else {
                return Err(ExceptionCode::IllegalDataValue);
            };
            let value = match codec::decode(p, &raw) {
                // A sentinel or an undecodable raw value: the raw number, for validation to
                // refuse with its own message.
                (Value::Null, _) => match &raw {
                    Raw::Bits(b) => json!(b.first().copied().unwrap_or(false)),
                    Raw::Words(w) => json!(w.first().copied().unwrap_or(0)),
                },
                (v, _) => v,
            };
            if let Err(e) = codec::encode(p, &value) {
                self.audit(
                    "command",
                    "rejected",
                    unit,
                    json!({ "action": "write", "point": p.name, "value": value, "error": e.to_string() }),
                )
                .await;
                return Err(ExceptionCode::IllegalDataValue);
            }
            values.push((p, value));
        }
        for (p, value) in values {
            // Whatever happens next, the cached registers of this point are no longer trusted.
            {
                let mut cache = self.face.cache();
                for i in 0..p.width() {
                    cache.remove(&(unit.clone(), kind, p.address.wrapping_add(i)));
                }
            }
            let res = self
                .face
                .engine
                .write_point(unit, &p.name, value.clone())
                .await;
            let detail = |extra: Value| {
                let mut d = json!({ "action": "write", "point": p.name, "value": value });
                if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
                    o.extend(e.clone());
                }
                d
            };
            match res {
                Ok(out) if out.status.is_ok() => {
                    self.audit(
                        "command",
                        "ok",
                        unit,
                        detail(json!({ "read_back": out.read_back })),
                    )
                    .await;
                }
                Ok(out) => {
                    self.audit(
                        "command",
                        "failed",
                        unit,
                        detail(json!({ "status": out.status, "read_back": out.read_back })),
                    )
                    .await;
                    return Err(match out.status {
                        WriteStatus::Exception { code, .. } => {
                            ExceptionCode::Custom(code).normalized()
                        }
                        WriteStatus::Timeout => ExceptionCode::GatewayTargetDevice,
                        _ => ExceptionCode::ServerDeviceFailure,
                    });
                }
                Err(e) => {
                    let (outcome, code) = match &e {
                        WriteError::Invalid { .. } => ("rejected", ExceptionCode::IllegalDataValue),
                        WriteError::Busy(_) => ("failed", ExceptionCode::ServerDeviceBusy),
                        WriteError::UnknownPoint(_)
                        | WriteError::UnknownUnit(_)
                        | WriteError::UnknownCommand(_) => {
                            ("rejected", ExceptionCode::IllegalDataAddress)
                        }
                        WriteError::ShuttingDown => ("failed", ExceptionCode::ServerDeviceFailure),
                        // Only profile commands are gated by supported-function flags or the
                        // unit's mode; should a point write ever be, the unit cannot do it now.
                        WriteError::NotSupported(_) | WriteError::NotPossible(_) => {
                            ("rejected", ExceptionCode::IllegalFunction)
                        }
                    };
                    self.audit(
                        "command",
                        outcome,
                        unit,
                        detail(json!({ "error": e.to_string() })),
                    )
                    .await;
                    return Err(code);
                }
            }
        }
        Ok(())
    }
}

/// Maps a device or link error to the exception a Modbus gateway answers with.
fn engine_exception(e: &EngineError) -> ExceptionCode {
    match e {
        EngineError::Modbus(ModbusError::Exception(c)) => ExceptionCode::Custom(*c).normalized(),
        EngineError::Modbus(ModbusError::Timeout) => ExceptionCode::GatewayTargetDevice,
        EngineError::Busy(_) => ExceptionCode::ServerDeviceBusy,
        EngineError::BadRequest(_) => ExceptionCode::IllegalDataValue,
        EngineError::UnknownUnit(_) => ExceptionCode::GatewayPathUnavailable,
        _ => ExceptionCode::ServerDeviceFailure,
    }
}

trait Normalize {
    fn normalized(self) -> ExceptionCode;
}

impl Normalize for ExceptionCode {
    /// `Custom(n)` for a standard code becomes its named variant (so clients see the same code).
    fn normalized(self) -> ExceptionCode {
        match self {
            ExceptionCode::Custom(c) => match c {
                0x01 => ExceptionCode::IllegalFunction,
                0x02 => ExceptionCode::IllegalDataAddress,
                0x03 => ExceptionCode::IllegalDataValue,
                0x04 => ExceptionCode::ServerDeviceFailure,
                0x05 => ExceptionCode::Acknowledge,
                0x06 => ExceptionCode::ServerDeviceBusy,
                0x08 => ExceptionCode::MemoryParityError,
                0x0A => ExceptionCode::GatewayPathUnavailable,
                0x0B => ExceptionCode::GatewayTargetDevice,
                other => ExceptionCode::Custom(other),
            },
            other => other,
        }
    }
}
