//! The command line: `sitegate run | check-config | version | …`.
//!
//! Each subcommand maps its outcome to a process exit code: 0 success, 1 failure, 78 (EX_CONFIG)
//! for an invalid configuration.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod backup;
pub mod business;
mod console;
#[cfg(feature = "sim")]
pub mod demo;
pub mod grants;
pub mod lockouts;
pub mod provision;
mod shared;
#[cfg(feature = "sim")]
pub mod sim;
pub mod units;
pub mod watch;

use crate::config::Config;
use crate::logging::{self, LogFormat};

pub use shared::{DEFAULT_CONFIG, load_config, load_with_profiles};

#[derive(Debug, Parser)]
#[command(name = "sitegate", version, about = "Site controller gateway daemon")]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file and print every problem with its key path (exit 78 if invalid).
    CheckConfig {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Make the LAN API's self-signed certificate if it is missing (or check the configured
    /// one) and print its SHA-256 fingerprint, for an installer to pin.
    ApiCert {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Extra subject name (DNS name or IP address) for the certificate, besides the host
        /// name, `<host>.local` and the LAN addresses; repeatable. A self-made certificate
        /// missing one of them is made again.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Make a new self-signed certificate even if one exists (a new fingerprint). Refused
        /// for a certificate sitegate did not make.
        #[arg(long)]
        renew: bool,
    },
    /// Print the version and build details.
    Version,
    /// Make signing keys and sign grant bundles, key sets and installer tokens.
    Fleet {
        #[command(subcommand)]
        cmd: grants::FleetCommand,
    },
    /// Manage the keys this box trusts for signed grants.
    Trust {
        #[command(subcommand)]
        cmd: grants::TrustCommand,
    },
    /// Apply a signed envelope from a file, or show the grants state.
    Grants {
        #[command(subcommand)]
        cmd: grants::GrantsCommand,
    },
    /// Serve simulated Modbus units (generator, HVAC) over TCP, RTU or RTU over TCP.
    #[cfg(feature = "sim")]
    Sim(sim::SimArgs),
    /// Unit tools for installers (`units test [UNIT]`: read every point and print a table;
    /// `units watch [UNIT]`: live values).
    #[command(subcommand)]
    Units(UnitsCommand),
    /// Probe slave ids on a link and print proposed `[[units]]` entries.
    Scan(units::ScanArgs),
    /// Provision this box: site and gateway ids, cloud trust keys, device key, TLS certificate,
    /// config (refuses to replace a provisioned box without --force).
    Provision(provision::ProvisionArgs),
    /// Issue a Modbus/TCP Security client certificate (role extension 1.3.6.1.4.1.50316.802.1)
    /// from the site's Modbus client CA, for a building management system.
    ModbusClientCert(crate::bms::cert::CertArgs),
    /// Write the config, database (consistent online copy), device key and TLS pair to one
    /// archive (mode 0600).
    Backup(backup::BackupArgs),
    /// Restore a `sitegate backup` archive: config, state dir (0700), database and keys (0600).
    Restore(backup::RestoreArgs),
    /// Run a complete demo site on loopback: simulated units, four users, the LAN API.
    #[cfg(feature = "sim")]
    Demo(demo::DemoArgs),
    /// See and clear login throttles and lockouts on this box (audited).
    Lockouts {
        #[command(subcommand)]
        cmd: lockouts::LockoutsCommand,
    },
    /// The site owner's control over service businesses: list, suspend, restore.
    Business {
        #[command(subcommand)]
        cmd: business::BusinessCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UnitsCommand {
    /// Read every readable point of a unit (or all units) and print values, units and failures.
    Test(units::UnitsTestArgs),
    /// Print live decoded values of a unit (or all units), read directly on the bus: every
    /// point, then each change (`--count N` rounds, or until Ctrl-C).
    Watch(watch::UnitsWatchArgs),
}

/// Process environment lookup (tests pass their own).
fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Version => {
            println!(
                "sitegate {} (schema {}, target {})",
                env!("CARGO_PKG_VERSION"),
                crate::store::SCHEMA_VERSION,
                std::env::consts::ARCH
            );
            0
        }
        Command::Fleet { cmd } => grants::run_fleet(cmd),
        Command::Trust { cmd } => grants::run_trust(cmd),
        Command::Grants { cmd } => grants::run_grants(cmd),
        Command::Lockouts { cmd } => lockouts::run(cmd),
        Command::Business { cmd } => {
            logging::init(cli.log_format, "warn", &env);
            business::run(cmd)
        }
        Command::Units(UnitsCommand::Test(args)) => {
            logging::init(cli.log_format, "error", &env);
            units::units_test(args)
        }
        Command::Units(UnitsCommand::Watch(args)) => {
            logging::init(cli.log_format, "error", &env);
            watch::units_watch(args)
        }
        Command::Scan(args) => {
            logging::init(cli.log_format, "error", &env);
            units::scan(args)
        }
        Command::Backup(args) => backup::run_backup(&args),
        Command::Restore(args) => backup::run_restore(&args),
        Command::Provision(args) => {
            logging::init(cli.log_format, "warn", &env);
            provision::run_cli(args)
        }
        Command::ModbusClientCert(args) => crate::bms::cert::run_cli(args),
        #[cfg(feature = "sim")]
        Command::Demo(args) => {
            logging::init(cli.log_format, "warn", &env);
            demo::run(args)
        }
        #[cfg(feature = "sim")]
        Command::Sim(args) => {
            logging::init(cli.log_format, "info", &env);
            sim::run(args)
        }
        Command::CheckConfig { config } => match load_config(&config) {
            Ok(c) => {
                // The Modbus face's CA and CRLs, as a reload checks them before applying.
                if let Some(t) = c.modbus_server.as_ref().and_then(|b| b.tls.as_ref())
                    && let Err(e) = crate::bms::tls::check_client_trust(&t.files)
                {
                    eprintln!("config `{}`: modbus_server.tls: {e}", config.display());
                    return crate::config::EX_CONFIG;
                }
                print!("{}", check_config_report(&config, &c));
                0
            }
            Err(code) => code,
        },
        Command::ApiCert {
            config,
            names,
            renew,
        } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            api_cert(&cfg, &names, renew)
        }
        Command::Run { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            logging::init(cli.log_format, &cfg.log_level, &env);
            match crate::app::run_daemon(cfg) {
                Ok(()) => 0,
                Err(e) => e.exit_code(),
            }
        }
    }
}

/// `sitegate api-cert`: ensure the API certificate and print its fingerprint.
fn api_cert(cfg: &Config, names: &[String], renew: bool) -> i32 {
    use crate::config::ApiMode;
    let res = match &cfg.api.mode {
        ApiMode::Plain => {
            println!(
                "the LAN API is configured for plain HTTP on loopback; no certificate is used"
            );
            return 0;
        }
        ApiMode::Tls {
            cert: Some(c),
            key: Some(k),
        } => {
            if renew || !names.is_empty() {
                eprintln!(
                    "error: the LAN API uses the configured certificate `{}`; sitegate never replaces it",
                    c.display()
                );
                return 1;
            }
            crate::tls::load(c, k)
        }
        ApiMode::Tls { .. } => {
            let mut all = crate::tls::default_names();
            all.extend(names.iter().cloned());
            if renew {
                crate::tls::renew(&cfg.state_dir, &all)
            } else {
                crate::tls::ensure_self_signed(&cfg.state_dir, &all)
            }
        }
    };
    match res {
        Ok(m) => {
            if m.created {
                println!("created `{}`", m.cert_path.display());
            }
            println!("certificate: {}", m.cert_path.display());
            println!("sha256 fingerprint: {}", m.fingerprint);
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Trust keys in the database that did not come from the config (`sitegate trust import`, a
/// keys envelope) and are usable now: `Ok(None)` without a database. Read-only: never creates,
/// migrates or changes it.
fn database_trust_keys(c: &crate::config::Config) -> Result<Option<usize>, String> {
    use crate::clock::Clock;
    let Some(conn) = crate::store::open_read_only(&c.state_dir).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let set = crate::grants::trust::TrustSet::load(&conn).map_err(|e| e.to_string())?;
    let now = crate::clock::SystemClock.now();
    Ok(Some(
        set.keys
            .values()
            .filter(|k| k.source != "config")
            .filter(|k| k.retired_at.is_none() && k.not_after.is_none_or(|n| now < n))
            .count(),
    ))
}

/// What `check-config` prints for a valid config: the counts, whether the box is provisioned, and
/// warnings about a config that would start a box nobody can log in to. Keys added with
/// `sitegate trust import` live in the database: it is read (read-only, never created or
/// migrated, see [`crate::store::open_read_only`]) when it exists; one it cannot read is said.
fn check_config_report(path: &std::path::Path, c: &crate::config::Config) -> String {
    let mut out = format!(
        "config `{}` is valid: {} link(s), {} unit(s)\n",
        path.display(),
        c.links.len(),
        c.units.len()
    );
    let Some(site) = &c.site else {
        out.push_str(
            "not provisioned (no [site]): the daemon serves only the first-boot setup; \
             provision with the setup code over the LAN or `sitegate provision`\n",
        );
        return out;
    };
    let (db_keys, db_note) = match database_trust_keys(c) {
        Ok(None) => (0, String::new()),
        Ok(Some(n)) => (n, format!(" (+{n} in the database)")),
        Err(e) => (
            0,
            format!(" (the database could not be read for imported keys: {e})"),
        ),
    };
    out.push_str(&format!(
        "provisioned: site {}, gateway {}, {} trust key(s){db_note}, MQTT {}\n",
        site.id,
        site.gateway,
        c.grants.trust.len(),
        if c.mqtt.is_some() { "on" } else { "off" }
    ));
    if c.grants.trust.is_empty() && db_keys == 0 {
        out.push_str(
            "warning: no [[grants.trust]] key: nobody can log in (bundles and installer tokens \
             are verified against trust keys) unless one was imported with `sitegate trust \
             import` (see `sitegate trust list`)\n",
        );
    } else if c.mqtt.is_none() {
        out.push_str(
            "note: no [mqtt]: user bundles reach this box only with `sitegate grants apply` on \
             the box; installers can log in with an installer token\n",
        );
    }
    out
}
