//! One actor per service: it owns the service's instance, health record and restart counters, runs one
//! async fn per lifecycle phase, and publishes a [`Snapshot`] on every change.
//!
//! Phases: `pending` (waiting for dependencies) → `starting` (launched, probed every startup_interval until
//! the first pass) → `running` (probed every check_interval; a crash or turning unhealthy leads to
//! `recover`) → `backoff` → `pending` again, or `failed` when the attempts are spent. `stopped` is a manual
//! stop. On shutdown every phase returns [`Phase::Exit`] and the actor stops its instance once every
//! dependent has stopped.

mod checks;
mod commands;
mod spans;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::checks::poll_check;

use crate::clock::Clock;
use crate::config::{Probe, ServiceSpec};
use crate::health::probe::Prober;
use crate::health::{CheckResult, FailureReason, HealthStatus, HealthTracker, ProbeOutcome};
use crate::registry::RegistryHandle;
use crate::supervisor::backoff::Backoff;
use crate::supervisor::gate::{self, Gate};
use crate::supervisor::launcher::{Instance, Launcher};
use crate::supervisor::state::{Exit, RestartReason, ServiceState, Snapshot};
use crate::supervisor::{Command, ControlError, Reply};
use crate::telemetry::metrics::ServiceMetrics;

/// How long to wait for a process to disappear after SIGKILL before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Where the actor goes next.
#[derive(Debug)]
pub(super) enum Phase {
    Pending(Option<RestartReason>),
    Starting(Option<RestartReason>),
    Running,
    Backoff(Duration, RestartReason),
    Stopped,
    Failed,
    Exit,
}

/// A health check in flight: the outcome and how long it took.
type CheckFuture = Pin<Box<dyn Future<Output = (ProbeOutcome, Duration, tracing::Span)> + Send>>;

/// Another service's published snapshot.
pub(super) struct Peer {
    pub name: String,
    pub snapshot: watch::Receiver<Snapshot>,
}

/// Everything an actor is given when it is spawned.
pub(super) struct ActorParts {
    pub spec: Arc<ServiceSpec>,
    pub layer: u32,
    pub launcher: Option<Arc<dyn Launcher>>,
    pub prober: Arc<dyn Prober>,
    pub clock: Clock,
    pub heartbeat_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub registry: RegistryHandle,
    pub metrics: ServiceMetrics,
    pub commands: mpsc::Receiver<Command>,
    pub publish: watch::Sender<Snapshot>,
    pub changes: Arc<watch::Sender<u64>>,
    pub required: Vec<Peer>,
    pub optional: Vec<Peer>,
    pub dependents: Vec<Peer>,
    pub shutdown: CancellationToken,
    pub force: CancellationToken,
    pub boot: Instant,
    pub startup_span: tracing::Span,
}

pub(super) struct Actor {
    parts: ActorParts,
    changes: watch::Receiver<u64>,
    snapshot: Snapshot,
    instance: Option<Instance>,
    health: HealthTracker,
    backoff: Backoff,
    check: Option<CheckFuture>,
    check_waiters: Vec<oneshot::Sender<CheckResult>>,
    start_waiters: Vec<Reply>,
    healthy_since: Option<Instant>,
    launched_at: Instant,
    started_once: bool,
    last_alive_notice: Option<Instant>,
    start_span: Option<tracing::Span>,
    restart_span: Option<tracing::Span>,
    last_failure: Option<opentelemetry::trace::SpanContext>,
}

impl Actor {
    pub(super) fn new(parts: ActorParts) -> Self {
        let now = Instant::now();
        Self {
            changes: parts.changes.subscribe(),
            snapshot: Snapshot::initial(),
            instance: None,
            health: HealthTracker::new(&parts.spec.health, now),
            backoff: Backoff::new(&parts.spec.restart),
            check: None,
            check_waiters: Vec::new(),
            start_waiters: Vec::new(),
            healthy_since: None,
            launched_at: now,
            started_once: false,
            last_alive_notice: None,
            start_span: None,
            restart_span: None,
            last_failure: None,
            parts,
        }
    }

    fn name(&self) -> &str {
        &self.parts.spec.name
    }

    fn is_external(&self) -> bool {
        self.parts.launcher.is_none()
    }

    /// Runs the service until shutdown.
    pub(super) async fn run(mut self) {
        let mut phase = Phase::Pending(None);
        loop {
            phase = match phase {
                Phase::Pending(reason) => self.pending(reason).await,
                Phase::Starting(reason) => self.starting(reason).await,
                Phase::Running => self.running().await,
                Phase::Backoff(delay, reason) => self.backoff(delay, reason).await,
                Phase::Stopped => self.stopped().await,
                Phase::Failed => self.failed().await,
                Phase::Exit => break,
            };
        }
        self.shut_down().await;
    }

    // ---- phases ----------------------------------------------------------------------------------------

    async fn pending(&mut self, reason: Option<RestartReason>) -> Phase {
        loop {
            match self.gate() {
                Gate::Open => return Phase::Starting(reason),
                Gate::Waiting(dependency) => self.snapshot.waiting_on = Some(dependency),
                Gate::Blocked(dependency) => {
                    self.fail_start_waiters(ControlError::Blocked {
                        service: self.name().to_owned(),
                        dependency: dependency.clone(),
                    });
                    self.snapshot.waiting_on = Some(dependency);
                    self.snapshot.settled = true;
                }
            }
            self.set_state(ServiceState::Pending);
            tokio::select! {
                biased;
                () = self.parts.shutdown.cancelled() => return Phase::Exit,
                command = self.parts.commands.recv() => {
                    if let Some(next) = self.on_command(command).await {
                        return next;
                    }
                }
                _ = self.changes.changed() => {}
            }
        }
    }

    async fn starting(&mut self, reason: Option<RestartReason>) -> Phase {
        self.snapshot.waiting_on = None;
        self.snapshot.backoff = None;
        if let Some(reason) = reason {
            let now = self.parts.clock.now();
            self.snapshot.restart_count += 1;
            self.snapshot.last_restart = Some(now);
            self.snapshot.last_restart_reason = Some(reason);
            self.parts.metrics.restart(reason, now);
            tracing::info!(service = self.name(), %reason, restart_count = self.snapshot.restart_count, "restarting service");
        }
        self.health.reset(Instant::now());
        self.launched_at = Instant::now();
        self.open_start_span();
        self.set_state(ServiceState::Starting);

        if let Some(launcher) = self.parts.launcher.clone() {
            match launcher.launch(&self.parts.spec).await {
                Ok(instance) => {
                    self.snapshot.pid = instance.pid();
                    self.instance = Some(instance);
                    self.set_process_alive(true);
                    self.publish();
                }
                Err(error) => {
                    let message = format!("start failed: {error}");
                    self.record_down(FailureReason::ProcessDown, message.clone());
                    return self.recover(RestartReason::Crashed, message);
                }
            }
        }
        if !self.has_health_check() {
            return self.became_ready();
        }
        self.await_first_pass().await
    }

    /// Probes every startup_interval until the first pass, the instance exits, or startup_timeout passes.
    async fn await_first_pass(&mut self) -> Phase {
        let settings = &self.parts.spec.health;
        let deadline = self.launched_at + settings.startup_timeout;
        let mut tick = interval(settings.startup_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut exit = self.instance.as_ref().map(Instance::exit_watch);
        let mut timed_out = false;
        loop {
            tokio::select! {
                biased;
                () = self.parts.shutdown.cancelled() => return Phase::Exit,
                status = wait_exit(exit.as_mut()) => return self.on_exit(status).await,
                command = self.parts.commands.recv() => {
                    if let Some(next) = self.on_command(command).await {
                        return next;
                    }
                }
                () = sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    if let Some(next) = self.on_startup_timeout().await {
                        return next;
                    }
                    tick = interval(self.parts.spec.health.check_interval);
                }
                _ = tick.tick() => {
                    let (outcome, elapsed, span) = self.check_future(false).await;
                    if outcome.passed {
                        self.record(outcome, elapsed, &span);
                        return self.became_ready();
                    }
                    self.snapshot.last_error = Some(outcome.message);
                }
            }
        }
    }

    async fn running(&mut self) -> Phase {
        let interval_length = self.parts.spec.health.check_interval;
        let mut tick = interval_at(Instant::now() + interval_length, interval_length);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut exit = self.instance.as_ref().map(Instance::exit_watch);
        let checks = self.has_health_check();
        loop {
            let reset_at = self.reset_deadline();
            tokio::select! {
                biased;
                () = self.parts.shutdown.cancelled() => return Phase::Exit,
                status = wait_exit(exit.as_mut()) => return self.on_exit(status).await,
                command = self.parts.commands.recv() => {
                    if let Some(next) = self.on_command(command).await {
                        return next;
                    }
                }
                (outcome, elapsed, span) = poll_check(&mut self.check) => {
                    self.check = None;
                    if let Some(next) = self.on_check(outcome, elapsed, span).await {
                        return next;
                    }
                }
                _ = tick.tick(), if checks && self.check.is_none() => self.check = Some(self.check_future(true)),
                () = sleep_until(reset_at.unwrap_or_else(Instant::now)), if reset_at.is_some() => {
                    tracing::info!(service = self.name(), attempts = self.snapshot.attempts, "healthy long enough: restart attempts reset");
                    self.snapshot.attempts = 0;
                    self.publish();
                }
            }
        }
    }

    async fn backoff(&mut self, delay: Duration, reason: RestartReason) -> Phase {
        self.snapshot.backoff = Some(delay);
        self.set_state(ServiceState::Backoff);
        tracing::info!(
            service = self.name(),
            %reason,
            attempt = self.snapshot.attempts,
            max_attempts = self.parts.spec.restart.max_attempts,
            delay_ms = delay.as_millis() as u64,
            "restart scheduled"
        );
        let wake = sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                biased;
                () = self.parts.shutdown.cancelled() => return Phase::Exit,
                command = self.parts.commands.recv() => {
                    if let Some(next) = self.on_command(command).await {
                        return next;
                    }
                }
                () = &mut wake => return Phase::Pending(Some(reason)),
            }
        }
    }

    async fn stopped(&mut self) -> Phase {
        self.health.reset(Instant::now());
        self.set_state(ServiceState::Stopped);
        self.idle().await
    }

    async fn failed(&mut self) -> Phase {
        tracing::error!(
            service = self.name(),
            attempts = self.snapshot.attempts,
            last_error = self.snapshot.last_error.as_deref().unwrap_or(""),
            "service failed: automatic restarts exhausted; restart it with force=true"
        );
        self.set_state(ServiceState::Failed);
        self.idle().await
    }

    /// Waits for a command or shutdown (stopped and failed services).
    async fn idle(&mut self) -> Phase {
        loop {
            tokio::select! {
                biased;
                () = self.parts.shutdown.cancelled() => return Phase::Exit,
                command = self.parts.commands.recv() => {
                    if let Some(next) = self.on_command(command).await {
                        return next;
                    }
                }
            }
        }
    }

    // ---- events ----------------------------------------------------------------------------------------

    fn became_ready(&mut self) -> Phase {
        let now = Instant::now();
        self.snapshot.settled = true;
        self.snapshot.ready_since = Some(self.parts.clock.now());
        self.healthy_since = (self.health.status() != HealthStatus::Unhealthy).then_some(now);
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
        self.set_state(ServiceState::Running);
        self.close_start_span(None);
        self.close_restart_span(None);
        let snapshot = self.snapshot.clone();
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(Ok(snapshot.clone()));
        }
        Phase::Running
    }

    /// The instance exited on its own.
    async fn on_exit(&mut self, status: Exit) -> Phase {
        self.instance = None;
        self.set_process_alive(false);
        self.snapshot.pid = None;
        let message = format!("process {status}");
        tracing::warn!(service = self.name(), %status, "service exited unexpectedly");
        self.record_down(FailureReason::ProcessDown, message.clone());
        self.recover(RestartReason::Crashed, message)
    }

    /// The first check did not pass within startup_timeout: a managed service's start failed; an external
    /// service keeps being probed (at check_interval) and its dependents stop waiting for it.
    async fn on_startup_timeout(&mut self) -> Option<Phase> {
        let message = format!(
            "not ready within {}: {}",
            humantime::format_duration(self.parts.spec.health.startup_timeout),
            self.snapshot.last_error.as_deref().unwrap_or("no check passed")
        );
        tracing::warn!(service = self.name(), "{message}");
        self.record_down(FailureReason::Timeout, message.clone());
        if self.is_external() {
            self.snapshot.settled = true;
            self.publish();
            return None;
        }
        self.stop_instance().await;
        Some(self.recover(RestartReason::Crashed, message))
    }

    async fn on_check(
        &mut self,
        outcome: ProbeOutcome,
        elapsed: Duration,
        span: tracing::Span,
    ) -> Option<Phase> {
        let result = self.record(outcome, elapsed, &span);
        drop(span);
        for waiter in self.check_waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
        if self.health.status() != HealthStatus::Unhealthy {
            return None;
        }
        if !self.parts.spec.health.auto_recovery || self.is_external() {
            return None;
        }
        if let Some(dependency) = self.required_dependency_down() {
            // Its own failures are the dependency's fault: no restart, no budget spent.
            if self.snapshot.waiting_on.as_deref() != Some(&dependency) {
                tracing::info!(service = self.name(), %dependency, "unhealthy while a required dependency is down: not restarting");
                self.snapshot.waiting_on = Some(dependency);
                self.publish();
            }
            return None;
        }
        let reason = match self.parts.spec.probe {
            Some(Probe::Heartbeat) => RestartReason::HeartbeatTimeout,
            _ => RestartReason::Unhealthy,
        };
        tracing::warn!(service = self.name(), %reason, failures = self.health.consecutive_failures(), "service unhealthy: restarting");
        self.stop_instance().await;
        Some(self.recover(reason, result.message))
    }

    /// After a crash, a failed start or turning unhealthy: wait for a down dependency (spending nothing),
    /// or back off and retry, or give up when the attempts are spent.
    fn recover(&mut self, reason: RestartReason, error: String) -> Phase {
        self.close_start_span(Some(&error));
        self.snapshot.last_error = Some(error.clone());
        self.snapshot.settled = true;
        self.healthy_since = None;
        self.fail_start_waiters(ControlError::StartFailed {
            service: self.name().to_owned(),
            error,
        });
        if let Some(dependency) = self.required_dependency_down() {
            self.snapshot.waiting_on = Some(dependency);
            return Phase::Pending(Some(reason));
        }
        let policy = &self.parts.spec.restart;
        if self.snapshot.attempts >= policy.max_attempts {
            self.close_restart_span(Some("automatic restarts exhausted"));
            return Phase::Failed;
        }
        self.snapshot.attempts += 1;
        let delay = self.backoff.delay(self.snapshot.attempts, fastrand::f64());
        self.open_restart_span(reason, self.snapshot.attempts, delay);
        Phase::Backoff(delay, reason)
    }

    // ---- shutdown ------------------------------------------------------------------------------------------

    /// Stops the instance once every dependent has stopped (or at once when forced), then says so.
    async fn shut_down(&mut self) {
        self.fail_start_waiters(ControlError::ShuttingDown);
        self.check = None;
        if self.instance.is_some() {
            self.await_dependents_down().await;
            self.stop_instance().await;
        }
        self.set_state(ServiceState::Stopped);
    }

    async fn await_dependents_down(&mut self) {
        loop {
            let holding: Option<String> = self
                .parts
                .dependents
                .iter()
                .find(|peer| !peer.snapshot.borrow().is_down())
                .map(|peer| peer.name.clone());
            let Some(dependent) = holding else { return };
            tracing::debug!(service = self.name(), %dependent, "waiting for dependent to stop first");
            tokio::select! {
                () = self.parts.force.cancelled() => return,
                _ = self.changes.changed() => {}
            }
        }
    }

    /// SIGTERM, then SIGKILL after the shutdown timeout (or at once when forced).
    async fn stop_instance(&mut self) {
        let Some(instance) = self.instance.take() else {
            return;
        };
        self.set_process_alive(false);
        let parent = self.restart_span.as_ref().and_then(tracing::Span::id);
        let span = tracing::info_span!(
            parent: parent,
            "stop service",
            orchestrator.service.name = %self.parts.spec.name,
            orchestrator.shutdown.timeout_seconds = self.parts.spec.shutdown.timeout.as_secs_f64(),
            orchestrator.stop.killed = tracing::field::Empty,
            orchestrator.stop.exit = tracing::field::Empty,
        );
        let status = self.terminate(instance).instrument(span.clone()).await;
        span.record("orchestrator.stop.exit", status.to_string());
        tracing::info!(parent: &span, service = self.name(), %status, "service stopped");
        self.snapshot.pid = None;
    }

    /// SIGTERM, then SIGKILL after the shutdown timeout (or at once when forced); returns how it ended.
    async fn terminate(&mut self, mut instance: Instance) -> Exit {
        self.check = None;
        self.set_state(ServiceState::Stopping);
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
            return status;
        }
        tracing::Span::current().record("orchestrator.stop.killed", true);
        instance.kill();
        match timeout(KILL_GRACE, instance.exited()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::error!(
                    service = self.name(),
                    pid = instance.pid(),
                    "process survived SIGKILL; abandoning it"
                );
                Exit::Error("survived SIGKILL".into())
            }
        }
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    /// Tells the registry whether this service's process runs: while it does, the registry records a
    /// heartbeat for it every heartbeat interval, whatever its checks say (they have their own alerts).
    /// Services with the `heartbeat` probe send their own heartbeats.
    fn set_process_alive(&self, alive: bool) {
        if self.parts.spec.probe != Some(Probe::Heartbeat) {
            self.parts.registry.process_alive(&self.parts.spec.name, alive);
        }
    }

    fn gate(&self) -> Gate {
        // Read guards, not copies: a service with a high priority watches every service below it.
        let required = borrow_all(&self.parts.required);
        let optional = borrow_all(&self.parts.optional);
        gate::evaluate(
            required.iter().map(|(n, s)| (*n, &**s)),
            optional.iter().map(|(n, s)| (*n, &**s)),
        )
    }

    /// The first required dependency that is not ready, if any.
    fn required_dependency_down(&self) -> Option<String> {
        self.parts
            .required
            .iter()
            .find(|peer| !peer.snapshot.borrow().ready)
            .map(|peer| peer.name.clone())
    }

    /// When continuous health resets the attempt counter, if it will.
    fn reset_deadline(&self) -> Option<Instant> {
        let reset_after = self.parts.spec.restart.reset_after;
        if self.snapshot.attempts == 0 || reset_after.is_zero() {
            return None;
        }
        self.healthy_since.map(|since| since + reset_after)
    }

    fn fail_start_waiters(&mut self, error: ControlError) {
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn set_state(&mut self, state: ServiceState) {
        let from = self.snapshot.state;
        self.snapshot.state = state;
        if from != state {
            self.state_event(from, state);
        }
        self.publish();
    }

    /// Publishes the snapshot; wakes the other actors only when what gates them changed.
    fn publish(&mut self) {
        self.snapshot.health = self.health.status();
        self.snapshot.consecutive_failures = self.health.consecutive_failures();
        self.snapshot.ready =
            self.snapshot.state == ServiceState::Running && self.health.status() != HealthStatus::Unhealthy;
        let mut gating_changed = false;
        let mut state_changed = false;
        let snapshot = &self.snapshot;
        self.parts.publish.send_if_modified(|current| {
            if current == snapshot {
                return false;
            }
            state_changed = current.state != snapshot.state;
            gating_changed = current.ready != snapshot.ready
                || current.settled != snapshot.settled
                || current.is_down() != snapshot.is_down();
            *current = snapshot.clone();
            true
        });
        let metrics = &self.parts.metrics;
        metrics.set_health(self.snapshot.health);
        metrics.set_up(self.snapshot.ready);
        metrics.set_consecutive_failures(self.snapshot.consecutive_failures);
        metrics.set_backoff(
            self.snapshot
                .backoff
                .filter(|_| self.snapshot.state == ServiceState::Backoff),
        );
        if state_changed {
            metrics.set_state(self.snapshot.state);
            self.parts
                .registry
                .state_changed(&self.parts.spec.name, self.snapshot.state.as_str());
        }
        if gating_changed {
            self.parts
                .changes
                .send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }
}

fn borrow_all(list: &[Peer]) -> Vec<(&str, watch::Ref<'_, Snapshot>)> {
    list.iter()
        .map(|peer| (peer.name.as_str(), peer.snapshot.borrow()))
        .collect()
}

/// Resolves when the watched instance exits; never, when there is no instance.
async fn wait_exit(exit: Option<&mut watch::Receiver<Option<Exit>>>) -> Exit {
    let Some(exit) = exit else {
        return std::future::pending().await;
    };
    let status = exit
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|status| status.clone());
    match status {
        Some(status) => status,
        // The watcher is gone without a status: nothing more will be learnt from it.
        None => std::future::pending().await,
    }
}
