//! Prometheus metrics (DESIGN.md section 7), registered explicitly in one registry and updated as events
//! happen. A scrape only reads atomics: it never waits on a probe or on the engine.
//!
//! State-set gauges (`service_state`, `service_health`) export every value, 1 for the current one; the
//! bounded label values of restart and check-failure reasons exist at 0 from the start. Per service the
//! engine holds a [`ServiceMetrics`] with every child metric resolved once, so updating is a few atomic
//! operations.
//!
//! Per-service values are plain atomics ([`ServiceMetrics`]) written straight into the text exposition,
//! one family at a time, and so are the registry's heartbeat series and the dependency edges; each
//! family's text is kept from one scrape to the next while none of its series changes ([`Part`],
//! [`Changes`]). The API's traffic is written straight too, on every scrape. The rest (build info,
//! reloads, events, the fleet, and what an embedding program registers) are prometheus-crate metrics in a
//! registry, gathered and encoded by the crate on every scrape, and `process_*` is read from `/proc` on
//! every scrape. With a prometheus-crate child per per-service series (55 per service), 1,000 services
//! cost about 25 MiB and a scrape took about 40 ms to build.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod api;
pub mod cluster;
mod heartbeat;
mod process;
mod service;

pub use self::service::ServiceMetrics;
use self::service::{ServiceEntry, escape, write_family};
use crate::clock::unix_seconds;
use crate::graph::DependencyGraph;
use crate::health::HealthStatus;
use crate::status::ServiceState;

/// Metric name prefix.
pub const NAMESPACE: &str = "orchestrator";

/// A part of the text written straight: one per-service family, one heartbeat family, or the dependency
/// edges, in the order they are written. Each part counts its own changes ([`Changes`]), so a scrape writes
/// anew only the parts that changed since the last one and reuses the others' text: between two scrapes a
/// service's checks change its check counters and durations, not its state, restarts or exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Info,
    State,
    Health,
    Up,
    Checks,
    Failures,
    Durations,
    ConsecutiveFailures,
    Restarts,
    LastRestart,
    Backoff,
    StartupDuration,
    Blocked,
    OutputDropped,
    StartTime,
    ExitCode,
    ExitSignal,
    Kills,
    Transitions,
    HeartbeatLast,
    HeartbeatTimeouts,
    HeartbeatsReceived,
    Edges,
}

impl Part {
    /// Every part, in the order of the exposition.
    const ALL: [Part; 23] = [
        Part::Info,
        Part::State,
        Part::Health,
        Part::Up,
        Part::Checks,
        Part::Failures,
        Part::Durations,
        Part::ConsecutiveFailures,
        Part::Restarts,
        Part::LastRestart,
        Part::Backoff,
        Part::StartupDuration,
        Part::Blocked,
        Part::OutputDropped,
        Part::StartTime,
        Part::ExitCode,
        Part::ExitSignal,
        Part::Kills,
        Part::Transitions,
        Part::HeartbeatLast,
        Part::HeartbeatTimeouts,
        Part::HeartbeatsReceived,
        Part::Edges,
    ];
}

/// Changes to each part of the series a scrape writes straight, counted: while a part's count stays the
/// same, its text is too, and a scrape shares it with the last one. Counted after each change is made,
/// and read before the series are, so a text is never kept under a count that came after a change it
/// misses. One set per [`Metrics`], shared with its services' and heartbeats' series.
#[derive(Debug, Default)]
pub(super) struct Changes([AtomicU64; Part::ALL.len()]);

impl Changes {
    /// Counts one change of `part`.
    pub(super) fn changed(&self, part: Part) {
        self.0[part as usize].fetch_add(1, Ordering::Release);
    }

    /// Counts a change of every part in `parts`.
    pub(super) fn changed_each(&self, parts: &[Part]) {
        for part in parts {
            self.changed(*part);
        }
    }

    /// How many changes `part` has seen.
    fn count(&self, part: Part) -> u64 {
        self.0[part as usize].load(Ordering::Acquire)
    }
}

/// The text of a part written straight, and the count of its changes it includes.
type Written = (u64, Arc<String>);

/// The most text of the parts written straight that is kept for the next scrape, per format: parts
/// past it (a registry of 100,000 entries writes some 20 MB of heartbeats, which change all the time)
/// are written anew at every scrape.
const KEPT_LIMIT: usize = 8 << 20;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the fallback).
    Text,
    /// OpenMetrics 1.0.0: counter families without `_total`, exemplars, `# EOF`.
    OpenMetrics,
}

impl Format {
    fn index(self) -> usize {
        match self {
            Format::Text => 0,
            Format::OpenMetrics => 1,
        }
    }

    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it is accepted at least as much as
    /// plain text (as Prometheus asks), else text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Build revision, from the build script (git), or "unknown".
const REVISION: &str = match option_env!("FOG_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// Health-check duration buckets: 1 ms to 10 s.
pub(crate) const CHECK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
    heartbeats: RegistryMetrics,
    dependency_resolution: Gauge,
    /// `dependency_info`, written once per graph (it changes only with the configuration).
    dependency_info: Mutex<String>,
    ready: IntGauge,
    initialized: IntGauge,
    api: api::ApiTraffic,
    api_refused: IntCounter,
    reloads: IntCounterVec,
    last_reload_success: Gauge,
    last_reload_successful: IntGauge,
    config_info: IntGaugeVec,
    events: EventMetrics,
    cluster: cluster::ClusterMetrics,
    /// The parts written straight, as the last scrape in each format wrote them, with the count of
    /// changes each includes (indexed by [`Format::index`], then by [`Part`]).
    written: Mutex<[[Option<Written>; Part::ALL.len()]; 2]>,
    /// The changes to each part, counted by the series as they change.
    changes: Arc<Changes>,
}

/// An exposition: the parts of the series written straight, each shared with every scrape until it
/// changes, then the rest, written for this scrape.
#[derive(Debug, Clone)]
pub struct Exposition {
    /// The per-service families, heartbeats and dependency edges: one text per family, in order (empty
    /// ones left out).
    pub kept: Vec<Arc<String>>,
    /// API traffic, the gathered families and `process_*` (and `# EOF` in OpenMetrics).
    pub fresh: String,
}

impl Exposition {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.kept.iter().map(|part| part.len()).sum::<usize>() + self.fresh.len()
    }

    /// Whether it is empty (never: `process_*` at least).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The event stream's metrics.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    /// Events published.
    pub published: IntCounter,
    /// Consumers connected now.
    pub consumers: IntGauge,
    /// Consumers dropped for falling too far behind.
    pub dropped: IntCounter,
}

/// How a configuration reload ended (`config_reloads_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// Applied (or nothing to apply).
    Success,
    /// The file had problems, or applying it failed: nothing (or not everything) changed.
    Failure,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The registry's metrics: one heartbeat series set per entry, configured or registered at run time.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    heartbeats: Arc<heartbeat::Heartbeats>,
    timeout: Gauge,
    entries: IntGauge,
}

impl RegistryMetrics {
    /// Creates the heartbeat series of a registry entry.
    pub fn series(&self, name: &str) {
        self.heartbeats.series(name);
    }

    /// A heartbeat of `name` arrived at `at`.
    pub fn heartbeat(&self, name: &str, at: SystemTime) {
        self.heartbeats.received(name, unix_seconds(at));
    }

    /// `name` went from alive to dead.
    pub fn timed_out(&self, name: &str) {
        self.heartbeats.timed_out(name);
    }

    /// How many entries the registry holds (configured and registered at run time).
    pub fn set_entries(&self, entries: usize) {
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The configured heartbeat timeout.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout.set(timeout.as_secs_f64());
    }

    /// Removes every series of a service that left the registry.
    pub fn remove(&self, name: &str) {
        self.heartbeats.remove(name);
    }
}

/// Writes one prometheus-crate family in OpenMetrics: the crate's text encoding, with the family name of
/// a counter without `_total` (its samples keep it), a counter or untyped family whose samples do not end in
/// `_total` as `unknown`, and `"` escaped in the help text.
fn openmetrics_family(text: &mut String, family: &prometheus::proto::MetricFamily) {
    use prometheus::proto::MetricType;
    let mut encoded = Vec::new();
    if let Err(error) = TextEncoder::new().encode(std::slice::from_ref(family), &mut encoded) {
        tracing::error!(%error, "cannot encode metrics");
        return;
    }
    let encoded = String::from_utf8_lossy(&encoded);
    let name = family.name();
    let (family_name, kind) = match family.get_field_type() {
        MetricType::COUNTER => match name.strip_suffix("_total") {
            Some(stem) => (stem, "counter"),
            None => (name, "unknown"),
        },
        MetricType::GAUGE => (name, "gauge"),
        MetricType::HISTOGRAM => (name, "histogram"),
        MetricType::SUMMARY => (name, "summary"),
        MetricType::UNTYPED => (name, "unknown"),
    };
    for line in encoded.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let help = help.split_once(' ').map_or("", |(_, help)| help);
            let _ = writeln!(text, "# HELP {family_name} {}", help.replace('"', "\\\""));
        } else if line.starts_with("# TYPE ") {
            let _ = writeln!(text, "# TYPE {family_name} {kind}");
        } else if !line.is_empty() {
            text.push_str(line);
            text.push('\n');
        }
    }
}

/// The label values of a service's `service_info` series: type (escaped), critical, external, layer.
fn info_labels(service_type: &str, critical: bool, external: bool, layer: u32) -> [String; 4] {
    [
        escape(service_type),
        critical.to_string(),
        external.to_string(),
        layer.to_string(),
    ]
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
        let int_gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
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

        let changes = Arc::new(Changes::default());
        let heartbeats = RegistryMetrics {
            heartbeats: Arc::new(heartbeat::Heartbeats::new(changes.clone())),
            timeout: register(
                &registry,
                Gauge::with_opts(opts(
                    "heartbeat_timeout_seconds",
                    "No heartbeat for this long means dead.",
                ))
                .expect("valid metric"),
            ),
            entries: register(
                &registry,
                IntGauge::with_opts(opts(
                    "registry_entries",
                    "Entries in the service registry, configured and registered at run time.",
                ))
                .expect("valid metric"),
            ),
        };
        let metrics = Self {
            heartbeats,
            dependency_resolution: register(
                &registry,
                Gauge::with_opts(opts(
                    "dependency_resolution_duration_seconds",
                    "Time taken to resolve the dependency graph into startup gates.",
                ))
                .expect("valid metric"),
            ),
            dependency_info: Mutex::default(),
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
            api: api::ApiTraffic::default(),
            api_refused: register(
                &registry,
                IntCounter::with_opts(opts(
                    "api_connections_refused_total",
                    "Connections refused at the API's connection limit.",
                ))
                .expect("valid metric"),
            ),
            reloads: counters(
                "config_reloads_total",
                "Configuration reloads (SIGHUP, POST /reload, fog-orchestrator reload), by result.",
                &["result"],
            ),
            last_reload_success: register(
                &registry,
                Gauge::with_opts(opts(
                    "config_last_reload_success_timestamp_seconds",
                    "When the running configuration was last loaded successfully (at start, or by a reload).",
                ))
                .expect("valid metric"),
            ),
            last_reload_successful: register(
                &registry,
                IntGauge::with_opts(opts(
                    "config_last_reload_successful",
                    "1 when the last configuration reload succeeded (or none was tried), 0 when it failed.",
                ))
                .expect("valid metric"),
            ),
            config_info: int_gauges(
                "config_info",
                "The running configuration's fingerprint (always 1; the hash changes with the effective configuration).",
                &["hash"],
            ),
            events: EventMetrics {
                published: register(
                    &registry,
                    IntCounter::with_opts(opts(
                        "events_published_total",
                        "Events published on the event stream (GET /api/orchestration/events).",
                    ))
                    .expect("valid metric"),
                ),
                consumers: register(
                    &registry,
                    IntGauge::with_opts(opts(
                        "event_consumers",
                        "Event stream consumers connected now.",
                    ))
                    .expect("valid metric"),
                ),
                dropped: register(
                    &registry,
                    IntCounter::with_opts(opts(
                        "event_consumers_dropped_total",
                        "Event stream consumers dropped for falling too far behind (the engine never waits on them).",
                    ))
                    .expect("valid metric"),
                ),
            },
            cluster: cluster::ClusterMetrics::register(&registry),
            registry,
            services: Mutex::new(Vec::new()),
            written: Mutex::new([const { [const { None }; Part::ALL.len()] }; 2]),
            changes,
        };
        for result in [ReloadResult::Success, ReloadResult::Failure] {
            metrics.reloads.with_label_values(&[result.as_str()]);
        }
        metrics.last_reload_successful.set(1);
        Arc::new(metrics)
    }

    /// The dependency edges of `graph` as `dependency_info` series.
    pub fn record_graph(&self, graph: &DependencyGraph) {
        // In label order, as the prometheus crate writes series.
        let mut edges = std::collections::BTreeSet::new();
        for name in graph.names() {
            for dependency in graph.dependencies(name) {
                edges.insert((name, dependency, "required"));
            }
            for dependency in graph.optional_dependencies(name) {
                edges.insert((name, dependency, "optional"));
            }
        }
        let mut text = String::new();
        if !edges.is_empty() {
            service::header(
                &mut text,
                Format::Text,
                "dependency_info",
                "One series per dependency edge (always 1).",
                "gauge",
            );
            for (name, dependency, kind) in edges {
                let _ = writeln!(
                    text,
                    "{NAMESPACE}_dependency_info{{dependency=\"{}\",kind=\"{kind}\",service=\"{}\"}} 1",
                    escape(dependency),
                    escape(name)
                );
            }
        }
        *self
            .dependency_info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = text;
        self.changes.changed(Part::Edges);
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
        let info = info_labels(service_type, critical, external, layer);
        let service = ServiceMetrics::counted_in(self.changes.clone());
        service.set_state(ServiceState::Pending);
        service.set_health(HealthStatus::Unknown);
        self.heartbeats.series(name);
        let entry = ServiceEntry {
            name: name.to_owned(),
            info,
            metrics: service.clone(),
        };
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        services.push(entry);
        // Counted while the services are locked: a scrape reads the counts under the same lock, so the
        // parts it reuses were written with the services it writes the others with.
        self.changes.changed_each(&Part::ALL);
        service
    }

    /// Removes every series of a service a reload removed (its heartbeat series go with its registry
    /// entry).
    pub fn remove_service(&self, name: &str) {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        services.retain(|entry| entry.name != name);
        self.changes.changed_each(&Part::ALL);
    }

    /// A reload changed what `service_info` says of a service (its other series stay as they are).
    pub fn set_service_info(
        &self,
        name: &str,
        service_type: &str,
        critical: bool,
        external: bool,
        layer: u32,
    ) {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = services.iter_mut().find(|entry| entry.name == name) {
            entry.info = info_labels(service_type, critical, external, layer);
        }
        drop(services);
        self.changes.changed(Part::Info);
    }

    /// The configuration now running was loaded at `at` (at start, or by a successful reload), with this
    /// fingerprint.
    pub fn config_loaded(&self, hash: &str, at: SystemTime) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        self.last_reload_success.set(unix_seconds(at));
    }

    /// A reload ended.
    pub fn reloaded(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
        self.last_reload_successful
            .set(i64::from(result == ReloadResult::Success));
    }

    /// Fleet mode's handles.
    pub fn for_cluster(&self) -> cluster::ClusterMetrics {
        self.cluster.clone()
    }

    /// The event stream's handles.
    pub fn for_events(&self) -> EventMetrics {
        self.events.clone()
    }

    /// The registry's own handle: heartbeat series only.
    pub fn for_registry(&self) -> RegistryMetrics {
        self.heartbeats.clone()
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
        self.api.request(route, method, code, took);
    }

    /// One connection refused at the API's connection limit.
    pub fn api_connection_refused(&self) {
        self.api_refused.inc();
    }

    /// The exposition of every metric in `format`, as one text.
    pub fn render(&self, format: Format) -> String {
        let exposition = self.exposition(format);
        let mut text = String::with_capacity(exposition.len());
        for part in &exposition.kept {
            text.push_str(part);
        }
        text.push_str(&exposition.fresh);
        text
    }

    /// The exposition of every metric in `format`, in its parts (a response sends them one after the
    /// other, without copying them into one: 4 MB for 1,000 services).
    pub fn exposition(&self, format: Format) -> Exposition {
        let kept = self.written(format);
        let mut text = String::with_capacity(16 * 1024);
        self.api.write(&mut text, format);
        let families = self.registry.gather();
        match format {
            Format::Text => {
                let mut gathered = Vec::with_capacity(64 * 1024);
                if let Err(error) = TextEncoder::new().encode(&families, &mut gathered) {
                    tracing::error!(%error, "cannot encode metrics");
                }
                match std::str::from_utf8(&gathered) {
                    Ok(gathered) => text.push_str(gathered),
                    Err(_) => text.push_str(&String::from_utf8_lossy(&gathered)),
                }
                process::write(&mut text, format);
            }
            Format::OpenMetrics => {
                for family in &families {
                    openmetrics_family(&mut text, family);
                }
                process::write(&mut text, format);
                text.push_str("# EOF\n");
            }
        }
        Exposition { kept, fresh: text }
    }

    /// The parts written straight (per-service families, heartbeats, dependency edges): each the last
    /// scrape's text when it did not change since, else written anew. Concurrent scrapes wait for one
    /// writer.
    fn written(&self, format: Format) -> Vec<Arc<String>> {
        let mut kept = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept = &mut kept[format.index()];
        // Held while the counts are read and the parts written: a service added or removed counts a
        // change of every part under this lock, so every part is written with the same services.
        let services = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut parts = Vec::with_capacity(Part::ALL.len());
        let mut budget = KEPT_LIMIT;
        for part in Part::ALL {
            let changes = self.changes.count(part);
            let slot = &mut kept[part as usize];
            let text = match slot {
                Some((at, text)) if *at == changes => text.clone(),
                _ => {
                    // Room for the last text and some growth: a large text grown by doubling is copied
                    // several times.
                    let last = slot.as_ref().map_or(0, |(_, text)| text.len());
                    let mut text = String::with_capacity(last + last / 8);
                    self.write_part(&mut text, format, &services, part);
                    Arc::new(text)
                }
            };
            *slot = (text.len() <= budget).then(|| (changes, text.clone()));
            budget = budget.saturating_sub(text.len());
            if !text.is_empty() {
                parts.push(text);
            }
        }
        parts
    }

    /// Writes one part of the series written straight.
    fn write_part(&self, text: &mut String, format: Format, services: &[ServiceEntry], part: Part) {
        match part {
            Part::HeartbeatLast | Part::HeartbeatTimeouts | Part::HeartbeatsReceived => {
                self.heartbeats.heartbeats.write(text, format, part);
            }
            Part::Edges => text.push_str(
                &self
                    .dependency_info
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            ),
            _ => write_family(text, format, services, part),
        }
    }

    /// The registry, for tests and embedding programs that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_served_when_preferred_and_text_otherwise() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
                          q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        for text in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("application/openmetrics-text;q=0,text/plain"),
            Some("text/plain;q=0.9,application/openmetrics-text;q=0.5"),
            Some("application/json"),
        ] {
            assert_eq!(Format::negotiate(text), Format::Text, "{text:?}");
        }
    }

    /// The text kept between scrapes never hides a change: each kind of change shows in the next scrape, in
    /// both formats, and a scrape with no change writes the same text.
    #[test]
    fn a_scrape_after_a_change_shows_it() {
        let metrics = Metrics::new();
        let web = metrics.service("web", "web", true, false, 0);
        let scrape = |format| metrics.render(format);
        let series = |text: &str, prefix: &str| {
            text.lines()
                .find(|line| line.starts_with(prefix))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
        };
        for format in [Format::Text, Format::OpenMetrics] {
            let before = scrape(format);
            assert_eq!(
                series(&before, "orchestrator_service_up{service=\"web\"}"),
                series(&scrape(format), "orchestrator_service_up{service=\"web\"}")
            );
        }
        type Change<'a> = (&'a str, &'a str, Box<dyn Fn() + 'a>);
        let changes: [Change; 6] = [
            (
                "orchestrator_service_up{service=\"web\"}",
                " 1",
                Box::new(|| web.set_up(true)),
            ),
            (
                "orchestrator_health_checks_total{service=\"web\"}",
                " 1",
                Box::new(|| web.check(None, Duration::from_millis(3), 0)),
            ),
            (
                "orchestrator_service_sigkills_total{service=\"web\"}",
                " 1",
                Box::new(|| web.killed()),
            ),
            (
                "orchestrator_heartbeats_received_total{service=\"web\"}",
                " 1",
                Box::new(|| metrics.for_registry().heartbeat("web", SystemTime::now())),
            ),
            (
                "orchestrator_service_info{service=\"db\"",
                " 1",
                Box::new(|| drop(metrics.service("db", "db", false, false, 0))),
            ),
            (
                "orchestrator_service_output_dropped_lines_total{service=\"web\"}",
                " 7",
                Box::new(|| web.output_dropped(7)),
            ),
        ];
        for (prefix, value, change) in changes {
            // Scraped in both formats first, so both have a text kept.
            scrape(Format::Text);
            scrape(Format::OpenMetrics);
            change();
            let text = scrape(Format::Text);
            let line = series(&text, prefix);
            assert!(line.ends_with(value), "{line} after the change");
            let open = scrape(Format::OpenMetrics);
            assert!(series(&open, prefix).contains(value), "OpenMetrics: {open}");
        }
        metrics.remove_service("db");
        assert!(!scrape(Format::Text).contains("orchestrator_service_info{service=\"db\""));
    }

    /// Every kind of change to a series written straight counts a change of the part it is written in:
    /// after each, the parts a scrape reuses and writes anew read exactly as if every part were written
    /// anew, in both formats; and a part nothing changed is shared with the last scrape, not written again.
    #[test]
    fn a_scrape_writes_anew_only_the_parts_that_changed_and_reads_as_if_it_wrote_them_all() {
        use crate::graph::{DependencyGraph, Node};
        use crate::health::FailureReason;
        use crate::status::RestartReason;
        use crate::supervisor::state::Exit;

        let metrics = Metrics::new();
        let web = metrics.service("web", "web", true, false, 0);
        let registry = metrics.for_registry();
        let kept = |format| metrics.exposition(format).kept;
        let anew = |format: Format| {
            metrics.written.lock().unwrap()[format.index()] = Default::default();
            metrics.written(format)
        };
        let joined = |parts: &[Arc<String>]| parts.iter().map(|part| part.as_str()).collect::<String>();
        let node = |name: &str, depends_on: &[&str]| Node {
            name: name.to_owned(),
            service_type: name.to_owned(),
            priority: 0,
            depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
            optional_depends_on: Vec::new(),
        };
        let now = SystemTime::now();
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: Vec<Change> = vec![
            ("state", Box::new(|| web.set_state(ServiceState::Running))),
            ("health", Box::new(|| web.set_health(HealthStatus::Healthy))),
            ("up", Box::new(|| web.set_up(true))),
            ("check", Box::new(|| web.check(None, Duration::from_millis(3), 0))),
            (
                "failed check",
                Box::new(|| web.check(Some(FailureReason::Timeout), Duration::from_secs(2), 1)),
            ),
            ("down", Box::new(|| web.down(FailureReason::ProcessDown, 2))),
            ("failures reset", Box::new(|| web.set_consecutive_failures(0))),
            (
                "restart",
                Box::new(|| web.restart(RestartReason::Crashed, now, Some("ab".repeat(16)))),
            ),
            (
                "check trace",
                Box::new(|| web.check_trace(Duration::from_millis(40), "cd".repeat(16), now)),
            ),
            ("started", Box::new(|| web.started(now))),
            ("ended", Box::new(|| web.ended(&Exit::Signal(9)))),
            ("killed", Box::new(|| web.killed())),
            (
                "health transition",
                Box::new(|| web.health_changed(HealthStatus::Healthy, HealthStatus::Unhealthy)),
            ),
            (
                "backoff",
                Box::new(|| web.set_backoff(Some(Duration::from_secs(4)))),
            ),
            (
                "startup duration",
                Box::new(|| web.set_startup_duration(Duration::from_millis(1500))),
            ),
            ("output dropped", Box::new(|| web.output_dropped(3))),
            ("blocked", Box::new(|| web.set_blocked(true))),
            ("heartbeat", Box::new(|| registry.heartbeat("web", now))),
            ("heartbeat timeout", Box::new(|| registry.timed_out("web"))),
            ("registered", Box::new(|| registry.series("cache"))),
            ("unregistered", Box::new(|| registry.remove("cache"))),
            (
                "service info",
                Box::new(|| metrics.set_service_info("web", "edge", false, false, 1)),
            ),
            (
                "graph",
                Box::new(|| {
                    let graph = DependencyGraph::new(vec![node("db", &[]), node("web", &["db"])]).unwrap();
                    metrics.record_graph(&graph);
                }),
            ),
            (
                "service added",
                Box::new(|| drop(metrics.service("db", "db", false, false, 0))),
            ),
            ("service removed", Box::new(|| metrics.remove_service("db"))),
        ];
        let formats = [Format::Text, Format::OpenMetrics];
        for (what, change) in &changes {
            let before = formats.map(kept);
            for (format, before) in formats.iter().zip(&before) {
                let again = kept(*format);
                assert!(
                    before.len() == again.len() && before.iter().zip(&again).all(|(a, b)| Arc::ptr_eq(a, b)),
                    "nothing changed, nothing written anew"
                );
            }
            change();
            for (format, before) in formats.into_iter().zip(&before) {
                let after = joined(&kept(format));
                // A check's trace is an exemplar, which only OpenMetrics shows.
                if format == Format::OpenMetrics || *what != "check trace" {
                    assert!(joined(before) != after, "{what} ({format:?}) shows");
                }
                assert!(
                    after == joined(&anew(format)),
                    "{what} ({format:?}) reads as written anew"
                );
            }
        }
        // A check writes its own families anew and shares the others' text with the last scrape.
        let before = kept(Format::Text);
        web.check(None, Duration::from_millis(3), 0);
        let after = kept(Format::Text);
        let family = |parts: &[Arc<String>], name: &str| {
            let header = format!("# HELP orchestrator_{name} ");
            parts
                .iter()
                .find(|part| part.starts_with(&header))
                .cloned()
                .unwrap()
        };
        for name in [
            "service_state",
            "service_restarts_total",
            "heartbeats_received_total",
        ] {
            assert!(
                Arc::ptr_eq(&family(&before, name), &family(&after, name)),
                "{name}"
            );
        }
        for name in ["health_checks_total", "health_check_duration_seconds"] {
            assert!(
                !Arc::ptr_eq(&family(&before, name), &family(&after, name)),
                "{name}"
            );
        }
    }

    #[test]
    fn openmetrics_counter_families_drop_total_and_the_exposition_ends_with_eof() {
        let metrics = Metrics::new();
        let service = metrics.service("web", "web", true, false, 0);
        service.restart(
            crate::status::RestartReason::Crashed,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            Some("0af7651916cd43dd8448eb211c80319c".into()),
        );
        metrics.api_request("/metrics", "GET", 200, Duration::from_millis(1));
        let text = metrics.render(Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE orchestrator_service_restarts counter\n"));
        assert!(text.contains("# TYPE orchestrator_api_requests counter\n"));
        assert!(!text.contains("# TYPE orchestrator_service_restarts_total"));
        assert!(text.contains(
            "orchestrator_service_restarts_total{service=\"web\",reason=\"crashed\"} 1 \
             # {trace_id=\"0af7651916cd43dd8448eb211c80319c\"} 1 1800000000.000\n"
        ));
        let plain = metrics.render(Format::Text);
        assert!(plain.contains("# TYPE orchestrator_service_restarts_total counter\n"));
        assert!(!plain.contains("# {") && !plain.contains("# EOF"));
    }
}
