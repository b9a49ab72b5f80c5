//! Health: the probes, and the pure logic that turns check results into a status.
//!
//! [`HealthTracker`] owns one service's consecutive counts, status, last 100 results and uptime log; it is
//! plain data moved forward by [`HealthTracker::record`] with the time passed in, so the threshold rules are
//! tested without a runtime. [`composite`] folds every service's status into the system's. The probes that
//! produce results live in [`probe`].

pub mod engine;
pub(crate) mod http;
pub mod probe;
mod socket;
mod uptime;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

pub use uptime::UptimeLog;

use crate::config::HealthSettings;

/// How many results each service keeps.
pub const HISTORY_LEN: usize = 100;

/// A service's health, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Passing.
    Healthy,
    /// 1 .. failure_threshold-1 consecutive failures.
    Degraded,
    /// At least failure_threshold consecutive failures (or down), until recovery_threshold passes.
    Unhealthy,
    /// No data.
    Unknown,
}

impl HealthStatus {
    /// Every status, in the order metrics export them.
    pub const ALL: [HealthStatus; 4] = [
        HealthStatus::Healthy,
        HealthStatus::Degraded,
        HealthStatus::Unhealthy,
        HealthStatus::Unknown,
    ];

    /// The lowercase name used in the API, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a check failed: a small, fixed set (safe as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The probe did not answer within the timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// An HTTP status outside 2xx.
    HttpStatus,
    /// The exec probe exited non-zero or could not run.
    Exit,
    /// No heartbeat within the heartbeat timeout.
    Heartbeat,
    /// The service's process is not running.
    ProcessDown,
    /// The in-process service reported itself unhealthy, or anything else.
    Error,
}

impl FailureReason {
    /// Every reason, in the order metrics export them.
    pub const ALL: [FailureReason; 7] = [
        FailureReason::Timeout,
        FailureReason::Connect,
        FailureReason::HttpStatus,
        FailureReason::Exit,
        FailureReason::Heartbeat,
        FailureReason::ProcessDown,
        FailureReason::Error,
    ];

    /// The snake_case name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Connect => "connect",
            FailureReason::HttpStatus => "http_status",
            FailureReason::Exit => "exit",
            FailureReason::Heartbeat => "heartbeat",
            FailureReason::ProcessDown => "process_down",
            FailureReason::Error => "error",
        }
    }
}

/// What one probe found, before thresholds are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// Whether the check passed.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<FailureReason>,
    /// One line for people.
    pub message: String,
    /// Probe-specific facts (HTTP status, exit code, ...).
    pub details: Map<String, Value>,
}

impl ProbeOutcome {
    /// A passing outcome.
    pub fn pass(message: impl Into<String>) -> Self {
        Self {
            passed: true,
            reason: None,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// A failing outcome.
    pub fn fail(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            passed: false,
            reason: Some(reason),
            message: message.into(),
            details: Map::new(),
        }
    }

    /// The outcome of a check given no answer within `limit`.
    pub fn timed_out(limit: Duration) -> Self {
        Self::fail(
            FailureReason::Timeout,
            format!("no answer within {}", humantime::format_duration(limit)),
        )
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// One recorded check, in the seed's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// The service checked.
    pub service_name: String,
    /// The service's status after this check.
    pub status: HealthStatus,
    /// Whether this check itself passed.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<FailureReason>,
    /// When the check finished (RFC 3339 with milliseconds in JSON).
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_millis")]
    pub timestamp: SystemTime,
    /// One line for people.
    pub message: String,
    /// Probe-specific facts.
    pub details: Map<String, Value>,
    /// How long the probe took.
    pub response_time_ms: f64,
}

/// A change of status caused by one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Status before.
    pub from: HealthStatus,
    /// Status after.
    pub to: HealthStatus,
}

/// One service's health record: thresholds, counts, status, history and uptime.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    failure_threshold: u32,
    recovery_threshold: u32,
    status: HealthStatus,
    consecutive_failures: u32,
    consecutive_successes: u32,
    /// Shared with the published snapshot's `last_check`: a check's result is made once, not copied.
    history: VecDeque<Arc<CheckResult>>,
    /// Shared with the published snapshot, which readers compute uptimes from; copied on write, which
    /// happens on status changes only.
    uptime: Arc<UptimeLog>,
}

impl HealthTracker {
    /// A tracker with no data yet, started at `now`.
    pub fn new(settings: &HealthSettings, now: Instant) -> Self {
        Self {
            failure_threshold: settings.failure_threshold,
            recovery_threshold: settings.recovery_threshold,
            status: HealthStatus::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
            history: VecDeque::with_capacity(HISTORY_LEN),
            uptime: Arc::new(UptimeLog::new(now)),
        }
    }

    /// Takes new thresholds (a configuration reload); the counts, status and history stay, and the next
    /// check is judged by the new thresholds.
    pub fn set_thresholds(&mut self, settings: &HealthSettings) {
        self.failure_threshold = settings.failure_threshold;
        self.recovery_threshold = settings.recovery_threshold;
    }

    /// The current status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Consecutive failed checks.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Consecutive passed checks.
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    /// The most recent result.
    pub fn last_check(&self) -> Option<&CheckResult> {
        self.history.back().map(|result| &**result)
    }

    /// The last [`HISTORY_LEN`] results, oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &CheckResult> {
        self.history.iter().map(|result| &**result)
    }

    /// Percentage of `window` (up to `now`) spent healthy, over the time the service was observed.
    pub fn uptime_percent(&self, window: Duration, now: Instant) -> f64 {
        self.uptime.percent_healthy(window, now)
    }

    /// The uptime log (cheap to clone: it is copied only when the status changes).
    pub fn uptime(&self) -> &Arc<UptimeLog> {
        &self.uptime
    }

    /// Applies one probe outcome. Degraded below the failure threshold, unhealthy at it; back to healthy
    /// from degraded or unhealthy only after `recovery_threshold` consecutive passes (a flapping service
    /// stays degraded). The first pass of a new instance (status unknown) is its readiness: healthy.
    pub fn record(
        &mut self,
        service: &str,
        outcome: ProbeOutcome,
        elapsed: Duration,
        timestamp: SystemTime,
        now: Instant,
    ) -> (Arc<CheckResult>, Option<Transition>) {
        let from = self.status;
        if outcome.passed {
            self.consecutive_failures = 0;
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            let recovered = matches!(from, HealthStatus::Unknown | HealthStatus::Healthy)
                || self.consecutive_successes >= self.recovery_threshold;
            if recovered {
                self.status = HealthStatus::Healthy;
            }
        } else {
            self.consecutive_successes = 0;
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            // Below the threshold a service is degraded; an unhealthy one stays unhealthy.
            let at_threshold = self.consecutive_failures >= self.failure_threshold;
            self.status = if at_threshold || from == HealthStatus::Unhealthy {
                HealthStatus::Unhealthy
            } else {
                HealthStatus::Degraded
            };
        }
        let result = Arc::new(CheckResult {
            service_name: service.to_owned(),
            status: self.status,
            passed: outcome.passed,
            reason: outcome.reason,
            timestamp,
            message: outcome.message,
            details: outcome.details,
            response_time_ms: milliseconds(elapsed),
        });
        self.push(result.clone());
        (result, self.set(from, now))
    }

    /// The service went down (its process exited, or a start failed): unhealthy at once, whatever the
    /// thresholds, with a result saying why.
    pub fn record_down(
        &mut self,
        service: &str,
        reason: FailureReason,
        message: String,
        timestamp: SystemTime,
        now: Instant,
    ) -> (Arc<CheckResult>, Option<Transition>) {
        let from = self.status;
        self.consecutive_successes = 0;
        self.consecutive_failures = self.consecutive_failures.max(self.failure_threshold);
        self.status = HealthStatus::Unhealthy;
        let result = Arc::new(CheckResult {
            service_name: service.to_owned(),
            status: self.status,
            passed: false,
            reason: Some(reason),
            timestamp,
            message,
            details: Map::new(),
            response_time_ms: 0.0,
        });
        self.push(result.clone());
        (result, self.set(from, now))
    }

    /// The process of a service without a probe runs: healthy (its liveness is the process).
    pub fn process_running(&mut self, now: Instant) -> Option<Transition> {
        let from = self.status;
        self.consecutive_failures = 0;
        self.status = HealthStatus::Healthy;
        self.set(from, now)
    }

    /// Forget the counts (a new instance starts, or the service was stopped): status unknown, history kept.
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        let from = self.status;
        self.consecutive_failures = 0;
        self.consecutive_successes = 0;
        self.status = HealthStatus::Unknown;
        self.set(from, now)
    }

    fn push(&mut self, result: Arc<CheckResult>) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(result);
    }

    fn set(&mut self, from: HealthStatus, now: Instant) -> Option<Transition> {
        if self.uptime.changes_with(self.status) {
            Arc::make_mut(&mut self.uptime).observe(self.status, now);
        }
        (from != self.status).then_some(Transition {
            from,
            to: self.status,
        })
    }
}

/// `elapsed` in milliseconds, rounded to the microsecond (what a probe's timing can honestly claim).
pub fn milliseconds(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1e3
}

/// The system's health from every service's: unhealthy if any is; else degraded if any is degraded or not
/// yet known while others are; healthy if all are; unknown with no data at all.
pub fn composite(statuses: impl IntoIterator<Item = HealthStatus>) -> HealthStatus {
    let (mut any, mut unknown, mut degraded) = (false, false, false);
    for status in statuses {
        match status {
            HealthStatus::Unhealthy => return HealthStatus::Unhealthy,
            HealthStatus::Degraded => degraded = true,
            HealthStatus::Unknown => unknown = true,
            HealthStatus::Healthy => any = true,
        }
    }
    match (any || degraded, unknown, degraded) {
        (false, _, _) => HealthStatus::Unknown,
        (true, true, _) | (true, _, true) => HealthStatus::Degraded,
        (true, false, false) => HealthStatus::Healthy,
    }
}

#[cfg(test)]
mod tests;
