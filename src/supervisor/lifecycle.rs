//! The lifecycle's decisions as one pure function: [`Lifecycle::on`] takes an [`Event`] and answers with the
//! [`Action`]s the service's actor must carry out, moving its own state forward. No I/O, no clock, no
//! channels: every rule of DESIGN.md sections 5 and 6 about *what happens next* lives here and is tested
//! exhaustively, and the actor only executes (spawns, signals, waits, publishes) and reports back what it
//! observed as the next event.
//!
//! The rules, in short:
//! - a request is admitted or refused before anything is done; a refusal changes nothing;
//! - a crash, a failed start or turning unhealthy leads to *recovery*: wait, spending nothing, while a
//!   required dependency is down; otherwise back off and retry, or give up (`failed`) once the attempts are
//!   spent;
//! - stopping a service on request first waits for its running required dependents, which stop themselves
//!   when they see it (`held_by`), wait in `pending`, and start again once it is ready again.

use super::gate::Gate;
use super::state::{RestartReason, ServiceState};
use crate::supervisor::ControlError;

/// What was asked of the service through the API or a [`ServiceHandle`](super::ServiceHandle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop gracefully and start again.
    Restart,
    /// Start a service that does not run.
    Start,
    /// Stop and stay stopped.
    Stop,
    /// A configuration reload changed what the process is started with: replace a running (or starting)
    /// instance, start a failed or backing-off service at once with its attempts reset, and count the next
    /// launch of a pending service that ran before as a restart; a stopped service stays stopped. Never
    /// refused except during shutdown (the reload is not the service's to refuse), and answered once the
    /// old instance is gone.
    Reload,
}

/// What the actor observed, or was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A control request; `force` also acts on a failed service and resets its attempt counter.
    Request {
        /// What was asked.
        request: Request,
        /// Also for a failed service.
        force: bool,
    },
    /// The dependencies were evaluated again.
    Dependencies {
        /// What they allow.
        gate: Gate,
        /// A required dependency that is being stopped on request: this service stops first.
        held_by: Option<String>,
    },
    /// The instance could not be launched.
    LaunchFailed(String),
    /// The new instance is ready: its first check passed, or it has no probe and runs.
    Ready,
    /// No check passed within startup_timeout.
    StartupTimedOut(String),
    /// The instance exited on its own.
    Exited(String),
    /// Checks reached failure_threshold; the reason a restart would carry, and the failure.
    Unhealthy(RestartReason, String),
    /// Every dependent that had to stop first is down.
    DependentsStopped,
    /// The instance is gone (or there was none).
    InstanceStopped,
    /// The backoff delay is over.
    BackoffElapsed,
    /// Healthy for reset_after: the attempts are forgiven.
    HealthyLongEnough,
    /// A singleton's fleet leadership (DESIGN.md section 9): it runs on this node only while it leads.
    /// Losing it stops the instance at once (no waiting for dependents: another node may start it once the
    /// lease is gone) and leaves the service `pending`, standing by.
    Leadership(bool),
    /// The orchestrator shuts down.
    Shutdown,
}

/// Which dependents must be down before the instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependents {
    /// Required dependents (a stop on request: they stop themselves on seeing `held_by`).
    Required,
    /// Every dependent, and every service whose priority made it wait for this one (shutdown).
    All,
}

/// What the actor must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer the request now with this refusal; nothing else changed.
    Refuse(ControlError),
    /// Answer the request now with the current snapshot.
    Answer,
    /// Answer the request once the service runs, or with the error that prevented it.
    AnswerWhenRunning,
    /// Answer every request waiting for the service to run with this error.
    FailWaiters(ControlError),
    /// A requested restart (manual, or by a reload) begins with this reason: its trace opens here.
    BeginRestart(RestartReason),
    /// Launch a new instance; counted as a restart with this reason, if any.
    Launch(Option<RestartReason>),
    /// Wait until these dependents are down, then report [`Event::DependentsStopped`].
    AwaitDependents(Dependents),
    /// Stop the instance (SIGTERM, SIGKILL at the timeout), then report [`Event::InstanceStopped`].
    StopInstance,
    /// Wait out the backoff before automatic attempt `attempt`, then report [`Event::BackoffElapsed`].
    Backoff {
        /// The attempt about to be made, from 1.
        attempt: u32,
        /// Why.
        reason: RestartReason,
    },
    /// The service became ready: answer waiting requests, close its start trace.
    AnnounceReady,
    /// Automatic restarts are exhausted.
    GiveUp,
    /// The attempt counter went back to 0.
    ForgiveAttempts,
}

/// What follows once the instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// Wait for the dependencies, then start (a manual restart, or held by a stopping dependency).
    Pending,
    /// Stay stopped (a stop on request, or shutdown).
    Stopped,
    /// Recover from this failure.
    Recover(RestartReason),
}

/// Where a stop is: waiting for dependents, or for the instance to be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopStep {
    Dependents,
    Instance,
}

/// What the service is configured to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The orchestrator runs it (false: an external service, only probed).
    pub managed: bool,
    /// Restart it when it turns unhealthy.
    pub auto_recovery: bool,
    /// Automatic restarts before it is failed.
    pub max_attempts: u32,
    /// A fleet singleton: it runs only while this node leads its election ([`Event::Leadership`]).
    pub singleton: bool,
}

/// One service's lifecycle: its state and the counters the decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    name: String,
    policy: Policy,
    state: ServiceState,
    attempts: u32,
    restart_count: u32,
    /// The next launch counts as a restart with this reason.
    restart: Option<RestartReason>,
    /// A manual restart is under way: more restart requests join it.
    restarting: bool,
    after_stop: AfterStop,
    stop_step: StopStep,
    /// Stopped (or being stopped) on request: required dependents stop first and stay down.
    stop_requested: bool,
    /// The first start attempt has concluded: optional dependents may go ahead.
    settled: bool,
    /// An instance has been launched at least once.
    launched: bool,
    shutting_down: bool,
    gate: Gate,
    held_by: Option<String>,
    /// It may run here: always, unless it is a singleton that this node does not lead.
    leader: bool,
}

impl Lifecycle {
    /// A service that has not done anything yet: `pending` until the first [`Event::Dependencies`].
    pub fn new(name: impl Into<String>, policy: Policy) -> Self {
        Self {
            name: name.into(),
            policy,
            state: ServiceState::Pending,
            attempts: 0,
            restart_count: 0,
            restart: None,
            restarting: false,
            after_stop: AfterStop::Stopped,
            stop_step: StopStep::Instance,
            stop_requested: false,
            settled: false,
            launched: false,
            shutting_down: false,
            gate: Gate::Open,
            held_by: None,
            leader: !policy.singleton,
        }
    }

    /// Replaces the policy (a configuration reload): it applies to the next decision.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// A fleet singleton (it runs only while this node leads its election).
    pub fn policy_singleton(&self) -> bool {
        self.policy.singleton
    }

    /// It may run on this node: not a singleton, or one this node leads.
    pub fn leader(&self) -> bool {
        self.leader
    }

    /// The lifecycle state.
    pub fn state(&self) -> ServiceState {
        self.state
    }

    /// Automatic restart attempts spent since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Every restart so far, manual ones included.
    pub fn restart_count(&self) -> u32 {
        self.restart_count
    }

    /// The first start attempt has concluded (ready, failed, or blocked by a required dependency).
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// Stopped, or being stopped, on request.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    /// The dependencies as last evaluated.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The required dependency being stopped on request, if any.
    pub fn held_by(&self) -> Option<&str> {
        self.held_by.as_deref()
    }

    /// The required dependency that is down, if any: what `waiting_on` and the blocked metric both say.
    pub fn blocked_by(&self) -> Option<&str> {
        match &self.gate {
            Gate::Blocked(dependency)
            | Gate::Waiting {
                dependency,
                required: true,
            } => Some(dependency),
            _ => None,
        }
    }

    /// The dependency the service waits on: a required one that is down, or, while pending, the optional
    /// one (or lower-priority service) its start still waits for.
    pub fn waiting_on(&self) -> Option<&str> {
        match &self.gate {
            Gate::Waiting {
                dependency,
                required: false,
            } if self.state == ServiceState::Pending => Some(dependency),
            _ => self.blocked_by(),
        }
    }

    /// The one transition function: applies `event` and says what to do. An event that means nothing in
    /// the current state (an exit while stopped, a timer that is no longer armed) changes nothing and asks
    /// for nothing.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        use ServiceState as S;
        match (self.state, event) {
            (_, Event::Request { request, force }) => self.request(request, force),
            (_, Event::Dependencies { gate, held_by }) => self.dependencies(gate, held_by),
            (_, Event::Shutdown) => self.shutdown(),
            (S::Starting, Event::LaunchFailed(error)) => self.recover(RestartReason::Crashed, error),
            (S::Starting, Event::Ready) => {
                self.state = S::Running;
                self.settled = true;
                self.restarting = false;
                vec![Action::AnnounceReady]
            }
            (S::Starting, Event::StartupTimedOut(error)) if self.policy.managed => {
                self.stop_then(AfterStop::Recover(RestartReason::Crashed), error)
            }
            (S::Starting, Event::StartupTimedOut(_)) => {
                // An external service keeps being probed; its dependents stop waiting for it.
                self.settled = true;
                Vec::new()
            }
            (S::Starting | S::Running, Event::Exited(error)) => self.recover(RestartReason::Crashed, error),
            (S::Running, Event::Unhealthy(reason, error)) => {
                if !self.policy.managed || !self.policy.auto_recovery || self.blocked_by().is_some() {
                    // Not ours to restart, or its failures are a down dependency's fault.
                    return Vec::new();
                }
                self.stop_then(AfterStop::Recover(reason), error)
            }
            (S::Running, Event::HealthyLongEnough) if self.attempts > 0 => {
                self.attempts = 0;
                vec![Action::ForgiveAttempts]
            }
            (S::Stopping, Event::DependentsStopped) if self.stop_step == StopStep::Dependents => {
                self.stop_step = StopStep::Instance;
                vec![Action::StopInstance]
            }
            (S::Stopping, Event::InstanceStopped) if self.stop_step == StopStep::Instance => {
                match self.after_stop {
                    AfterStop::Stopped => {
                        self.state = S::Stopped;
                        vec![Action::Answer]
                    }
                    AfterStop::Pending => {
                        self.stop_requested = false;
                        self.pend()
                    }
                    AfterStop::Recover(reason) => self.recover(reason, String::new()),
                }
            }
            (S::Backoff, Event::BackoffElapsed) => self.pend(),
            (_, Event::Leadership(leader)) => self.leadership(leader),
            _ => Vec::new(),
        }
    }

    fn leadership(&mut self, leader: bool) -> Vec<Action> {
        use ServiceState as S;
        if !self.policy.singleton || self.leader == leader {
            return Vec::new();
        }
        self.leader = leader;
        if self.shutting_down {
            return Vec::new();
        }
        match (leader, self.state) {
            (true, S::Pending) => self.pend(),
            (false, S::Starting | S::Running) => {
                // Fencing: another node may start it as soon as this node's lease is gone, so the instance
                // stops now; running required dependents see `stop_requested` and stop too.
                self.begin_stop_on_request(AfterStop::Pending, StopStep::Instance);
                vec![
                    Action::FailWaiters(ControlError::Standby(self.name.clone())),
                    Action::StopInstance,
                ]
            }
            (false, S::Stopping) if self.stop_step == StopStep::Dependents => {
                // Its dependents were being stopped first: the fence does not wait for them.
                self.stop_step = StopStep::Instance;
                vec![Action::StopInstance]
            }
            (false, S::Backoff) => self.pend(),
            (false, S::Pending) => {
                self.settled = true;
                Vec::new()
            }
            // Stopping: what follows the stop stands by (`pend` asks for leadership); stopped and failed
            // services stay as they are.
            _ => Vec::new(),
        }
    }

    fn request(&mut self, request: Request, force: bool) -> Vec<Action> {
        if let Err(refusal) = self.admit(request, force) {
            return vec![Action::Refuse(refusal)];
        }
        if force {
            self.attempts = 0;
        }
        match request {
            Request::Restart => self.restart_requested(),
            Request::Start => self.start_requested(),
            Request::Stop => self.stop_requested_now(),
            Request::Reload => self.reload_requested(),
        }
    }

    /// Decides whether `request` may go ahead, before anything is done.
    fn admit(&self, request: Request, force: bool) -> Result<(), ControlError> {
        if self.shutting_down {
            return Err(ControlError::ShuttingDown);
        }
        if request == Request::Reload {
            // Not the service's to refuse: whatever its state, it takes the new settings.
            return Ok(());
        }
        if !self.policy.managed {
            return Err(ControlError::NotManaged(self.name.clone()));
        }
        if self.state == ServiceState::Failed && !force {
            return Err(ControlError::Refused {
                service: self.name.clone(),
                attempts: self.attempts,
            });
        }
        if request == Request::Restart && self.restarting {
            return Ok(());
        }
        if request == Request::Restart && !self.leader {
            return Err(ControlError::Standby(self.name.clone()));
        }
        if self.state == ServiceState::Stopping {
            return Err(ControlError::Busy(self.name.clone()));
        }
        if request == Request::Stop {
            return Ok(());
        }
        let blocked = match (&self.gate, &self.held_by) {
            (_, Some(dependency)) | (Gate::Blocked(dependency), _) => Some(dependency),
            _ => None,
        };
        let already_running = request == Request::Start && self.state == ServiceState::Running;
        match blocked {
            Some(dependency) if !already_running => Err(ControlError::Blocked {
                service: self.name.clone(),
                dependency: dependency.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn restart_requested(&mut self) -> Vec<Action> {
        if self.restarting {
            // Concurrent restarts coalesce: this caller waits for the restart already under way.
            return vec![Action::AnswerWhenRunning];
        }
        self.restarting = true;
        self.restart = Some(RestartReason::Manual);
        let mut actions = vec![
            Action::AnswerWhenRunning,
            Action::BeginRestart(RestartReason::Manual),
        ];
        match self.state {
            ServiceState::Starting | ServiceState::Running => {
                self.state = ServiceState::Stopping;
                self.after_stop = AfterStop::Pending;
                self.stop_step = StopStep::Instance;
                actions.push(Action::StopInstance);
            }
            _ => {
                self.stop_requested = false;
                actions.extend(self.pend());
            }
        }
        actions
    }

    fn reload_requested(&mut self) -> Vec<Action> {
        use ServiceState as S;
        if !self.policy.managed {
            // Nothing runs to be replaced: the new probe settings apply from the next check.
            return vec![Action::Answer];
        }
        match self.state {
            S::Starting | S::Running => {
                self.restarting = true;
                self.attempts = 0;
                self.restart = Some(RestartReason::Reload);
                self.state = S::Stopping;
                self.after_stop = AfterStop::Pending;
                self.stop_step = StopStep::Instance;
                vec![
                    Action::BeginRestart(RestartReason::Reload),
                    Action::StopInstance,
                    Action::Answer,
                ]
            }
            S::Backoff | S::Failed => {
                // The new settings deserve a fresh start, now.
                self.attempts = 0;
                self.stop_requested = false;
                self.restart = Some(RestartReason::Reload);
                let mut actions = vec![Action::BeginRestart(RestartReason::Reload)];
                actions.extend(self.pend());
                actions.push(Action::Answer);
                actions
            }
            S::Pending => {
                if self.launched {
                    self.restart = Some(RestartReason::Reload);
                }
                vec![Action::Answer]
            }
            // A stop under way: what follows it launches with the new settings. A stopped service stays so.
            S::Stopping | S::Stopped => vec![Action::Answer],
        }
    }

    fn start_requested(&mut self) -> Vec<Action> {
        match self.state {
            ServiceState::Running => vec![Action::Answer],
            ServiceState::Pending if !self.leader => vec![Action::Answer],
            ServiceState::Starting | ServiceState::Pending => vec![Action::AnswerWhenRunning],
            ServiceState::Backoff => {
                // Skip the rest of the delay; the start still counts as the restart it replaces.
                let mut actions = vec![Action::AnswerWhenRunning];
                actions.extend(self.pend());
                actions
            }
            ServiceState::Stopped | ServiceState::Failed | ServiceState::Stopping if !self.leader => {
                // A singleton this node does not lead: it stands for election again, and runs here only if
                // it wins. Answered now, honestly: pending, standing by.
                self.attempts = 0;
                self.restart = None;
                self.stop_requested = false;
                let mut actions = self.pend();
                actions.push(Action::Answer);
                actions
            }
            ServiceState::Stopped | ServiceState::Failed | ServiceState::Stopping => {
                self.attempts = 0;
                self.restart = None;
                self.stop_requested = false;
                let mut actions = vec![Action::AnswerWhenRunning];
                actions.extend(self.pend());
                actions
            }
        }
    }

    fn stop_requested_now(&mut self) -> Vec<Action> {
        if self.state == ServiceState::Stopped {
            return vec![Action::Answer];
        }
        self.stop_on_request(AfterStop::Stopped)
    }

    /// A stop on request (its own, or a required dependency's): waiting requests fail, required
    /// dependents stop first, then the instance, then `after`.
    fn stop_on_request(&mut self, after: AfterStop) -> Vec<Action> {
        self.begin_stop_on_request(after, StopStep::Dependents);
        vec![
            Action::FailWaiters(ControlError::Stopped(self.name.clone())),
            Action::AwaitDependents(Dependents::Required),
        ]
    }

    /// Into `stopping` on request (its own, a required dependency's, or a lost fleet leadership), from
    /// `first`: nothing restarts it meanwhile, and required dependents see `stop_requested`.
    fn begin_stop_on_request(&mut self, after: AfterStop, first: StopStep) {
        self.stop_requested = true;
        self.restarting = false;
        self.restart = None;
        self.state = ServiceState::Stopping;
        self.after_stop = after;
        self.stop_step = first;
    }

    fn dependencies(&mut self, gate: Gate, held_by: Option<String>) -> Vec<Action> {
        self.gate = gate;
        self.held_by = held_by;
        if self.shutting_down {
            return Vec::new();
        }
        match self.state {
            ServiceState::Pending => self.pend(),
            ServiceState::Starting | ServiceState::Running if self.held_by.is_some() => {
                // A required dependency is being stopped on request: stop first (dependents of this one
                // before it), then wait in pending until it is ready again.
                self.stop_on_request(AfterStop::Pending)
            }
            _ => Vec::new(),
        }
    }

    /// Into `pending`, and on to `starting` at once when the dependencies allow.
    fn pend(&mut self) -> Vec<Action> {
        self.state = ServiceState::Pending;
        match &self.gate {
            Gate::Open if self.held_by.is_none() && !self.leader => {
                // A singleton led by another node (or by none yet): it stands by here.
                self.settled = true;
                self.restarting = false;
                self.restart = None;
                vec![Action::FailWaiters(ControlError::Standby(self.name.clone()))]
            }
            Gate::Open if self.held_by.is_none() => {
                self.state = ServiceState::Starting;
                self.launched = true;
                let restart = self.restart.take();
                if restart.is_some() {
                    self.restart_count += 1;
                }
                vec![Action::Launch(restart)]
            }
            Gate::Blocked(dependency) => {
                self.settled = true;
                self.restarting = false;
                vec![Action::FailWaiters(ControlError::Blocked {
                    service: self.name.clone(),
                    dependency: dependency.clone(),
                })]
            }
            _ => Vec::new(),
        }
    }

    /// Stops the instance, then continues with `after`; `error` answers waiting requests.
    fn stop_then(&mut self, after: AfterStop, error: String) -> Vec<Action> {
        self.state = ServiceState::Stopping;
        self.after_stop = after;
        self.stop_step = StopStep::Instance;
        vec![
            Action::FailWaiters(self.start_failed(error)),
            Action::StopInstance,
        ]
    }

    /// After a crash, a failed start or turning unhealthy: wait for a down dependency (spending nothing),
    /// or back off and retry, or give up when the attempts are spent.
    fn recover(&mut self, reason: RestartReason, error: String) -> Vec<Action> {
        self.settled = true;
        self.restarting = false;
        let mut actions = Vec::new();
        if !error.is_empty() {
            actions.push(Action::FailWaiters(self.start_failed(error)));
        }
        self.restart = Some(reason);
        if self.blocked_by().is_some() {
            actions.extend(self.pend());
            return actions;
        }
        if self.attempts >= self.policy.max_attempts {
            self.state = ServiceState::Failed;
            self.restart = None;
            actions.push(Action::GiveUp);
            return actions;
        }
        self.attempts += 1;
        self.state = ServiceState::Backoff;
        actions.push(Action::Backoff {
            attempt: self.attempts,
            reason,
        });
        actions
    }

    fn shutdown(&mut self) -> Vec<Action> {
        if self.shutting_down {
            return Vec::new();
        }
        self.shutting_down = true;
        self.restarting = false;
        self.state = ServiceState::Stopping;
        self.after_stop = AfterStop::Stopped;
        self.stop_step = StopStep::Dependents;
        vec![
            Action::FailWaiters(ControlError::ShuttingDown),
            Action::AwaitDependents(Dependents::All),
        ]
    }

    fn start_failed(&self, error: String) -> ControlError {
        ControlError::StartFailed {
            service: self.name.clone(),
            error,
        }
    }
}

#[cfg(test)]
mod tests;
