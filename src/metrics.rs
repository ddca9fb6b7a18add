//! Prometheus metrics: a small registry of labelled counters, gauges and histograms, rendered in
//! the text exposition format (version 0.0.4) for `GET /api/v1/metrics`.
//!
//! Owns the metric families that the daemon reports (HTTP requests, authorization denials,
//! Modbus latency and errors per link, outbox depth, grant sequence and age). Components feed it
//! through the `observe_*` / `set_*` methods of [`Metrics`]. It must never take a label value from
//! unbounded user input (raw paths, user ids): every label here comes from a bounded set (route
//! templates, status codes, link names from the config, reason codes), so the series count stays
//! bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets, for HTTP and Modbus alike.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Escapes a label value per the exposition format (`\`, `"` and newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn labels(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{}\"", escape(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// A labelled counter or gauge family.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    label_names: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Family {
    fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        label_names: &'static [&'static str],
    ) -> Self {
        Family {
            name,
            help,
            kind,
            label_names,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn key(&self, values: &[&str]) -> Vec<String> {
        // INVARIANT: callers pass exactly one value per label name; extra values are dropped and
        // missing ones become empty strings, so a mistake never panics.
        (0..self.label_names.len())
            .map(|i| values.get(i).map(|v| (*v).to_string()).unwrap_or_default())
            .collect()
    }

    /// Adds `by` to the series with these label values.
    pub fn add(&self, values: &[&str], by: f64) {
        let key = self.key(values);
        *lock(&self.values).entry(key).or_insert(0.0) += by;
    }

    /// Increments the series with these label values by one.
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1.0);
    }

    /// Sets the series with these label values (gauges).
    pub fn set(&self, values: &[&str], v: f64) {
        let key = self.key(values);
        lock(&self.values).insert(key, v);
    }

    /// Current value of one series (0 when absent).
    pub fn get(&self, values: &[&str]) -> f64 {
        let key = self.key(values);
        lock(&self.values).get(&key).copied().unwrap_or(0.0)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (k, v) in lock(&self.values).iter() {
            let _ = writeln!(
                out,
                "{}{} {}",
                self.name,
                labels(self.label_names, k, None),
                fmt_f64(*v)
            );
        }
    }
}

#[derive(Clone)]
struct HistState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A labelled histogram family with fixed buckets.
pub struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    label_names: &'static [&'static str],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<Vec<String>, HistState>>,
}

impl HistogramFamily {
    fn new(
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        HistogramFamily {
            name,
            help,
            label_names,
            buckets,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one observation (seconds).
    pub fn observe(&self, values: &[&str], seconds: f64) {
        let key: Vec<String> = (0..self.label_names.len())
            .map(|i| values.get(i).map(|v| (*v).to_string()).unwrap_or_default())
            .collect();
        let mut map = lock(&self.values);
        let st = map.entry(key).or_insert_with(|| HistState {
            counts: vec![0; self.buckets.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, b) in self.buckets.iter().enumerate() {
            if seconds <= *b {
                if let Some(c) = st.counts.get_mut(i) {
                    *c += 1;
                }
            }
        }
        st.sum += seconds;
        st.count += 1;
    }

    /// Number of observations of one series.
    pub fn count(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        lock(&self.values).get(&key).map(|s| s.count).unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        for (k, st) in lock(&self.values).iter() {
            for (b, c) in self.buckets.iter().zip(&st.counts) {
                let le = fmt_f64(*b);
                let _ = writeln!(
                    out,
                    "{}_bucket{} {c}",
                    self.name,
                    labels(self.label_names, k, Some(("le", &le)))
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{} {}",
                self.name,
                labels(self.label_names, k, Some(("le", "+Inf"))),
                st.count
            );
            let l = labels(self.label_names, k, None);
            let _ = writeln!(out, "{}_sum{l} {}", self.name, fmt_f64(st.sum));
            let _ = writeln!(out, "{}_count{l} {}", self.name, st.count);
        }
    }
}

/// Every metric the daemon exports. Share it as `Arc<Metrics>`.
pub struct Metrics {
    /// `sitegate_http_requests_total{route,method,status}`.
    pub http_requests: Family,
    /// `sitegate_http_request_duration_seconds{route}`.
    pub http_duration: HistogramFamily,
    /// `sitegate_authz_denials_total{capability,reason}`.
    pub authz_denials: Family,
    /// Latest counters of every Modbus link, copied from the engine by the daemon's
    /// housekeeping task (`sitegate_modbus_*{link}`).
    links: Mutex<BTreeMap<String, crate::modbus::LinkStats>>,
    /// `sitegate_outbox_depth{class}`.
    pub outbox_depth: Family,
    /// `sitegate_rate_limited_total`.
    pub rate_limited: Family,
    grant_seq: AtomicU64,
    /// Unix ms of the applied bundle's `issued_at`; `i64::MIN` = none yet.
    grant_issued_at_ms: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            http_requests: Family::new(
                "sitegate_http_requests_total",
                "LAN API requests by route template, method and status code.",
                "counter",
                &["route", "method", "status"],
            ),
            http_duration: HistogramFamily::new(
                "sitegate_http_request_duration_seconds",
                "LAN API request latency by route template.",
                &["route"],
                &LATENCY_BUCKETS,
            ),
            authz_denials: Family::new(
                "sitegate_authz_denials_total",
                "Authorization decisions that denied, by capability and reason.",
                "counter",
                &["capability", "reason"],
            ),
            links: Mutex::new(BTreeMap::new()),
            outbox_depth: Family::new(
                "sitegate_outbox_depth",
                "Messages waiting in the MQTT outbox, by class.",
                "gauge",
                &["class"],
            ),
            rate_limited: Family::new(
                "sitegate_http_rate_limited_total",
                "LAN API requests refused by the per-client rate limit.",
                "counter",
                &[],
            ),
            grant_seq: AtomicU64::new(0),
            grant_issued_at_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Counts one finished HTTP request.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, took: Duration) {
        let status = status.to_string();
        self.http_requests.inc(&[route, method, &status]);
        self.http_duration.observe(&[route], took.as_secs_f64());
    }

    /// Counts one authorization denial. `reason` must be a stable code from a bounded set.
    pub fn observe_denial(&self, capability: &str, reason: &str) {
        self.authz_denials.inc(&[capability, reason]);
    }

    /// Stores the latest counters of one Modbus link (requests, errors by kind, latency
    /// histogram); rendered as `sitegate_modbus_*{link}`.
    pub fn set_link(&self, stats: &crate::modbus::LinkStats) {
        lock(&self.links).insert(stats.link.clone(), stats.clone());
    }

    fn render_links(&self, out: &mut String) {
        let links = lock(&self.links);
        if links.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP sitegate_modbus_requests_total Modbus transactions per link.\n\
             # TYPE sitegate_modbus_requests_total counter"
        );
        for (name, l) in links.iter() {
            let _ = writeln!(
                out,
                "sitegate_modbus_requests_total{{link=\"{}\"}} {}",
                escape(name),
                l.requests
            );
        }
        let _ = writeln!(
            out,
            "# HELP sitegate_modbus_errors_total Modbus transaction failures per link and kind.\n\
             # TYPE sitegate_modbus_errors_total counter"
        );
        for (name, l) in links.iter() {
            for (kind, n) in [
                ("timeout", l.timeouts),
                ("exception", l.exceptions),
                ("transport", l.transport_errors),
                ("protocol", l.protocol_errors),
            ] {
                let _ = writeln!(
                    out,
                    "sitegate_modbus_errors_total{{link=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(name)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sitegate_modbus_link_connected Whether the link's transport is connected.\n\
             # TYPE sitegate_modbus_link_connected gauge"
        );
        for (name, l) in links.iter() {
            let _ = writeln!(
                out,
                "sitegate_modbus_link_connected{{link=\"{}\"}} {}",
                escape(name),
                u8::from(l.connected)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sitegate_modbus_request_duration_seconds Modbus transaction latency per link (answered requests).\n\
             # TYPE sitegate_modbus_request_duration_seconds histogram"
        );
        for (name, l) in links.iter() {
            let name = escape(name);
            let mut cumulative = 0u64;
            for (i, (_, n)) in l.latency_buckets_ms.iter().enumerate() {
                cumulative += n;
                let le = crate::modbus::link::LATENCY_BUCKETS_MS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |ms| fmt_f64(*ms as f64 / 1000.0));
                let _ = writeln!(
                    out,
                    "sitegate_modbus_request_duration_seconds_bucket{{link=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "sitegate_modbus_request_duration_seconds_sum{{link=\"{name}\"}} {}",
                fmt_f64(l.latency_sum_ms / 1000.0)
            );
            let _ = writeln!(
                out,
                "sitegate_modbus_request_duration_seconds_count{{link=\"{name}\"}} {cumulative}"
            );
        }
    }

    /// Sets the outbox depth of one class (`event`, `telemetry`, `request`, …).
    pub fn set_outbox_depth(&self, class: &str, depth: u64) {
        self.outbox_depth.set(&[class], depth as f64);
    }

    /// Records the applied grant bundle: its `seq` and `issued_at` (Unix ms).
    pub fn set_grant(&self, seq: u64, issued_at_ms: i64) {
        self.grant_seq.store(seq, Ordering::Relaxed);
        self.grant_issued_at_ms
            .store(issued_at_ms, Ordering::Relaxed);
    }

    /// Renders every family in the text exposition format; `now_ms` (Unix ms) dates the grant
    /// age gauge.
    pub fn render(&self, now_ms: i64) -> String {
        let mut out = String::with_capacity(4096);
        self.http_requests.render(&mut out);
        self.http_duration.render(&mut out);
        self.authz_denials.render(&mut out);
        self.render_links(&mut out);
        self.outbox_depth.render(&mut out);
        self.rate_limited.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP sitegate_grant_seq Sequence number of the applied grant bundle (0 = none).\n\
             # TYPE sitegate_grant_seq gauge\nsitegate_grant_seq {}",
            self.grant_seq.load(Ordering::Relaxed)
        );
        let issued = self.grant_issued_at_ms.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP sitegate_grant_age_seconds Age of the applied grant bundle (by its issued_at).\n\
             # TYPE sitegate_grant_age_seconds gauge"
        );
        if issued != i64::MIN {
            let age = (now_ms.saturating_sub(issued)) as f64 / 1000.0;
            let _ = writeln!(out, "sitegate_grant_age_seconds {}", fmt_f64(age));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format_with_escaped_labels() {
        let m = Metrics::new();
        m.observe_http("/api/v1/units", "GET", 200, Duration::from_millis(3));
        m.observe_http("/api/v1/units", "GET", 200, Duration::from_millis(3));
        m.observe_denial("control", "role_lacks_capability");
        let mut link = crate::modbus::LinkStats::new(&crate::config::Link {
            name: crate::model::LinkId::new("bus1").unwrap(),
            kind: crate::config::LinkKind::Tcp {
                address: "127.0.0.1:502".into(),
            },
            timeout: Duration::from_secs(1),
            retries: 0,
            max_gap: 0,
            inter_frame_delay: Duration::ZERO,
        });
        link.requests = 3;
        link.timeouts = 1;
        link.latency_buckets_ms[4].1 = 2;
        link.latency_sum_ms = 30.0;
        m.set_link(&link);
        m.set_outbox_depth("event", 7);
        m.set_grant(42, 1_000);
        let text = m.render(61_000);
        assert!(text.contains(
            "sitegate_http_requests_total{route=\"/api/v1/units\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains("# TYPE sitegate_http_request_duration_seconds histogram"));
        assert!(text.contains(
            "sitegate_http_request_duration_seconds_bucket{route=\"/api/v1/units\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "sitegate_http_request_duration_seconds_bucket{route=\"/api/v1/units\",le=\"0.0025\"} 0"
        ));
        assert!(text.contains("sitegate_modbus_request_duration_seconds_count{link=\"bus1\"} 2"));
        assert!(text.contains(
            "sitegate_modbus_request_duration_seconds_bucket{link=\"bus1\",le=\"0.02\"} 2"
        ));
        assert!(text.contains("sitegate_modbus_requests_total{link=\"bus1\"} 3"));
        assert!(text.contains("sitegate_modbus_errors_total{link=\"bus1\",kind=\"timeout\"} 1"));
        assert!(text.contains("sitegate_outbox_depth{class=\"event\"} 7"));
        assert!(text.contains("sitegate_grant_seq 42"));
        assert!(text.contains("sitegate_grant_age_seconds 60"));
        assert!(text.contains(
            "sitegate_authz_denials_total{capability=\"control\",reason=\"role_lacks_capability\"} 1"
        ));
    }

    #[test]
    fn grant_age_is_absent_before_any_bundle() {
        let m = Metrics::new();
        let text = m.render(5_000);
        assert!(text.contains("sitegate_grant_seq 0"));
        assert!(!text.contains("sitegate_grant_age_seconds 5"));
    }
}
