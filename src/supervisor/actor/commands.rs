//! The actor's commands: control requests go to the lifecycle; check-now and reports are answered here.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Actor, Input};
use crate::health::CheckResult;
use crate::supervisor::lifecycle::{Event, Request};
use crate::supervisor::state::ServiceState;
use crate::supervisor::{Command, HealthReport};

impl Actor {
    /// Turns a control request into the lifecycle's input and answers the rest at once. A closed channel
    /// means the supervisor is gone: shut down.
    pub(super) fn on_command(&mut self, command: Option<Command>) -> Option<Input> {
        let Some(command) = command else {
            return Some(Input::Shutdown);
        };
        let (request, force, reply, caller) = match command {
            Command::CheckNow(reply) => {
                self.check_now(reply);
                return None;
            }
            Command::Report { history, reply } => {
                let _ = reply.send(self.report(history));
                return None;
            }
            Command::Reconfigure(change) => return Some(Input::Reconfigure(change)),
            Command::Leadership { leader, caller } => {
                // A failover's trace holds the start it leads to.
                self.traces.request = Some(caller);
                return Some(Input::Event(Event::Leadership(leader)));
            }
            Command::Retire => {
                // Removed by a reload, and stopped: nothing may hold its end any longer.
                self.parts.dependents.clear();
                return Some(Input::Shutdown);
            }
            Command::Restart { force, reply, caller } => (Request::Restart, force, reply, caller),
            Command::Start { force, reply, caller } => (Request::Start, force, reply, caller),
            Command::Stop { force, reply, caller } => (Request::Stop, force, reply, caller),
        };
        Some(Input::Request {
            request,
            force,
            reply,
            caller,
        })
    }

    pub(super) fn check_now(&mut self, reply: oneshot::Sender<CheckResult>) {
        let state = self.lifecycle.state();
        let checkable = self.has_health_check() && state == ServiceState::Running;
        if checkable {
            if self.check.is_none() {
                self.check = Some(self.check_future(crate::telemetry::trace::exporting()));
            }
            self.check_waiters.push(reply);
            return;
        }
        let message = if self.has_health_check() {
            format!("service is {state}")
        } else {
            format!("service is {state} and has no health probe")
        };
        let _ = reply.send(CheckResult {
            service_name: self.name().to_owned(),
            status: self.health().tracker.status(),
            passed: self.snapshot.ready,
            reason: None,
            timestamp: self.parts.clock.now(),
            message,
            details: Default::default(),
            response_time_ms: 0.0,
        });
    }

    pub(super) fn report(&self, with_history: bool) -> HealthReport {
        // The published snapshot, not the actor's copy: it has the passes the checker recorded since.
        let snapshot = self.parts.publish.borrow().clone();
        let mut report = HealthReport::of(snapshot, Instant::now());
        if with_history {
            report.history = self.health().tracker.history().cloned().collect();
        }
        report
    }
}
