//! The REST API's traffic series (`api_requests_total`, `api_request_duration_seconds`), kept as atomics
//! per route template and method and written straight into the exposition, as the per-service families
//! are: they change with every request, so no scrape can reuse their text, and the prometheus crate's
//! gather and text encoder (a copy of every series, each bound and value formatted as a float) cost a
//! `/metrics` of 10 services about a fifth of its time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::Format;
use super::NAMESPACE;
use super::service::{escape, header, number};

/// API latency buckets: 100 µs to 5 s.
const BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// The series of one route and method.
#[derive(Debug, Default)]
struct Route {
    /// Requests by status code.
    codes: Mutex<BTreeMap<u16, u64>>,
    /// Requests per latency bucket (not cumulative; made cumulative when written).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// The sum of the latencies in seconds, as `f64` bits.
    sum: AtomicU64,
}

/// Every route's series, by route template and then method (the order they are written in).
#[derive(Debug, Default)]
pub(super) struct ApiTraffic(RwLock<BTreeMap<String, BTreeMap<String, Arc<Route>>>>);

impl ApiTraffic {
    /// One request to `route` with `method`, answered with `code` after `took`.
    pub(super) fn request(&self, route: &str, method: &str, code: u16, took: Duration) {
        let series = self.route(route, method_label(method));
        *series
            .codes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(code)
            .or_default() += 1;
        let seconds = took.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        series.count.fetch_add(1, Ordering::Relaxed);
        let _ = series
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }

    fn route(&self, route: &str, method: &str) -> Arc<Route> {
        {
            let routes = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(series) = routes.get(route).and_then(|methods| methods.get(method)) {
                return series.clone();
            }
        }
        let mut routes = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        routes
            .entry(route.to_owned())
            .or_default()
            .entry(method.to_owned())
            .or_default()
            .clone()
    }

    /// Writes both families (nothing before the first request), labels in name order as the prometheus
    /// crate wrote them.
    pub(super) fn write(&self, text: &mut String, format: Format) {
        let routes: Vec<(String, String, Arc<Route>)> = {
            let routes = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            routes
                .iter()
                .flat_map(|(route, methods)| {
                    methods
                        .iter()
                        .map(|(method, series)| (escape(route), escape(method), series.clone()))
                })
                .collect()
        };
        if routes.is_empty() {
            return;
        }
        let name = "api_request_duration_seconds";
        header(text, format, name, "REST API request latency.", "histogram");
        for (route, method, series) in &routes {
            let mut cumulative = 0;
            for (bound, bucket) in bucket_labels().iter().zip(&series.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                labels(text, "api_request_duration_seconds_bucket", method, route);
                for part in [",le=\"", bound, "\"} "] {
                    text.push_str(part);
                }
                number(text, cumulative as f64);
            }
            let count = series.count.load(Ordering::Relaxed);
            labels(text, "api_request_duration_seconds_bucket", method, route);
            text.push_str(",le=\"+Inf\"} ");
            number(text, count as f64);
            labels(text, "api_request_duration_seconds_sum", method, route);
            text.push_str("} ");
            number(text, f64::from_bits(series.sum.load(Ordering::Relaxed)));
            labels(text, "api_request_duration_seconds_count", method, route);
            text.push_str("} ");
            number(text, count as f64);
        }
        header(
            text,
            format,
            "api_requests_total",
            "REST API requests, by route template, method and status code.",
            "counter",
        );
        for (route, method, series) in &routes {
            let codes = series
                .codes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            for (code, requests) in codes {
                for part in [NAMESPACE, "_api_requests_total{code=\""] {
                    text.push_str(part);
                }
                text.push_str(itoa::Buffer::new().format(code));
                for part in ["\",method=\"", method, "\",route=\"", route, "\"} "] {
                    text.push_str(part);
                }
                number(text, requests as f64);
            }
        }
    }
}

/// The `method` label of a request: its method when HTTP defines it, else `other` (a client can send any
/// token as a method; each would be a new series).
fn method_label(method: &str) -> &str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    if KNOWN.contains(&method) { method } else { "other" }
}

/// `orchestrator_<name>{method="…",route="…"` (the caller closes the label set).
fn labels(text: &mut String, name: &str, method: &str, route: &str) {
    for part in [
        NAMESPACE,
        "_",
        name,
        "{method=\"",
        method,
        "\",route=\"",
        route,
        "\"",
    ] {
        text.push_str(part);
    }
}

/// The buckets' `le` values, as `f64`'s `Display` writes them, formatted once.
fn bucket_labels() -> &'static [String] {
    static LABELS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| BUCKETS.iter().map(f64::to_string).collect());
    &LABELS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_code_and_timed_in_cumulative_buckets() {
        let traffic = ApiTraffic::default();
        traffic.request("/metrics", "GET", 200, Duration::from_micros(300));
        traffic.request("/metrics", "GET", 200, Duration::from_millis(2));
        traffic.request("/metrics", "GET", 406, Duration::from_secs(9));
        traffic.request(
            "/api/orchestration/services/{name}",
            "POST",
            404,
            Duration::from_micros(50),
        );
        let mut text = String::new();
        traffic.write(&mut text, Format::Text);
        for line in [
            "# TYPE orchestrator_api_request_duration_seconds histogram",
            "orchestrator_api_request_duration_seconds_bucket{method=\"GET\",route=\"/metrics\",le=\"0.0001\"} 0",
            "orchestrator_api_request_duration_seconds_bucket{method=\"GET\",route=\"/metrics\",le=\"0.0005\"} 1",
            "orchestrator_api_request_duration_seconds_bucket{method=\"GET\",route=\"/metrics\",le=\"0.0025\"} 2",
            "orchestrator_api_request_duration_seconds_bucket{method=\"GET\",route=\"/metrics\",le=\"5\"} 2",
            "orchestrator_api_request_duration_seconds_bucket{method=\"GET\",route=\"/metrics\",le=\"+Inf\"} 3",
            "orchestrator_api_request_duration_seconds_count{method=\"GET\",route=\"/metrics\"} 3",
            "orchestrator_api_request_duration_seconds_bucket{method=\"POST\",route=\"/api/orchestration/services/{name}\",le=\"0.0001\"} 1",
            "# TYPE orchestrator_api_requests_total counter",
            "orchestrator_api_requests_total{code=\"200\",method=\"GET\",route=\"/metrics\"} 2",
            "orchestrator_api_requests_total{code=\"406\",method=\"GET\",route=\"/metrics\"} 1",
            "orchestrator_api_requests_total{code=\"404\",method=\"POST\",route=\"/api/orchestration/services/{name}\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        let sum = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "orchestrator_api_request_duration_seconds_sum{method=\"GET\",route=\"/metrics\"} ",
                )
            })
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap();
        assert!((sum - 9.0023).abs() < 1e-9, "sum {sum}");
        let mut open = String::new();
        traffic.write(&mut open, Format::OpenMetrics);
        assert!(open.contains("# TYPE orchestrator_api_requests counter\n"));
        assert!(open.contains("\norchestrator_api_requests_total{code=\"200\""));
    }

    #[test]
    fn methods_http_does_not_define_share_one_series() {
        let traffic = ApiTraffic::default();
        for method in ["BREW", "PROPFIND", "X-ANYTHING", "get"] {
            traffic.request("unmatched", method, 405, Duration::from_micros(50));
        }
        traffic.request("unmatched", "DELETE", 405, Duration::from_micros(50));
        let mut text = String::new();
        traffic.write(&mut text, Format::Text);
        let requests: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("orchestrator_api_requests_total{"))
            .collect();
        assert_eq!(
            requests,
            [
                "orchestrator_api_requests_total{code=\"405\",method=\"DELETE\",route=\"unmatched\"} 1",
                "orchestrator_api_requests_total{code=\"405\",method=\"other\",route=\"unmatched\"} 4",
            ]
        );
    }

    #[test]
    fn nothing_is_written_before_the_first_request() {
        let mut text = String::new();
        ApiTraffic::default().write(&mut text, Format::Text);
        assert_eq!(text, "");
    }
}
