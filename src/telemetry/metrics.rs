//! Prometheus metrics (DESIGN.md section 7), registered explicitly in one registry and updated as events
//! happen. A scrape only reads atomics: it never waits on a probe or on the engine.
//!
//! State-set gauges (`service_state`, `service_health`) export every value, 1 for the current one; the
//! bounded label values of restart and check-failure reasons exist at 0 from the start. Per service the
//! engine holds a [`ServiceMetrics`] with every child metric resolved once, so updating is a few atomic
//! operations.
//!
//! Per-service values are plain atomics ([`ServiceMetrics`]) written straight into the text exposition,
//! one family at a time; the rest (build info, heartbeats, dependency edges, API traffic, `process_*`)
//! are prometheus-crate metrics in a registry, gathered and encoded by the crate. With a prometheus-crate
//! child per per-service series (55 per service), 1,000 services cost about 25 MiB and a scrape took about
//! 40 ms to build.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::clock::unix_seconds;
use crate::graph::DependencyGraph;
use crate::health::{FailureReason, HealthStatus};
use crate::supervisor::{RestartReason, ServiceState};

/// Metric name prefix.
pub const NAMESPACE: &str = "orchestrator";

/// Build revision, from the build script (git), or "unknown".
const REVISION: &str = match option_env!("FOG_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// Health-check duration buckets: 1 ms to 10 s.
const CHECK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// API latency buckets: 100 µs to 5 s.
const API_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Options for one metric. Every name, help text and label set in this file is a constant, so building a
/// metric cannot fail at run time (each test that starts a supervisor builds them all); hence `expect`.
fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// Every metric the orchestrator exports.
pub struct Metrics {
    registry: Registry,
    services: Mutex<Vec<ServiceEntry>>,
    heartbeats: IntCounterVec,
    last_heartbeat: GaugeVec,
    heartbeat_timeouts: IntCounterVec,
    heartbeat_timeout: Gauge,
    dependency_resolution: Gauge,
    dependency_info: IntGaugeVec,
    ready: IntGauge,
    initialized: IntGauge,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers `collector`, which cannot fail for metrics created here with distinct names.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    if let Err(error) = registry.register(Box::new(collector.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    collector
}

impl Metrics {
    /// A fresh registry with every metric, `build_info` and the standard `process_*` metrics.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let service = &["service"];
        let int_gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                GaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };

        let build_info = int_gauges(
            "build_info",
            "Build information of the running orchestrator (always 1).",
            &["version", "revision"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
            .set(1);
        #[cfg(target_os = "linux")]
        if let Err(error) = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::error!(%error, "process metrics registration failed");
        }

        let metrics = Self {
            heartbeats: counters("heartbeats_received_total", "Heartbeats received.", service),
            last_heartbeat: gauges(
                "heartbeat_last_received_timestamp_seconds",
                "When the last heartbeat arrived (Unix time), 0 before the first.",
                service,
            ),
            heartbeat_timeouts: counters(
                "heartbeat_timeouts_total",
                "Alive to dead transitions: no heartbeat within the heartbeat timeout.",
                service,
            ),
            heartbeat_timeout: register(
                &registry,
                Gauge::with_opts(opts(
                    "heartbeat_timeout_seconds",
                    "No heartbeat for this long means dead.",
                ))
                .expect("valid metric"),
            ),
            dependency_resolution: register(
                &registry,
                Gauge::with_opts(opts(
                    "dependency_resolution_duration_seconds",
                    "Time taken to resolve the dependency graph into startup gates.",
                ))
                .expect("valid metric"),
            ),
            dependency_info: int_gauges(
                "dependency_info",
                "One series per dependency edge (always 1).",
                &["service", "dependency", "kind"],
            ),
            ready: register(
                &registry,
                IntGauge::with_opts(opts("ready", "1 when every critical service runs (is_ready)."))
                    .expect("valid metric"),
            ),
            initialized: register(
                &registry,
                IntGauge::with_opts(opts("initialized", "1 once the startup sequence has finished."))
                    .expect("valid metric"),
            ),
            api_requests: counters(
                "api_requests_total",
                "REST API requests, by route template, method and status code.",
                &["route", "method", "code"],
            ),
            api_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("api_request_duration_seconds", "REST API request latency.")
                        .namespace(NAMESPACE)
                        .buckets(API_BUCKETS.to_vec()),
                    &["route", "method"],
                )
                .expect("valid metric"),
            ),
            registry,
            services: Mutex::new(Vec::new()),
        };
        Arc::new(metrics)
    }

    /// The dependency edges of `graph` as `dependency_info` series.
    pub fn record_graph(&self, graph: &DependencyGraph) {
        for name in graph.names() {
            for dependency in graph.dependencies(name) {
                self.dependency_info
                    .with_label_values(&[name, dependency, "required"])
                    .set(1);
            }
            for dependency in graph.optional_dependencies(name) {
                self.dependency_info
                    .with_label_values(&[name, dependency, "optional"])
                    .set(1);
            }
        }
    }

    /// Creates every series of a supervised service (reasons and states at 0) and returns its handles.
    pub fn service(
        &self,
        name: &str,
        service_type: &str,
        critical: bool,
        external: bool,
        layer: u32,
    ) -> ServiceMetrics {
        let info = [
            escape(service_type),
            critical.to_string(),
            external.to_string(),
            layer.to_string(),
        ];
        let service = ServiceMetrics::default();
        service.set_state(ServiceState::Pending);
        service.set_health(HealthStatus::Unknown);
        self.heartbeat_series(name);
        let entry = ServiceEntry {
            name: name.to_owned(),
            info,
            metrics: service.clone(),
        };
        self.services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry);
        service
    }

    /// Creates the heartbeat series of a registry entry.
    pub fn heartbeat_series(&self, name: &str) {
        self.heartbeats.with_label_values(&[name]);
        self.last_heartbeat.with_label_values(&[name]);
        self.heartbeat_timeouts.with_label_values(&[name]);
    }

    /// A heartbeat of `name` arrived at `at`.
    pub fn heartbeat(&self, name: &str, at: SystemTime) {
        self.heartbeats.with_label_values(&[name]).inc();
        self.last_heartbeat
            .with_label_values(&[name])
            .set(unix_seconds(at));
    }

    /// `name` went from alive to dead.
    pub fn heartbeat_timed_out(&self, name: &str) {
        self.heartbeat_timeouts.with_label_values(&[name]).inc();
    }

    /// The configured heartbeat timeout.
    pub fn set_heartbeat_timeout(&self, timeout: Duration) {
        self.heartbeat_timeout.set(timeout.as_secs_f64());
    }

    /// Removes every series of a service that left the registry.
    pub fn remove_registered(&self, name: &str) {
        let _ = self.heartbeats.remove_label_values(&[name]);
        let _ = self.last_heartbeat.remove_label_values(&[name]);
        let _ = self.heartbeat_timeouts.remove_label_values(&[name]);
    }

    /// How long resolving the graph into gates took.
    pub fn set_dependency_resolution(&self, took: Duration) {
        self.dependency_resolution.set(took.as_secs_f64());
    }

    /// Readiness and initialisation of the whole orchestrator.
    pub fn set_readiness(&self, ready: bool, initialized: bool) {
        self.ready.set(i64::from(ready));
        self.initialized.set(i64::from(initialized));
    }

    /// One API request.
    pub fn api_request(&self, route: &str, method: &str, code: u16, took: Duration) {
        self.api_requests
            .with_label_values(&[route, method, &code.to_string()])
            .inc();
        self.api_duration
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::with_capacity(2048 + services.len() * 3000);
        write_services(&mut text, &services);
        drop(services);
        let mut gathered = Vec::with_capacity(64 * 1024);
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut gathered) {
            tracing::error!(%error, "cannot encode metrics");
        }
        text.push_str(&String::from_utf8_lossy(&gathered));
        text
    }

    /// The registry, for tests and embedding programs that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// An `f64` kept in an atomic.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    fn add(&self, value: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }
}

/// The values of one service's series: a few atomics, not a metric object per series (with 55 series per
/// service, the prometheus crate's children cost about 25 MiB for 1,000 services).
#[derive(Debug, Default)]
struct Series {
    /// Index into `ServiceState::ALL`.
    state: AtomicU8,
    /// Index into `HealthStatus::ALL`.
    health: AtomicU8,
    up: AtomicBool,
    checks: AtomicU64,
    failures: [AtomicU64; 7],
    /// Checks per duration bucket (not cumulative; made cumulative when rendered).
    buckets: [AtomicU64; CHECK_BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum: AtomicF64,
    consecutive_failures: AtomicU64,
    restarts: [AtomicU64; 4],
    last_restart: AtomicF64,
    backoff: AtomicF64,
    startup_duration: AtomicF64,
    blocked: AtomicBool,
}

/// One supervised service's metrics. Cheap to clone; updating is a few atomic operations.
#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics(Arc<Series>);

impl ServiceMetrics {
    /// The lifecycle state (every state exported, 1 for the current).
    pub fn set_state(&self, state: ServiceState) {
        let index = ServiceState::ALL.iter().position(|s| *s == state).unwrap_or(0);
        self.0.state.store(index as u8, Ordering::Relaxed);
    }

    /// The health status (every status exported, 1 for the current).
    pub fn set_health(&self, status: HealthStatus) {
        let index = HealthStatus::ALL.iter().position(|s| *s == status).unwrap_or(0);
        self.0.health.store(index as u8, Ordering::Relaxed);
    }

    /// Up: running and not unhealthy.
    pub fn set_up(&self, up: bool) {
        self.0.up.store(up, Ordering::Relaxed);
    }

    /// One health check.
    pub fn check(&self, failure: Option<FailureReason>, took: Duration, consecutive_failures: u32) {
        let series = &self.0;
        series.checks.fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        if let Some(bucket) = CHECK_BUCKETS.iter().position(|bound| seconds <= *bound) {
            series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        series.duration_count.fetch_add(1, Ordering::Relaxed);
        series.duration_sum.add(seconds);
        if let Some(reason) = failure
            && let Some(position) = FailureReason::ALL.iter().position(|r| *r == reason)
        {
            series.failures[position].fetch_add(1, Ordering::Relaxed);
        }
        self.set_consecutive_failures(consecutive_failures);
    }

    /// The service went down without a probe saying so (its process exited, a start failed or timed
    /// out): counted as a failed check with `reason`, outside the duration histogram (nothing was timed).
    pub fn down(&self, reason: FailureReason, consecutive_failures: u32) {
        let series = &self.0;
        series.checks.fetch_add(1, Ordering::Relaxed);
        if let Some(position) = FailureReason::ALL.iter().position(|r| *r == reason) {
            series.failures[position].fetch_add(1, Ordering::Relaxed);
        }
        self.set_consecutive_failures(consecutive_failures);
    }

    /// The consecutive failure count changed outside a check (down, reset).
    pub fn set_consecutive_failures(&self, failures: u32) {
        self.0
            .consecutive_failures
            .store(u64::from(failures), Ordering::Relaxed);
    }

    /// A restart began at `at`.
    pub fn restart(&self, reason: RestartReason, at: SystemTime) {
        if let Some(position) = RestartReason::ALL.iter().position(|r| *r == reason) {
            self.0.restarts[position].fetch_add(1, Ordering::Relaxed);
        }
        self.0.last_restart.set(unix_seconds(at));
    }

    /// The backoff delay being waited out (`None` when not in backoff).
    pub fn set_backoff(&self, delay: Option<Duration>) {
        self.0.backoff.set(delay.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// The latest start took `took` from launch to ready.
    pub fn set_startup_duration(&self, took: Duration) {
        self.0.startup_duration.set(took.as_secs_f64());
    }

    /// A required dependency is down (or not).
    pub fn set_blocked(&self, blocked: bool) {
        self.0.blocked.store(blocked, Ordering::Relaxed);
    }
}

/// A supervised service as the renderer sees it.
struct ServiceEntry {
    name: String,
    /// Label values of `service_info`: type (escaped), critical, external, layer.
    info: [String; 4],
    metrics: ServiceMetrics,
}

/// A label value escaped for the text format (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(text: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(
        text,
        "# HELP {NAMESPACE}_{name} {help}\n# TYPE {NAMESPACE}_{name} {kind}"
    );
}

/// One family with one series per service.
fn per_service(
    text: &mut String,
    services: &[ServiceEntry],
    family: (&str, &str, &str),
    value: impl Fn(&Series) -> f64,
) {
    let (name, help, kind) = family;
    header(text, name, help, kind);
    for entry in services {
        let _ = write!(text, "{NAMESPACE}_{name}{{service=\"{}\"}} ", entry.name);
        number(text, value(&entry.metrics.0));
    }
}

/// One family with a series per service and per value of a bounded label.
fn per_service_and(
    text: &mut String,
    services: &[ServiceEntry],
    family: (&str, &str, &str),
    label: &str,
    values: &[&str],
    value: impl Fn(&Series, usize) -> f64,
) {
    let (name, help, kind) = family;
    header(text, name, help, kind);
    for entry in services {
        for (position, label_value) in values.iter().enumerate() {
            let _ = write!(
                text,
                "{NAMESPACE}_{name}{{service=\"{}\",{label}=\"{label_value}\"}} ",
                entry.name
            );
            number(text, value(&entry.metrics.0, position));
        }
    }
}

/// Writes a sample value: whole numbers as integers (most of them: counters, 0/1 gauges), others as floats.
fn number(text: &mut String, value: f64) {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = writeln!(text, "{}", value as i64);
    } else {
        let _ = writeln!(text, "{value}");
    }
}

fn count(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

/// Writes the per-service families, one family at a time, from the services' series.
fn write_services(text: &mut String, services: &[ServiceEntry]) {
    if services.is_empty() {
        return;
    }
    header(
        text,
        "service_info",
        "Static facts about a service (always 1).",
        "gauge",
    );
    for entry in services {
        let [service_type, critical, external, layer] = &entry.info;
        let _ = writeln!(
            text,
            "{NAMESPACE}_service_info{{service=\"{}\",type=\"{service_type}\",critical=\"{critical}\",\
             external=\"{external}\",layer=\"{layer}\"}} 1",
            entry.name
        );
    }
    let states = ServiceState::ALL.map(ServiceState::as_str);
    per_service_and(
        text,
        services,
        (
            "service_state",
            "Lifecycle state of a service: 1 for the current state, 0 for the others.",
            "gauge",
        ),
        "state",
        &states,
        |s, position| f64::from(u8::from(usize::from(s.state.load(Ordering::Relaxed)) == position)),
    );
    let statuses = HealthStatus::ALL.map(HealthStatus::as_str);
    per_service_and(
        text,
        services,
        (
            "service_health",
            "Health status of a service: 1 for the current status, 0 for the others.",
            "gauge",
        ),
        "status",
        &statuses,
        |s, position| {
            f64::from(u8::from(
                usize::from(s.health.load(Ordering::Relaxed)) == position,
            ))
        },
    );
    per_service(
        text,
        services,
        (
            "service_up",
            "1 while the service is running and not unhealthy.",
            "gauge",
        ),
        |s| f64::from(u8::from(s.up.load(Ordering::Relaxed))),
    );
    per_service(
        text,
        services,
        ("health_checks_total", "Health checks run.", "counter"),
        |s| count(&s.checks),
    );
    let reasons = FailureReason::ALL.map(FailureReason::as_str);
    per_service_and(
        text,
        services,
        (
            "health_check_failures_total",
            "Failed health checks, by reason.",
            "counter",
        ),
        "reason",
        &reasons,
        |s, position| count(&s.failures[position]),
    );
    header(
        text,
        "health_check_duration_seconds",
        "Time a health check took.",
        "histogram",
    );
    for entry in services {
        let series = &entry.metrics.0;
        let name = &entry.name;
        let mut cumulative = 0;
        for (bound, bucket) in CHECK_BUCKETS.iter().zip(&series.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                text,
                "{NAMESPACE}_health_check_duration_seconds_bucket{{service=\"{name}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = series.duration_count.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "{NAMESPACE}_health_check_duration_seconds_bucket{{service=\"{name}\",le=\"+Inf\"}} {total}"
        );
        let _ = write!(
            text,
            "{NAMESPACE}_health_check_duration_seconds_sum{{service=\"{name}\"}} "
        );
        number(text, series.duration_sum.get());
        let _ = writeln!(
            text,
            "{NAMESPACE}_health_check_duration_seconds_count{{service=\"{name}\"}} {total}"
        );
    }
    per_service(
        text,
        services,
        (
            "health_check_consecutive_failures",
            "Consecutive failed health checks.",
            "gauge",
        ),
        |s| count(&s.consecutive_failures),
    );
    let restart_reasons = RestartReason::ALL.map(RestartReason::as_str);
    per_service_and(
        text,
        services,
        ("service_restarts_total", "Restarts, by reason.", "counter"),
        "reason",
        &restart_reasons,
        |s, position| count(&s.restarts[position]),
    );
    per_service(
        text,
        services,
        (
            "service_last_restart_timestamp_seconds",
            "When the last restart began (Unix time), 0 before the first.",
            "gauge",
        ),
        |s| s.last_restart.get(),
    );
    per_service(
        text,
        services,
        (
            "service_restart_backoff_seconds",
            "The backoff delay being waited out before a restart, 0 when not in backoff.",
            "gauge",
        ),
        |s| s.backoff.get(),
    );
    per_service(
        text,
        services,
        (
            "service_startup_duration_seconds",
            "Time from launch to ready of the service's latest start.",
            "gauge",
        ),
        |s| s.startup_duration.get(),
    );
    per_service(
        text,
        services,
        (
            "service_dependency_blocked",
            "1 while a required dependency of the service is down.",
            "gauge",
        ),
        |s| f64::from(u8::from(s.blocked.load(Ordering::Relaxed))),
    );
}
