//! The actor's actions that take time: launching an instance, waiting for dependents, stopping the
//! instance (SIGTERM, then SIGKILL), and what becoming ready or backing off sets in motion.

use tokio::time::{Instant, sleep, timeout};
use tracing::Instrument;

use super::{Actor, KILL_GRACE, probe_ticker};
use crate::events::EventKind;
use crate::health::FailureReason;
use crate::span_event;
use crate::supervisor::launcher::Instance;
use crate::supervisor::lifecycle::{Dependents, Event};
use crate::supervisor::output;
use crate::supervisor::state::{Exit, RestartReason};
use crate::telemetry::trace::event_name;

/// The grid checks fall due on (see `became_ready`).
pub(super) const CHECK_GRID: std::time::Duration = std::time::Duration::from_secs(1);

impl Actor {
    /// Launches a new instance (or, for an external service, starts probing it); reports `LaunchFailed`, or
    /// `Ready` at once when there is no probe.
    pub(super) async fn launch(&mut self, restart: Option<RestartReason>) -> Option<Event> {
        if self.lifecycle.policy_singleton() && self.parts.fence.as_ref().is_some_and(|fence| !fence.holds())
        {
            // The node's lease is no longer certainly held (the orchestrator was paused, say, and the
            // cluster has not caught up yet): another node may run it by now. Stand by instead.
            return Some(Event::Leadership(false));
        }
        let now = Instant::now();
        if let Some(reason) = restart {
            let at = self.parts.clock.at(now);
            self.snapshot.last_restart = Some(at);
            self.snapshot.last_restart_reason = Some(reason);
            let trace_id = self.attempt_trace_id();
            self.parts.metrics.restart(reason, at, trace_id);
            self.emit(
                EventKind::Restart,
                serde_json::json!({
                    "reason": reason.as_str(),
                    "attempt": self.lifecycle.attempts(),
                    "restart_count": self.lifecycle.restart_count(),
                }),
            );
            tracing::info!(service = self.name(), %reason, restart_count = self.lifecycle.restart_count(), "restarting service");
        }
        self.health().tracker.reset(now);
        self.launched_at = now;
        self.startup_failure = None;
        self.startup_deadline = Some(now + self.parts.spec.health.startup_timeout);
        self.ticker = probe_ticker(now, self.parts.spec.health.startup_interval);
        self.open_start_span();
        self.publish();

        if let Some(launcher) = self.parts.launcher.clone() {
            // Inside `start service`: the child gets its traceparent in `TRACEPARENT`.
            let inside = self.traces_start().unwrap_or_else(tracing::Span::none);
            // This launch takes a replacement started ahead (or drops it, if it cannot).
            self.started_ahead = false;
            match launcher.launch(&self.parts.spec).instrument(inside).await {
                Ok(mut instance) => {
                    if let Some(output) = instance.take_output() {
                        output::forward(
                            &self.parts.spec.name,
                            output,
                            &self.parts.spec.output,
                            self.parts.metrics.clone(),
                        );
                    }
                    if self.lifecycle.policy_singleton()
                        && let (Some(fence), Some(pid)) = (&self.parts.fence, instance.pid())
                        && let Some(guard) = fence.guard(self.name(), pid)
                    {
                        instance.fence(guard);
                    }
                    self.snapshot.pid = instance.pid();
                    self.spawned(instance.pid());
                    self.parts.metrics.started(self.parts.clock.at(now));
                    self.exit = Some(instance.exit_watch());
                    self.main = instance.take_main();
                    self.instance = Some(instance);
                    self.set_process_alive(true);
                    self.publish();
                }
                Err(error) => {
                    let message = format!("start failed: {error}");
                    self.failure(FailureReason::ProcessDown, message.clone());
                    return Some(Event::LaunchFailed(message));
                }
            }
        }
        if !self.has_health_check() {
            return Some(Event::Ready);
        }
        None
    }

    pub(super) fn became_ready(&mut self) {
        let now = Instant::now();
        if !self.has_health_check() {
            // Liveness is the process: it runs, so it is healthy.
            self.health().tracker.process_running(now);
        }
        self.snapshot.ready_since = Some(self.parts.clock.at(now));
        self.health().healthy_since = Some(now);
        let check_interval = self.parts.spec.health.check_interval;
        // Due on the orchestrator's whole seconds (or its interval's steps, when shorter), so that the
        // checks of many services share the runtime's wakeups: at most one step later than the interval.
        let step = check_interval.min(CHECK_GRID);
        let first = super::on_grid(self.parts.boot, now + check_interval, step);
        self.ticker = probe_ticker(first, check_interval);
        self.start_checker(first);
        tracing::info!(
            service = self.name(),
            layer = self.parts.layer,
            pid = self.snapshot.pid,
            ready_in_ms = now.duration_since(self.launched_at).as_millis() as u64,
            since_launch_ms = now.duration_since(self.parts.boot).as_millis() as u64,
            "service ready"
        );
        self.parts
            .metrics
            .set_startup_duration(now.duration_since(self.launched_at));
        // Logged before it is published: the startup summary follows every "service ready" line.
        self.publish();
        self.close_start_span(None);
        self.close_attempt();
        let snapshot = self.snapshot.clone();
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(Ok(snapshot.clone()));
        }
    }

    /// Waits out the backoff before attempt `attempt`; a delay of zero is over at once (reported now rather
    /// than at the timer's next tick, up to a millisecond later).
    pub(super) fn schedule_restart(&mut self, attempt: u32, reason: RestartReason) -> Option<Event> {
        let delay = self.backoff.delay(attempt, fastrand::f64());
        self.backoff_until = Some(Instant::now() + delay);
        self.snapshot.backoff = Some(delay);
        self.health().healthy_since = None;
        self.open_backoff(reason, attempt, delay);
        self.publish();
        self.emit(
            EventKind::Backoff,
            serde_json::json!({
                "reason": reason.as_str(),
                "attempt": attempt,
                "max_attempts": self.parts.spec.restart.max_attempts,
                "delay_seconds": delay.as_secs_f64(),
            }),
        );
        tracing::info!(
            service = self.name(),
            %reason,
            attempt,
            max_attempts = self.parts.spec.restart.max_attempts,
            delay_ms = delay.as_millis() as u64,
            "restart scheduled"
        );
        delay.is_zero().then_some(Event::BackoffElapsed)
    }

    /// Waits until the dependents in `scope` are down (at shutdown, only when there is an instance to hold).
    pub(super) async fn await_dependents(&mut self, scope: Dependents) {
        let peers = match scope {
            Dependents::Required => &self.parts.required_dependents,
            Dependents::All if self.instance.is_none() => return,
            Dependents::All => &self.parts.dependents,
        };
        loop {
            let holding = peers
                .iter()
                .find(|peer| !peer.snapshot.borrow().is_down())
                .map(|peer| peer.name.as_str());
            let Some(dependent) = holding else { return };
            tracing::debug!(service = %self.parts.spec.name, %dependent, "waiting for dependent to stop first");
            tokio::select! {
                // A shutdown meanwhile changes nothing here: the dependents stop for it too, and stopping
                // this instance before them would break the shutdown order. Only the force path cuts in.
                () = self.parts.force.cancelled() => return,
                changed = self.changes.changed() => if changed.is_err() { return },
            }
        }
    }

    /// SIGTERM, then SIGKILL after the shutdown timeout (or at once when forced).
    pub(super) async fn stop_instance(&mut self) {
        self.check = None;
        self.stop_checker();
        self.exit = None;
        self.main = None;
        let Some(instance) = self.instance.take() else {
            return;
        };
        self.set_process_alive(false);
        let parent = self.stop_parent();
        let span = tracing::info_span!(
            parent: parent.as_ref().and_then(tracing::Span::id),
            "stop service",
            orchestrator.service.name = %self.parts.spec.name,
            process.pid = instance.pid().map(i64::from),
            orchestrator.shutdown.timeout_seconds = self.parts.spec.shutdown.timeout.as_secs_f64(),
            orchestrator.stop.killed = tracing::field::Empty,
            process.exit.code = tracing::field::Empty,
            process.exit.signal = tracing::field::Empty,
        );
        let (status, killed) = self.terminate(instance).instrument(span.clone()).await;
        span.record("orchestrator.stop.killed", killed);
        match status {
            Exit::Code(code) => span.record("process.exit.code", i64::from(code)),
            Exit::Signal(signal) => span.record("process.exit.signal", i64::from(signal)),
            Exit::Error(_) => &span,
        };
        self.parts.metrics.ended(&status);
        tracing::info!(parent: &span, service = self.name(), %status, "service stopped");
        self.snapshot.pid = None;
        self.publish();
    }

    /// SIGTERM, then SIGKILL after the shutdown timeout (or at once when forced); returns how it ended and
    /// whether it took SIGKILL.
    async fn terminate(&mut self, mut instance: Instance) -> (Exit, bool) {
        let timeout_length = self.parts.spec.shutdown.timeout;
        instance.terminate();
        let graceful = tokio::select! {
            status = instance.exited() => Some(status),
            () = sleep(timeout_length) => {
                tracing::warn!(service = self.name(), timeout_ms = timeout_length.as_millis() as u64, "did not stop in time: sending SIGKILL");
                None
            }
            () = self.parts.force.cancelled() => {
                tracing::warn!(service = self.name(), "forced shutdown: sending SIGKILL");
                None
            }
        };
        if let Some(status) = graceful {
            return (status, false);
        }
        let span = tracing::Span::current();
        span_event!(
            parent: &span,
            event_name::SERVICE_KILLED,
            process.pid = instance.pid().map(i64::from),
            orchestrator.shutdown.timeout_seconds = timeout_length.as_secs_f64(),
            orchestrator.stop.forced = self.parts.force.is_cancelled(),
        );
        self.parts.metrics.killed();
        instance.kill();
        let status = match timeout(KILL_GRACE, instance.exited()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::error!(
                    service = self.name(),
                    pid = instance.pid(),
                    "process survived SIGKILL; abandoning it"
                );
                Exit::Error("survived SIGKILL".into())
            }
        };
        (status, true)
    }
}
