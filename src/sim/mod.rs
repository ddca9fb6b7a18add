//! Simulated field devices served over Modbus TCP, RTU (a serial device or PTY) and RTU over
//! TCP: a DSE GenComm generator controller and a CoolMasterNet gateway with its indoor units,
//! built from the vendors' documents (not from the profiles) and behaving like live equipment,
//! or any profile as a plain register map. Tests inject faults (silence, delay, exception codes)
//! at runtime and read request counters per function code and every write that arrived.
//!
//! The simulator is a test and demo tool: it never talks to real equipment and never binds
//! anything but the address it is given.

mod device;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::modbus::profile::{Profile, RegKind};

use device::DeviceState;
pub use device::SimDevice;

/// Writes remembered by [`SimStats::writes`].
const MAX_WRITES_KEPT: usize = 10_000;

/// One simulated unit: a slave id and what answers there.
#[derive(Debug, Clone)]
pub struct SimUnit {
    pub slave: u8,
    pub device: SimDevice,
}

impl SimUnit {
    pub fn generator(slave: u8) -> SimUnit {
        SimUnit {
            slave,
            device: SimDevice::Generator,
        }
    }
    /// A generator controller reporting its alarms on GenComm page 154.
    pub fn generator_page154(slave: u8) -> SimUnit {
        SimUnit {
            slave,
            device: SimDevice::GeneratorPage154,
        }
    }
    /// A CoolMasterNet gateway with indoor units at these VAs behind one slave id.
    pub fn coolmaster(slave: u8, vas: &[u16]) -> SimUnit {
        SimUnit {
            slave,
            device: SimDevice::CoolMaster(vas.to_vec()),
        }
    }
    /// An Eastron SDM630 energy meter.
    pub fn sdm630(slave: u8) -> SimUnit {
        SimUnit {
            slave,
            device: SimDevice::Sdm630,
        }
    }
    pub fn hvac(slave: u8) -> SimUnit {
        SimUnit {
            slave,
            device: SimDevice::Hvac,
        }
    }
    pub fn profile(slave: u8, profile: Arc<Profile>) -> SimUnit {
        SimUnit {
            slave,
            device: SimDevice::Profile(profile),
        }
    }
}

/// A fault to inject, for one slave or for all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    /// Never answer (the client times out).
    pub drop: bool,
    /// Answer late.
    pub delay: Duration,
    /// Answer every request with this exception code.
    pub exception: Option<u8>,
    /// Apply the fault to writes only.
    pub only_writes: bool,
}

/// One write request as it arrived (before any validation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimWrite {
    /// Position among all requests received (1-based), to check ordering.
    pub seq: u64,
    pub slave: u8,
    pub function: u8,
    pub address: u16,
    pub values: Vec<u16>,
}

/// Counters since start (or the last reset).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimStats {
    pub requests: u64,
    /// Requests per function code.
    pub by_function: BTreeMap<u8, u64>,
    /// Requests per slave id.
    pub by_slave: BTreeMap<u8, u64>,
    pub writes: Vec<SimWrite>,
    pub dropped: u64,
}

impl SimStats {
    /// Requests of one function code.
    pub fn function(&self, fc: u8) -> u64 {
        self.by_function.get(&fc).copied().unwrap_or(0)
    }
    /// Write requests that arrived for `slave`.
    pub fn writes_to(&self, slave: u8) -> Vec<&SimWrite> {
        self.writes.iter().filter(|w| w.slave == slave).collect()
    }
}

struct Shared {
    units: HashMap<u8, Mutex<DeviceState>>,
    faults: Mutex<HashMap<Option<u8>, Fault>>,
    stats: Mutex<SimStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Control of a running simulator.
#[derive(Clone)]
pub struct SimHandle {
    /// The bound address (TCP transports).
    pub addr: Option<SocketAddr>,
    /// The serial device (RTU).
    pub path: Option<PathBuf>,
    shared: Arc<Shared>,
}

impl SimHandle {
    pub fn stats(&self) -> SimStats {
        lock(&self.shared.stats).clone()
    }
    pub fn reset_stats(&self) {
        *lock(&self.shared.stats) = SimStats::default();
    }
    /// Sets the fault of `slave` (`None`: every slave without its own fault).
    pub fn set_fault(&self, slave: Option<u8>, fault: Fault) {
        lock(&self.shared.faults).insert(slave, fault);
    }
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }
    /// Reads a simulated register or bit (as 0/1); `None` if unmapped.
    pub fn register(&self, slave: u8, kind: RegKind, addr: u16) -> Option<u16> {
        let u = self.shared.units.get(&slave)?;
        let mut st = lock(u);
        st.tick();
        st.get(kind, addr)
    }
    /// Overwrites a simulated register (maps it if it was not); returns false for an unknown slave.
    pub fn set_register(&self, slave: u8, kind: RegKind, addr: u16, value: u16) -> bool {
        match self.shared.units.get(&slave) {
            Some(u) => {
                lock(u).set(kind, addr, value);
                true
            }
            None => false,
        }
    }
    /// Makes the indoor unit at `va` behind the CoolMasterNet gateway at `slave` stop (or resume)
    /// answering: the gateway sets its "indoor communication failure" input and keeps serving the
    /// last values. False when there is no such indoor unit.
    pub fn set_indoor_failure(&self, slave: u8, va: u16, failed: bool) -> bool {
        match self.shared.units.get(&slave) {
            Some(u) => lock(u).set_indoor_failure(va, failed),
            None => false,
        }
    }
    /// Removes a register from the map (reads touching it answer exception 02).
    pub fn unmap(&self, slave: u8, kind: RegKind, addr: u16) {
        if let Some(u) = self.shared.units.get(&slave) {
            lock(u).unmap(kind, addr);
        }
    }
}

/// Starts simulators.
pub struct SimServer;

impl SimServer {
    fn shared(units: Vec<SimUnit>) -> Arc<Shared> {
        Arc::new(Shared {
            units: units
                .into_iter()
                .map(|u| (u.slave, Mutex::new(DeviceState::new(&u.device))))
                .collect(),
            faults: Mutex::new(HashMap::new()),
            stats: Mutex::new(SimStats::default()),
        })
    }

    /// Serves Modbus TCP on `addr` (port 0 picks a free port; see [`SimHandle::addr`]).
    pub async fn start_tcp(
        addr: SocketAddr,
        units: Vec<SimUnit>,
        shutdown: CancellationToken,
    ) -> std::io::Result<SimHandle> {
        Self::start_tcp_framed(addr, units, shutdown, false).await
    }

    /// Serves RTU frames over TCP (what a serial-to-Ethernet converter passes through).
    pub async fn start_rtu_over_tcp(
        addr: SocketAddr,
        units: Vec<SimUnit>,
        shutdown: CancellationToken,
    ) -> std::io::Result<SimHandle> {
        Self::start_tcp_framed(addr, units, shutdown, true).await
    }

    async fn start_tcp_framed(
        addr: SocketAddr,
        units: Vec<SimUnit>,
        shutdown: CancellationToken,
        rtu: bool,
    ) -> std::io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let shared = Self::shared(units);
        let svc = SimService(shared.clone());
        tokio::spawn(async move {
            let on_connected = move |stream: tokio::net::TcpStream, _peer: SocketAddr| {
                let svc = svc.clone();
                async move { Ok(Some((svc, stream))) }
            };
            let on_error = |e: std::io::Error| tracing::debug!(error = %e, "sim connection ended");
            if rtu {
                let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
                tokio::select! {
                    r = server.serve(&on_connected, on_error) => {
                        if let Err(e) = r { tracing::warn!(error = %e, "sim server stopped"); }
                    }
                    _ = shutdown.cancelled() => {}
                }
            } else {
                let server = tokio_modbus::server::tcp::Server::new(listener);
                tokio::select! {
                    r = server.serve(&on_connected, on_error) => {
                        if let Err(e) = r { tracing::warn!(error = %e, "sim server stopped"); }
                    }
                    _ = shutdown.cancelled() => {}
                }
            }
        });
        Ok(SimHandle {
            addr: Some(bound),
            path: None,
            shared,
        })
    }

    /// Serves Modbus RTU on a serial device (8N1 at `baud`), e.g. one end of a socat PTY pair.
    pub fn start_rtu(
        path: &Path,
        baud: u32,
        units: Vec<SimUnit>,
        shutdown: CancellationToken,
    ) -> std::io::Result<SimHandle> {
        let builder = tokio_serial::new(path.to_string_lossy(), baud);
        let serial = tokio_serial::SerialStream::open(&builder)?;
        let shared = Self::shared(units);
        let svc = SimService(shared.clone());
        tokio::spawn(async move {
            let server = tokio_modbus::server::rtu::Server::new(serial);
            tokio::select! {
                r = server.serve_forever(svc) => {
                    if let Err(e) = r { tracing::warn!(error = %e, "rtu sim stopped"); }
                }
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(SimHandle {
            addr: None,
            path: Some(path.to_path_buf()),
            shared,
        })
    }
}

#[derive(Clone)]
struct SimService(Arc<Shared>);

type SimFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = SimFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move { handle(&shared, req).await })
    }
}

fn write_of(slave: u8, req: &Request<'_>) -> Option<SimWrite> {
    let (function, address, values) = match req {
        Request::WriteSingleCoil(a, v) => (5, *a, vec![u16::from(*v)]),
        Request::WriteSingleRegister(a, v) => (6, *a, vec![*v]),
        Request::WriteMultipleCoils(a, v) => (15, *a, v.iter().map(|b| u16::from(*b)).collect()),
        Request::WriteMultipleRegisters(a, v) => (16, *a, v.to_vec()),
        Request::MaskWriteRegister(a, and, or) => (22, *a, vec![*and, *or]),
        Request::ReadWriteMultipleRegisters(_, _, a, v) => (23, *a, v.to_vec()),
        _ => return None,
    };
    Some(SimWrite {
        seq: 0,
        slave,
        function,
        address,
        values,
    })
}

async fn handle(
    shared: &Shared,
    req: SlaveRequest<'static>,
) -> Result<Option<Response>, ExceptionCode> {
    let slave = req.slave;
    let fc = req.request.function_code().value();
    let mut write = write_of(slave, &req.request);
    {
        let mut st = lock(&shared.stats);
        st.requests += 1;
        if let Some(w) = write.as_mut() {
            w.seq = st.requests;
        }
        *st.by_function.entry(fc).or_default() += 1;
        *st.by_slave.entry(slave).or_default() += 1;
        if let Some(w) = &write {
            // Bounded for long demo runs: the oldest writes go first.
            if st.writes.len() >= MAX_WRITES_KEPT {
                st.writes.drain(..MAX_WRITES_KEPT / 10);
            }
            st.writes.push(w.clone());
        }
    }
    let Some(unit) = shared.units.get(&slave) else {
        // Not ours: stay silent like a real bus.
        return Ok(None);
    };
    let fault = {
        let f = lock(&shared.faults);
        f.get(&Some(slave)).or_else(|| f.get(&None)).cloned()
    };
    if let Some(f) = fault
        && (!f.only_writes || write.is_some())
    {
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        if f.drop {
            lock(&shared.stats).dropped += 1;
            return Ok(None);
        }
        if let Some(code) = f.exception {
            return Err(ExceptionCode::new(code));
        }
    }
    let mut st = lock(unit);
    st.tick();
    st.apply(req.request).map(Some)
}
