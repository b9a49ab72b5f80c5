//! The words every subsystem uses about a service's lifecycle: its state and why it restarted. A leaf
//! module (it imports nothing of this crate), so that the registry, the metrics and the API can name them
//! without depending on the supervisor that produces them.

use std::fmt;

use serde::Serialize;

/// A service's lifecycle state (`status` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Waiting for its dependencies.
    Pending,
    /// Launched (or, for an external service, being probed) and not yet ready.
    Starting,
    /// Ready: its first check passed, or it started and has no probe.
    Running,
    /// Being stopped: SIGTERM sent, SIGKILL after the shutdown timeout.
    Stopping,
    /// Stopped on purpose.
    Stopped,
    /// Waiting out the backoff delay before a restart.
    Backoff,
    /// Automatic restarts exhausted; only a forced manual restart brings it back.
    Failed,
}

impl ServiceState {
    /// Every state, in the order metrics export them.
    pub const ALL: [ServiceState; 7] = [
        ServiceState::Pending,
        ServiceState::Starting,
        ServiceState::Running,
        ServiceState::Stopping,
        ServiceState::Stopped,
        ServiceState::Backoff,
        ServiceState::Failed,
    ];

    /// The lowercase name used in the API, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Pending => "pending",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
            ServiceState::Backoff => "backoff",
            ServiceState::Failed => "failed",
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a service was restarted: a small, fixed set (safe as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// Its process exited, or a start attempt failed.
    Crashed,
    /// failure_threshold consecutive failed checks.
    Unhealthy,
    /// Its heartbeats stopped (the `heartbeat` probe failed).
    HeartbeatTimeout,
    /// Someone asked for it.
    Manual,
    /// A configuration reload changed a setting its process was started with.
    Reload,
}

impl RestartReason {
    /// Every reason, in the order metrics export them.
    pub const ALL: [RestartReason; 5] = [
        RestartReason::Crashed,
        RestartReason::Unhealthy,
        RestartReason::HeartbeatTimeout,
        RestartReason::Manual,
        RestartReason::Reload,
    ];

    /// The snake_case name used in the API, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crashed => "crashed",
            RestartReason::Unhealthy => "unhealthy",
            RestartReason::HeartbeatTimeout => "heartbeat_timeout",
            RestartReason::Manual => "manual",
            RestartReason::Reload => "reload",
        }
    }
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the registry says an entry is doing: a supervised service's lifecycle state, or `registered` for a
/// service that registered itself at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryStatus {
    /// A configured service, in this lifecycle state.
    Service(ServiceState),
    /// Registered at run time; the orchestrator does not run it.
    Registered,
}

impl EntryStatus {
    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Service(state) => state.as_str(),
            EntryStatus::Registered => "registered",
        }
    }
}

impl Serialize for EntryStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
