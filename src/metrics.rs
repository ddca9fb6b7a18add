//! Prometheus metrics, kept and rendered by `prometheus-client` in the text exposition format
//! (version 0.0.4) for `GET /api/v1/metrics`.
//!
//! Owns the metric families that the daemon reports (HTTP requests, authorization denials,
//! Modbus latency and errors per link, outbox depth, grant sequence and age). Components feed it
//! through the `observe_*` / `set_*` methods of [`Metrics`]. It must never take a label value from
//! unbounded user input (raw paths, user ids): every label here comes from a bounded set (route
//! templates, status codes, link names from the config, reason codes), so the series count stays
//! bounded.
//!
//! This module imports no other module of the daemon: the Modbus engine hands it a
//! [`LinkSample`] (converted from its own link statistics), so metrics sit below every component
//! that reports into them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the HTTP latency buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    capability: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    link: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkErrorLabels {
    link: String,
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The counters of one Modbus link at one moment, as `/metrics` shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkSample {
    pub link: String,
    pub connected: bool,
    pub requests: u64,
    pub timeouts: u64,
    pub exceptions: u64,
    pub transport_errors: u64,
    pub protocol_errors: u64,
    /// Answered requests per latency bucket: `(upper bound in seconds, count in this bucket
    /// alone)`, ascending; the last bound is `f64::INFINITY`.
    pub latency: Vec<(f64, u64)>,
    /// Sum of the answered requests' latencies, in seconds.
    pub latency_sum: f64,
}

/// The latest [`LinkSample`] of every link, rendered at scrape time as `sitegate_modbus_*{link}`.
#[derive(Debug, Default)]
struct LinkCollector(Mutex<BTreeMap<String, LinkSample>>);

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let links = lock(&self.0);
        if links.is_empty() {
            return Ok(());
        }
        let label = |name: &String| LinkLabels { link: name.clone() };
        {
            let mut family = encoder.encode_descriptor(
                "sitegate_modbus_requests",
                "Modbus transactions per link.",
                None,
                MetricType::Counter,
            )?;
            for (name, l) in links.iter() {
                ConstCounter::new(l.requests).encode(family.encode_family(&label(name))?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sitegate_modbus_errors",
                "Modbus transaction failures per link and kind.",
                None,
                MetricType::Counter,
            )?;
            for (name, l) in links.iter() {
                for (kind, n) in [
                    ("timeout", l.timeouts),
                    ("exception", l.exceptions),
                    ("transport", l.transport_errors),
                    ("protocol", l.protocol_errors),
                ] {
                    let labels = LinkErrorLabels {
                        link: name.clone(),
                        kind,
                    };
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sitegate_modbus_link_connected",
                "Whether the link's transport is connected.",
                None,
                MetricType::Gauge,
            )?;
            for (name, l) in links.iter() {
                ConstGauge::new(i64::from(l.connected))
                    .encode(family.encode_family(&label(name))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sitegate_modbus_request_duration_seconds",
            "Modbus transaction latency per link (answered requests).",
            None,
            MetricType::Histogram,
        )?;
        for (name, l) in links.iter() {
            let count = l.latency.iter().map(|(_, n)| n).sum();
            family
                .encode_family(&label(name))?
                .encode_histogram::<NoLabelSet>(l.latency_sum, count, &l.latency, None)?;
        }
        Ok(())
    }
}

/// Every metric the daemon exports. Share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// `sitegate_http_requests_total{route,method,status}`.
    http_requests: Family<HttpLabels, Counter>,
    /// `sitegate_http_request_duration_seconds{route}`.
    http_duration: HistogramFamily<RouteLabels>,
    /// `sitegate_authz_denials_total{capability,reason}`.
    authz_denials: Family<DenialLabels, Counter>,
    /// Latest counters of every Modbus link, copied from the engine by the daemon's housekeeping
    /// task (`sitegate_modbus_*{link}`).
    links: Arc<LinkCollector>,
    /// `sitegate_outbox_depth{class}`.
    outbox_depth: Family<ClassLabels, Gauge>,
    /// `sitegate_http_rate_limited_total`.
    rate_limited: Counter,
    /// Sequence number and `issued_at` (Unix ms) of the applied bundle; `None` before any.
    grant: Mutex<Option<(u64, i64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // The registry appends the final period to each help text.
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "sitegate_http_requests",
            "LAN API requests by route template, method and status code",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "sitegate_http_request_duration_seconds",
            "LAN API request latency by route template",
            http_duration.clone(),
        );
        let authz_denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "sitegate_authz_denials",
            "Authorization decisions that denied, by capability and reason",
            authz_denials.clone(),
        );
        let links = Arc::new(LinkCollector::default());
        registry.register_collector(Box::new(links.clone()));
        let outbox_depth = Family::<ClassLabels, Gauge>::default();
        registry.register(
            "sitegate_outbox_depth",
            "Messages waiting in the MQTT outbox, by class",
            outbox_depth.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "sitegate_http_rate_limited",
            "LAN API requests refused by the per-client rate limit",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            authz_denials,
            links,
            outbox_depth,
            rate_limited,
            grant: Mutex::new(None),
        }
    }

    /// Counts one finished HTTP request.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts one authorization denial. `reason` must be a stable code from a bounded set.
    pub fn observe_denial(&self, capability: &str, reason: &str) {
        self.authz_denials
            .get_or_create(&DenialLabels {
                capability: capability.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one request refused by the per-client rate limit.
    pub fn observe_rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Stores the latest counters of one Modbus link (requests, errors by kind, latency
    /// histogram); rendered as `sitegate_modbus_*{link}`.
    pub fn set_link(&self, sample: impl Into<LinkSample>) {
        let sample = sample.into();
        lock(&self.links.0).insert(sample.link.clone(), sample);
    }

    /// Sets the outbox depth of one class (`event`, `telemetry`, `request`, …).
    pub fn set_outbox_depth(&self, class: &str, depth: u64) {
        self.outbox_depth
            .get_or_create(&ClassLabels {
                class: class.to_string(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Records the applied grant bundle: its `seq` and `issued_at` (Unix ms).
    pub fn set_grant(&self, seq: u64, issued_at_ms: i64) {
        *lock(&self.grant) = Some((seq, issued_at_ms));
    }

    /// Renders every family in the text exposition format; `now_ms` (Unix ms) dates the grant
    /// age gauge.
    pub fn render(&self, now_ms: i64) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a `String` cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        // The grant gauges depend on the time of the scrape: a registry of constants per render.
        let grant = *lock(&self.grant);
        let mut dated = Registry::default();
        dated.register(
            "sitegate_grant_seq",
            "Sequence number of the applied grant bundle (0 = none)",
            ConstGauge::new(i64::try_from(grant.map_or(0, |(seq, _)| seq)).unwrap_or(i64::MAX)),
        );
        if let Some((_, issued)) = grant {
            let age = (now_ms.saturating_sub(issued)) as f64 / 1000.0;
            dated.register(
                "sitegate_grant_age_seconds",
                "Age of the applied grant bundle (by its issued_at)",
                ConstGauge::new(age),
            );
        }
        let _ = prometheus_text::encode(&mut out, &dated);
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
        m.observe_denial("view", "a \"quoted\" \\ reason");
        let mut latency: Vec<(f64, u64)> = [1u32, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
            .iter()
            .map(|ms| (f64::from(*ms) / 1000.0, 0))
            .collect();
        latency.push((f64::INFINITY, 0));
        latency[4].1 = 2;
        m.set_link(LinkSample {
            link: "bus1".into(),
            requests: 3,
            timeouts: 1,
            latency,
            latency_sum: 0.03,
            ..LinkSample::default()
        });
        m.set_outbox_depth("event", 7);
        m.observe_rate_limited();
        m.set_grant(42, 1_000);
        let text = m.render(61_000);
        for line in [
            "# HELP sitegate_http_requests_total LAN API requests by route template, method and status code.",
            "# TYPE sitegate_http_requests_total counter",
            "sitegate_http_requests_total{route=\"/api/v1/units\",method=\"GET\",status=\"200\"} 2",
            "# TYPE sitegate_http_request_duration_seconds histogram",
            "sitegate_http_request_duration_seconds_bucket{route=\"/api/v1/units\",le=\"0.005\"} 2",
            "sitegate_http_request_duration_seconds_bucket{route=\"/api/v1/units\",le=\"0.0025\"} 0",
            "sitegate_http_request_duration_seconds_bucket{route=\"/api/v1/units\",le=\"+Inf\"} 2",
            "sitegate_http_request_duration_seconds_count{route=\"/api/v1/units\"} 2",
            "# HELP sitegate_modbus_requests_total Modbus transactions per link.",
            "# TYPE sitegate_modbus_requests_total counter",
            "sitegate_modbus_requests_total{link=\"bus1\"} 3",
            "sitegate_modbus_errors_total{link=\"bus1\",kind=\"timeout\"} 1",
            "sitegate_modbus_errors_total{link=\"bus1\",kind=\"protocol\"} 0",
            "sitegate_modbus_link_connected{link=\"bus1\"} 0",
            "# TYPE sitegate_modbus_request_duration_seconds histogram",
            "sitegate_modbus_request_duration_seconds_bucket{link=\"bus1\",le=\"0.01\"} 0",
            "sitegate_modbus_request_duration_seconds_bucket{link=\"bus1\",le=\"0.02\"} 2",
            "sitegate_modbus_request_duration_seconds_bucket{link=\"bus1\",le=\"1\"} 2",
            "sitegate_modbus_request_duration_seconds_bucket{link=\"bus1\",le=\"+Inf\"} 2",
            "sitegate_modbus_request_duration_seconds_count{link=\"bus1\"} 2",
            "sitegate_outbox_depth{class=\"event\"} 7",
            "# TYPE sitegate_http_rate_limited_total counter",
            "sitegate_http_rate_limited_total 1",
            "# TYPE sitegate_grant_seq gauge",
            "sitegate_grant_seq 42",
            "sitegate_authz_denials_total{capability=\"control\",reason=\"role_lacks_capability\"} 1",
            "sitegate_authz_denials_total{capability=\"view\",reason=\"a \\\"quoted\\\" \\\\ reason\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("sitegate_grant_age_seconds 60")),
            "{text}"
        );
        // The 0.0.4 text format: no OpenMetrics end marker, one TYPE per family.
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(
            text.matches("# TYPE sitegate_modbus_errors_total").count(),
            1
        );
    }

    /// Every sample follows the `# TYPE` line of its family (counters and histograms by their
    /// suffixes), as the 0.0.4 text format requires, and no family is declared twice.
    #[test]
    fn every_sample_follows_the_type_line_of_its_family() {
        let m = Metrics::new();
        m.observe_http("/api/v1/units", "GET", 200, Duration::from_millis(3));
        m.observe_denial("control", "no_grant");
        m.set_link(LinkSample {
            link: "bus1".into(),
            latency: vec![(0.001, 1), (f64::INFINITY, 0)],
            ..LinkSample::default()
        });
        m.set_outbox_depth("event", 1);
        m.set_grant(1, 0);
        let text = m.render(1_000);
        let mut declared: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(!declared.iter().any(|(n, _)| n == name), "{name} twice");
                declared.push((name.to_string(), kind.to_string()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let (family, kind) = declared.last().unwrap();
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family.as_str())),
                _ => name == family,
            };
            assert!(ok, "sample `{line}` outside its family `{family}`\n{text}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(declared.len(), 11, "{text}");
    }

    #[test]
    fn grant_age_is_absent_before_any_bundle() {
        let m = Metrics::new();
        let text = m.render(5_000);
        assert!(text.contains("sitegate_grant_seq 0"));
        assert!(!text.contains("sitegate_grant_age_seconds 5"));
    }
}
