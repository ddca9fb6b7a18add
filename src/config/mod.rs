//! Site configuration: one TOML file, parsed into raw serde structs that reject unknown keys, then
//! validated into [`Config`], which can only exist when every check passed.
//!
//! Validation collects every problem with its key path (`units[2].slave: …`) before failing, so an
//! installer fixes a broken file in one pass. `sitegate check-config` and `sitegate run` print the
//! same list and exit 78 (EX_CONFIG); the systemd unit does not restart on 78.
//!
//! - this file: the raw and valid forms of every section, loading, and [`Problem`]s.
//! - `checks.rs`: one named check per section (`check_api`, `check_links`, `check_units`, …).
//! - [`modbus_server`]: the `[modbus_server]` section (the server face in [`crate::bms`] is
//!   built from it).
//!
//! The config sits below the modules it configures: they import it, never the reverse (the MQTT
//! defaults that are not in the file, [`RECONNECT_MIN`] and friends, live here for that reason).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{GatewayId, GroupId, LinkId, SiteId, SlaveId, UnitId};

mod checks;
pub mod modbus_server;
mod type_errors;

/// Exit code for an invalid configuration (sysexits EX_CONFIG).
pub const EX_CONFIG: i32 = 78;

/// Largest config file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Raw form: exactly what the file says.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub site: Option<RawSite>,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub grants: RawGrants,
    pub mqtt: Option<RawMqtt>,
    #[serde(default)]
    pub profiles: RawProfiles,
    #[serde(default)]
    pub links: Vec<RawLink>,
    #[serde(default)]
    pub units: Vec<RawUnit>,
    /// The Modbus server face for building management systems (`docs/modbus.md`).
    pub modbus_server: Option<modbus_server::RawBms>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub id: String,
    pub gateway: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}
impl Default for RawState {
    fn default() -> Self {
        RawState {
            dir: default_state_dir(),
        }
    }
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sitegate")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default = "default_log_level")]
    pub level: String,
}
impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: default_log_level(),
        }
    }
}
fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// `tls` (default) or `plain` (only on a loopback address).
    #[serde(default = "default_api_mode")]
    pub mode: String,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: u64,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_rate_per_sec")]
    pub rate_limit_per_sec: u32,
    #[serde(default = "default_rate_burst")]
    pub rate_limit_burst: u32,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    #[serde(default = "default_fresh_read_timeout_ms")]
    pub fresh_read_timeout_ms: u64,
    /// The local console socket (an absolute path), or `off`.
    #[serde(default = "default_console_socket")]
    pub console_socket: String,
}
impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: default_api_listen(),
            mode: default_api_mode(),
            cert: None,
            key: None,
            max_body_bytes: default_body_limit(),
            request_timeout_ms: default_request_timeout_ms(),
            rate_limit_per_sec: default_rate_per_sec(),
            rate_limit_burst: default_rate_burst(),
            cors_origins: Vec::new(),
            fresh_read_timeout_ms: default_fresh_read_timeout_ms(),
            console_socket: default_console_socket(),
        }
    }
}
fn default_api_listen() -> String {
    "0.0.0.0:8443".into()
}
fn default_api_mode() -> String {
    "tls".into()
}
fn default_body_limit() -> u64 {
    64 * 1024
}
fn default_request_timeout_ms() -> u64 {
    15_000
}
fn default_rate_per_sec() -> u32 {
    50
}
fn default_rate_burst() -> u32 {
    100
}
/// The console socket in the runtime directory systemd makes for the service.
pub const DEFAULT_CONSOLE_SOCKET: &str = "/run/sitegate/console.sock";
fn default_console_socket() -> String {
    DEFAULT_CONSOLE_SOCKET.into()
}
fn default_fresh_read_timeout_ms() -> u64 {
    3_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    #[serde(default = "default_throttle_base_ms")]
    pub throttle_base_ms: u64,
    #[serde(default = "default_throttle_max_ms")]
    pub throttle_max_ms: u64,
    #[serde(default = "default_lockout_after")]
    pub lockout_after_failures: u32,
    #[serde(default = "default_lockout_secs")]
    pub lockout_secs: u64,
}
impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            session_ttl_secs: default_session_ttl(),
            throttle_base_ms: default_throttle_base_ms(),
            throttle_max_ms: default_throttle_max_ms(),
            lockout_after_failures: default_lockout_after(),
            lockout_secs: default_lockout_secs(),
        }
    }
}
fn default_session_ttl() -> u64 {
    12 * 3600
}
fn default_throttle_base_ms() -> u64 {
    250
}
fn default_throttle_max_ms() -> u64 {
    30_000
}
fn default_lockout_after() -> u32 {
    10
}
fn default_lockout_secs() -> u64 {
    900
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    /// Trust anchors provisioned at install (also importable with `sitegate trust import`).
    #[serde(default)]
    pub trust: Vec<RawTrustKey>,
    #[serde(default = "default_future_skew")]
    pub future_skew_secs: u64,
    #[serde(default = "default_rollback_alarm")]
    pub clock_rollback_alarm_secs: u64,
}
impl Default for RawGrants {
    fn default() -> Self {
        RawGrants {
            trust: Vec::new(),
            future_skew_secs: default_future_skew(),
            clock_rollback_alarm_secs: default_rollback_alarm(),
        }
    }
}
fn default_future_skew() -> u64 {
    60
}
fn default_rollback_alarm() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustKey {
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, base64url without padding.
    pub public_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// File holding the password (kept out of the config so the config can be world-readable).
    pub password_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the broker's certificate; default: none (mqtts needs it).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    #[serde(default = "default_heartbeat")]
    pub telemetry_interval_secs: u64,
    #[serde(default = "default_telemetry_backlog")]
    pub telemetry_backlog_max: u64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
}
fn default_keep_alive() -> u64 {
    30
}
fn default_heartbeat() -> u64 {
    60
}
fn default_telemetry_backlog() -> u64 {
    50_000
}
fn default_reconnect_max() -> u64 {
    60
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfiles {
    /// Extra profile directory; the built-in profiles are always available.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLink {
    pub name: String,
    /// `tcp`, `rtu` or `rtu-over-tcp`.
    pub kind: String,
    /// host:port for `tcp` and `rtu-over-tcp`.
    pub address: Option<String>,
    /// Serial device for `rtu`.
    pub device: Option<PathBuf>,
    pub baud: Option<u32>,
    /// `none`, `even` or `odd`.
    pub parity: Option<String>,
    pub data_bits: Option<u8>,
    pub stop_bits: Option<u8>,
    /// Silence enforced between transactions on a serial bus (ms); default 3.5 character times.
    pub inter_frame_delay_ms: Option<u64>,
    #[serde(default = "default_link_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_link_retries")]
    pub retries: u32,
    /// Largest register gap bridged when coalescing reads.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
}
fn default_link_timeout() -> u64 {
    1000
}
fn default_link_retries() -> u32 {
    1
}
fn default_max_gap() -> u16 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnit {
    pub id: String,
    pub name: Option<String>,
    pub link: String,
    pub slave: i64,
    pub profile: String,
    pub group: Option<String>,
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Virtual address of the unit behind a multi-unit gateway (profiles with `va_first`).
    pub va: Option<i64>,
    /// Registers added to every address of the profile (a device at a shifted base).
    pub base_offset: Option<i64>,
}
fn default_poll_ms() -> u64 {
    2000
}

// ---------------------------------------------------------------------------------------------
// Valid form.
// ---------------------------------------------------------------------------------------------

/// A configuration that passed validation. Paths are absolute (resolved against the config
/// file's directory).
#[derive(Debug, Clone)]
pub struct Config {
    /// `None` on a box that has not been provisioned yet (it then serves only the setup endpoint).
    pub site: Option<Site>,
    pub state_dir: PathBuf,
    pub log_level: String,
    pub api: Api,
    pub auth: Auth,
    pub grants: Grants,
    pub mqtt: Option<Mqtt>,
    pub profiles_dir: Option<PathBuf>,
    pub links: Vec<Link>,
    pub units: Vec<Unit>,
    /// The Modbus server face for building management systems, if configured.
    pub modbus_server: Option<modbus_server::BmsConfig>,
    /// Where the config was read from (provisioning rewrites it).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub id: SiteId,
    pub gateway: GatewayId,
    pub name: Option<String>,
}

impl Site {
    /// `sitegate/v1/{site}/{gateway}`.
    pub fn topic_root(&self) -> String {
        format!("sitegate/v1/{}/{}", self.id, self.gateway)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiMode {
    Tls {
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    },
    /// Plain HTTP, allowed only on loopback.
    Plain,
}

#[derive(Debug, Clone)]
pub struct Api {
    pub listen: SocketAddr,
    pub mode: ApiMode,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub cors_origins: Vec<String>,
    pub fresh_read_timeout: Duration,
    /// The local console socket for installer tools on the box (`None`: `off`).
    pub console_socket: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub session_ttl: Duration,
    pub throttle_base: Duration,
    pub throttle_max: Duration,
    pub lockout_after_failures: u32,
    pub lockout: Duration,
}

#[derive(Debug, Clone)]
pub struct TrustKey {
    pub kid: String,
    /// Checked: on the curve, canonical, of prime order.
    pub public_key: crate::grants::ed25519::PublicKey,
}

#[derive(Debug, Clone)]
pub struct Grants {
    pub trust: Vec<TrustKey>,
    pub future_skew: Duration,
    pub clock_rollback_alarm: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub keep_alive: Duration,
    pub telemetry_interval: Duration,
    pub telemetry_backlog_max: u64,
    pub reconnect_max: Duration,
    /// Cap of the first reconnect delay after a drop (not in the file: [`RECONNECT_MIN`]).
    pub reconnect_min: Duration,
    /// Uptime after a CONNACK that resets the backoff (not in the file: [`RECONNECT_STABLE`]).
    pub reconnect_stable: Duration,
    /// Events per second a backfill queues at most (not in the file: [`BACKFILL_RATE`]).
    pub backfill_rate: u32,
}

/// Default cap of the first MQTT reconnect delay. Each delay is uniform in [0, cap] ("full
/// jitter"); the cap is the larger of this and twice the time since the drop, up to
/// `reconnect_max` (see docs/mqtt.md, reconnect).
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);

/// Default time an MQTT connection must stay up after its CONNACK to reset the reconnect backoff.
pub const RECONNECT_STABLE: Duration = Duration::from_secs(2);

/// Default rate of an MQTT backfill, in events per second.
pub const BACKFILL_RATE: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Tcp {
        address: String,
    },
    Rtu {
        device: PathBuf,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
    },
    RtuOverTcp {
        address: String,
    },
}

#[derive(Debug, Clone)]
pub struct Link {
    pub name: LinkId,
    pub kind: LinkKind,
    pub timeout: Duration,
    pub retries: u32,
    pub max_gap: u16,
    /// Silence between transactions; zero for TCP.
    pub inter_frame_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub id: UnitId,
    pub name: String,
    pub link: LinkId,
    /// Unicast by construction: never the broadcast address 0.
    pub slave: SlaveId,
    pub profile: String,
    pub group: Option<GroupId>,
    pub poll_interval: Duration,
    /// Virtual address behind a gateway (shifts the profile by its VA stride).
    pub va: Option<u16>,
    /// Registers added to every address of the profile.
    pub base_offset: u16,
}

// ---------------------------------------------------------------------------------------------
// Problems.
// ---------------------------------------------------------------------------------------------

/// One thing wrong with the config, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => writeln!(
                f,
                "invalid config `{}` ({} problem{}):",
                p.display(),
                self.problems.len(),
                if self.problems.len() == 1 { "" } else { "s" }
            )?,
            None => writeln!(f, "invalid config ({} problems):", self.problems.len())?,
        }
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads, parses and validates the file at `path`. `profile_exists` answers whether a profile
    /// name is known (built-in or in the profile directory).
    pub fn load(path: &Path, profile_exists: &dyn Fn(&str) -> bool) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: Some(path.to_path_buf()),
            problems: vec![Problem {
                path: String::new(),
                message,
            }],
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(err(format!("file is larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cfg = Config::parse(&text, &base, profile_exists).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates TOML text; relative paths resolve against `base`.
    pub fn parse(
        text: &str,
        base: &Path,
        profile_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = match serde_path_to_error::deserialize(toml::Deserializer::new(text)) {
            Ok(raw) => raw,
            Err(first) => {
                let first_path = first.path().to_string();
                let first = first.into_inner();
                // A syntax error ends parsing there; a type error does not stop the rest from
                // being checked: every type problem is listed with its key path.
                let problems = match toml::from_str::<toml::Table>(text) {
                    Err(syntax) => vec![toml_problem(&syntax)],
                    Ok(table) => {
                        let mut all = type_errors::problems(&table);
                        match all.iter_mut().find(|p| p.path == first_path) {
                            // The one the parser met first also gets its place in the file.
                            Some(p) => p.message.push_str(&span_note(&first)),
                            None => all.insert(0, toml_problem(&first)),
                        }
                        all
                    }
                };
                return Err(ConfigError {
                    file: None,
                    problems,
                });
            }
        };
        raw.validate(base, profile_exists)
    }
}

/// Turns a TOML/serde error into a problem with the key path the parser reported.
fn toml_problem(e: &toml::de::Error) -> Problem {
    let message = e
        .message()
        .trim_end_matches(['.', '\n'])
        .replace('\n', ": ");
    let line = e.span().map(|_| String::new()).unwrap_or_default();
    Problem {
        path: line,
        message: format!("{message}{}", span_note(e)),
    }
}

fn span_note(e: &toml::de::Error) -> String {
    // The rendered error carries "TOML parse error at line L, column C"; keep just that part.
    let full = e.to_string();
    full.lines()
        .next()
        .and_then(|l| l.strip_prefix("TOML parse error at "))
        .map(|pos| format!(" (at {pos})"))
        .unwrap_or_default()
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_profile(_: &str) -> bool {
        true
    }

    const GOOD: &str = r#"
[site]
id = "s-1"
gateway = "gw-1"

[state]
dir = "state"

[api]
listen = "127.0.0.1:8443"

[[links]]
name = "bus1"
kind = "tcp"
address = "127.0.0.1:5020"

[[links]]
name = "rs485"
kind = "rtu"
device = "/dev/ttyUSB0"
baud = 9600

[[units]]
id = "gen-1"
link = "bus1"
slave = 3
profile = "dse-gencomm"
"#;

    #[test]
    fn a_good_config_validates() {
        let c = Config::parse(GOOD, Path::new("/etc/sitegate"), &any_profile).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/sitegate/state"));
        assert_eq!(c.units[0].slave.get(), 3);
        assert_eq!(c.site.unwrap().topic_root(), "sitegate/v1/s-1/gw-1");
        // 3.5 character times at 9600 baud ≈ 4 ms
        assert_eq!(c.links[1].inter_frame_delay, Duration::from_micros(4010));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_position() {
        let text = GOOD.replace("[api]", "[api]\nlisten_port = 1");
        let e = Config::parse(&text, Path::new("/"), &any_profile).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unknown field `listen_port`"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = r#"
[[links]]
name = "bus1"
kind = "serial"

[[units]]
id = "gen-1"
link = "nope"
slave = 0
profile = "missing"
"#;
        let e = Config::parse(text, Path::new("/"), &|p| p != "missing").unwrap_err();
        let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"links[0].kind"), "{e}");
        assert!(paths.contains(&"units[0].link"), "{e}");
        assert!(paths.contains(&"units[0].slave"), "{e}");
        assert!(paths.contains(&"units[0].profile"), "{e}");
    }

    #[test]
    fn a_serial_link_with_impossible_settings_is_refused_with_each_problem_not_a_panic() {
        // What a client of the commissioning API may send: every serial setting out of range.
        let text = GOOD.replace(
            "device = \"/dev/ttyUSB0\"\nbaud = 9600",
            "device = \"\"\nbaud = 0\nparity = \"odd\"\ndata_bits = 0\nstop_bits = 0",
        );
        let e = Config::parse(&text, Path::new("/"), &any_profile).unwrap_err();
        let found: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            found,
            [
                "links[1].device: must name the serial device (e.g. /dev/ttyUSB0)",
                "links[1].baud: 0 is not a standard baud rate",
                "links[1].data_bits: must be 5 to 8",
                "links[1].stop_bits: must be 1 or 2",
            ]
        );
        // A good device with a bad baud rate alone: one problem, no link timing from it.
        let text = GOOD.replace("baud = 9600", "baud = 0");
        let e = Config::parse(&text, Path::new("/"), &any_profile).unwrap_err();
        let found: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(found, ["links[1].baud: 0 is not a standard baud rate"]);
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:8443\"",
            "listen = \"0.0.0.0:8080\"\nmode = \"plain\"",
        );
        let e = Config::parse(&text, Path::new("/"), &any_profile).unwrap_err();
        assert_eq!(e.problems[0].path, "api.mode");
    }

    #[test]
    fn the_console_socket_is_an_absolute_path_by_default_or_off() {
        let c = Config::parse(GOOD, Path::new("/"), &any_profile).unwrap();
        assert_eq!(
            c.api.console_socket,
            Some(PathBuf::from("/run/sitegate/console.sock"))
        );
        let with = |v: &str| {
            GOOD.replace(
                "listen = \"127.0.0.1:8443\"",
                &format!("listen = \"127.0.0.1:8443\"\nconsole_socket = \"{v}\""),
            )
        };
        let c = Config::parse(&with("off"), Path::new("/"), &any_profile).unwrap();
        assert_eq!(c.api.console_socket, None);
        let c = Config::parse(&with("/tmp/x/console.sock"), Path::new("/"), &any_profile).unwrap();
        assert_eq!(
            c.api.console_socket,
            Some(PathBuf::from("/tmp/x/console.sock"))
        );
        for bad in ["console.sock", "", "/run/sitegate/"] {
            let e = Config::parse(&with(bad), Path::new("/"), &any_profile).unwrap_err();
            assert_eq!(e.problems.len(), 1, "{bad}: {e}");
            assert_eq!(e.problems[0].path, "api.console_socket", "{bad}");
        }
    }

    #[test]
    fn keep_alive_below_one_second_is_refused_before_rumqttc_sees_it() {
        let text =
            format!("{GOOD}\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nkeep_alive_secs = 0\n");
        let e = Config::parse(&text, Path::new("/"), &any_profile).unwrap_err();
        assert_eq!(e.problems[0].path, "mqtt.keep_alive_secs");
    }

    #[test]
    fn duplicate_slave_on_one_link_is_refused() {
        let text = format!(
            "{GOOD}\n[[units]]\nid = \"gen-2\"\nlink = \"bus1\"\nslave = 3\nprofile = \"x\"\n"
        );
        let e = Config::parse(&text, Path::new("/"), &any_profile).unwrap_err();
        assert_eq!(e.problems[0].path, "units[1].slave");
    }
}
