//! `sitegate sim`: serves simulated units until SIGINT/SIGTERM. Prints one line per transport
//! with the bound address (useful with port 0).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::modbus::ProfileRegistry;
use crate::sim::{SimServer, SimUnit};

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Serve Modbus TCP on this address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<SocketAddr>,
    /// Serve Modbus RTU on this serial device (e.g. one end of a socat PTY pair).
    #[arg(long, value_name = "DEVICE")]
    pub rtu: Option<PathBuf>,
    /// Serve RTU frames over TCP (like a serial-to-Ethernet converter).
    #[arg(long, value_name = "ADDR")]
    pub rtu_over_tcp: Option<SocketAddr>,
    /// Baud rate of the RTU device (8 data bits, no parity, 1 stop bit).
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// A generator controller (dse-gencomm) at this slave id; repeatable.
    #[arg(long = "generator", value_name = "SLAVE", value_parser = clap::value_parser!(u8).range(1..=247))]
    pub generators: Vec<u8>,
    /// A generator controller with page-154 alarms (dse-gencomm-page154); repeatable.
    #[arg(long = "generator-page154", value_name = "SLAVE", value_parser = clap::value_parser!(u8).range(1..=247))]
    pub generators_page154: Vec<u8>,
    /// A CoolMasterNet gateway with one indoor unit at VA 1 (coolmaster-va); repeatable.
    #[arg(long = "hvac", value_name = "SLAVE", value_parser = clap::value_parser!(u8).range(1..=247))]
    pub hvacs: Vec<u8>,
    /// A CoolMasterNet gateway with indoor units at these VAs: `SLAVE=VA,VA,…`; repeatable.
    #[arg(long = "coolmaster", value_name = "SLAVE=VAS")]
    pub coolmasters: Vec<String>,
    /// An Eastron SDM630 energy meter (eastron-sdm630) at this slave id; repeatable.
    #[arg(long = "sdm630", value_name = "SLAVE", value_parser = clap::value_parser!(u8).range(1..=247))]
    pub meters: Vec<u8>,
    /// A plain register map of a profile: `SLAVE=PROFILE`; repeatable.
    #[arg(long = "profile", value_name = "SLAVE=PROFILE")]
    pub profiles: Vec<String>,
    /// Extra profile directory for `--profile`.
    #[arg(long, value_name = "DIR")]
    pub profiles_dir: Option<PathBuf>,
}

fn units(args: &SimArgs) -> Result<Vec<SimUnit>, String> {
    let mut units: Vec<SimUnit> = Vec::new();
    units.extend(args.generators.iter().map(|s| SimUnit::generator(*s)));
    units.extend(
        args.generators_page154
            .iter()
            .map(|s| SimUnit::generator_page154(*s)),
    );
    units.extend(args.hvacs.iter().map(|s| SimUnit::hvac(*s)));
    units.extend(args.meters.iter().map(|s| SimUnit::sdm630(*s)));
    for spec in &args.coolmasters {
        let (slave, vas) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}`: expected SLAVE=VA,VA,…"))?;
        let slave: u8 = slave
            .parse()
            .ok()
            .filter(|s| (1..=247).contains(s))
            .ok_or_else(|| format!("`{spec}`: slave id must be 1..=247"))?;
        let vas = vas
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|v| (1..=4095).contains(v))
            })
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| format!("`{spec}`: VAs are numbers from 1 to 4095"))?;
        units.push(SimUnit::coolmaster(slave, &vas));
    }
    if !args.profiles.is_empty() {
        let reg = ProfileRegistry::load(args.profiles_dir.as_deref())
            .map_err(|e| format!("profiles: {}", e.join("; ")))?;
        for spec in &args.profiles {
            let (slave, name) = spec
                .split_once('=')
                .ok_or_else(|| format!("`{spec}`: expected SLAVE=PROFILE"))?;
            let slave: u8 = slave
                .parse()
                .ok()
                .filter(|s| (1..=247).contains(s))
                .ok_or_else(|| format!("`{spec}`: slave id must be 1..=247"))?;
            let p = reg
                .get(name)
                .ok_or_else(|| format!("`{spec}`: unknown profile `{name}`"))?;
            units.push(SimUnit::profile(slave, p));
        }
    }
    if units.is_empty() {
        units = vec![SimUnit::generator(1), SimUnit::hvac(2)];
    }
    let mut seen = std::collections::HashSet::new();
    for u in &units {
        if !seen.insert(u.slave) {
            return Err(format!("slave id {} is used twice", u.slave));
        }
    }
    Ok(units)
}

/// Runs the simulator; returns the exit code.
pub fn run(args: SimArgs) -> i32 {
    if args.tcp.is_none() && args.rtu.is_none() && args.rtu_over_tcp.is_none() {
        eprintln!("sitegate sim: give at least one of --tcp, --rtu, --rtu-over-tcp");
        return 2;
    }
    let units = match units(&args) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("sitegate sim: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sitegate sim: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let stop = CancellationToken::new();
        let list: Vec<String> = units
            .iter()
            .map(|u| format!("{}={}", u.slave, u.device.name()))
            .collect();
        let mut out = std::io::stdout();
        if let Some(a) = args.tcp {
            match SimServer::start_tcp(a, units.clone(), stop.clone()).await {
                Ok(h) => {
                    let _ = writeln!(
                        out,
                        "sim tcp listening on {} units {}",
                        h.addr.map(|a| a.to_string()).unwrap_or_default(),
                        list.join(",")
                    );
                }
                Err(e) => {
                    eprintln!("sitegate sim: cannot listen on `{a}`: {e}");
                    return 1;
                }
            }
        }
        if let Some(a) = args.rtu_over_tcp {
            match SimServer::start_rtu_over_tcp(a, units.clone(), stop.clone()).await {
                Ok(h) => {
                    let _ = writeln!(
                        out,
                        "sim rtu-over-tcp listening on {} units {}",
                        h.addr.map(|a| a.to_string()).unwrap_or_default(),
                        list.join(",")
                    );
                }
                Err(e) => {
                    eprintln!("sitegate sim: cannot listen on `{a}`: {e}");
                    return 1;
                }
            }
        }
        if let Some(p) = &args.rtu {
            match SimServer::start_rtu(p, args.baud, units.clone(), stop.clone()) {
                Ok(_) => {
                    let _ = writeln!(
                        out,
                        "sim rtu serving {} at {} baud units {}",
                        p.display(),
                        args.baud,
                        list.join(",")
                    );
                }
                Err(e) => {
                    eprintln!("sitegate sim: cannot open `{}`: {e}", p.display());
                    return 1;
                }
            }
        }
        let _ = out.flush();
        crate::signal::wait_for_signal().await;
        stop.cancel();
        0
    })
}
