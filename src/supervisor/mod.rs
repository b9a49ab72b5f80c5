//! Supervision: one actor per service, started in dependency order, health-checked, restarted with backoff,
//! stopped in reverse order.
//!
//! [`Supervisor::builder`] spawns an actor task per service (module `actor`). Each actor owns its instance and
//! counters, receives [`Command`]s on a bounded channel (with a oneshot reply), and publishes a
//! [`Snapshot`] through a `watch` channel; [`ServiceHandle`] is the cloneable way in. Actors gate their own
//! start on their dependencies' snapshots ([`gate`]), so every service starts as soon as its dependencies
//! allow and the total startup time is the graph's critical path. Shutdown cancels one token; each actor
//! then stops its instance once its dependents have stopped, so the order is the reverse of the graph and
//! independent branches stop in parallel. A second token forces SIGKILL at once.

mod actor;
pub mod backoff;
pub mod gate;
pub mod launcher;
pub mod lifecycle;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::actor::{Actor, ActorParts, Peer};
pub use self::launcher::{InProcessLauncher, Instance, LaunchError, Launcher, ProcessLauncher, Service};
pub use self::state::{Exit, RestartReason, ServiceState, Snapshot};
use crate::clock::Clock;
use crate::config::{Config, ServiceSpec};
use crate::health::probe::{NetworkProber, Prober};
use crate::health::{CheckResult, HealthStatus, composite};
use crate::registry::{RegistryEntry, RegistryError, RegistryHandle};
use crate::telemetry::metrics::{Metrics, ServiceMetrics};

/// Commands each actor's channel holds before senders wait.
const COMMAND_QUEUE: usize = 32;

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
    },
    /// Start a stopped (or, with force, failed) service; answered once it runs.
    Start {
        /// Also for a failed service; resets the attempt counter.
        force: bool,
        /// The answer.
        reply: Reply,
    },
    /// Stop the service and keep it stopped.
    Stop {
        /// Also for a failed service.
        force: bool,
        /// The answer.
        reply: Reply,
    },
    /// Run a health check now.
    CheckNow(oneshot::Sender<CheckResult>),
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

/// The way in to one service's actor. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceHandle {
    spec: Arc<ServiceSpec>,
    registry: RegistryHandle,
    metrics: ServiceMetrics,
    layer: u32,
    commands: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Snapshot>,
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
        self.control(|reply| Command::Restart { force, reply }).await
    }

    /// Starts a stopped service (a failed one with `force`); answers once it runs.
    pub async fn start(&self, force: bool) -> Result<Snapshot, ControlError> {
        self.control(|reply| Command::Start { force, reply }).await
    }

    /// Stops the service and keeps it stopped.
    pub async fn stop(&self, force: bool) -> Result<Snapshot, ControlError> {
        self.control(|reply| Command::Stop { force, reply }).await
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

    /// Uptime and counters without the history: what the overview endpoints need.
    pub async fn summary(&self) -> Result<HealthReport, ControlError> {
        self.ask_report(false).await
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

    async fn control(&self, command: impl FnOnce(Reply) -> Command) -> Result<Snapshot, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply)).await?;
        answer.await.map_err(|_| ControlError::ShuttingDown)?
    }

    async fn send(&self, command: Command) -> Result<(), ControlError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ControlError::ShuttingDown)
    }
}

/// Builds a [`Supervisor`]: the real launcher and probes unless replaced, plus in-process services.
pub struct SupervisorBuilder {
    config: Config,
    launcher: Arc<dyn Launcher>,
    prober: Arc<dyn Prober>,
    clock: Clock,
    in_process: HashMap<String, Arc<dyn Service>>,
    registry: Option<RegistryHandle>,
    metrics: Option<Arc<Metrics>>,
    startup_span: Option<tracing::Span>,
}

impl SupervisorBuilder {
    /// Replaces the process launcher (tests use a fake one).
    pub fn launcher(mut self, launcher: Arc<dyn Launcher>) -> Self {
        self.launcher = launcher;
        self
    }

    /// Replaces the network probes (tests use fake ones).
    pub fn prober(mut self, prober: Arc<dyn Prober>) -> Self {
        self.prober = prober;
        self
    }

    /// Replaces the wall clock used for timestamps.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The `start orchestrator` span that every first `start service` span is a child of; it ends when the
    /// startup sequence has finished. Without one, the supervisor opens its own.
    pub fn startup_span(mut self, span: tracing::Span) -> Self {
        self.startup_span = Some(span);
        self
    }

    /// Records into `metrics` instead of a fresh set.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Uses an existing registry instead of starting one.
    pub fn registry(mut self, registry: RegistryHandle) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Runs `name` (declared in the config without a `command`) in process, through `service`.
    pub fn in_process(mut self, name: impl Into<String>, service: Arc<dyn Service>) -> Self {
        self.in_process.insert(name.into(), service);
        self
    }

    /// Spawns every actor; services start at once, each when its dependencies allow.
    pub fn start(self) -> Result<Supervisor, ControlError> {
        let Self {
            config,
            launcher,
            prober,
            clock,
            mut in_process,
            registry,
            metrics,
            startup_span,
        } = self;
        let metrics = metrics.unwrap_or_else(Metrics::new);
        let startup_span = startup_span.unwrap_or_else(|| {
            tracing::info_span!(
                "start orchestrator",
                orchestrator.services = config.services.len()
            )
        });
        if let Some(name) = in_process
            .keys()
            .find(|name| config.service(name).is_none_or(|spec| spec.command.is_some()))
        {
            return Err(ControlError::UnknownService(format!(
                "{name} (in-process services must be declared without a command)"
            )));
        }
        let registry = registry.unwrap_or_else(|| RegistryHandle::start(&config, clock, metrics.clone()));
        metrics.record_graph(&config.graph);
        let graph = &config.graph;
        let boot = Instant::now();
        let (changes, changes_receiver) = watch::channel(0u64);
        let changes = Arc::new(changes);
        let shutdown = CancellationToken::new();
        let force = CancellationToken::new();
        let tasks = TaskTracker::new();

        let mut senders = Vec::with_capacity(config.services.len());
        let mut handles = Vec::with_capacity(config.services.len());
        for spec in &config.services {
            let (publish, snapshot) = watch::channel(Snapshot::initial());
            let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
            senders.push((publish, receiver));
            handles.push(ServiceHandle {
                spec: Arc::new(spec.clone()),
                registry: registry.clone(),
                metrics: metrics.service(
                    &spec.name,
                    &spec.service_type,
                    spec.critical,
                    spec.is_external(),
                    graph.layer(&spec.name).unwrap_or(0),
                ),
                layer: graph.layer(&spec.name).unwrap_or(0),
                commands,
                snapshot,
            });
        }
        let index: HashMap<String, usize> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name().to_owned(), i))
            .collect();
        let peer = |name: &str| {
            let handle = &handles[index[name]];
            Peer {
                name: name.to_owned(),
                snapshot: handle.snapshot.clone(),
            }
        };

        // Resolve the graph into each actor's gates: whom it waits for, and who must stop before it.
        let resolving = tracing::info_span!(parent: &startup_span, "resolve dependencies", orchestrator.services = handles.len());
        let started_resolving = std::time::Instant::now();
        let gates: Vec<Gates> = resolving.in_scope(|| {
            handles
                .iter()
                .map(|handle| {
                    let name = handle.name();
                    let mut optional: Vec<Peer> =
                        graph.optional_dependencies(name).into_iter().map(peer).collect();
                    // `priority = p` waits, in the optional sense, for every service of a layer below p
                    // (each peer once: the actor reads all of them at the same time).
                    let priority = handle.spec.priority;
                    let required = graph.dependencies(name);
                    for other in &handles {
                        if other.layer < priority
                            && other.name() != name
                            && !required.contains(&other.name())
                            && !optional.iter().any(|p| p.name == other.name())
                        {
                            optional.push(peer(other.name()));
                        }
                    }
                    Gates {
                        required: graph.dependencies(name).into_iter().map(peer).collect(),
                        optional,
                        dependents: stop_first(handle, &handles, graph.dependents(name))
                            .into_iter()
                            .map(peer)
                            .collect(),
                        required_dependents: graph
                            .dependents(name)
                            .into_iter()
                            .filter(|dependent| graph.dependencies(dependent).contains(&name))
                            .map(peer)
                            .collect(),
                    }
                })
                .collect()
        });
        metrics.set_dependency_resolution(started_resolving.elapsed());
        drop(resolving);
        for ((handle, (publish, commands)), gates) in handles.iter().zip(senders).zip(gates) {
            let name = handle.name();
            let launcher: Option<Arc<dyn Launcher>> = match in_process.remove(name) {
                Some(service) => Some(Arc::new(InProcessLauncher::new(service))),
                None if handle.spec.command.is_some() => Some(launcher.clone()),
                None => None,
            };
            let parts = ActorParts {
                spec: handle.spec.clone(),
                layer: handle.layer,
                launcher,
                prober: prober.clone(),
                clock,
                heartbeat_timeout: config.registry.heartbeat_timeout,
                heartbeat_interval: config.registry.heartbeat_interval,
                registry: registry.clone(),
                metrics: handle.metrics.clone(),
                commands,
                publish,
                changes: changes.clone(),
                required: gates.required,
                optional: gates.optional,
                dependents: gates.dependents,
                required_dependents: gates.required_dependents,
                shutdown: shutdown.clone(),
                force: force.clone(),
                boot,
                startup_span: startup_span.clone(),
            };
            tasks.spawn(Actor::new(parts).run());
        }
        tasks.close();

        let supervisor = Supervisor {
            registry,
            metrics,
            services: Arc::new(handles),
            index: Arc::new(index),
            changes: changes_receiver,
            shutdown,
            force,
            tasks,
            boot,
        };
        tokio::spawn(tracing::Instrument::instrument(
            supervisor.clone().log_startup_summary(),
            startup_span,
        ));
        tokio::spawn(supervisor.clone().track_readiness());
        Ok(supervisor)
    }
}

/// Whom one actor watches.
struct Gates {
    required: Vec<Peer>,
    optional: Vec<Peer>,
    dependents: Vec<Peer>,
    required_dependents: Vec<Peer>,
}

/// The services that must stop before `service` does: its dependents, and every service whose `priority`
/// made it wait for `service` at startup (shutdown mirrors startup).
fn stop_first<'a>(
    service: &ServiceHandle,
    all: &'a [ServiceHandle],
    dependents: Vec<&'a str>,
) -> Vec<&'a str> {
    let mut names = dependents;
    for other in all {
        if service.layer < other.spec.priority && !names.contains(&other.name()) {
            names.push(other.name());
        }
    }
    names
}

/// The running engine: every service's actor, and the way to stop them all. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    registry: RegistryHandle,
    metrics: Arc<Metrics>,
    services: Arc<Vec<ServiceHandle>>,
    index: Arc<HashMap<String, usize>>,
    changes: watch::Receiver<u64>,
    shutdown: CancellationToken,
    force: CancellationToken,
    tasks: TaskTracker,
    boot: Instant,
}

impl Supervisor {
    /// A builder for `config`'s services with the real process launcher and network probes.
    pub fn builder(config: Config) -> SupervisorBuilder {
        SupervisorBuilder {
            config,
            launcher: Arc::new(ProcessLauncher),
            prober: Arc::new(NetworkProber::default()),
            clock: Clock::system(),
            in_process: HashMap::new(),
            registry: None,
            metrics: None,
            startup_span: None,
        }
    }

    /// The metrics every service records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The registry the services' heartbeats go to.
    pub fn registry(&self) -> &RegistryHandle {
        &self.registry
    }

    /// Every service, in declaration order.
    pub fn services(&self) -> &[ServiceHandle] {
        &self.services
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceHandle> {
        self.index.get(name).map(|&i| &self.services[i])
    }

    /// The startup sequence has finished: every service became ready, failed its first attempt, or is
    /// blocked by a required dependency that did.
    pub fn is_initialized(&self) -> bool {
        self.services.iter().all(|s| s.snapshot.borrow().settled)
    }

    /// Initialized, and every critical service running and not unhealthy.
    pub fn is_ready(&self) -> bool {
        self.is_initialized()
            && self
                .services
                .iter()
                .filter(|s| s.spec.critical)
                .all(|s| s.snapshot.borrow().ready)
    }

    /// The composite health of every service.
    pub fn composite_health(&self) -> HealthStatus {
        composite(self.services.iter().map(|s| s.snapshot.borrow().health))
    }

    /// Waits until the startup sequence has finished.
    pub async fn initialized(&self) {
        let mut changes = self.changes.clone();
        while !self.is_initialized() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs every service's health check now, concurrently, in declaration order.
    pub async fn check_now(&self) -> Vec<CheckResult> {
        let checks = self.services.iter().map(|service| {
            let service = service.clone();
            tokio::spawn(async move { service.check_now().await })
        });
        let mut results = Vec::with_capacity(self.services.len());
        for check in checks.collect::<Vec<_>>() {
            if let Ok(Ok(result)) = check.await {
                results.push(result);
            }
        }
        results
    }

    /// Starts the graceful shutdown: health checks stop, services stop in reverse dependency order.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Kills every remaining service at once (a second signal, or a deadline).
    pub fn force_shutdown(&self) {
        self.shutdown.cancel();
        self.force.cancel();
    }

    /// Shuts down gracefully and waits until every actor has stopped its service, logging every
    /// `report_every` which services are holding the shutdown up.
    pub async fn shutdown(&self, report_every: Duration) {
        self.begin_shutdown();
        let mut ticker = tokio::time::interval_at(Instant::now() + report_every, report_every);
        loop {
            tokio::select! {
                () = self.tasks.wait() => break,
                _ = ticker.tick() => self.log_holdouts(),
            }
        }
        tracing::info!("all services stopped");
    }

    fn log_holdouts(&self) {
        let holding: Vec<String> = self
            .services
            .iter()
            .filter_map(|s| {
                let snapshot = s.snapshot.borrow();
                (snapshot.state != ServiceState::Stopped)
                    .then(|| format!("{} ({})", s.name(), snapshot.state))
            })
            .collect();
        if !holding.is_empty() {
            tracing::warn!(services = %holding.join(", "), "shutdown waiting on services");
        }
    }

    /// Keeps `ready` and `initialized` current: they change only when some service's readiness does, which
    /// is when the shared change counter moves. (`service_dependency_blocked` is each actor's, published
    /// with `waiting_on`.)
    async fn track_readiness(self) {
        let mut changes = self.changes.clone();
        loop {
            self.metrics.set_readiness(self.is_ready(), self.is_initialized());
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits for the startup sequence and says how it went. Runs inside the `start orchestrator` span, which
    /// ends with it.
    async fn log_startup_summary(self) {
        tokio::select! {
            () = self.initialized() => {}
            () = self.shutdown.cancelled() => return,
        }
        let elapsed = self.boot.elapsed();
        let total = self.services.len();
        let not_ready: Vec<String> = self
            .services
            .iter()
            .filter_map(|s| {
                let snapshot = s.snapshot.borrow();
                (!snapshot.ready).then(|| match &snapshot.waiting_on {
                    Some(dependency) => format!("{} (waiting on {dependency})", s.name()),
                    None => format!("{} ({})", s.name(), snapshot.state),
                })
            })
            .collect();
        let ready = total - not_ready.len();
        if not_ready.is_empty() {
            let noun = if ready == 1 { "service" } else { "services" };
            tracing::info!(
                elapsed_ms = elapsed.as_millis() as u64,
                "{ready} {noun} ready in {} ms",
                elapsed.as_millis()
            );
        } else {
            tracing::warn!(
                elapsed_ms = elapsed.as_millis() as u64,
                not_ready = %not_ready.join(", "),
                "{ready} of {total} services ready in {} ms",
                elapsed.as_millis()
            );
        }
    }
}
