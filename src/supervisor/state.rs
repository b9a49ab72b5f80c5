//! What the supervisor says about a service: its lifecycle state, why it restarted, and the snapshot each
//! service's actor publishes on every change.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::health::{CheckResult, HealthStatus, UptimeLog};
pub use crate::status::{RestartReason, ServiceState};

/// How a service instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status code.
    Code(i32),
    /// It was ended by this signal.
    Signal(i32),
    /// It could not be waited for, or an in-process service's task ended with this error.
    Error(String),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal} ({})", signal_name(*signal)),
            Exit::Error(error) => write!(f, "ended: {error}"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "other",
    }
}

/// A service's uptime log as its snapshot carries it: shared with the actor, which replaces it when the
/// status changes (so two are the same log exactly when they are the same allocation).
#[derive(Debug, Clone)]
pub struct PublishedUptime(pub Arc<UptimeLog>);

impl PartialEq for PublishedUptime {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Everything the rest of the program may know about one service, published on every change.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Lifecycle state.
    pub state: ServiceState,
    /// Health status.
    pub health: HealthStatus,
    /// Running and not unhealthy: required dependents may start.
    pub ready: bool,
    /// The first start attempt has concluded (ready, failed, or blocked by a failed required dependency):
    /// optional dependents may start.
    pub settled: bool,
    /// Every restart so far, manual ones included.
    pub restart_count: u32,
    /// Automatic restart attempts spent since the last reset.
    pub attempts: u32,
    /// When the last restart began.
    pub last_restart: Option<SystemTime>,
    /// Why the last restart happened.
    pub last_restart_reason: Option<RestartReason>,
    /// The last real failure: a crash, a failed start, a failed check after readiness (never a probe of
    /// an instance that was still starting).
    pub last_error: Option<String>,
    /// When the last error happened.
    pub last_error_at: Option<SystemTime>,
    /// Stopped, or being stopped, on request: its running required dependents stop first and wait.
    pub stop_requested: bool,
    /// The required dependency this service waits on, if any.
    pub waiting_on: Option<String>,
    /// It will not start by itself until a required dependency recovers: one settled without being
    /// ready, or is being stopped on request.
    pub blocked: bool,
    /// Process id of the running instance.
    pub pid: Option<u32>,
    /// Consecutive failed checks.
    pub consecutive_failures: u32,
    /// Consecutive passed checks.
    pub consecutive_successes: u32,
    /// The status changes of the last seven days, which uptimes are computed from.
    pub uptime: PublishedUptime,
    /// The most recent check.
    pub last_check: Option<Arc<CheckResult>>,
    /// The delay being waited out, in the backoff state.
    pub backoff: Option<Duration>,
    /// When the current instance became ready; `None` while no instance runs.
    pub ready_since: Option<SystemTime>,
    /// A fleet singleton: whether this node leads its election (runs it). `None` for every other service,
    /// and when fleet mode is off.
    pub leader: Option<bool>,
}

impl Snapshot {
    /// The snapshot of a service that has not done anything yet.
    pub fn initial() -> Self {
        Self {
            state: ServiceState::Pending,
            health: HealthStatus::Unknown,
            ready: false,
            settled: false,
            restart_count: 0,
            attempts: 0,
            last_restart: None,
            last_restart_reason: None,
            last_error: None,
            last_error_at: None,
            stop_requested: false,
            waiting_on: None,
            blocked: false,
            pid: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
            uptime: PublishedUptime(Arc::new(UptimeLog::new(tokio::time::Instant::now()))),
            last_check: None,
            backoff: None,
            ready_since: None,
            leader: None,
        }
    }

    /// No instance of the service is running (nothing to stop for it).
    pub fn is_down(&self) -> bool {
        matches!(
            self.state,
            ServiceState::Pending | ServiceState::Stopped | ServiceState::Backoff | ServiceState::Failed
        )
    }
}
