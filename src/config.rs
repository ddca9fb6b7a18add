//! Site configuration: one TOML file, parsed into raw serde structs that reject unknown keys, then
//! validated into [`Config`], which can only exist when every check passed.
//!
//! Validation collects every problem with its key path (`units[2].slave: …`) before failing, so an
//! installer fixes a broken file in one pass. `sitegate check-config` and `sitegate run` print the
//! same list and exit 78 (EX_CONFIG); the systemd unit does not restart on 78.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{GatewayId, GroupId, LinkId, SiteId, UnitId, check_id};

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
    pub modbus_server: Option<crate::bms::config::RawBms>,
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
    pub modbus_server: Option<crate::bms::BmsConfig>,
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
    pub public_key: crate::grants::PublicKey,
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
    /// Cap of the first reconnect delay after a drop (not in the file: `mqtt::RECONNECT_MIN`).
    pub reconnect_min: Duration,
    /// Uptime after a CONNACK that resets the backoff (not in the file: `mqtt::RECONNECT_STABLE`).
    pub reconnect_stable: Duration,
    /// Events per second a backfill queues at most (not in the file: `mqtt::BACKFILL_RATE`).
    pub backfill_rate: u32,
}

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
    pub slave: u8,
    pub profile: String,
    pub group: Option<GroupId>,
    pub poll_interval: Duration,
    /// Virtual address behind a gateway (shifts the profile by its VA stride).
    pub va: Option<u16>,
    /// Registers added to every address of the profile.
    pub base_offset: u16,
}

impl Config {
    /// Checks the units against their profiles: a VA only on a profile with virtual addresses,
    /// addresses that stay below 65536, and units sharing a slave id on a link whose registers
    /// (points and command writes, per table) do not overlap. Every problem has its key path.
    pub fn check_profiles(
        &self,
        registry: &crate::modbus::ProfileRegistry,
    ) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut placed = Vec::new();
        for (i, u) in self.units.iter().enumerate() {
            let Some(profile) = registry.get(&u.profile) else {
                continue;
            };
            match u.placed(&profile) {
                Ok(p) => placed.push((i, u, p.footprint())),
                Err(e) => problems.push(Problem {
                    path: format!(
                        "units[{i}].{}",
                        if u.va.is_some() { "va" } else { "base_offset" }
                    ),
                    message: e,
                }),
            }
        }
        for (n, (j, b, fb)) in placed.iter().enumerate() {
            for (i, a, fa) in placed.iter().take(n) {
                if a.link != b.link || a.slave != b.slave {
                    continue;
                }
                let clash = fb.iter().find_map(|&(kb, sb, wb)| {
                    fa.iter().find_map(|&(ka, sa, wa)| {
                        let (lo, hi) = (
                            u32::from(sa.max(sb)),
                            (u32::from(sa) + u32::from(wa)).min(u32::from(sb) + u32::from(wb)),
                        );
                        (ka == kb && lo < hi).then_some((kb, lo))
                    })
                });
                if let Some((kind, at)) = clash {
                    problems.push(Problem {
                        path: format!("units[{j}]"),
                        message: format!(
                            "unit `{}` overlaps unit `{}` (units[{i}]) on link `{}` slave {} at {} register {at}; give them different `va` or `base_offset`",
                            b.id,
                            a.id,
                            b.link,
                            b.slave,
                            kind.as_str()
                        ),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl Unit {
    /// The unit's profile moved to its VA or base offset.
    pub fn placed(
        &self,
        profile: &crate::modbus::profile::Profile,
    ) -> Result<crate::modbus::profile::Profile, String> {
        let offset = match self.va {
            Some(va) => profile.va_offset(va)?,
            None => 0,
        };
        let offset = offset
            .checked_add(self.base_offset)
            .ok_or_else(|| "VA and base_offset together pass 65535".to_string())?;
        profile.shifted(offset)
    }
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: None,
            problems: vec![toml_problem(&e)],
        })?;
        raw.validate(base, profile_exists)
    }
}

/// Turns a TOML/serde error into a problem with the key path the parser reported.
fn toml_problem(e: &toml::de::Error) -> Problem {
    let message = e.message().trim_end_matches('.').to_string();
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

impl RawConfig {
    /// Validates every field, collecting all problems.
    pub fn validate(
        self,
        base: &Path,
        profile_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Config, ConfigError> {
        let mut p = Problems(Vec::new());

        let site = self.site.as_ref().and_then(|s| {
            let id = SiteId::new(s.id.clone())
                .map_err(|e| p.add("site.id", e.to_string()))
                .ok();
            let gateway = GatewayId::new(s.gateway.clone())
                .map_err(|e| p.add("site.gateway", e.to_string()))
                .ok();
            Some(Site {
                id: id?,
                gateway: gateway?,
                name: s.name.clone(),
            })
        });

        let state_dir = resolve(base, &self.state.dir);

        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        if !LEVELS.contains(&self.log.level.as_str()) {
            p.add(
                "log.level",
                format!(
                    "`{}` is not one of error, warn, info, debug, trace",
                    self.log.level
                ),
            );
        }

        // api
        let listen = self
            .api
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                p.add(
                    "api.listen",
                    format!("`{}` is not an ip:port address", self.api.listen),
                )
            })
            .ok();
        let mode = match self.api.mode.as_str() {
            "tls" => {
                if self.api.cert.is_some() != self.api.key.is_some() {
                    p.add("api.cert", "`cert` and `key` must be given together");
                }
                ApiMode::Tls {
                    cert: self.api.cert.as_deref().map(|c| resolve(base, c)),
                    key: self.api.key.as_deref().map(|k| resolve(base, k)),
                }
            }
            "plain" => {
                if let Some(l) = listen {
                    if !l.ip().is_loopback() {
                        p.add(
                            "api.mode",
                            format!(
                                "plain HTTP is allowed only on a loopback address, not `{}`",
                                self.api.listen
                            ),
                        );
                    }
                }
                ApiMode::Plain
            }
            other => {
                p.add("api.mode", format!("`{other}` is not one of tls, plain"));
                ApiMode::Plain
            }
        };
        if !(1024..=16 * 1024 * 1024).contains(&self.api.max_body_bytes) {
            p.add("api.max_body_bytes", "must be between 1024 and 16777216");
        }
        if !(100..=600_000).contains(&self.api.request_timeout_ms) {
            p.add("api.request_timeout_ms", "must be between 100 and 600000");
        }
        if self.api.rate_limit_per_sec == 0 || self.api.rate_limit_burst == 0 {
            p.add("api.rate_limit_per_sec", "rate limits must be at least 1");
        }
        if !(100..=60_000).contains(&self.api.fresh_read_timeout_ms) {
            p.add("api.fresh_read_timeout_ms", "must be between 100 and 60000");
        }
        for (i, o) in self.api.cors_origins.iter().enumerate() {
            if !(o.starts_with("https://") || o.starts_with("http://")) || o.contains('*') {
                p.add(
                    format!("api.cors_origins[{i}]"),
                    format!("`{o}` must be an explicit http(s) origin (no wildcards)"),
                );
            }
        }

        // auth
        if !(60..=30 * 86_400).contains(&self.auth.session_ttl_secs) {
            p.add("auth.session_ttl_secs", "must be between 60 and 2592000");
        }
        if self.auth.throttle_base_ms > self.auth.throttle_max_ms {
            p.add(
                "auth.throttle_base_ms",
                "must not exceed `auth.throttle_max_ms`",
            );
        }
        if self.auth.lockout_after_failures == 0 {
            p.add("auth.lockout_after_failures", "must be at least 1");
        }

        // grants
        let mut trust = Vec::new();
        let mut kids = HashSet::new();
        for (i, k) in self.grants.trust.iter().enumerate() {
            let path = format!("grants.trust[{i}]");
            if check_id(&k.kid).is_err() {
                p.add(
                    format!("{path}.kid"),
                    format!("`{}` is not a valid key id", k.kid),
                );
            }
            if !kids.insert(k.kid.clone()) {
                p.add(
                    format!("{path}.kid"),
                    format!("duplicate key id `{}`", k.kid),
                );
            }
            match crate::grants::PublicKey::from_b64(&k.public_key) {
                Ok(pk) => trust.push(TrustKey {
                    kid: k.kid.clone(),
                    public_key: pk,
                }),
                Err(e) => p.add(
                    format!("{path}.public_key"),
                    format!(
                        "{}: the key {e}; it must be a 32-byte Ed25519 public key of prime order, \
                         canonically encoded, in base64url without padding",
                        e.reason()
                    ),
                ),
            }
        }
        if self.grants.future_skew_secs > 86_400 {
            p.add("grants.future_skew_secs", "must be at most 86400");
        }

        // mqtt
        let mqtt = self.mqtt.as_ref().and_then(|m| {
            let (tls, rest) = if let Some(r) = m.url.strip_prefix("mqtts://") {
                (true, r)
            } else if let Some(r) = m.url.strip_prefix("mqtt://") {
                (false, r)
            } else {
                p.add(
                    "mqtt.url",
                    format!("`{}` must start with mqtt:// or mqtts://", m.url),
                );
                return None;
            };
            let rest = rest.trim_end_matches('/');
            let hp = if rest.contains(':') {
                parse_host_port(rest)
            } else if !rest.is_empty() {
                Some((rest.to_string(), if tls { 8883 } else { 1883 }))
            } else {
                None
            };
            let Some((host, port)) = hp else {
                p.add("mqtt.url", format!("`{}` has no valid host:port", m.url));
                return None;
            };
            if !(1..=3600).contains(&m.keep_alive_secs) {
                // rumqttc asserts on keep-alive below 1 s; refuse it here instead.
                p.add("mqtt.keep_alive_secs", "must be between 1 and 3600");
            }
            if m.client_cert.is_some() != m.client_key.is_some() {
                p.add(
                    "mqtt.client_cert",
                    "`client_cert` and `client_key` must be given together",
                );
            }
            if !tls && (m.client_cert.is_some() || m.ca_file.is_some()) {
                p.add(
                    "mqtt.url",
                    "certificates are configured but the url is not mqtts://",
                );
            }
            if m.password_file.is_some() && m.username.is_none() {
                p.add("mqtt.password_file", "a password needs `username`");
            }
            if !(1..=86_400).contains(&m.telemetry_interval_secs) {
                p.add(
                    "mqtt.telemetry_interval_secs",
                    "must be between 1 and 86400",
                );
            }
            if m.telemetry_backlog_max < 10 {
                p.add("mqtt.telemetry_backlog_max", "must be at least 10");
            }
            if !(1..=3600).contains(&m.reconnect_max_secs) {
                p.add("mqtt.reconnect_max_secs", "must be between 1 and 3600");
            }
            let client_id = m.client_id.clone().unwrap_or_else(|| match &site {
                Some(s) => format!("sitegate-{}-{}", s.id, s.gateway),
                None => "sitegate-unprovisioned".into(),
            });
            if client_id.is_empty() || client_id.len() > 128 {
                p.add("mqtt.client_id", "must be 1 to 128 characters");
            }
            Some(Mqtt {
                host,
                port,
                tls,
                client_id,
                username: m.username.clone(),
                password_file: m.password_file.as_deref().map(|x| resolve(base, x)),
                ca_file: m.ca_file.as_deref().map(|x| resolve(base, x)),
                client_cert: m.client_cert.as_deref().map(|x| resolve(base, x)),
                client_key: m.client_key.as_deref().map(|x| resolve(base, x)),
                keep_alive: Duration::from_secs(m.keep_alive_secs),
                telemetry_interval: Duration::from_secs(m.telemetry_interval_secs),
                telemetry_backlog_max: m.telemetry_backlog_max,
                reconnect_max: Duration::from_secs(m.reconnect_max_secs),
                reconnect_min: crate::mqtt::RECONNECT_MIN,
                reconnect_stable: crate::mqtt::RECONNECT_STABLE,
                backfill_rate: crate::mqtt::BACKFILL_RATE,
            })
        });
        if mqtt.is_some() && site.is_none() && self.site.is_none() {
            p.add("mqtt", "MQTT needs a provisioned `[site]`");
        }

        // links
        let mut links = Vec::new();
        let mut link_names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, l) in self.links.iter().enumerate() {
            let path = format!("links[{i}]");
            let name = LinkId::new(l.name.clone())
                .map_err(|e| p.add(format!("{path}.name"), e.to_string()))
                .ok();
            if link_names.insert(l.name.clone(), i).is_some() {
                p.add(
                    format!("{path}.name"),
                    format!("duplicate link name `{}`", l.name),
                );
            }
            if !(10..=60_000).contains(&l.timeout_ms) {
                p.add(format!("{path}.timeout_ms"), "must be between 10 and 60000");
            }
            if l.retries > 10 {
                p.add(format!("{path}.retries"), "must be at most 10");
            }
            if l.max_gap > 100 {
                p.add(format!("{path}.max_gap"), "must be at most 100");
            }
            let net_address = |p: &mut Problems| -> Option<String> {
                match &l.address {
                    Some(a) if parse_host_port(a).is_some() => Some(a.clone()),
                    Some(a) => {
                        p.add(
                            format!("{path}.address"),
                            format!("`{a}` is not a host:port address"),
                        );
                        None
                    }
                    None => {
                        p.add(format!("{path}.address"), "is required for this link kind");
                        None
                    }
                }
            };
            let serial_only = |p: &mut Problems| {
                if l.device.is_some() || l.baud.is_some() || l.parity.is_some() {
                    p.add(
                        format!("{path}.kind"),
                        "`device`, `baud` and `parity` apply only to `rtu` links",
                    );
                }
            };
            let kind = match l.kind.as_str() {
                "tcp" => {
                    serial_only(&mut p);
                    net_address(&mut p).map(|address| LinkKind::Tcp { address })
                }
                "rtu-over-tcp" => {
                    serial_only(&mut p);
                    net_address(&mut p).map(|address| LinkKind::RtuOverTcp { address })
                }
                "rtu" => {
                    if l.address.is_some() {
                        p.add(format!("{path}.address"), "does not apply to `rtu` links");
                    }
                    let device = l.device.as_deref().map(|d| resolve(base, d));
                    if device.is_none() {
                        p.add(format!("{path}.device"), "is required for `rtu` links");
                    }
                    let baud = l.baud.unwrap_or(9600);
                    const BAUDS: [u32; 9] = [
                        1200, 2400, 4800, 9600, 19200, 38400, 57600, 115_200, 230_400,
                    ];
                    if !BAUDS.contains(&baud) {
                        p.add(
                            format!("{path}.baud"),
                            format!("{baud} is not a standard baud rate"),
                        );
                    }
                    let parity = match l.parity.as_deref().unwrap_or("none") {
                        "none" => Parity::None,
                        "even" => Parity::Even,
                        "odd" => Parity::Odd,
                        other => {
                            p.add(
                                format!("{path}.parity"),
                                format!("`{other}` is not one of none, even, odd"),
                            );
                            Parity::None
                        }
                    };
                    let data_bits = l.data_bits.unwrap_or(8);
                    if !(5..=8).contains(&data_bits) {
                        p.add(format!("{path}.data_bits"), "must be 5 to 8");
                    }
                    let stop_bits = l.stop_bits.unwrap_or(1);
                    if !(1..=2).contains(&stop_bits) {
                        p.add(format!("{path}.stop_bits"), "must be 1 or 2");
                    }
                    device.map(|device| LinkKind::Rtu {
                        device,
                        baud,
                        parity,
                        data_bits,
                        stop_bits,
                    })
                }
                other => {
                    p.add(
                        format!("{path}.kind"),
                        format!("`{other}` is not one of tcp, rtu, rtu-over-tcp"),
                    );
                    None
                }
            };
            let inter_frame_delay = match (&kind, l.inter_frame_delay_ms) {
                (_, Some(ms)) if ms > 1000 => {
                    p.add(
                        format!("{path}.inter_frame_delay_ms"),
                        "must be at most 1000",
                    );
                    Duration::ZERO
                }
                (_, Some(ms)) => Duration::from_millis(ms),
                (Some(LinkKind::Rtu { baud, .. }), None) => {
                    // 3.5 character times of 11 bits; the spec fixes 1.75 ms above 19200 baud.
                    if *baud > 19_200 {
                        Duration::from_micros(1750)
                    } else {
                        Duration::from_micros(u64::from(38_500_000 / *baud))
                    }
                }
                _ => Duration::ZERO,
            };
            if let (Some(name), Some(kind)) = (name, kind) {
                links.push(Link {
                    name,
                    kind,
                    timeout: Duration::from_millis(l.timeout_ms),
                    retries: l.retries,
                    max_gap: l.max_gap,
                    inter_frame_delay,
                });
            }
        }

        // units
        let mut units = Vec::new();
        let mut unit_ids = HashSet::new();
        // (link, slave) → whether every unit there so far declared its place (va/base_offset).
        let mut slaves: HashMap<(String, u8), bool> = HashMap::new();
        for (i, u) in self.units.iter().enumerate() {
            let path = format!("units[{i}]");
            let id = UnitId::new(u.id.clone())
                .map_err(|e| p.add(format!("{path}.id"), e.to_string()))
                .ok();
            if !unit_ids.insert(u.id.clone()) {
                p.add(
                    format!("{path}.id"),
                    format!("duplicate unit id `{}`", u.id),
                );
            }
            let link = if link_names.contains_key(&u.link) {
                LinkId::new(u.link.clone()).ok()
            } else {
                p.add(
                    format!("{path}.link"),
                    format!("no link named `{}` in [[links]]", u.link),
                );
                None
            };
            let slave = if (1..=247).contains(&u.slave) {
                u8::try_from(u.slave).ok()
            } else {
                p.add(
                    format!("{path}.slave"),
                    format!(
                        "{} is not a unicast Modbus slave id (1 to 247; 0 is broadcast)",
                        u.slave
                    ),
                );
                None
            };
            let va = u.va.and_then(|v| {
                u16::try_from(v)
                    .map_err(|_| {
                        p.add(format!("{path}.va"), format!("{v} is not a VA (0..=65535)"))
                    })
                    .ok()
            });
            let base_offset = u.base_offset.map_or(Some(0), |v| {
                u16::try_from(v)
                    .map_err(|_| {
                        p.add(
                            format!("{path}.base_offset"),
                            format!("{v} is not a register offset (0..=65535)"),
                        )
                    })
                    .ok()
            });
            let placed = u.va.is_some() || u.base_offset.is_some();
            if let Some(s) = slave {
                match slaves.get(&(u.link.clone(), s)) {
                    Some(&others_placed) if !(others_placed && placed) => p.add(
                        format!("{path}.slave"),
                        format!(
                            "slave id {s} is already used on link `{}` (units sharing a slave id, like indoor units behind one gateway, must each set `va` or `base_offset`)",
                            u.link
                        ),
                    ),
                    _ => {
                        slaves.insert((u.link.clone(), s), placed);
                    }
                }
            }
            if !profile_exists(&u.profile) {
                p.add(
                    format!("{path}.profile"),
                    format!("no profile named `{}`", u.profile),
                );
            }
            let group = u.group.as_ref().and_then(|g| {
                GroupId::new(g.clone())
                    .map_err(|e| p.add(format!("{path}.group"), e.to_string()))
                    .ok()
            });
            if !(100..=86_400_000).contains(&u.poll_interval_ms) {
                p.add(
                    format!("{path}.poll_interval_ms"),
                    "must be between 100 and 86400000",
                );
            }
            if let (Some(id), Some(link), Some(slave), Some(base_offset)) =
                (id, link, slave, base_offset)
            {
                units.push(Unit {
                    name: u.name.clone().unwrap_or_else(|| id.to_string()),
                    id,
                    link,
                    slave,
                    profile: u.profile.clone(),
                    group,
                    poll_interval: Duration::from_millis(u.poll_interval_ms),
                    va,
                    base_offset,
                });
            }
        }

        let modbus_server = self.modbus_server.and_then(|raw| {
            let known: Vec<UnitId> = units.iter().map(|u| u.id.clone()).collect();
            raw.validate(base, &state_dir.join(crate::tls::TLS_DIR), &known)
                .map_err(|problems| {
                    for (path, message) in problems {
                        p.add(path, message);
                    }
                })
                .ok()
        });

        if !p.0.is_empty() {
            return Err(ConfigError {
                file: None,
                problems: p.0,
            });
        }
        Ok(Config {
            site,
            state_dir,
            log_level: self.log.level,
            api: Api {
                listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
                mode,
                max_body_bytes: usize::try_from(self.api.max_body_bytes).unwrap_or(65_536),
                request_timeout: Duration::from_millis(self.api.request_timeout_ms),
                rate_limit_per_sec: self.api.rate_limit_per_sec,
                rate_limit_burst: self.api.rate_limit_burst,
                cors_origins: self.api.cors_origins,
                fresh_read_timeout: Duration::from_millis(self.api.fresh_read_timeout_ms),
            },
            auth: Auth {
                session_ttl: Duration::from_secs(self.auth.session_ttl_secs),
                throttle_base: Duration::from_millis(self.auth.throttle_base_ms),
                throttle_max: Duration::from_millis(self.auth.throttle_max_ms),
                lockout_after_failures: self.auth.lockout_after_failures,
                lockout: Duration::from_secs(self.auth.lockout_secs),
            },
            grants: Grants {
                trust,
                future_skew: Duration::from_secs(self.grants.future_skew_secs),
                clock_rollback_alarm: Duration::from_secs(self.grants.clock_rollback_alarm_secs),
            },
            mqtt,
            profiles_dir: self.profiles.dir.as_deref().map(|d| resolve(base, d)),
            links,
            units,
            modbus_server,
            source: None,
        })
    }
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
        assert_eq!(c.units[0].slave, 3);
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
    fn plain_http_only_on_loopback() {
        let text = GOOD.replace(
            "listen = \"127.0.0.1:8443\"",
            "listen = \"0.0.0.0:8080\"\nmode = \"plain\"",
        );
        let e = Config::parse(&text, Path::new("/"), &any_profile).unwrap_err();
        assert_eq!(e.problems[0].path, "api.mode");
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

    fn hvac(id: &str, slave: u8, place: &str) -> String {
        format!(
            "\n[[units]]\nid = \"{id}\"\nlink = \"bus1\"\nslave = {slave}\nprofile = \"coolmaster-va\"\n{place}\n"
        )
    }

    #[test]
    fn indoor_units_share_a_gateway_slave_id_at_distinct_vas_and_overlaps_are_refused_with_key_paths()
     {
        let reg = crate::modbus::ProfileRegistry::builtin().unwrap();
        let ok = format!(
            "{GOOD}{}{}{}",
            hvac("ac-1", 7, "va = 1"),
            hvac("ac-2", 7, "va = 2"),
            hvac("ac-3", 7, "va = 17")
        );
        let c = Config::parse(&ok, Path::new("/"), &any_profile).unwrap();
        assert_eq!(c.check_profiles(&reg), Ok(()));
        assert_eq!(c.units[2].va, Some(2));

        // Two units at the same VA overlap; VA 0 does not exist; a VA on a profile without VAs.
        let bad = format!(
            "{GOOD}{}{}{}{}",
            hvac("ac-1", 7, "va = 1"),
            hvac("ac-2", 7, "va = 1"),
            hvac("ac-3", 8, "va = 0"),
            "\n[[units]]\nid = \"gen-2\"\nlink = \"bus1\"\nslave = 9\nprofile = \"dse-gencomm\"\nva = 2\n"
        );
        let c = Config::parse(&bad, Path::new("/"), &any_profile).unwrap();
        let e = c.check_profiles(&reg).unwrap_err();
        let shown: Vec<(String, String)> = e.into_iter().map(|p| (p.path, p.message)).collect();
        assert_eq!(
            shown,
            vec![
                (
                    "units[3].va".to_string(),
                    "VA 0 does not exist in profile `coolmaster-va` (VAs start at 1)".to_string()
                ),
                (
                    "units[4].va".to_string(),
                    "profile `dse-gencomm` has no virtual addresses (no `va_first`/`va_stride`)"
                        .to_string()
                ),
                (
                    "units[2]".to_string(),
                    "unit `ac-2` overlaps unit `ac-1` (units[1]) on link `bus1` slave 7 at discrete register 16; give them different `va` or `base_offset`".to_string()
                ),
            ]
        );

        // Sharing a slave id needs every unit there to declare its place.
        let unplaced = format!("{GOOD}{}{}", hvac("ac-1", 7, "va = 1"), hvac("ac-2", 7, ""));
        let e = Config::parse(&unplaced, Path::new("/"), &any_profile).unwrap_err();
        assert_eq!(e.problems[0].path, "units[2].slave");
        assert!(
            e.problems[0]
                .message
                .contains("must each set `va` or `base_offset`")
        );
    }
}
