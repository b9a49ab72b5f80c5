//! The actor's commands: restart, start, stop, check now, heartbeat, report.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Actor, Phase};
use crate::health::CheckResult;
use crate::supervisor::state::{RestartReason, ServiceState};
use crate::supervisor::{Command, ControlError, HealthReport, Reply};

impl Actor {
    /// Handles one command; returns the next phase when it changes. A closed channel means the supervisor
    /// is gone: shut down.
    pub(super) async fn on_command(&mut self, command: Option<Command>) -> Option<Phase> {
        let Some(command) = command else {
            return Some(Phase::Exit);
        };
        match command {
            Command::CheckNow(reply) => {
                self.check_now(reply);
                None
            }
            Command::Report { history, reply } => {
                let _ = reply.send(self.report(history));
                None
            }
            Command::Restart { force, reply } => self.restart(force, reply).await,
            Command::Start { force, reply } => self.start(force, reply),
            Command::Stop { force, reply } => self.stop(force, reply).await,
        }
    }

    /// Passes the reply back when the command may go ahead; answers it with the refusal otherwise:
    /// external services are not managed, and a failed service needs `force`.
    pub(super) fn admit(&self, force: bool, reply: Reply) -> Option<Reply> {
        if self.is_external() {
            let _ = reply.send(Err(ControlError::NotManaged(self.name().to_owned())));
            return None;
        }
        if self.snapshot.state == ServiceState::Failed && !force {
            let _ = reply.send(Err(ControlError::Refused {
                service: self.name().to_owned(),
                attempts: self.snapshot.attempts,
            }));
            return None;
        }
        Some(reply)
    }

    pub(super) async fn restart(&mut self, force: bool, reply: Reply) -> Option<Phase> {
        let reply = self.admit(force, reply)?;
        if force {
            self.snapshot.attempts = 0;
        }
        let in_progress = !self.start_waiters.is_empty();
        self.start_waiters.push(reply);
        if in_progress {
            // Concurrent restarts coalesce: this caller waits for the restart already under way.
            return None;
        }
        self.open_restart_span(RestartReason::Manual, self.snapshot.attempts, Duration::ZERO);
        match self.snapshot.state {
            ServiceState::Starting | ServiceState::Running => {
                self.stop_instance().await;
                Some(Phase::Pending(Some(RestartReason::Manual)))
            }
            _ => Some(Phase::Pending(Some(RestartReason::Manual))),
        }
    }

    pub(super) fn start(&mut self, force: bool, reply: Reply) -> Option<Phase> {
        let reply = self.admit(force, reply)?;
        match self.snapshot.state {
            ServiceState::Running => {
                let _ = reply.send(Ok(self.snapshot.clone()));
                None
            }
            ServiceState::Starting | ServiceState::Pending => {
                self.start_waiters.push(reply);
                None
            }
            ServiceState::Backoff => {
                self.start_waiters.push(reply);
                Some(Phase::Pending(Some(RestartReason::Manual)))
            }
            ServiceState::Stopped | ServiceState::Failed | ServiceState::Stopping => {
                self.snapshot.attempts = 0;
                self.start_waiters.push(reply);
                Some(Phase::Pending(None))
            }
        }
    }

    pub(super) async fn stop(&mut self, force: bool, reply: Reply) -> Option<Phase> {
        let reply = self.admit(force, reply)?;
        self.fail_start_waiters(ControlError::Stopped(self.name().to_owned()));
        self.stop_instance().await;
        self.health.reset(Instant::now());
        self.set_state(ServiceState::Stopped);
        let _ = reply.send(Ok(self.snapshot.clone()));
        Some(Phase::Stopped)
    }

    pub(super) fn check_now(&mut self, reply: oneshot::Sender<CheckResult>) {
        let checkable = self.has_health_check() && self.snapshot.state == ServiceState::Running;
        if checkable {
            if self.check.is_none() {
                self.check = Some(self.check_future(true));
            }
            self.check_waiters.push(reply);
            return;
        }
        let message = if self.has_health_check() {
            format!("service is {}", self.snapshot.state)
        } else {
            format!("service is {} and has no health probe", self.snapshot.state)
        };
        let _ = reply.send(CheckResult {
            service_name: self.name().to_owned(),
            status: self.health.status(),
            passed: self.snapshot.ready,
            reason: None,
            timestamp: self.parts.clock.now(),
            message,
            details: Default::default(),
            response_time_ms: 0.0,
        });
    }

    pub(super) fn report(&self, with_history: bool) -> HealthReport {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        HealthReport {
            snapshot: self.snapshot.clone(),
            consecutive_successes: self.health.consecutive_successes(),
            history: if with_history {
                self.health.history().cloned().collect()
            } else {
                Vec::new()
            },
            uptime_1h: self.health.uptime_percent(hour, now),
            uptime_24h: self.health.uptime_percent(24 * hour, now),
            uptime_7d: self.health.uptime_percent(7 * 24 * hour, now),
        }
    }
}
