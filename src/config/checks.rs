//! Validation of the raw config: one named check per section, each adding its problems (with
//! their key paths) to a shared list and returning the valid form of its section.
//!
//! [`RawConfig::validate`] runs them in file order (site, log, api, auth, grants, mqtt, links,
//! units, modbus_server), so problems are reported in that order. A check never stops at its
//! first problem: an installer fixes a broken file in one pass. A new section gets its own
//! `check_*` function here and one line in `validate`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{GatewayId, GroupId, LinkId, SiteId, SlaveId, UnitId, check_id};

use super::{
    Api, ApiMode, Auth, BACKFILL_RATE, Config, ConfigError, Grants, Link, LinkKind, Mqtt, Parity,
    Problems, RECONNECT_MIN, RECONNECT_STABLE, RawApi, RawAuth, RawConfig, RawGrants, RawLink,
    RawLog, RawMqtt, RawSite, RawUnit, Site, TrustKey, Unit, parse_host_port, resolve,
};

/// Log levels `log.level` accepts.
const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Baud rates an `rtu` link accepts.
const BAUDS: [u32; 9] = [
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115_200, 230_400,
];

impl RawConfig {
    /// Validates every field, collecting all problems.
    pub fn validate(
        self,
        base: &Path,
        profile_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Config, ConfigError> {
        let mut p = Problems(Vec::new());
        let site = check_site(self.site.as_ref(), &mut p);
        let state_dir = resolve(base, &self.state.dir);
        check_log(&self.log, &mut p);
        let api = check_api(self.api, base, &mut p);
        check_auth(&self.auth, &mut p);
        let trust = check_trust(&self.grants, &mut p);
        let mqtt = self
            .mqtt
            .as_ref()
            .and_then(|m| check_mqtt(m, site.as_ref(), base, &mut p));
        if mqtt.is_some() && site.is_none() && self.site.is_none() {
            p.add("mqtt", "MQTT needs a provisioned `[site]`");
        }
        let (links, link_names) = check_links(&self.links, base, &mut p);
        let units = check_units(&self.units, &link_names, profile_exists, &mut p);
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
            api,
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

/// `[site]`: the site and gateway ids (absent on a box not provisioned yet).
fn check_site(site: Option<&RawSite>, p: &mut Problems) -> Option<Site> {
    let s = site?;
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
}

/// `[log]`: a known level.
fn check_log(log: &RawLog, p: &mut Problems) {
    if !LEVELS.contains(&log.level.as_str()) {
        p.add(
            "log.level",
            format!(
                "`{}` is not one of error, warn, info, debug, trace",
                log.level
            ),
        );
    }
}

/// `[api]`: listen address, TLS or loopback-only plain HTTP, and the request limits.
fn check_api(api: RawApi, base: &Path, p: &mut Problems) -> Api {
    let listen = api
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| {
            p.add(
                "api.listen",
                format!("`{}` is not an ip:port address", api.listen),
            )
        })
        .ok();
    let mode = check_api_mode(&api, listen, base, p);
    if !(1024..=16 * 1024 * 1024).contains(&api.max_body_bytes) {
        p.add("api.max_body_bytes", "must be between 1024 and 16777216");
    }
    if !(100..=600_000).contains(&api.request_timeout_ms) {
        p.add("api.request_timeout_ms", "must be between 100 and 600000");
    }
    if api.rate_limit_per_sec == 0 || api.rate_limit_burst == 0 {
        p.add("api.rate_limit_per_sec", "rate limits must be at least 1");
    }
    if !(100..=60_000).contains(&api.fresh_read_timeout_ms) {
        p.add("api.fresh_read_timeout_ms", "must be between 100 and 60000");
    }
    for (i, o) in api.cors_origins.iter().enumerate() {
        if !(o.starts_with("https://") || o.starts_with("http://")) || o.contains('*') {
            p.add(
                format!("api.cors_origins[{i}]"),
                format!("`{o}` must be an explicit http(s) origin (no wildcards)"),
            );
        }
    }
    let console_socket = match api.console_socket.as_str() {
        "off" => None,
        path if Path::new(path).is_absolute() && !path.ends_with('/') => Some(PathBuf::from(path)),
        other => {
            p.add(
                "api.console_socket",
                format!("`{other}` must be an absolute path to a socket file, or `off`"),
            );
            None
        }
    };
    Api {
        // The fallbacks are never used: a problem above means no `Config` is built.
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
        mode,
        max_body_bytes: usize::try_from(api.max_body_bytes).unwrap_or(65_536),
        request_timeout: Duration::from_millis(api.request_timeout_ms),
        rate_limit_per_sec: api.rate_limit_per_sec,
        rate_limit_burst: api.rate_limit_burst,
        cors_origins: api.cors_origins,
        fresh_read_timeout: Duration::from_millis(api.fresh_read_timeout_ms),
        console_socket,
    }
}

/// `api.mode`: `tls` with both or neither of `cert`/`key`, or `plain` on a loopback address only.
fn check_api_mode(
    api: &RawApi,
    listen: Option<SocketAddr>,
    base: &Path,
    p: &mut Problems,
) -> ApiMode {
    match api.mode.as_str() {
        "tls" => {
            if api.cert.is_some() != api.key.is_some() {
                p.add("api.cert", "`cert` and `key` must be given together");
            }
            ApiMode::Tls {
                cert: api.cert.as_deref().map(|c| resolve(base, c)),
                key: api.key.as_deref().map(|k| resolve(base, k)),
            }
        }
        "plain" => {
            if let Some(l) = listen
                && !l.ip().is_loopback()
            {
                p.add(
                    "api.mode",
                    format!(
                        "plain HTTP is allowed only on a loopback address, not `{}`",
                        api.listen
                    ),
                );
            }
            ApiMode::Plain
        }
        other => {
            p.add("api.mode", format!("`{other}` is not one of tls, plain"));
            ApiMode::Plain
        }
    }
}

/// `[auth]`: session lifetime, throttle bounds and lockout.
fn check_auth(auth: &RawAuth, p: &mut Problems) {
    if !(60..=30 * 86_400).contains(&auth.session_ttl_secs) {
        p.add("auth.session_ttl_secs", "must be between 60 and 2592000");
    }
    if auth.throttle_base_ms > auth.throttle_max_ms {
        p.add(
            "auth.throttle_base_ms",
            "must not exceed `auth.throttle_max_ms`",
        );
    }
    if auth.lockout_after_failures == 0 {
        p.add("auth.lockout_after_failures", "must be at least 1");
    }
}

/// `[grants]`: the trust anchors (unique key ids, keys that are valid Ed25519 points) and the
/// accepted clock skew.
fn check_trust(grants: &RawGrants, p: &mut Problems) -> Vec<TrustKey> {
    let mut trust = Vec::new();
    let mut kids = HashSet::new();
    for (i, k) in grants.trust.iter().enumerate() {
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
        match crate::grants::ed25519::PublicKey::from_b64(&k.public_key) {
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
    if grants.future_skew_secs > 86_400 {
        p.add("grants.future_skew_secs", "must be at most 86400");
    }
    trust
}

/// `[mqtt]`: broker url, credentials that fit the scheme, and the timing bounds (keep-alive is
/// checked here because rumqttc asserts on it).
fn check_mqtt(m: &RawMqtt, site: Option<&Site>, base: &Path, p: &mut Problems) -> Option<Mqtt> {
    let (tls, host, port) = check_mqtt_url(&m.url, p)?;
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
    let client_id = m.client_id.clone().unwrap_or_else(|| match site {
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
        reconnect_min: RECONNECT_MIN,
        reconnect_stable: RECONNECT_STABLE,
        backfill_rate: BACKFILL_RATE,
    })
}

/// `mqtt.url`: `mqtt://host[:port]` or `mqtts://host[:port]` → (tls, host, port).
fn check_mqtt_url(url: &str, p: &mut Problems) -> Option<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        p.add(
            "mqtt.url",
            format!("`{url}` must start with mqtt:// or mqtts://"),
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
        p.add("mqtt.url", format!("`{url}` has no valid host:port"));
        return None;
    };
    Some((tls, host, port))
}

/// `[[links]]`: unique names and each link's own settings. Returns the valid links and every
/// name given (valid or not) with its index, for the units' `link` check.
fn check_links(
    raw: &[RawLink],
    base: &Path,
    p: &mut Problems,
) -> (Vec<Link>, BTreeMap<String, usize>) {
    let mut links = Vec::new();
    let mut link_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, l) in raw.iter().enumerate() {
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
        if let Some(link) = check_link(l, name, &path, base, p) {
            links.push(link);
        }
    }
    (links, link_names)
}

/// One `[[links]]` entry after its name: timing, kind and the kind's own settings.
fn check_link(
    l: &RawLink,
    name: Option<LinkId>,
    path: &str,
    base: &Path,
    p: &mut Problems,
) -> Option<Link> {
    if !(10..=60_000).contains(&l.timeout_ms) {
        p.add(format!("{path}.timeout_ms"), "must be between 10 and 60000");
    }
    if l.retries > 10 {
        p.add(format!("{path}.retries"), "must be at most 10");
    }
    if l.max_gap > 100 {
        p.add(format!("{path}.max_gap"), "must be at most 100");
    }
    let kind = match l.kind.as_str() {
        "tcp" => {
            check_no_serial_settings(l, path, p);
            check_net_address(l, path, p).map(|address| LinkKind::Tcp { address })
        }
        "rtu-over-tcp" => {
            check_no_serial_settings(l, path, p);
            check_net_address(l, path, p).map(|address| LinkKind::RtuOverTcp { address })
        }
        "rtu" => check_serial(l, path, base, p),
        other => {
            p.add(
                format!("{path}.kind"),
                format!("`{other}` is not one of tcp, rtu, rtu-over-tcp"),
            );
            None
        }
    };
    let inter_frame_delay = check_inter_frame_delay(l, kind.as_ref(), path, p);
    Some(Link {
        name: name?,
        kind: kind?,
        timeout: Duration::from_millis(l.timeout_ms),
        retries: l.retries,
        max_gap: l.max_gap,
        inter_frame_delay,
    })
}

/// `address` of a network link: required, host:port.
fn check_net_address(l: &RawLink, path: &str, p: &mut Problems) -> Option<String> {
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
}

/// A network link carries no serial settings.
fn check_no_serial_settings(l: &RawLink, path: &str, p: &mut Problems) {
    if l.device.is_some() || l.baud.is_some() || l.parity.is_some() {
        p.add(
            format!("{path}.kind"),
            "`device`, `baud` and `parity` apply only to `rtu` links",
        );
    }
}

/// An `rtu` link: a device, no address, and a standard serial line setting.
fn check_serial(l: &RawLink, path: &str, base: &Path, p: &mut Problems) -> Option<LinkKind> {
    if l.address.is_some() {
        p.add(format!("{path}.address"), "does not apply to `rtu` links");
    }
    // A serial link is built only from settings that are all valid: its timing (the inter-frame
    // delay divides by the baud rate) must never see a refused value.
    let mut valid = true;
    let device = match l.device.as_deref() {
        None => {
            p.add(format!("{path}.device"), "is required for `rtu` links");
            None
        }
        Some(d) if d.as_os_str().is_empty() => {
            p.add(
                format!("{path}.device"),
                "must name the serial device (e.g. /dev/ttyUSB0)",
            );
            None
        }
        Some(d) => Some(resolve(base, d)),
    };
    let baud = l.baud.unwrap_or(9600);
    if !BAUDS.contains(&baud) {
        valid = false;
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
        valid = false;
        p.add(format!("{path}.data_bits"), "must be 5 to 8");
    }
    let stop_bits = l.stop_bits.unwrap_or(1);
    if !(1..=2).contains(&stop_bits) {
        valid = false;
        p.add(format!("{path}.stop_bits"), "must be 1 or 2");
    }
    device.filter(|_| valid).map(|device| LinkKind::Rtu {
        device,
        baud,
        parity,
        data_bits,
        stop_bits,
    })
}

/// `inter_frame_delay_ms`: at most a second; on a serial link it defaults to 3.5 character
/// times, zero elsewhere.
fn check_inter_frame_delay(
    l: &RawLink,
    kind: Option<&LinkKind>,
    path: &str,
    p: &mut Problems,
) -> Duration {
    match (kind, l.inter_frame_delay_ms) {
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
                Duration::from_micros(u64::from(38_500_000u32.checked_div(*baud).unwrap_or(0)))
            }
        }
        _ => Duration::ZERO,
    }
}

/// `[[units]]`: unique ids, a known link and profile, a unicast slave id, and slave ids shared
/// on a link only by units that each declare their place (`va` or `base_offset`).
fn check_units(
    raw: &[RawUnit],
    link_names: &BTreeMap<String, usize>,
    profile_exists: &dyn Fn(&str) -> bool,
    p: &mut Problems,
) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut unit_ids = HashSet::new();
    // (link, slave) → whether every unit there so far declared its place (va/base_offset).
    let mut slaves: HashMap<(String, SlaveId), bool> = HashMap::new();
    for (i, u) in raw.iter().enumerate() {
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
        let slave = SlaveId::try_from(u.slave)
            .map_err(|e| p.add(format!("{path}.slave"), e.to_string()))
            .ok();
        let (va, base_offset) = check_unit_place(u, &path, p);
        if let Some(s) = slave {
            check_shared_slave(u, s, &mut slaves, &path, p);
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
    units
}

/// A slave id already used on the unit's link is allowed only when every unit there, this one
/// included, declares its place (`va` or `base_offset`). `slaves` maps (link, slave id) to whether
/// every unit seen there so far did.
fn check_shared_slave(
    u: &RawUnit,
    slave: SlaveId,
    slaves: &mut HashMap<(String, SlaveId), bool>,
    path: &str,
    p: &mut Problems,
) {
    let placed = u.va.is_some() || u.base_offset.is_some();
    match slaves.get(&(u.link.clone(), slave)) {
        Some(&others_placed) if !(others_placed && placed) => p.add(
            format!("{path}.slave"),
            format!(
                "slave id {slave} is already used on link `{}` (units sharing a slave id, like indoor units behind one gateway, must each set `va` or `base_offset`)",
                u.link
            ),
        ),
        _ => {
            slaves.insert((u.link.clone(), slave), placed);
        }
    }
}

/// A unit's `va` and `base_offset` as 16-bit numbers; `base_offset` defaults to 0. Whether they
/// fit the profile is `Config::check_profiles`'s question (in `modbus::placement`).
fn check_unit_place(u: &RawUnit, path: &str, p: &mut Problems) -> (Option<u16>, Option<u16>) {
    let va = u.va.and_then(|v| {
        u16::try_from(v)
            .map_err(|_| p.add(format!("{path}.va"), format!("{v} is not a VA (0..=65535)")))
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
    (va, base_offset)
}
