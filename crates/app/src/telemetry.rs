//! The labelled metrics and latency histograms of `/metrics` (prometheus-client, the Prometheus
//! project's own Rust client, encoding OpenMetrics text): requests by route, method and status
//! and their latency by route; append latency; messages sent, failed, dead-lettered and
//! suppressed by channel and reason. The unlabelled counters and the gauges (outbox and
//! dead-letter depth, the views' lag) are written beside them by the HTTP layer.
//!
//! Labels are bounded: a route is its template (never a path with ids in it), a reason is a
//! class (`tls`, `timeout`, `status`, `refused`, …) or the send decision's reason code.

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

type Labels<const N: usize> = [(&'static str, String); N];

pub struct Telemetry {
    registry: Registry,
    requests: Family<Labels<3>, Counter>,
    request_seconds: Family<Labels<1>, Histogram>,
    append_seconds: Histogram,
    messages: Family<Labels<3>, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chronicle");
        let requests = Family::<Labels<3>, Counter>::default();
        registry.register("http_requests_by_route", "HTTP requests served, by route template, method and status", requests.clone());
        // 100 µs to ~3.3 s, doubling.
        let request_seconds = Family::<Labels<1>, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        registry.register("http_request_duration_seconds", "Time from a request's arrival to its response, by route template", request_seconds.clone());
        let append_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register("append_duration_seconds", "Time an append took to commit (durable and in the views)", append_seconds.clone());
        let messages = Family::<Labels<3>, Counter>::default();
        registry.register(
            "messages",
            "Campaign messages by channel, outcome (sent, failed, dead_lettered, suppressed) and reason",
            messages.clone(),
        );
        Telemetry { registry, requests, request_seconds, append_seconds, messages }
    }
}

impl Telemetry {
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests.get_or_create(&[("route", route.to_owned()), ("method", method.to_owned()), ("status", status.to_string())]).inc();
        self.request_seconds.get_or_create(&[("route", route.to_owned())]).observe(took.as_secs_f64());
    }

    pub fn append(&self, took: Duration) {
        self.append_seconds.observe(took.as_secs_f64());
    }

    /// A message's outcome; `reason` is a delivery error or a suppression reason, reduced to
    /// its class.
    pub fn message(&self, channel: &str, outcome: &'static str, reason: &str) {
        self.messages
            .get_or_create(&[("channel", channel.to_owned()), ("outcome", outcome.to_owned()), ("reason", reason_class(reason))])
            .inc();
    }

    /// The families, OpenMetrics text without the closing `# EOF`.
    pub fn encode(&self, out: &mut String) {
        let _ = encode_registry(out, &self.registry);
    }
}

/// A bounded label for a reason: a delivery error's class, or a suppression's code (its first
/// word: `no_consent`, `revoked`, `frequency_cap`, …).
pub fn reason_class(reason: &str) -> String {
    if reason.is_empty() {
        return String::new();
    }
    let lower = reason.to_ascii_lowercase();
    let class = if lower.contains("tls") {
        "tls"
    } else if lower.contains("refused, ") || lower.contains("internal address") {
        "refused"
    } else if lower.contains("in time") || lower.contains("timed out") || lower.contains("timeout") {
        "timeout"
    } else if lower.contains("http ") {
        "status"
    } else if lower.starts_with("smtp") || lower.starts_with("webhook") || lower.starts_with("post ") || lower.starts_with("no ") {
        "error"
    } else {
        return reason.split([' ', ':', '(']).next().unwrap_or_default().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(40).collect();
    };
    class.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_bounded_classes() {
        assert_eq!(reason_class("webhook: TLS: invalid peer certificate: UnknownIssuer"), "tls");
        assert_eq!(reason_class("webhook: the target answered HTTP 503"), "status");
        assert_eq!(reason_class("webhook: the target did not answer in time"), "timeout");
        assert_eq!(reason_class("SMTP: connection refused"), "error");
        assert_eq!(reason_class("revoked (before sending)"), "revoked");
        assert_eq!(reason_class("frequency_cap"), "frequency_cap");
        assert_eq!(reason_class(""), "");
    }

    #[test]
    fn the_families_encode_as_openmetrics() {
        let t = Telemetry::default();
        t.request("/v1/customers/{id}", "GET", 200, Duration::from_millis(3));
        t.message("email", "suppressed", "no_consent");
        let mut out = String::new();
        t.encode(&mut out);
        assert!(out.contains("# TYPE chronicle_http_requests_by_route counter"), "{out}");
        assert!(out.contains(r#"chronicle_http_requests_by_route_total{route="/v1/customers/{id}",method="GET",status="200"} 1"#), "{out}");
        assert!(out.contains(r#"chronicle_http_request_duration_seconds_count{route="/v1/customers/{id}"} 1"#), "{out}");
        assert!(out.contains(r#"chronicle_messages_total{channel="email",outcome="suppressed",reason="no_consent"} 1"#), "{out}");
    }
}
