//! The way in to one service: [`ServiceHandle`] sends [`Command`]s to its actor and reads its published
//! [`Snapshot`]; [`ControlError`] says why a request was refused or failed.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::Snapshot;
use crate::config::ServiceSpec;
use crate::health::CheckResult;
use crate::registry::{RegistryEntry, RegistryError, RegistryHandle};
use crate::telemetry::metrics::ServiceMetrics;

/// The answer to start, stop and restart.
pub type Reply = oneshot::Sender<Result<Snapshot, ControlError>>;

/// A request to a service's actor.
#[derive(Debug)]
pub enum Command {
    /// Restart (stop gracefully, start again); answered once it runs again or failed to start.
    Restart {
        /// Also for a failed service; resets the attempt counter.
        force: bool,
        /// The answer.
        reply: Reply,
        /// The span of whoever asks (an API request's): what the request does joins its trace.
        caller: tracing::Span,
    },
    /// Start a stopped (or, with force, failed) service; answered once it runs.
    Start {
        /// Also for a failed service; resets the attempt counter.
        force: bool,
        /// The answer.
        reply: Reply,
        /// The span of whoever asks (an API request's): what the request does joins its trace.
        caller: tracing::Span,
    },
    /// Stop the service and keep it stopped.
    Stop {
        /// Also for a failed service.
        force: bool,
        /// The answer.
        reply: Reply,
        /// The span of whoever asks (an API request's): what the request does joins its trace.
        caller: tracing::Span,
    },
    /// Fleet mode: this node won (`true`) or lost a singleton's election (sent by the cluster only).
    Leadership {
        /// It leads now.
        leader: bool,
        /// The election's span: a start it leads to joins that trace.
        caller: tracing::Span,
    },
    /// Run a health check now.
    CheckNow(oneshot::Sender<CheckResult>),
    /// A configuration reload's new settings and place in the graph (sent by [`Supervisor::reload`](
    /// super::Supervisor::reload) only); answered once they apply, and, when the process must be replaced,
    /// once the old instance is gone.
    Reconfigure(Box<super::actor::Reconfiguration>),
    /// A reload removed the service, which is stopped already: its actor ends (sent by
    /// [`Supervisor::reload`](super::Supervisor::reload) only).
    Retire,
    /// Uptime, and the history when asked for (copying it is the expensive part).
    Report {
        /// Include the last 100 results.
        history: bool,
        /// The answer.
        reply: oneshot::Sender<HealthReport>,
    },
}

/// Why a start, stop or restart did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such service.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// A failed service needs `force`.
    #[error("service {service:?} has failed after {attempts} restart attempts; use force=true to restart it")]
    Refused {
        /// The service.
        service: String,
        /// Attempts spent.
        attempts: u32,
    },
    /// External services are only probed.
    #[error("service {0:?} is external: the orchestrator only probes it")]
    NotManaged(String),
    /// A required dependency is down.
    #[error("service {service:?} is waiting on its required dependency {dependency:?}")]
    Blocked {
        /// The service.
        service: String,
        /// The dependency it waits on.
        dependency: String,
    },
    /// A fleet singleton that another node runs (or that waits for its election): nothing runs here.
    #[error("service {0:?} is a singleton that runs on another node of the fleet (this node stands by)")]
    Standby(String),
    /// It is being stopped; ask again once it has.
    #[error("service {0:?} is stopping; try again once it has stopped")]
    Busy(String),
    /// The start failed.
    #[error("service {service:?} did not start: {error}")]
    StartFailed {
        /// The service.
        service: String,
        /// What went wrong.
        error: String,
    },
    /// It was stopped while the request waited.
    #[error("service {0:?} was stopped")]
    Stopped(String),
    /// The orchestrator is shutting down.
    #[error("the orchestrator is shutting down")]
    ShuttingDown,
    /// Another configuration reload is being applied.
    #[error("another configuration reload is in progress")]
    ReloadInProgress,
}

/// One service's health in full: snapshot, history and uptime.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// The current snapshot.
    pub snapshot: Snapshot,
    /// Consecutive passed checks.
    pub consecutive_successes: u32,
    /// The last 100 results, oldest first (empty from [`ServiceHandle::summary`]).
    pub history: Vec<CheckResult>,
    /// Percentage of the last hour spent healthy.
    pub uptime_1h: f64,
    /// Percentage of the last day spent healthy.
    pub uptime_24h: f64,
    /// Percentage of the last week spent healthy.
    pub uptime_7d: f64,
}

impl HealthReport {
    /// The report `snapshot` gives at `now` (without history).
    pub fn of(snapshot: Snapshot, now: tokio::time::Instant) -> Self {
        let hour = std::time::Duration::from_secs(3600);
        let uptime = |window| snapshot.uptime.0.percent_healthy(window, now);
        Self {
            consecutive_successes: snapshot.consecutive_successes,
            history: Vec::new(),
            uptime_1h: uptime(hour),
            uptime_24h: uptime(24 * hour),
            uptime_7d: uptime(7 * 24 * hour),
            snapshot,
        }
    }
}

/// The way in to one service's actor. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceHandle {
    pub(super) spec: Arc<ServiceSpec>,
    pub(super) registry: RegistryHandle,
    pub(super) metrics: ServiceMetrics,
    pub(super) layer: u32,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) snapshot: watch::Receiver<Snapshot>,
}

impl ServiceHandle {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The service's validated configuration.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// The service's startup layer.
    pub fn layer(&self) -> u32 {
        self.layer
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// Waits until the snapshot satisfies `condition` (or the actor is gone), returning it.
    pub async fn wait_for(&self, condition: impl FnMut(&Snapshot) -> bool) -> Snapshot {
        let mut receiver = self.snapshot.clone();
        let reached = receiver
            .wait_for(condition)
            .await
            .map(|snapshot| snapshot.clone());
        reached.unwrap_or_else(|_| receiver.borrow().clone())
    }

    /// Restarts the service; answers once it runs again, or with the error that stopped it.
    pub async fn restart(&self, force: bool) -> Result<Snapshot, ControlError> {
        self.control(|reply, caller| Command::Restart { force, reply, caller })
            .await
    }

    /// Starts a stopped service (a failed one with `force`); answers once it runs.
    pub async fn start(&self, force: bool) -> Result<Snapshot, ControlError> {
        self.control(|reply, caller| Command::Start { force, reply, caller })
            .await
    }

    /// Stops the service and keeps it stopped.
    pub async fn stop(&self, force: bool) -> Result<Snapshot, ControlError> {
        self.control(|reply, caller| Command::Stop { force, reply, caller })
            .await
    }

    /// Fleet mode: tells a singleton's actor that this node now leads its election (it may start) or no
    /// longer does (its instance stops at once). What follows joins the current span's trace.
    pub async fn set_leadership(&self, leader: bool) -> Result<(), ControlError> {
        self.send(Command::Leadership {
            leader,
            caller: tracing::Span::current(),
        })
        .await
    }

    /// Runs a health check now and returns its result.
    pub async fn check_now(&self) -> Result<CheckResult, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::CheckNow(reply)).await?;
        answer.await.map_err(|_| ControlError::ShuttingDown)
    }

    /// History and uptime.
    pub async fn report(&self) -> Result<HealthReport, ControlError> {
        self.ask_report(true).await
    }

    /// Uptime and counters without the history, from the published snapshot (no round trip to the
    /// service's actor): what the overview endpoints need.
    pub fn summary(&self) -> HealthReport {
        HealthReport::of(self.snapshot(), tokio::time::Instant::now())
    }

    async fn ask_report(&self, history: bool) -> Result<HealthReport, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Report { history, reply }).await?;
        answer.await.map_err(|_| ControlError::ShuttingDown)
    }

    /// Records a heartbeat sent by the service itself (what `POST .../registry/{name}/heartbeat` does).
    pub async fn heartbeat(&self) -> Result<RegistryEntry, RegistryError> {
        self.registry.heartbeat(self.name()).await
    }

    /// Hands a reload's new settings to the actor; answers once they apply (and, when the process must be
    /// replaced, once the old instance is gone).
    pub(super) async fn reconfigure(
        &self,
        change: impl FnOnce(Reply) -> super::actor::Reconfiguration,
    ) -> Result<Snapshot, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reconfigure(Box::new(change(reply)))).await?;
        answer.await.map_err(|_| ControlError::ShuttingDown)?
    }

    /// Ends the actor of a service a reload removed (stopped already); returns once the actor is gone.
    pub(super) async fn retire(&self) {
        let mut published = self.snapshot.clone();
        if self.send(Command::Retire).await.is_err() {
            return;
        }
        // The actor drops its end of the snapshot channel as it ends.
        while published.changed().await.is_ok() {}
    }

    /// Sends a control request with the caller's span (what it sets in motion joins the caller's trace)
    /// and waits for its answer.
    async fn control(
        &self,
        command: impl FnOnce(Reply, tracing::Span) -> Command,
    ) -> Result<Snapshot, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply, tracing::Span::current())).await?;
        answer.await.map_err(|_| ControlError::ShuttingDown)?
    }

    async fn send(&self, command: Command) -> Result<(), ControlError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ControlError::ShuttingDown)
    }
}
