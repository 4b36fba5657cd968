//! Prometheus metrics: the counters the worker adds to per webhook with each batch of outcomes
//! (`billhook.delivery_counters`), and the text exposition of `billhook.metrics()`. Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Upper bounds, in seconds, of the commit → acknowledgement latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0];

const ATTEMPTS: &str = "attempts:";
const LATENCY_LE: &str = "latency_le:";
const LATENCY_SUM: &str = "latency_sum";

/// The counter an attempt adds one to: attempts by HTTP status class (`none`: no answer).
pub fn attempt_counter(http_status: Option<u16>) -> &'static str {
    match http_status {
        Some(200..=299) => "attempts:2xx",
        Some(300..=399) => "attempts:3xx",
        Some(400..=499) => "attempts:4xx",
        Some(500..=599) => "attempts:5xx",
        Some(_) => "attempts:other",
        None => "attempts:none",
    }
}

/// The histogram counter a delivery acknowledged `seconds` after its event adds one to; the
/// buckets are kept apart (not cumulative) and summed up by `render`.
pub fn latency_counter(seconds: f64) -> String {
    match LATENCY_BUCKETS.iter().find(|le| seconds <= **le) {
        Some(le) => format!("{LATENCY_LE}{le}"),
        None => format!("{LATENCY_LE}+Inf"),
    }
}

pub fn latency_sum_counter() -> &'static str {
    LATENCY_SUM
}

/// What `render` reports about one webhook: its stored counters and the gauges read at the scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WebhookMetrics {
    pub administration_id: i64,
    pub counters: BTreeMap<String, f64>,
    pub backlog: i64,
    pub oldest_pending_seconds: Option<f64>,
    pub enabled: bool,
    pub consecutive_failures: i64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkerMetrics {
    pub up: bool,
    /// Times the worker started since the server did.
    pub starts: i64,
    pub started_at_seconds: Option<f64>,
}

/// A per-webhook gauge's value, if it has one.
type Gauge = fn(&WebhookMetrics) -> Option<f64>;

/// The Prometheus text exposition format (version 0.0.4) of the webhooks' and the worker's
/// metrics, webhooks in id order.
pub fn render(webhooks: &BTreeMap<i64, WebhookMetrics>, worker: &WorkerMetrics) -> String {
    let mut out = String::new();
    let labels =
        |id: &i64, w: &WebhookMetrics| format!("webhook_id=\"{id}\",administration_id=\"{}\"", w.administration_id);

    family(
        &mut out,
        "billhook_delivery_attempts_total",
        "counter",
        "HTTP attempts of deliveries by result and HTTP status class.",
    );
    for (id, w) in webhooks {
        for (name, value) in w.counters.range(ATTEMPTS.to_string()..).take_while(|(n, _)| n.starts_with(ATTEMPTS)) {
            let class = &name[ATTEMPTS.len()..];
            let result = if class == "2xx" { "succeeded" } else { "failed" };
            sample(
                &mut out,
                "billhook_delivery_attempts_total",
                &format!("{},result=\"{result}\",status_class=\"{class}\"", labels(id, w)),
                *value,
            );
        }
    }

    family(
        &mut out,
        "billhook_delivery_latency_seconds",
        "histogram",
        "Time from an event's commit to the acknowledgement of its push.",
    );
    for (id, w) in webhooks {
        let count = |le: String| w.counters.get(&format!("{LATENCY_LE}{le}")).copied().unwrap_or(0.0);
        let mut cumulative = 0.0;
        for le in LATENCY_BUCKETS {
            cumulative += count(le.to_string());
            sample(
                &mut out,
                "billhook_delivery_latency_seconds_bucket",
                &format!("{},le=\"{le}\"", labels(id, w)),
                cumulative,
            );
        }
        cumulative += count("+Inf".to_string());
        sample(
            &mut out,
            "billhook_delivery_latency_seconds_bucket",
            &format!("{},le=\"+Inf\"", labels(id, w)),
            cumulative,
        );
        let sum = w.counters.get(LATENCY_SUM).copied().unwrap_or(0.0);
        sample(&mut out, "billhook_delivery_latency_seconds_sum", &labels(id, w), sum);
        sample(&mut out, "billhook_delivery_latency_seconds_count", &labels(id, w), cumulative);
    }

    let gauges: [(&str, &str, Gauge); 4] = [
        ("billhook_webhook_backlog", "Pending deliveries of the webhook.", |w| Some(w.backlog as f64)),
        ("billhook_webhook_oldest_pending_seconds", "Age of the webhook's oldest pending delivery.", |w| {
            w.oldest_pending_seconds
        }),
        ("billhook_webhook_enabled", "1 if the webhook is enabled.", |w| Some(f64::from(u8::from(w.enabled)))),
        ("billhook_webhook_consecutive_failures", "Failed attempts since the webhook's last successful one.", |w| {
            Some(w.consecutive_failures as f64)
        }),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, "gauge", help);
        for (id, w) in webhooks {
            if let Some(value) = value(w) {
                sample(&mut out, name, &labels(id, w), value);
            }
        }
    }

    family(&mut out, "billhook_worker_up", "gauge", "1 if the delivery worker is running.");
    sample(&mut out, "billhook_worker_up", "", f64::from(u8::from(worker.up)));
    family(
        &mut out,
        "billhook_worker_starts_total",
        "counter",
        "Times the delivery worker started since the server did.",
    );
    sample(&mut out, "billhook_worker_starts_total", "", worker.starts as f64);
    if let Some(started_at) = worker.started_at_seconds {
        family(
            &mut out,
            "billhook_worker_start_time_seconds",
            "gauge",
            "When the running worker started, in seconds since the epoch.",
        );
        sample(&mut out, "billhook_worker_start_time_seconds", "", started_at);
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let value = if value.is_finite() {
        value.to_string()
    } else if value > 0.0 {
        "+Inf".into()
    } else {
        "NaN".into()
    };
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_by_status_class_and_latencies_by_bucket() {
        assert_eq!(attempt_counter(Some(204)), "attempts:2xx");
        assert_eq!(attempt_counter(Some(302)), "attempts:3xx");
        assert_eq!(attempt_counter(Some(410)), "attempts:4xx");
        assert_eq!(attempt_counter(Some(503)), "attempts:5xx");
        assert_eq!(attempt_counter(Some(100)), "attempts:other");
        assert_eq!(attempt_counter(None), "attempts:none");
        assert_eq!(latency_counter(0.001), "latency_le:0.005");
        assert_eq!(latency_counter(0.005), "latency_le:0.005", "le is inclusive");
        assert_eq!(latency_counter(0.0051), "latency_le:0.01");
        assert_eq!(latency_counter(100_000.0), "latency_le:+Inf");
    }

    #[test]
    fn the_histogram_is_cumulative_and_counts_match() {
        let counters: BTreeMap<String, f64> = [
            ("attempts:2xx", 3.0),
            ("attempts:5xx", 2.0),
            ("latency_le:0.005", 1.0),
            ("latency_le:1", 1.0),
            ("latency_le:+Inf", 1.0),
            ("latency_sum", 100_000.5),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        let webhook = WebhookMetrics {
            administration_id: 9,
            counters,
            backlog: 4,
            oldest_pending_seconds: Some(1.5),
            enabled: true,
            consecutive_failures: 2,
        };
        let text =
            render(&BTreeMap::from([(7, webhook)]), &WorkerMetrics { up: true, starts: 2, started_at_seconds: None });
        let line = |prefix: &str| {
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in\n{text}")).to_string()
        };
        let labels = "webhook_id=\"7\",administration_id=\"9\"";
        assert_eq!(
            line(&format!("billhook_delivery_attempts_total{{{labels},result=\"succeeded\"")),
            format!("billhook_delivery_attempts_total{{{labels},result=\"succeeded\",status_class=\"2xx\"}} 3")
        );
        assert!(line(&format!("billhook_delivery_attempts_total{{{labels},result=\"failed\""))
            .ends_with("status_class=\"5xx\"} 2"));
        assert!(line(&format!("billhook_delivery_latency_seconds_bucket{{{labels},le=\"0.005\"}}")).ends_with(" 1"));
        assert!(line(&format!("billhook_delivery_latency_seconds_bucket{{{labels},le=\"0.5\"}}")).ends_with(" 1"));
        assert!(line(&format!("billhook_delivery_latency_seconds_bucket{{{labels},le=\"1\"}}")).ends_with(" 2"));
        assert!(line(&format!("billhook_delivery_latency_seconds_bucket{{{labels},le=\"+Inf\"}}")).ends_with(" 3"));
        assert!(line("billhook_delivery_latency_seconds_count").ends_with(" 3"));
        assert!(line("billhook_delivery_latency_seconds_sum").ends_with(" 100000.5"));
        assert!(line("billhook_webhook_backlog").ends_with(" 4"));
        assert_eq!(line("billhook_worker_up"), "billhook_worker_up 1");
        assert_eq!(line("billhook_worker_starts_total"), "billhook_worker_starts_total 2");
        assert!(!text.contains("billhook_worker_start_time_seconds"));
    }
}
