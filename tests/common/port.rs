//! Free TCP ports for the daemons, brokers and simulators a test starts.
//!
//! A port is picked below the kernel's ephemeral range (`ip_local_port_range`): binding port 0
//! would hand out an ephemeral port, and between the moment it is released and the moment the
//! child process binds it, an outgoing connection (a box connecting to its broker, say) may take
//! it as its local port, and the child then fails with "address in use". Outgoing connections
//! never draw from below the range. Each process starts at its own offset (from its pid) and
//! walks the ports in order, so neither two tests of one process nor two test processes hand
//! out the same port; a port something else listens on is skipped. The helper files that hand
//! out ports (broker, daemon, modbus) each load this file as their own module, with its own
//! counter, so each walks its own lane of the range.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const FIRST: u16 = 10_000;

/// Lanes the range is split into (one per helper file that loads this one).
pub const LANES: u32 = 4;

/// A free TCP port on 127.0.0.1 below the ephemeral range, in `lane` (checked by binding it).
pub fn free_port_in(lane: u32) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = u32::from(low.saturating_sub(FIRST)) / LANES;
    if span > 0 {
        let base = u32::from(FIRST) + (lane % LANES) * span;
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (base + (start + n) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    // No room below the range: an ephemeral port, as before.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
