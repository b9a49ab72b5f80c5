//! One actor per service: it owns the service's instance, health record and timers, and executes what the
//! pure [`Lifecycle`] decides.
//!
//! The loop is: wait for the next input (one `select!` over shutdown, the instance's exit, commands, the
//! dependencies' changes, the check in flight and the timers armed in the current state), turn it into an
//! [`Event`], hand it to [`Lifecycle::on`], publish the new [`Snapshot`], and carry out the [`Action`]s it
//! returns (launch, stop, wait for dependents, answer requests). Actions that take time report back with the
//! next event (`InstanceStopped`, `DependentsStopped`, `Ready`, ...). No decision is taken here.

mod actions;
mod checker;
mod checks;
mod commands;
mod reconfigure;
mod spans;

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval, interval_at, sleep_until};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use self::checker::CheckerLink;
use self::checks::poll_check;

use crate::clock::Clock;
use crate::config::{Probe, ServiceSpec};
use crate::events::{EventHub, EventKind};
use crate::health::probe::Prober;
use crate::health::{CheckResult, FailureReason, HealthStatus, HealthTracker, ProbeOutcome};
use crate::registry::RegistryHandle;
use crate::supervisor::backoff::Backoff;
use crate::supervisor::gate::{self, Gate};
use crate::supervisor::launcher::{Instance, Launcher};
use crate::supervisor::lifecycle::{Action, Event, Lifecycle, Policy, Request};
use crate::supervisor::state::{Exit, PublishedUptime, RestartReason, ServiceState, Snapshot};
use crate::supervisor::{Command, ControlError, Reply};
use crate::telemetry::metrics::ServiceMetrics;

/// How long to wait for a process to disappear after SIGKILL before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// A health check in flight: the outcome and how long it took.
type CheckFuture = Pin<Box<dyn Future<Output = (ProbeOutcome, Duration, tracing::Span)> + Send>>;

/// The service's health record: what its checks found. The actor writes it, and so does its checker, for
/// the passes that change nothing else ([`checker`]); each publishes under this lock, so neither writer's
/// snapshot overwrites what the other recorded.
pub(super) struct HealthRecord {
    pub tracker: HealthTracker,
    /// The last check's result, as the snapshot shows it.
    pub last_check: Option<Arc<CheckResult>>,
    /// Healthy without a break since then: what resets the restart attempts.
    pub healthy_since: Option<Instant>,
    /// The checker whose passes may be recorded (0: none); changed whenever the actor stops one.
    pub checker: u64,
}

impl HealthRecord {
    /// Copies what the record says into `snapshot`: the status, the counts, the uptime log and the last
    /// check (shared, not copied, when they are the same already).
    fn publish_into(&self, snapshot: &mut Snapshot) {
        let tracker = &self.tracker;
        snapshot.health = tracker.status();
        snapshot.consecutive_failures = tracker.consecutive_failures();
        snapshot.consecutive_successes = tracker.consecutive_successes();
        if !Arc::ptr_eq(&snapshot.uptime.0, tracker.uptime()) {
            snapshot.uptime = PublishedUptime(Arc::clone(tracker.uptime()));
        }
        if snapshot.last_check.as_ref().map(Arc::as_ptr) != self.last_check.as_ref().map(Arc::as_ptr) {
            snapshot.last_check.clone_from(&self.last_check);
        }
    }
}

/// The health record, shared by the actor and its checker.
pub(super) type SharedRecord = Arc<std::sync::Mutex<HealthRecord>>;

/// The record, even if a thread panicked while holding it (every write leaves it whole).
pub(super) fn lock_record(record: &SharedRecord) -> std::sync::MutexGuard<'_, HealthRecord> {
    record.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Another service's published snapshot.
pub(super) struct Peer {
    pub name: String,
    pub snapshot: watch::Receiver<Snapshot>,
}

/// Whom one actor watches.
pub(super) struct Gates {
    pub required: Vec<Peer>,
    pub optional: Vec<Peer>,
    /// Every service that must stop before this one at shutdown.
    pub dependents: Vec<Peer>,
    /// The services that require this one: they stop first when it is stopped on request.
    pub required_dependents: Vec<Peer>,
}

pub use self::reconfigure::Reconfiguration;

/// Everything an actor is given when it is spawned.
pub(super) struct ActorParts {
    pub spec: Arc<ServiceSpec>,
    pub layer: u32,
    pub launcher: Option<Arc<dyn Launcher>>,
    pub prober: Arc<dyn Prober>,
    pub clock: Clock,
    pub heartbeat_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// The share of steady-state checks traced (`telemetry.check_sample_ratio`).
    pub check_sample_ratio: f64,
    pub registry: RegistryHandle,
    pub metrics: ServiceMetrics,
    pub commands: mpsc::Receiver<Command>,
    /// Shared with the service's checker, which publishes the passes it records.
    pub publish: Arc<watch::Sender<Snapshot>>,
    pub changes: Arc<watch::Sender<u64>>,
    /// Bumped after each snapshot change (see `Supervisor::generation`).
    pub published: Arc<std::sync::atomic::AtomicU64>,
    pub required: Vec<Peer>,
    pub optional: Vec<Peer>,
    /// Every service that must stop before this one at shutdown.
    pub dependents: Vec<Peer>,
    /// The services that require this one: they stop first when it is stopped on request.
    pub required_dependents: Vec<Peer>,
    pub shutdown: CancellationToken,
    pub force: CancellationToken,
    pub boot: Instant,
    pub startup_span: tracing::Span,
    /// `stop orchestrator`, once the shutdown has begun.
    pub shutdown_span: Arc<std::sync::Mutex<Option<tracing::Span>>>,
    /// The event stream.
    pub events: Arc<EventHub>,
    /// Fleet mode: the lease fence every singleton instance is started under (`None`: fleet mode off).
    pub fence: Option<Arc<crate::cluster::Fence>>,
}

/// What the actor waits for between decisions.
enum Input {
    Event(Event),
    Request {
        request: Request,
        force: bool,
        reply: Reply,
        /// The span of whoever asked (an API request): what the request does continues its trace.
        caller: tracing::Span,
    },
    /// A configuration reload's new settings.
    Reconfigure(Box<Reconfiguration>),
    Shutdown,
}

pub(super) struct Actor {
    parts: ActorParts,
    /// The shutdown, waited for once for the actor's life rather than once per turn of its loop.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    changes: watch::Receiver<u64>,
    lifecycle: Lifecycle,
    snapshot: Snapshot,
    instance: Option<Instance>,
    exit: Option<watch::Receiver<Option<Exit>>>,
    /// The instance's command's own process, when it is watched apart from the instance (inside a PID
    /// namespace): its end is the first sign of the instance's, and starts its replacement ahead.
    main: Option<AsyncFd<OwnedFd>>,
    health: SharedRecord,
    backoff: Backoff,
    /// The actor's own check in flight: a startup probe, a check asked for, or a steady one when the
    /// service has no checker.
    check: Option<CheckFuture>,
    /// The task checking the running service at its cadence, when its probe is one ([`checker`]).
    checker: Option<CheckerLink>,
    /// Probe cadence: startup_interval while starting, check_interval once ready (when no checker runs).
    ticker: Interval,
    /// When a start that has not passed a check yet times out.
    startup_deadline: Option<Instant>,
    /// The last probe failure of the instance still starting (not an error until the start times out).
    startup_failure: Option<String>,
    backoff_until: Option<Instant>,
    check_waiters: Vec<oneshot::Sender<CheckResult>>,
    start_waiters: Vec<Reply>,
    launched_at: Instant,
    started_once: bool,
    last_alive_notice: Option<Instant>,
    traces: spans::Traces,
    /// Why the instance is being stopped, when the input being handled is a failure that restarts it.
    recovery: Option<RestartReason>,
    /// The replacement of an instance that exited was started ahead of its launch ([`Actor::start_ahead`]).
    started_ahead: bool,
}

impl Actor {
    pub(super) fn new(parts: ActorParts) -> Self {
        let now = Instant::now();
        let policy = Policy {
            managed: parts.launcher.is_some(),
            auto_recovery: parts.spec.health.auto_recovery,
            max_attempts: parts.spec.restart.max_attempts,
            singleton: parts.spec.singleton && parts.fence.is_some(),
        };
        Self {
            shutdown: Box::pin(parts.shutdown.clone().cancelled_owned()),
            changes: parts.changes.subscribe(),
            lifecycle: Lifecycle::new(parts.spec.name.clone(), policy),
            snapshot: Snapshot::initial(),
            instance: None,
            exit: None,
            main: None,
            health: Arc::new(std::sync::Mutex::new(HealthRecord {
                tracker: HealthTracker::new(&parts.spec.health, now),
                last_check: None,
                healthy_since: None,
                checker: 0,
            })),
            backoff: Backoff::new(&parts.spec.restart),
            check: None,
            checker: None,
            ticker: interval(parts.spec.health.check_interval),
            startup_deadline: None,
            startup_failure: None,
            backoff_until: None,
            check_waiters: Vec::new(),
            start_waiters: Vec::new(),
            launched_at: now,
            started_once: false,
            last_alive_notice: None,
            traces: spans::Traces::default(),
            recovery: None,
            started_ahead: false,
            parts,
        }
    }

    fn name(&self) -> &str {
        &self.parts.spec.name
    }

    /// The health record, locked: held only between awaits, never across one.
    fn health(&self) -> std::sync::MutexGuard<'_, HealthRecord> {
        lock_record(&self.health)
    }

    fn is_external(&self) -> bool {
        self.parts.launcher.is_none()
    }

    /// Runs the service until shutdown, then stops it once its dependents have stopped.
    pub(super) async fn run(mut self) {
        let (gate, held_by) = self.dependencies();
        self.feed(Event::Dependencies { gate, held_by }, None).await;
        loop {
            if let Some(event) = self.dependencies_changed() {
                self.feed(event, None).await;
            }
            match self.next_input().await {
                Input::Event(event) => self.feed(event, None).await,
                Input::Request {
                    request,
                    force,
                    reply,
                    caller,
                } => {
                    self.traces.request = Some(caller);
                    self.feed(Event::Request { request, force }, Some(reply)).await;
                }
                Input::Reconfigure(change) => self.reconfigure(*change).await,
                Input::Shutdown => break,
            }
        }
        self.feed(Event::Shutdown, None).await;
    }

    /// Hands `event` to the lifecycle and carries out what it decides, feeding back the events that the
    /// actions report, until nothing is left to do. `reply` answers the request `event` is, if it is one.
    async fn feed(&mut self, event: Event, mut reply: Option<Reply>) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            self.recovery = match &event {
                Event::Unhealthy(reason, _) => Some(*reason),
                Event::StartupTimedOut(_) => Some(RestartReason::Crashed),
                _ => None,
            };
            let from = self.lifecycle.state();
            let actions = self.lifecycle.on(event);
            let to = self.lifecycle.state();
            if from != to {
                self.entered(from, to);
            }
            for action in actions {
                if matches!(
                    action,
                    Action::Launch(_) | Action::AwaitDependents(_) | Action::StopInstance | Action::Answer
                ) {
                    // The others see the decision before the actor waits on its consequences.
                    self.publish();
                }
                if let Some(next) = self.execute(action, &mut reply).await {
                    events.push_back(next);
                }
            }
            self.publish();
        }
        self.recovery = None;
        let awaiting_exit = self.instance.is_some()
            && matches!(
                self.lifecycle.state(),
                ServiceState::Starting | ServiceState::Running
            );
        if self.started_ahead
            && !awaiting_exit
            && let Some(launcher) = &self.parts.launcher
        {
            // Started for a launch that did not come: something else was decided meanwhile (a stop
            // request between the end of the command's process and the instance's exit), or the
            // lifecycle did not decide what it was expected to. No process runs that the actor does not
            // know of.
            self.started_ahead = false;
            tracing::warn!(
                service = self.name(),
                "replacement started ahead without a launch: stopped"
            );
            launcher.forget(self.name());
        }
        self.traces.input_done();
        if let Some(reply) = reply {
            // Every admitted request is answered by an action; this is only a safety net against a hang.
            let _ = reply.send(Ok(self.snapshot.clone()));
        }
    }

    /// Carries out one action; returns the event it reports, if any.
    async fn execute(&mut self, action: Action, reply: &mut Option<Reply>) -> Option<Event> {
        match action {
            Action::Refuse(refusal) => {
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Err(refusal));
                }
            }
            Action::Answer => {
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Ok(self.snapshot.clone()));
                }
            }
            Action::AnswerWhenRunning => self.start_waiters.extend(reply.take()),
            Action::FailWaiters(error) => self.fail_start_waiters(error),
            Action::BeginRestart(reason) => self.open_attempt(reason),
            Action::Launch(restart) => return self.launch(restart).await,
            Action::AwaitDependents(scope) => {
                self.await_dependents(scope).await;
                return Some(Event::DependentsStopped);
            }
            Action::StopInstance => {
                if let Some(reason) = self.recovery.take() {
                    self.recovery_stop(reason);
                }
                self.stop_instance().await;
                return Some(Event::InstanceStopped);
            }
            Action::Backoff { attempt, reason } => return self.schedule_restart(attempt, reason),
            Action::AnnounceReady => self.became_ready(),
            Action::GiveUp => {
                self.gave_up();
                self.emit(
                    EventKind::Failed,
                    serde_json::json!({
                        "attempts": self.lifecycle.attempts(),
                        "error": self.snapshot.last_error,
                    }),
                );
                tracing::error!(
                    service = self.name(),
                    attempts = self.lifecycle.attempts(),
                    last_error = self.snapshot.last_error.as_deref().unwrap_or(""),
                    "service failed: automatic restarts exhausted; restart it with force=true"
                );
            }
            Action::ForgiveAttempts => {
                self.end_incident();
                tracing::info!(
                    service = self.name(),
                    "healthy long enough: restart attempts reset"
                );
            }
        }
        None
    }

    /// Bookkeeping of a state change that is not a decision: what no longer applies in the new state.
    fn entered(&mut self, from: ServiceState, to: ServiceState) {
        self.state_event(from, to);
        self.emit(
            EventKind::State,
            serde_json::json!({"from": from.as_str(), "to": to.as_str()}),
        );
        if from == ServiceState::Stopping && matches!(to, ServiceState::Pending | ServiceState::Stopped) {
            // Stopped on purpose: no data about an instance that does not run.
            self.health().tracker.reset(Instant::now());
        }
        if to != ServiceState::Running {
            self.stop_checker();
        }
        if !matches!(to, ServiceState::Starting | ServiceState::Running) {
            self.check = None;
            // No checks until it runs again: a connection kept for them would only idle.
            self.parts.prober.forget(self.name());
        }
        if matches!(
            to,
            ServiceState::Stopping | ServiceState::Stopped | ServiceState::Failed
        ) && let Some(launcher) = &self.parts.launcher
        {
            // Not restarted next: a process kept ready for a restart would only idle.
            launcher.forget(self.name());
        }
        if to != ServiceState::Starting {
            self.startup_deadline = None;
        }
        if to != ServiceState::Backoff {
            self.backoff_until = None;
            self.close_backoff();
        }
        if matches!(to, ServiceState::Stopped | ServiceState::Pending) && from == ServiceState::Stopping {
            // Stopped on purpose: whatever incident was in progress is over.
            self.end_incident();
        }
    }

    // ---- waiting -------------------------------------------------------------------------------------------

    /// Waits for the next thing the lifecycle must hear about, running health checks meanwhile.
    async fn next_input(&mut self) -> Input {
        loop {
            let state = self.lifecycle.state();
            let live = matches!(state, ServiceState::Starting | ServiceState::Running);
            let probing = live && self.has_health_check() && self.check.is_none() && self.checker.is_none();
            // Timers are disarmed on leaving the state that armed them (`entered`).
            let (startup_deadline, backoff_until) = (self.startup_deadline, self.backoff_until);
            let reset_at = self.reset_deadline().filter(|_| state == ServiceState::Running);
            tokio::select! {
                biased;
                () = &mut self.shutdown => return Input::Shutdown,
                status = wait_exit(self.exit.as_mut()) => return Input::Event(self.exited(status)),
                _ = readable(self.main.as_ref()), if self.main.is_some() => {
                    // The command's process ended; its init and shim follow, and then the exit's status.
                    self.main = None;
                    self.start_ahead();
                }
                command = self.parts.commands.recv() => {
                    if let Some(input) = self.on_command(command) {
                        return input;
                    }
                }
                Ok(()) = self.changes.changed() => {
                    if let Some(event) = self.dependencies_changed() {
                        return Input::Event(event);
                    }
                }
                (own, outcome, elapsed, span) = poll_check(&mut self.check, self.checker.as_mut()) => {
                    if own {
                        self.check = None;
                    }
                    if let Some(event) = self.checked(outcome, elapsed, span) {
                        return Input::Event(event);
                    }
                }
                _ = self.ticker.tick(), if probing => {
                    let traced = state == ServiceState::Running && self.trace_next_check();
                    self.check = Some(self.check_future(traced));
                }
                () = sleep_until_armed(startup_deadline), if startup_deadline.is_some() => {
                    return Input::Event(self.startup_timed_out());
                }
                () = sleep_until_armed(backoff_until), if backoff_until.is_some() => {
                    return Input::Event(Event::BackoffElapsed);
                }
                () = sleep_until_armed(reset_at), if reset_at.is_some() => {
                    return Input::Event(Event::HealthyLongEnough);
                }
            }
        }
    }

    /// The dependencies as they are now, when they differ from what the lifecycle last heard.
    fn dependencies_changed(&self) -> Option<Event> {
        let (gate, held_by) = self.dependencies();
        let unchanged = gate == *self.lifecycle.gate() && held_by.as_deref() == self.lifecycle.held_by();
        (!unchanged).then_some(Event::Dependencies { gate, held_by })
    }

    /// What the dependencies allow now, and the required one being stopped on request, if any.
    fn dependencies(&self) -> (Gate, Option<String>) {
        // Read guards, not copies: a service with a high priority watches every service below it.
        let required = borrow_all(&self.parts.required);
        let optional = borrow_all(&self.parts.optional);
        let gate = gate::evaluate(
            required.iter().map(|(n, s)| (*n, &**s)),
            optional.iter().map(|(n, s)| (*n, &**s)),
        );
        let held_by = gate::held_by(required.iter().map(|(n, s)| (*n, &**s)));
        (gate, held_by)
    }

    // ---- observations --------------------------------------------------------------------------------------

    /// The instance exited on its own.
    fn exited(&mut self, status: Exit) -> Event {
        self.start_ahead();
        self.instance = None;
        self.exit = None;
        self.main = None;
        self.check = None;
        self.stop_checker();
        self.set_process_alive(false);
        let pid = self.snapshot.pid.take();
        let message = format!("process {status}");
        tracing::warn!(service = self.name(), pid, %status, "service exited unexpectedly");
        self.parts.metrics.ended(&status);
        self.exit_observed(pid, status);
        self.failure(FailureReason::ProcessDown, message.clone());
        Event::Exited(message)
    }

    /// Starts the replacement of the instance that just exited now, if the lifecycle is certain to launch
    /// it without delay and it is kept ready (a standby): before the exit's bookkeeping (its log line,
    /// metrics, events, health record and spans, about 0.2 ms), which the launch would otherwise wait for.
    /// Only while no trace is exported: a traced start passes its span's `TRACEPARENT`, and that span is
    /// opened by the launch. Not for a fleet singleton, whose launch first checks that its lease is held.
    fn start_ahead(&mut self) {
        let Some(launcher) = &self.parts.launcher else {
            return;
        };
        if self.started_ahead
            || !self.parts.spec.restart.initial_delay.is_zero()
            || self.lifecycle.policy_singleton()
            || crate::telemetry::trace::exporting()
        {
            return;
        }
        // What the lifecycle will decide, on a copy: a backoff (of no delay, as initial_delay is 0), then
        // the launch of a restart.
        let mut lifecycle = self.lifecycle.clone();
        let backs_off = (lifecycle.on(Event::Exited(String::new())).iter())
            .any(|action| matches!(action, Action::Backoff { .. }));
        let launches = backs_off
            && (lifecycle.on(Event::BackoffElapsed).iter())
                .any(|action| matches!(action, Action::Launch(Some(_))));
        if launches {
            self.started_ahead = launcher.start_ahead(&self.parts.spec);
        }
    }

    /// No check passed within startup_timeout.
    fn startup_timed_out(&mut self) -> Event {
        self.startup_deadline = None;
        let message = format!(
            "not ready within {}: {}",
            humantime::format_duration(self.parts.spec.health.startup_timeout),
            self.startup_failure.as_deref().unwrap_or("no check passed")
        );
        tracing::warn!(service = self.name(), error = %message, "start timed out");
        self.failure(FailureReason::Timeout, message.clone());
        if self.is_external() {
            // An external service keeps being probed, at its normal cadence.
            self.ticker = probe_ticker(Instant::now(), self.parts.spec.health.check_interval);
        }
        Event::StartupTimedOut(message)
    }

    /// A real failure: the service is down (unhealthy at once), and this is its last error.
    fn failure(&mut self, reason: FailureReason, message: String) {
        let now = Instant::now();
        let at = self.parts.clock.at(now);
        let (transition, failures) = {
            let mut health = self.health();
            let (result, transition) =
                health
                    .tracker
                    .record_down(&self.parts.spec.name, reason, message.clone(), at, now);
            health.last_check = Some(result);
            health.healthy_since = None;
            (transition, health.tracker.consecutive_failures())
        };
        if let Some(transition) = transition {
            self.parts.metrics.health_changed(transition.from, transition.to);
            self.health_event(transition.from, transition.to, &message);
        }
        self.parts.metrics.down(reason, failures);
        self.close_start_span(Some((reason.as_str(), &message)));
        self.set_last_error(message, at);
        self.publish();
    }

    /// Publishes an event about this service on the event stream, with the incident's trace.
    fn emit(&self, kind: EventKind, details: serde_json::Value) {
        self.parts.events.publish(
            kind,
            Some(&self.parts.spec.name),
            self.incident_trace_id(),
            details,
        );
    }

    fn health_event(&self, from: HealthStatus, to: HealthStatus, detail: &str) {
        self.emit(
            EventKind::Health,
            serde_json::json!({"from": from.as_str(), "to": to.as_str(), "detail": detail}),
        );
    }

    fn set_last_error(&mut self, message: String, at: std::time::SystemTime) {
        self.snapshot.last_error = Some(message);
        self.snapshot.last_error_at = Some(at);
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

    /// When continuous health resets the attempt counter, if it will.
    fn reset_deadline(&self) -> Option<Instant> {
        let reset_after = self.parts.spec.restart.reset_after;
        if self.lifecycle.attempts() == 0 || reset_after.is_zero() {
            return None;
        }
        self.health().healthy_since.map(|since| since + reset_after)
    }

    fn fail_start_waiters(&mut self, error: ControlError) {
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Publishes the snapshot (the lifecycle's state and counters, the health record, the dependencies) and
    /// the metrics that mirror it; wakes the other actors only when what gates them changed.
    fn publish(&mut self) {
        let lifecycle = &self.lifecycle;
        let snapshot = &mut self.snapshot;
        snapshot.state = lifecycle.state();
        snapshot.attempts = lifecycle.attempts();
        snapshot.restart_count = lifecycle.restart_count();
        snapshot.settled = lifecycle.settled();
        snapshot.stop_requested = lifecycle.stop_requested();
        snapshot.leader = lifecycle.policy_singleton().then(|| lifecycle.leader());
        let blocked_by = lifecycle.blocked_by();
        if snapshot.waiting_on.as_deref() != lifecycle.waiting_on() {
            snapshot.waiting_on = lifecycle.waiting_on().map(str::to_owned);
        }
        snapshot.blocked = matches!(lifecycle.gate(), Gate::Blocked(_)) || lifecycle.held_by().is_some();
        // Held until the snapshot is out: the checker cannot record a pass in between that this snapshot
        // would then overwrite.
        let health = lock_record(&self.health);
        health.publish_into(snapshot);
        let running = snapshot.state == ServiceState::Running;
        snapshot.ready = running && snapshot.health != crate::health::HealthStatus::Unhealthy;
        if !running {
            snapshot.ready_since = None;
        }
        if snapshot.state != ServiceState::Backoff {
            snapshot.backoff = None;
        }
        let mut gating_changed = false;
        let mut state_changed = false;
        let snapshot = &self.snapshot;
        let modified = self.parts.publish.send_if_modified(|current| {
            if current == snapshot {
                return false;
            }
            state_changed = current.state != snapshot.state;
            gating_changed = current.ready != snapshot.ready
                || current.settled != snapshot.settled
                || current.stop_requested != snapshot.stop_requested
                || current.is_down() != snapshot.is_down();
            *current = snapshot.clone();
            true
        });
        drop(health);
        if modified {
            // After the snapshot is out: a reader that sees the new number sees the new snapshot.
            self.parts
                .published
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        let metrics = &self.parts.metrics;
        metrics.set_health(snapshot.health);
        metrics.set_up(snapshot.ready);
        metrics.set_consecutive_failures(snapshot.consecutive_failures);
        metrics.set_backoff(snapshot.backoff);
        // The same value as `waiting_on` names, set in the same step: the two always agree.
        metrics.set_blocked(blocked_by.is_some());
        if state_changed {
            metrics.set_state(snapshot.state);
            self.parts
                .registry
                .state_changed(&self.parts.spec.name, snapshot.state);
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

/// The probe cadence: first tick at `first`, then every `period`; a late tick delays the next ones rather
/// than bursting to catch up.
fn probe_ticker(first: Instant, period: Duration) -> Interval {
    let mut ticker = interval_at(first, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// The first instant at or after `at` on the grid of `quantum` steps from `epoch`: checks of services
/// with the same interval fall due together and share the runtime's wakeups.
pub(super) fn on_grid(epoch: Instant, at: Instant, quantum: Duration) -> Instant {
    let quantum_ns = quantum.as_nanos().max(1);
    let offset = at.saturating_duration_since(epoch).as_nanos();
    let steps = offset.div_ceil(quantum_ns);
    let aligned = steps.saturating_mul(quantum_ns);
    epoch + Duration::from_nanos(u64::try_from(aligned).unwrap_or(u64::MAX))
}

/// Sleeps until `deadline`; never, when there is none.
async fn sleep_until_armed(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves when `fd` is readable (a pidfd: its process ended); never, without one.
async fn readable(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => drop(fd.readable().await),
        None => std::future::pending().await,
    }
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

#[cfg(test)]
mod grid_tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::on_grid;

    #[test]
    fn checks_fall_due_on_the_next_step_of_the_grid() {
        let epoch = Instant::now();
        let second = Duration::from_secs(1);
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        assert_eq!(on_grid(epoch, at(1_300), second), at(2_000));
        assert_eq!(
            on_grid(epoch, at(2_000), second),
            at(2_000),
            "on the grid already"
        );
        assert_eq!(on_grid(epoch, at(1), Duration::from_millis(250)), at(250));
        assert_eq!(on_grid(epoch, epoch, second), epoch);
    }
}
