//! Supervision: one actor per service, started in dependency order, health-checked, restarted with backoff,
//! stopped in reverse order.
//!
//! [`Supervisor::builder`] spawns an actor task per service (module `actor`). What happens next is decided
//! by the pure [`lifecycle::Lifecycle`]; the actor owns the instance, health record and timers, executes
//! the decisions, receives [`Command`]s on a bounded channel (with a oneshot reply), and publishes a
//! [`Snapshot`] through a `watch` channel; [`ServiceHandle`] is the cloneable way in. Actors gate their own
//! start on their dependencies' snapshots ([`gate`]), so every service starts as soon as its dependencies
//! allow and the total startup time is the graph's critical path. Shutdown cancels one token; each actor
//! then stops its instance once its dependents have stopped, so the order is the reverse of the graph and
//! independent branches stop in parallel. A second token forces SIGKILL at once.

mod actor;
pub mod backoff;
mod builder;
pub mod containment;
pub mod gate;
mod handle;
pub mod launcher;
pub mod lifecycle;
pub mod output;
mod reload;
mod spawn_server;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use self::builder::SupervisorBuilder;
pub use self::handle::{Command, ControlError, HealthReport, Reply, ServiceHandle};
pub use self::launcher::{InProcessLauncher, Instance, LaunchError, Launcher, ProcessLauncher, Service};
pub use self::reload::Applied;
pub use self::state::{Exit, PublishedUptime, RestartReason, ServiceState, Snapshot};
use crate::clock::Clock;
use crate::config::Config;
use crate::graph::DependencyGraph;
use crate::health::probe::NetworkProber;
use crate::health::{CheckResult, HealthStatus, composite};
use crate::registry::RegistryHandle;
use crate::telemetry::metrics::Metrics;

/// The running engine: every service's actor, and the way to stop them all. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    /// The services and their graph: replaced whole by a reload.
    roster: Arc<RwLock<Arc<Roster>>>,
    changes: watch::Receiver<u64>,
    /// The startup sequence has finished (once true, services a reload adds do not make it false).
    initialized: Arc<AtomicBool>,
    engine: Arc<builder::Engine>,
}

/// The services the supervisor runs, in declaration order, and the graph they form. A reload replaces
/// it whole; a reader holds one consistent version.
#[derive(Debug)]
pub struct Roster {
    handles: Vec<ServiceHandle>,
    index: HashMap<String, usize>,
    graph: DependencyGraph,
    version: u64,
}

impl Roster {
    fn new(handles: Vec<ServiceHandle>, graph: DependencyGraph, version: u64) -> Self {
        let index = handles
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name().to_owned(), i))
            .collect();
        Self {
            handles,
            index,
            graph,
            version,
        }
    }

    /// The service called `name`.
    pub fn get(&self, name: &str) -> Option<&ServiceHandle> {
        self.index.get(name).map(|&i| &self.handles[i])
    }

    /// The dependency graph of these services.
    pub fn graph(&self) -> &DependencyGraph {
        &self.graph
    }

    /// 0 at start, one more after each applied reload.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl std::ops::Deref for Roster {
    type Target = [ServiceHandle];

    fn deref(&self) -> &[ServiceHandle] {
        &self.handles
    }
}

impl Supervisor {
    /// A builder for `config`'s services with the real process launcher and network probes.
    pub fn builder(config: Config) -> SupervisorBuilder {
        SupervisorBuilder {
            config,
            launcher: Arc::new(ProcessLauncher::default()),
            prober: Arc::new(NetworkProber::default()),
            clock: Clock::system(),
            in_process: HashMap::new(),
            registry: None,
            metrics: None,
            startup_span: None,
            fence: None,
        }
    }

    /// The metrics every service records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.engine.metrics
    }

    /// The event stream every service publishes on.
    pub fn events(&self) -> &Arc<crate::events::EventHub> {
        &self.engine.events
    }

    /// The registry the services' heartbeats go to.
    pub fn registry(&self) -> &RegistryHandle {
        &self.engine.registry
    }

    /// Every service, in declaration order, and their graph: the version running now.
    pub fn services(&self) -> Arc<Roster> {
        self.roster
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<ServiceHandle> {
        self.services().get(name).cloned()
    }

    /// A number that changes after any service's snapshot does, and after a reload: read before the
    /// snapshots, it says whether what was made of them is still current (the API's cached bodies).
    pub fn generation(&self) -> u64 {
        self.engine.published.load(Ordering::Acquire)
    }

    /// The startup sequence has finished: every service became ready, failed its first attempt, or is
    /// blocked by a required dependency that did. Once true it stays true: a service a reload adds has
    /// its own start, not a new startup sequence.
    pub fn is_initialized(&self) -> bool {
        if self.initialized.load(Ordering::Acquire) {
            return true;
        }
        let settled = self.services().iter().all(|s| s.snapshot.borrow().settled);
        if settled {
            self.initialized.store(true, Ordering::Release);
        }
        settled
    }

    /// Initialized, and every critical service running and not unhealthy (a fleet singleton that another
    /// node runs is not this node's to run: it does not count).
    pub fn is_ready(&self) -> bool {
        self.is_initialized()
            && self.services().iter().filter(|s| s.spec.critical).all(|s| {
                let snapshot = s.snapshot.borrow();
                snapshot.ready || snapshot.leader == Some(false)
            })
    }

    /// The composite health of every service.
    pub fn composite_health(&self) -> HealthStatus {
        composite(self.services().iter().map(|s| s.snapshot.borrow().health))
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
        let services = self.services();
        let checks = services.iter().map(|service| {
            let service = service.clone();
            tokio::spawn(async move { service.check_now().await })
        });
        let mut results = Vec::with_capacity(services.len());
        for check in checks.collect::<Vec<_>>() {
            if let Ok(Ok(result)) = check.await {
                results.push(result);
            }
        }
        results
    }

    /// Starts the graceful shutdown: health checks stop, services stop in reverse dependency order.
    pub fn begin_shutdown(&self) {
        if let Ok(mut span) = self.engine.shutdown_span.lock()
            && span.is_none()
        {
            *span = Some(tracing::info_span!(
                parent: None,
                "stop orchestrator",
                orchestrator.services = i64::try_from(self.services().len()).unwrap_or(i64::MAX),
            ));
        }
        self.engine.shutdown.cancel();
    }

    /// Kills every remaining service at once (a second signal, or a deadline).
    pub fn force_shutdown(&self) {
        self.engine.shutdown.cancel();
        self.engine.force.cancel();
    }

    /// Shuts down gracefully and waits until every actor has stopped its service, logging every
    /// `report_every` which services are holding the shutdown up.
    pub async fn shutdown(&self, report_every: Duration) {
        self.begin_shutdown();
        let mut ticker = tokio::time::interval_at(Instant::now() + report_every, report_every);
        loop {
            tokio::select! {
                () = self.engine.tasks.wait() => break,
                _ = ticker.tick() => self.log_holdouts(),
            }
        }
        // Every stop is done: `stop orchestrator` ends here.
        let span = self
            .engine
            .shutdown_span
            .lock()
            .ok()
            .and_then(|mut span| span.take());
        tracing::info!(parent: span.as_ref().and_then(tracing::Span::id), "all services stopped");
    }

    fn log_holdouts(&self) {
        let holding: Vec<String> = self
            .services()
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
            self.metrics()
                .set_readiness(self.is_ready(), self.is_initialized());
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
            () = self.engine.shutdown.cancelled() => return,
        }
        let elapsed = self.engine.boot.elapsed();
        let services = self.services();
        let total = services.len();
        let not_ready: Vec<String> = services
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
