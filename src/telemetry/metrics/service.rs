//! One supervised service's series: plain atomics behind a [`ServiceMetrics`] handle, written straight
//! into the exposition one family at a time (not a prometheus-crate child per series: with 55 series
//! per service those cost about 25 MiB for 1,000 services, and a scrape about 40 ms to build).
//!
//! In OpenMetrics, restarts and check durations carry the trace id of their latest event as an exemplar
//! (a restart's `restart service` trace, a check's `check health` trace), kept beside the atomics.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{CHECK_BUCKETS, Changes, Format, NAMESPACE, Part};
use crate::clock::unix_seconds;
use crate::health::{FailureReason, HealthStatus};
use crate::status::{RestartReason, ServiceState};
use crate::supervisor::state::Exit;

/// An `f64` kept in an atomic.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Sets the value; whether it changed.
    fn set(&self, value: f64) -> bool {
        self.0.swap(value.to_bits(), Ordering::Relaxed) != value.to_bits()
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
    restarts: [AtomicU64; RestartReason::ALL.len()],
    last_restart: AtomicF64,
    backoff: AtomicF64,
    startup_duration: AtomicF64,
    blocked: AtomicBool,
    output_dropped: AtomicU64,
    start_time: AtomicF64,
    last_exit_code: AtomicI64,
    last_exit_signal: AtomicI64,
    kills: AtomicU64,
    /// Health transitions, by the status entered (index into `HealthStatus::ALL`).
    transitions: [AtomicU64; 4],
    exemplars: Mutex<Exemplars>,
    /// Where changes to these series are counted (the metrics' they belong to).
    changes: Arc<Changes>,
}

/// The trace of a series' latest event.
#[derive(Debug, Clone)]
struct Exemplar {
    trace_id: String,
    value: f64,
    timestamp: f64,
}

/// The latest exemplar of each restart reason and of each check-duration bucket (`+Inf` last).
#[derive(Debug, Default)]
struct Exemplars {
    restarts: [Option<Exemplar>; RestartReason::ALL.len()],
    buckets: [Option<Exemplar>; CHECK_BUCKETS.len() + 1],
}

/// One supervised service's metrics. Cheap to clone; updating is a few atomic operations.
#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics(Arc<Series>);

impl ServiceMetrics {
    /// Series at zero whose changes are counted in `changes`.
    pub(super) fn counted_in(changes: Arc<Changes>) -> Self {
        Self(Arc::new(Series {
            changes,
            ..Series::default()
        }))
    }

    /// Counts a change of `part`.
    fn changed(&self, part: Part) {
        self.0.changes.changed(part);
    }

    /// Counts a change of `part` if `changed`.
    fn changed_if(&self, changed: bool, part: Part) {
        if changed {
            self.changed(part);
        }
    }

    /// The lifecycle state (every state exported, 1 for the current).
    pub fn set_state(&self, state: ServiceState) {
        let index = ServiceState::ALL.iter().position(|s| *s == state).unwrap_or(0);
        self.changed_if(
            self.0.state.swap(index as u8, Ordering::Relaxed) != index as u8,
            Part::State,
        );
    }

    /// The health status (every status exported, 1 for the current).
    pub fn set_health(&self, status: HealthStatus) {
        let index = HealthStatus::ALL.iter().position(|s| *s == status).unwrap_or(0);
        self.changed_if(
            self.0.health.swap(index as u8, Ordering::Relaxed) != index as u8,
            Part::Health,
        );
    }

    /// Up: running and not unhealthy.
    pub fn set_up(&self, up: bool) {
        self.changed_if(self.0.up.swap(up, Ordering::Relaxed) != up, Part::Up);
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
            self.changed(Part::Failures);
        }
        self.set_consecutive_failures(consecutive_failures);
        self.changed(Part::Checks);
        self.changed(Part::Durations);
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
        self.changed(Part::Checks);
        self.changed(Part::Failures);
    }

    /// The consecutive failure count changed outside a check (down, reset).
    pub fn set_consecutive_failures(&self, failures: u32) {
        let failures = u64::from(failures);
        self.changed_if(
            self.0.consecutive_failures.swap(failures, Ordering::Relaxed) != failures,
            Part::ConsecutiveFailures,
        );
    }

    /// A restart began at `at`, traced in `trace_id` when traces are exported.
    pub fn restart(&self, reason: RestartReason, at: SystemTime, trace_id: Option<String>) {
        if let Some(position) = RestartReason::ALL.iter().position(|r| *r == reason) {
            self.0.restarts[position].fetch_add(1, Ordering::Relaxed);
            if let Some(trace_id) = trace_id {
                self.exemplars().restarts[position] = Some(Exemplar {
                    trace_id,
                    value: 1.0,
                    timestamp: unix_seconds(at),
                });
            }
        }
        self.changed_if(self.0.last_restart.set(unix_seconds(at)), Part::LastRestart);
        self.changed(Part::Restarts);
    }

    /// The check that took `took` at `at` was traced in `trace_id`: the exemplar of its bucket.
    pub fn check_trace(&self, took: Duration, trace_id: String, at: SystemTime) {
        let seconds = took.as_secs_f64();
        let bucket = CHECK_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(CHECK_BUCKETS.len());
        self.exemplars().buckets[bucket] = Some(Exemplar {
            trace_id,
            value: seconds,
            timestamp: unix_seconds(at),
        });
        self.changed(Part::Durations);
    }

    fn exemplars(&self) -> std::sync::MutexGuard<'_, Exemplars> {
        self.0
            .exemplars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new instance started at `at`.
    pub fn started(&self, at: SystemTime) {
        self.changed_if(self.0.start_time.set(unix_seconds(at)), Part::StartTime);
    }

    /// The instance ended (on its own or stopped) with `exit`: its code, or the signal that ended it.
    pub fn ended(&self, exit: &Exit) {
        let (code, signal) = match exit {
            Exit::Code(code) => (i64::from(*code), 0),
            Exit::Signal(signal) => (-1, i64::from(*signal)),
            Exit::Error(_) => (-1, 0),
        };
        self.0.last_exit_code.store(code, Ordering::Relaxed);
        self.0.last_exit_signal.store(signal, Ordering::Relaxed);
        self.changed(Part::ExitCode);
        self.changed(Part::ExitSignal);
    }

    /// The instance did not stop within the shutdown timeout (or the stop was forced): SIGKILL.
    pub fn killed(&self) {
        self.0.kills.fetch_add(1, Ordering::Relaxed);
        self.changed(Part::Kills);
    }

    /// The health status went from `from` to `to`.
    pub fn health_changed(&self, _from: HealthStatus, to: HealthStatus) {
        if let Some(position) = HealthStatus::ALL.iter().position(|s| *s == to) {
            self.0.transitions[position].fetch_add(1, Ordering::Relaxed);
            self.changed(Part::Transitions);
        }
    }

    /// The backoff delay being waited out (`None` when not in backoff).
    pub fn set_backoff(&self, delay: Option<Duration>) {
        let delay = delay.map_or(0.0, |d| d.as_secs_f64());
        self.changed_if(self.0.backoff.set(delay), Part::Backoff);
    }

    /// The latest start took `took` from launch to ready.
    pub fn set_startup_duration(&self, took: Duration) {
        self.changed_if(
            self.0.startup_duration.set(took.as_secs_f64()),
            Part::StartupDuration,
        );
    }

    /// `lines` of the service's output were dropped by its rate limit.
    pub fn output_dropped(&self, lines: u64) {
        self.0.output_dropped.fetch_add(lines, Ordering::Relaxed);
        self.changed(Part::OutputDropped);
    }

    /// A required dependency is down (or not).
    pub fn set_blocked(&self, blocked: bool) {
        self.changed_if(
            self.0.blocked.swap(blocked, Ordering::Relaxed) != blocked,
            Part::Blocked,
        );
    }
}

/// A supervised service as the renderer sees it.
pub(super) struct ServiceEntry {
    pub(super) name: String,
    /// Label values of `service_info`: type (escaped), critical, external, layer.
    pub(super) info: [String; 4],
    pub(super) metrics: ServiceMetrics,
}

/// A label value escaped for the text format (backslash, double quote, newline).
pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a family's `# HELP` and `# TYPE` lines. In OpenMetrics a counter's family name has no `_total`
/// (its samples keep it).
pub(super) fn header(text: &mut String, format: Format, name: &str, help: &str, kind: &str) {
    let family = match format {
        Format::OpenMetrics if kind == "counter" => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    for part in [
        "# HELP ",
        NAMESPACE,
        "_",
        family,
        " ",
        help,
        "\n# TYPE ",
        NAMESPACE,
        "_",
        family,
        " ",
        kind,
        "\n",
    ] {
        text.push_str(part);
    }
}

/// One family with one series per service.
fn per_service(
    text: &mut String,
    format: Format,
    services: &[ServiceEntry],
    family: (&str, &str, &str),
    value: impl Fn(&Series) -> f64,
) {
    let (name, help, kind) = family;
    header(text, format, name, help, kind);
    for entry in services {
        // push_str, not write!: this runs for every series of every scrape.
        series_start(text, name, &entry.name);
        text.push_str("\"} ");
        number(text, value(&entry.metrics.0));
    }
}

/// One family with a series per service and per value of a bounded label; `exemplar` gives the
/// OpenMetrics exemplar of a series, if it has one.
fn per_service_and(
    text: &mut String,
    format: Format,
    services: &[ServiceEntry],
    family: (&str, &str, &str),
    label: (&str, &[&str]),
    value: impl Fn(&Series, usize) -> f64,
    exemplar: impl Fn(&Exemplars, usize) -> Option<Exemplar>,
) {
    let (name, help, kind) = family;
    let (label, values) = label;
    header(text, format, name, help, kind);
    for entry in services {
        let exemplars = (format == Format::OpenMetrics).then(|| entry.metrics.exemplars());
        for (position, label_value) in values.iter().enumerate() {
            series_start(text, name, &entry.name);
            for part in ["\",", label, "=\"", label_value, "\"} "] {
                text.push_str(part);
            }
            let exemplar = exemplars.as_deref().and_then(|e| exemplar(e, position));
            sample(text, value(&entry.metrics.0, position), exemplar.as_ref());
        }
    }
}

/// The check histogram's `le` values, as `f64`'s `Display` writes them, formatted once.
fn check_bucket_labels() -> &'static [String] {
    static LABELS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| CHECK_BUCKETS.iter().map(f64::to_string).collect());
    &LABELS
}

/// `orchestrator_<name>{service="<service>` (the caller closes the label set).
pub(super) fn series_start(text: &mut String, name: &str, service: &str) {
    for part in [NAMESPACE, "_", name, "{service=\"", service] {
        text.push_str(part);
    }
}

/// Writes a sample value: whole numbers as integers (most of them: counters, 0/1 gauges), others as floats.
pub(super) fn number(text: &mut String, value: f64) {
    // Whole: the same after a round trip through an integer (cheaper than `fract`, a libm call).
    if value.abs() < 1e15 && (value as i64) as f64 == value {
        text.push_str(itoa::Buffer::new().format(value as i64));
        text.push('\n');
    } else {
        let _ = writeln!(text, "{value}");
    }
}

/// Writes a sample value, followed by its OpenMetrics exemplar if it has one:
/// ` # {trace_id="…"} value timestamp`.
fn sample(text: &mut String, value: f64, exemplar: Option<&Exemplar>) {
    number(text, value);
    let Some(exemplar) = exemplar else { return };
    text.pop();
    let _ = writeln!(
        text,
        " # {{trace_id=\"{}\"}} {} {:.3}",
        exemplar.trace_id, exemplar.value, exemplar.timestamp
    );
}

fn count(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

/// The per-service families with one series per service: part, name, help, type and value.
type Single = (Part, &'static str, &'static str, &'static str, fn(&Series) -> f64);

const SINGLE: [Single; 12] = [
    (
        Part::Up,
        "service_up",
        "1 while the service is running and not unhealthy.",
        "gauge",
        |s| f64::from(u8::from(s.up.load(Ordering::Relaxed))),
    ),
    (
        Part::Checks,
        "health_checks_total",
        "Health checks run.",
        "counter",
        |s| count(&s.checks),
    ),
    (
        Part::ConsecutiveFailures,
        "health_check_consecutive_failures",
        "Consecutive failed health checks.",
        "gauge",
        |s| count(&s.consecutive_failures),
    ),
    (
        Part::LastRestart,
        "service_last_restart_timestamp_seconds",
        "When the last restart began (Unix time), 0 before the first.",
        "gauge",
        |s| s.last_restart.get(),
    ),
    (
        Part::Backoff,
        "service_restart_backoff_seconds",
        "The backoff delay being waited out before a restart, 0 when not in backoff.",
        "gauge",
        |s| s.backoff.get(),
    ),
    (
        Part::StartupDuration,
        "service_startup_duration_seconds",
        "Time from launch to ready of the service's latest start.",
        "gauge",
        |s| s.startup_duration.get(),
    ),
    (
        Part::Blocked,
        "service_dependency_blocked",
        "1 while a required dependency of the service is down.",
        "gauge",
        |s| f64::from(u8::from(s.blocked.load(Ordering::Relaxed))),
    ),
    (
        Part::OutputDropped,
        "service_output_dropped_lines_total",
        "Lines of the service's stdout/stderr dropped by its output rate limit.",
        "counter",
        |s| count(&s.output_dropped),
    ),
    (
        Part::StartTime,
        "service_start_time_seconds",
        "When the current (or latest) instance of the service started (Unix time), 0 before the first.",
        "gauge",
        |s| s.start_time.get(),
    ),
    (
        Part::ExitCode,
        "service_last_exit_code",
        "Exit code of the service's latest instance to end, -1 when a signal ended it.",
        "gauge",
        |s| s.last_exit_code.load(Ordering::Relaxed) as f64,
    ),
    (
        Part::ExitSignal,
        "service_last_exit_signal",
        "Signal that ended the service's latest instance to end, 0 when it exited by itself.",
        "gauge",
        |s| s.last_exit_signal.load(Ordering::Relaxed) as f64,
    ),
    (
        Part::Kills,
        "service_sigkills_total",
        "Stops escalated to SIGKILL: the service did not stop within its shutdown timeout, or the stop was forced.",
        "counter",
        |s| count(&s.kills),
    ),
];

/// Writes one per-service family (`part`), from the services' series, in their order.
pub(super) fn write_family(text: &mut String, format: Format, services: &[ServiceEntry], part: Part) {
    if services.is_empty() {
        return;
    }
    if let Some((_, name, help, kind, value)) = SINGLE.iter().find(|family| family.0 == part) {
        per_service(text, format, services, (name, help, kind), *value);
        return;
    }
    match part {
        Part::Info => write_info(text, format, services),
        Part::State => per_service_and(
            text,
            format,
            services,
            (
                "service_state",
                "Lifecycle state of a service: 1 for the current state, 0 for the others.",
                "gauge",
            ),
            ("state", &ServiceState::ALL.map(ServiceState::as_str)),
            |s, position| f64::from(u8::from(usize::from(s.state.load(Ordering::Relaxed)) == position)),
            |_, _| None,
        ),
        Part::Health => per_service_and(
            text,
            format,
            services,
            (
                "service_health",
                "Health status of a service: 1 for the current status, 0 for the others.",
                "gauge",
            ),
            ("status", &HealthStatus::ALL.map(HealthStatus::as_str)),
            |s, position| {
                f64::from(u8::from(
                    usize::from(s.health.load(Ordering::Relaxed)) == position,
                ))
            },
            |_, _| None,
        ),
        Part::Failures => per_service_and(
            text,
            format,
            services,
            (
                "health_check_failures_total",
                "Failed health checks, by reason.",
                "counter",
            ),
            ("reason", &FailureReason::ALL.map(FailureReason::as_str)),
            |s, position| count(&s.failures[position]),
            |_, _| None,
        ),
        Part::Durations => write_durations(text, format, services),
        Part::Restarts => per_service_and(
            text,
            format,
            services,
            ("service_restarts_total", "Restarts, by reason.", "counter"),
            ("reason", &RestartReason::ALL.map(RestartReason::as_str)),
            |s, position| count(&s.restarts[position]),
            |exemplars, position| exemplars.restarts[position].clone(),
        ),
        Part::Transitions => per_service_and(
            text,
            format,
            services,
            (
                "service_health_transitions_total",
                "Health status changes, by the status entered.",
                "counter",
            ),
            ("to", &HealthStatus::ALL.map(HealthStatus::as_str)),
            |s, position| count(&s.transitions[position]),
            |_, _| None,
        ),
        // Written from SINGLE above.
        Part::Up
        | Part::Checks
        | Part::ConsecutiveFailures
        | Part::LastRestart
        | Part::Backoff
        | Part::StartupDuration
        | Part::Blocked
        | Part::OutputDropped
        | Part::StartTime
        | Part::ExitCode
        | Part::ExitSignal
        | Part::Kills => {}
        // Not per service: the heartbeats' and the edges' parts.
        Part::HeartbeatLast | Part::HeartbeatTimeouts | Part::HeartbeatsReceived | Part::Edges => {}
    }
}

/// `service_info`: one series per service with its static facts as labels.
fn write_info(text: &mut String, format: Format, services: &[ServiceEntry]) {
    header(
        text,
        format,
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
}

/// The check-duration histogram: cumulative buckets (with their exemplars in OpenMetrics), sum and count.
fn write_durations(text: &mut String, format: Format, services: &[ServiceEntry]) {
    header(
        text,
        format,
        "health_check_duration_seconds",
        "Time a health check took.",
        "histogram",
    );
    for entry in services {
        let series = &entry.metrics.0;
        let name = &entry.name;
        let exemplars = (format == Format::OpenMetrics).then(|| entry.metrics.exemplars());
        let exemplar = |bucket: usize| exemplars.as_ref().and_then(|e| e.buckets[bucket].clone());
        let mut cumulative = 0;
        let bounds = check_bucket_labels();
        for (position, (bound, bucket)) in bounds.iter().zip(&series.buckets).enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            series_start(text, "health_check_duration_seconds_bucket", name);
            for part in ["\",le=\"", bound, "\"} "] {
                text.push_str(part);
            }
            sample(text, cumulative as f64, exemplar(position).as_ref());
        }
        let total = series.duration_count.load(Ordering::Relaxed);
        series_start(text, "health_check_duration_seconds_bucket", name);
        text.push_str("\",le=\"+Inf\"} ");
        sample(text, total as f64, exemplar(CHECK_BUCKETS.len()).as_ref());
        drop(exemplars);
        series_start(text, "health_check_duration_seconds_sum", name);
        text.push_str("\"} ");
        number(text, series.duration_sum.get());
        series_start(text, "health_check_duration_seconds_count", name);
        text.push_str("\"} ");
        number(text, total as f64);
    }
}
