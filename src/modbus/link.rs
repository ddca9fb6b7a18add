//! One Modbus link: opening its transport (TCP, RTU serial, RTU frames over TCP), running one
//! transaction with a timeout, flattening tokio-modbus results into [`ModbusError`], and
//! counting link statistics.
//!
//! Framing is tokio-modbus's; this module never builds a frame by hand. It holds no scheduling
//! policy: the engine's link task decides what runs when.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use crate::config::{Link, LinkKind, Parity};
use crate::model::SlaveId;

use super::profile::RegKind;

/// Why a transaction failed. Exceptions are answers from the device; the rest are not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum ModbusError {
    #[error("device answered with exception {0:#04x} ({name})", name = exception_name(*.0))]
    Exception(u8),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("transport error: {0}")]
    Transport(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Human name of a Modbus exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

impl ModbusError {
    /// Whether the unit itself did not answer. A gateway's exceptions 0x0A/0x0B (path
    /// unavailable, target failed to respond) mean the unit behind it is unreachable.
    pub fn unit_unreachable(&self) -> bool {
        match self {
            ModbusError::Exception(c) => matches!(c, 0x0A | 0x0B),
            _ => true,
        }
    }

    /// Errors after which the transport is re-opened (the stream may hold a late answer).
    pub fn breaks_transport(&self) -> bool {
        !matches!(self, ModbusError::Exception(_))
    }
}

/// The one place where tokio-modbus's nested result is flattened.
pub fn flatten<T>(
    r: Result<Result<T, ExceptionCode>, tokio_modbus::Error>,
) -> Result<T, ModbusError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(code)) => Err(ModbusError::Exception(u8::from(code))),
        Err(tokio_modbus::Error::Transport(e)) => Err(ModbusError::Transport(e.to_string())),
        Err(tokio_modbus::Error::Protocol(e)) => Err(ModbusError::Protocol(e.to_string())),
    }
}

/// One bus operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read {
        kind: RegKind,
        addr: u16,
        count: u16,
    },
    WriteCoils {
        addr: u16,
        values: Vec<bool>,
    },
    WriteRegisters {
        addr: u16,
        values: Vec<u16>,
    },
}

impl Op {
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Read { .. })
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Bits(Vec<bool>),
    Words(Vec<u16>),
    Written,
}

/// Opens the link's transport, bounded by the link timeout.
pub async fn connect(link: &Link) -> Result<Context, ModbusError> {
    open(link)
        .await
        .map_err(|e| ModbusError::Transport(e.to_string()))
}

/// Why a transport could not be opened, in the installer's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// TCP: nothing listens at the address (ECONNREFUSED).
    Refused,
    /// TCP: no answer to the connect within the link timeout.
    TimedOut,
    /// TCP: no route to the host or network (EHOSTUNREACH, ENETUNREACH).
    Unreachable,
    /// Serial: the device node does not exist (ENOENT, ENODEV).
    NoSuchDevice,
    /// Serial: the process may not open the device (EACCES).
    PermissionDenied,
    /// Serial: another process holds the port (EBUSY, or its exclusive lock).
    Busy,
    Other,
}

/// A transport that did not open: what was opened, the named failure and the system's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{target}: {}: {detail}", .failure.name())]
pub struct OpenError {
    pub target: String,
    pub failure: OpenFailure,
    pub detail: String,
}

impl OpenFailure {
    /// The failure named with its errno, as an installer would look it up.
    pub fn name(self) -> &'static str {
        match self {
            OpenFailure::Refused => "connection refused (ECONNREFUSED)",
            OpenFailure::TimedOut => "connection timed out",
            OpenFailure::Unreachable => "host unreachable (EHOSTUNREACH)",
            OpenFailure::NoSuchDevice => "no such device (ENOENT)",
            OpenFailure::PermissionDenied => "permission denied (EACCES)",
            OpenFailure::Busy => "device busy (EBUSY)",
            OpenFailure::Other => "cannot open",
        }
    }

    /// What to check or do about it.
    pub fn hint(self) -> &'static str {
        match self {
            OpenFailure::Refused => {
                "nothing listens there: check the link's address and port, and that the \
                 device's or gateway's Modbus TCP server is enabled"
            }
            OpenFailure::TimedOut | OpenFailure::Unreachable => {
                "check the address, the cabling and the network (ping it), and any firewall \
                 between the box and the device"
            }
            OpenFailure::NoSuchDevice => {
                "check `device` of the link and that the adapter is plugged in: \
                 `ls -l /dev/serial/by-id/` lists the adapters present"
            }
            OpenFailure::PermissionDenied => {
                "the user must be in the group owning the device (`dialout` on Debian): \
                 `sudo usermod -aG dialout $USER` and log in again, or run as `sitegate`"
            }
            OpenFailure::Busy => {
                "another process has the port open; find it with `fuser -v <device>`"
            }
            OpenFailure::Other => "check the link's settings in the config",
        }
    }
}

impl OpenError {
    fn from_io(target: String, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let failure = match e.kind() {
            K::ConnectionRefused => OpenFailure::Refused,
            K::TimedOut => OpenFailure::TimedOut,
            K::HostUnreachable | K::NetworkUnreachable => OpenFailure::Unreachable,
            K::NotFound => OpenFailure::NoSuchDevice,
            K::PermissionDenied => OpenFailure::PermissionDenied,
            K::ResourceBusy => OpenFailure::Busy,
            _ => OpenFailure::Other,
        };
        OpenError {
            target,
            failure,
            detail: e.to_string(),
        }
    }

    fn from_serial(target: String, e: &tokio_serial::Error) -> Self {
        use std::io::ErrorKind as K;
        let failure = match e.kind {
            tokio_serial::ErrorKind::Io(K::NotFound) => OpenFailure::NoSuchDevice,
            tokio_serial::ErrorKind::Io(K::PermissionDenied) => OpenFailure::PermissionDenied,
            // serialport reports EBUSY (TIOCEXCL) and a held exclusive lock as `NoDevice`.
            tokio_serial::ErrorKind::NoDevice
                if e.description.contains("busy") || e.description.contains("lock") =>
            {
                OpenFailure::Busy
            }
            tokio_serial::ErrorKind::NoDevice => OpenFailure::NoSuchDevice,
            _ => OpenFailure::Other,
        };
        OpenError {
            target,
            failure,
            detail: e.description.clone(),
        }
    }
}

/// Opens the link's transport, bounded by the link timeout; a failure is named
/// ([`OpenFailure`]).
pub async fn open(link: &Link) -> Result<Context, OpenError> {
    let t = link.timeout.max(Duration::from_millis(200));
    match &link.kind {
        LinkKind::Tcp { address } | LinkKind::RtuOverTcp { address } => {
            let stream = tokio::time::timeout(t, tokio::net::TcpStream::connect(address.as_str()))
                .await
                .map_err(|_| OpenError {
                    target: format!("`{address}`"),
                    failure: OpenFailure::TimedOut,
                    detail: format!("no connection within {} ms", t.as_millis()),
                })?
                .map_err(|e| OpenError::from_io(format!("`{address}`"), &e))?;
            let _ = stream.set_nodelay(true);
            Ok(if matches!(link.kind, LinkKind::Tcp { .. }) {
                tokio_modbus::client::tcp::attach(stream)
            } else {
                tokio_modbus::client::rtu::attach(stream)
            })
        }
        LinkKind::Rtu {
            device,
            baud,
            parity,
            data_bits,
            stop_bits,
        } => {
            use tokio_serial::SerialPort;
            let builder = tokio_serial::new(device.to_string_lossy(), *baud)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(match data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                });
            let port = tokio_serial::SerialStream::open(&builder)
                .map_err(|e| OpenError::from_serial(format!("`{}`", device.display()), &e))?;
            // Drop whatever a previous conversation left behind (a late answer would shift every
            // later response).
            let _ = port.clear(tokio_serial::ClearBuffer::All);
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

/// Runs one operation against `slave`, bounded by `timeout`.
pub async fn transact(
    ctx: &mut Context,
    slave: SlaveId,
    op: &Op,
    timeout: Duration,
) -> Result<Reply, ModbusError> {
    ctx.set_slave(Slave(slave.get()));
    let fut = async {
        match op {
            Op::Read { kind, addr, count } => match kind {
                RegKind::Coil => flatten(ctx.read_coils(*addr, *count).await).map(Reply::Bits),
                RegKind::Discrete => {
                    flatten(ctx.read_discrete_inputs(*addr, *count).await).map(Reply::Bits)
                }
                RegKind::Input => {
                    flatten(ctx.read_input_registers(*addr, *count).await).map(Reply::Words)
                }
                RegKind::Holding => {
                    flatten(ctx.read_holding_registers(*addr, *count).await).map(Reply::Words)
                }
            },
            Op::WriteCoils { addr, values } => {
                if let [one] = values.as_slice() {
                    flatten(ctx.write_single_coil(*addr, *one).await).map(|()| Reply::Written)
                } else {
                    flatten(ctx.write_multiple_coils(*addr, values).await).map(|()| Reply::Written)
                }
            }
            // FC06 for one register (the most widely supported), FC16 for several (DSE
            // control keys must arrive in one FC16 write).
            Op::WriteRegisters { addr, values } => {
                if let [one] = values.as_slice() {
                    flatten(ctx.write_single_register(*addr, *one).await).map(|()| Reply::Written)
                } else {
                    flatten(ctx.write_multiple_registers(*addr, values).await)
                        .map(|()| Reply::Written)
                }
            }
        }
    };
    let reply = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ModbusError::Timeout)??;
    // A short answer is a protocol error, never a silently truncated value.
    if let (Op::Read { count, .. }, Reply::Words(w)) = (op, &reply)
        && w.len() != usize::from(*count)
    {
        return Err(ModbusError::Protocol(format!(
            "asked for {count} registers, got {}",
            w.len()
        )));
    }
    if let (Op::Read { count, .. }, Reply::Bits(b)) = (op, &reply)
        && b.len() < usize::from(*count)
    {
        return Err(ModbusError::Protocol(format!(
            "asked for {count} bits, got {}",
            b.len()
        )));
    }
    Ok(reply)
}

/// Reads the basic device identification (FC43/14): `(object id, text)` pairs.
pub async fn read_device_id(
    ctx: &mut Context,
    slave: SlaveId,
    timeout: Duration,
) -> Result<Vec<(u8, String)>, ModbusError> {
    use tokio_modbus::prelude::ReadCode;
    ctx.set_slave(Slave(slave.get()));
    let r = tokio::time::timeout(timeout, ctx.read_device_identification(ReadCode::Basic, 0))
        .await
        .map_err(|_| ModbusError::Timeout)?;
    let resp = flatten(r)?;
    Ok(resp
        .device_id_objects
        .iter()
        .map(|o| (o.id, String::from_utf8_lossy(&o.value).into_owned()))
        .collect())
}

/// Upper bounds (ms) of the latency histogram buckets; the last bucket is everything above.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

/// Counters of one link, for technicians (capability `diagnose`) and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkStats {
    pub link: String,
    pub kind: &'static str,
    pub connected: bool,
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub exceptions: u64,
    pub timeouts: u64,
    pub transport_errors: u64,
    pub protocol_errors: u64,
    pub reconnects: u64,
    /// Counts per bucket of [`LATENCY_BUCKETS_MS`] plus one overflow bucket (answered requests).
    pub latency_buckets_ms: Vec<(String, u64)>,
    pub latency_sum_ms: f64,
    pub last_error: Option<String>,
    /// Requests waiting in the link's queues.
    pub queued: u64,
}

impl LinkStats {
    pub fn new(link: &Link) -> LinkStats {
        let mut buckets: Vec<(String, u64)> = LATENCY_BUCKETS_MS
            .iter()
            .map(|b| (format!("le_{b}"), 0))
            .collect();
        buckets.push(("le_inf".into(), 0));
        LinkStats {
            link: link.name.to_string(),
            kind: match link.kind {
                LinkKind::Tcp { .. } => "tcp",
                LinkKind::Rtu { .. } => "rtu",
                LinkKind::RtuOverTcp { .. } => "rtu-over-tcp",
            },
            latency_buckets_ms: buckets,
            ..LinkStats::default()
        }
    }

    /// Counts one finished transaction.
    pub fn record(&mut self, op: &Op, started: Instant, res: &Result<Reply, ModbusError>) {
        self.requests += 1;
        if op.is_write() {
            self.writes += 1;
        } else {
            self.reads += 1;
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match res {
            Ok(_) | Err(ModbusError::Exception(_)) => {
                self.latency_sum_ms += ms;
                let i = LATENCY_BUCKETS_MS
                    .iter()
                    .position(|b| ms <= *b as f64)
                    .unwrap_or(LATENCY_BUCKETS_MS.len());
                if let Some(b) = self.latency_buckets_ms.get_mut(i) {
                    b.1 += 1;
                }
            }
            Err(_) => {}
        }
        if let Err(e) = res {
            self.errors += 1;
            match e {
                ModbusError::Exception(_) => self.exceptions += 1,
                ModbusError::Timeout => self.timeouts += 1,
                ModbusError::Transport(_) => self.transport_errors += 1,
                ModbusError::Protocol(_) => self.protocol_errors += 1,
            }
            self.last_error = Some(e.to_string());
        }
    }
}

impl From<&LinkStats> for crate::metrics::LinkSample {
    /// The counters `/metrics` shows; the latency buckets become seconds, the overflow bucket
    /// `+Inf`.
    fn from(s: &LinkStats) -> Self {
        crate::metrics::LinkSample {
            link: s.link.clone(),
            connected: s.connected,
            requests: s.requests,
            timeouts: s.timeouts,
            exceptions: s.exceptions,
            transport_errors: s.transport_errors,
            protocol_errors: s.protocol_errors,
            latency: s
                .latency_buckets_ms
                .iter()
                .enumerate()
                .map(|(i, (_, n))| {
                    let le = LATENCY_BUCKETS_MS
                        .get(i)
                        .map_or(f64::INFINITY, |ms| *ms as f64 / 1000.0);
                    (le, *n)
                })
                .collect(),
            latency_sum: s.latency_sum_ms / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_maps_each_layer_to_its_variant() {
        let ok: Result<Result<u8, ExceptionCode>, tokio_modbus::Error> = Ok(Ok(1));
        assert_eq!(flatten(ok), Ok(1));
        let ex: Result<Result<u8, ExceptionCode>, tokio_modbus::Error> =
            Ok(Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(flatten(ex), Err(ModbusError::Exception(2)));
        let io: Result<Result<u8, ExceptionCode>, tokio_modbus::Error> = Err(
            tokio_modbus::Error::Transport(std::io::Error::other("broken pipe")),
        );
        assert!(matches!(flatten(io), Err(ModbusError::Transport(m)) if m.contains("broken pipe")));
        assert_eq!(
            ModbusError::Exception(2).to_string(),
            "device answered with exception 0x02 (illegal data address)"
        );
    }

    #[test]
    fn link_stats_become_a_metrics_sample_in_seconds_with_an_overflow_bucket() {
        let mut stats = LinkStats::new(&Link {
            name: crate::model::LinkId::new("bus1").unwrap(),
            kind: LinkKind::Tcp {
                address: "127.0.0.1:502".into(),
            },
            timeout: Duration::from_secs(1),
            retries: 0,
            max_gap: 0,
            inter_frame_delay: Duration::ZERO,
        });
        stats.requests = 3;
        stats.timeouts = 1;
        stats.latency_buckets_ms[4].1 = 2;
        stats.latency_sum_ms = 30.0;
        let sample = crate::metrics::LinkSample::from(&stats);
        assert_eq!(sample.link, "bus1");
        assert_eq!((sample.requests, sample.timeouts), (3, 1));
        assert_eq!(sample.latency.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(sample.latency[4], (0.02, 2));
        assert_eq!(sample.latency.last(), Some(&(f64::INFINITY, 0)));
        assert!((sample.latency_sum - 0.03).abs() < 1e-12);
    }
}
