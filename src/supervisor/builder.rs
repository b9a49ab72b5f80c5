//! [`SupervisorBuilder`]: from a validated config to running actors. Each service gets a handle (its command
//! channel and published snapshot), its gates are resolved from the graph (whom it waits for, who stops
//! before it), and its actor is spawned.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::{Actor, ActorParts, Gates, Peer};
use super::{
    Command, ControlError, InProcessLauncher, Launcher, Roster, Service, ServiceHandle, Snapshot, Supervisor,
};
use crate::clock::Clock;
use crate::config::{Config, ServiceSpec};
use crate::events::EventHub;
use crate::graph::DependencyGraph;
use crate::health::probe::Prober;
use crate::registry::RegistryHandle;
use crate::telemetry::metrics::Metrics;

/// Commands each actor's channel holds before senders wait.
const COMMAND_QUEUE: usize = 32;

/// Builds a [`Supervisor`]: the real launcher and probes unless replaced, plus in-process services.
pub struct SupervisorBuilder {
    pub(super) config: Config,
    pub(super) launcher: Arc<dyn Launcher>,
    pub(super) prober: Arc<dyn Prober>,
    pub(super) clock: Clock,
    pub(super) in_process: HashMap<String, Arc<dyn Service>>,
    pub(super) registry: Option<RegistryHandle>,
    pub(super) metrics: Option<Arc<Metrics>>,
    pub(super) startup_span: Option<tracing::Span>,
    pub(super) fence: Option<Arc<crate::cluster::Fence>>,
}

/// The receiving ends of one service's channels, for its actor.
pub(super) struct Channels {
    publish: Arc<watch::Sender<Snapshot>>,
    commands: mpsc::Receiver<Command>,
}

/// What every actor shares, and what a reload needs to spawn more of them.
pub(super) struct Engine {
    pub launcher: Arc<dyn Launcher>,
    pub prober: Arc<dyn Prober>,
    pub in_process: HashMap<String, Arc<dyn Service>>,
    pub clock: Clock,
    pub registry: RegistryHandle,
    pub metrics: Arc<Metrics>,
    pub changes: Arc<watch::Sender<u64>>,
    pub published: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
    pub force: CancellationToken,
    pub tasks: TaskTracker,
    pub boot: Instant,
    /// The runtime the actors run on (a reload may be asked from another one).
    pub runtime: tokio::runtime::Handle,
    pub shutdown_span: Arc<std::sync::Mutex<Option<tracing::Span>>>,
    /// Held while a reload is applied: one at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// The event stream.
    pub events: Arc<EventHub>,
    /// Fleet mode: the lease fence singletons run under.
    pub fence: Option<Arc<crate::cluster::Fence>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
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

    /// Fleet mode: singletons stand by until the cluster says this node leads them, and each instance
    /// runs under `fence`. Without it (fleet mode off) a singleton runs here like any service.
    pub fn fence(mut self, fence: Arc<crate::cluster::Fence>) -> Self {
        self.fence = Some(fence);
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
    pub fn start(mut self) -> Result<Supervisor, ControlError> {
        self.check_in_process()?;
        let metrics = self.metrics.take().unwrap_or_else(Metrics::new);
        let startup_span = self.startup_span.take().unwrap_or_else(|| {
            tracing::info_span!(
                "start orchestrator",
                orchestrator.services = i64::try_from(self.config.services.len()).unwrap_or(i64::MAX)
            )
        });
        let events = EventHub::new(self.clock, metrics.for_events());
        let registry = self.registry.take().unwrap_or_else(|| {
            RegistryHandle::start(&self.config, self.clock, metrics.for_registry(), events.clone())
        });
        metrics.record_graph(&self.config.graph);
        let (changes, changes_receiver) = watch::channel(0u64);
        let engine = Arc::new(Engine {
            launcher: self.launcher.clone(),
            prober: self.prober.clone(),
            in_process: std::mem::take(&mut self.in_process),
            clock: self.clock,
            registry: registry.clone(),
            metrics: metrics.clone(),
            changes: Arc::new(changes),
            published: Arc::default(),
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            tasks: TaskTracker::new(),
            boot: Instant::now(),
            runtime: tokio::runtime::Handle::current(),
            shutdown_span: Arc::default(),
            reloading: tokio::sync::Mutex::new(()),
            events,
            fence: self.fence.take(),
        });
        let (handles, channels): (Vec<_>, Vec<_>) = self
            .config
            .services
            .iter()
            .map(|spec| new_handle(spec, &self.config.graph, &registry, &metrics))
            .unzip();

        let resolving = tracing::info_span!(parent: &startup_span, "resolve dependencies", orchestrator.services = i64::try_from(handles.len()).unwrap_or(i64::MAX));
        let started_resolving = std::time::Instant::now();
        let gates = resolving.in_scope(|| resolve_gates(&self.config.graph, &handles));
        metrics.set_dependency_resolution(started_resolving.elapsed());
        drop(resolving);

        for ((handle, channels), gates) in handles.iter().zip(channels).zip(gates) {
            let parts = actor_parts(&engine, &self.config, handle, channels, gates, &startup_span);
            engine.tasks.spawn(Actor::new(parts).run());
        }
        engine.tasks.close();

        let supervisor = Supervisor {
            roster: Arc::new(std::sync::RwLock::new(Arc::new(Roster::new(
                handles,
                self.config.graph.clone(),
                0,
            )))),
            changes: changes_receiver,
            initialized: Arc::default(),
            engine,
        };
        tokio::spawn(tracing::Instrument::instrument(
            supervisor.clone().log_startup_summary(),
            startup_span,
        ));
        tokio::spawn(supervisor.clone().track_readiness());
        Ok(supervisor)
    }

    /// In-process services must be declared, without a command.
    fn check_in_process(&self) -> Result<(), ControlError> {
        let misdeclared = self.in_process.keys().find(|name| {
            self.config
                .service(name)
                .is_none_or(|spec| spec.command.is_some())
        });
        match misdeclared {
            Some(name) => Err(ControlError::UnknownService(format!(
                "{name} (in-process services must be declared without a command)"
            ))),
            None => Ok(()),
        }
    }
}

/// A new service's handle, and the other ends of its channels.
pub(super) fn new_handle(
    spec: &ServiceSpec,
    graph: &DependencyGraph,
    registry: &RegistryHandle,
    metrics: &Metrics,
) -> (ServiceHandle, Channels) {
    let (publish, snapshot) = watch::channel(Snapshot::initial());
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
    let layer = graph.layer(&spec.name).unwrap_or(0);
    let handle = ServiceHandle {
        spec: Arc::new(spec.clone()),
        registry: registry.clone(),
        metrics: metrics.service(
            &spec.name,
            &spec.service_type,
            spec.critical,
            spec.is_external(),
            layer,
        ),
        layer,
        commands,
        snapshot,
    };
    let channels = Channels {
        publish: Arc::new(publish),
        commands: receiver,
    };
    (handle, channels)
}

/// What runs `spec`: its in-process service, the process launcher when it has a command, or nothing (an
/// external service, only probed).
pub(super) fn launcher_for(engine: &Engine, spec: &ServiceSpec) -> Option<Arc<dyn Launcher>> {
    match engine.in_process.get(spec.name.as_str()) {
        Some(service) if spec.command.is_none() => Some(Arc::new(InProcessLauncher::new(service.clone()))),
        _ if spec.command.is_some() => Some(engine.launcher.clone()),
        _ => None,
    }
}

/// Everything a new actor is given; `first_start` is the parent of its first `start service`.
pub(super) fn actor_parts(
    engine: &Engine,
    config: &Config,
    handle: &ServiceHandle,
    channels: Channels,
    gates: Gates,
    first_start: &tracing::Span,
) -> ActorParts {
    ActorParts {
        spec: handle.spec.clone(),
        layer: handle.layer,
        launcher: launcher_for(engine, &handle.spec),
        prober: engine.prober.clone(),
        clock: engine.clock,
        heartbeat_timeout: config.registry.heartbeat_timeout,
        heartbeat_interval: config.registry.heartbeat_interval,
        check_sample_ratio: config.telemetry.check_sample_ratio,
        registry: engine.registry.clone(),
        metrics: handle.metrics.clone(),
        commands: channels.commands,
        publish: channels.publish,
        changes: engine.changes.clone(),
        published: engine.published.clone(),
        required: gates.required,
        optional: gates.optional,
        dependents: gates.dependents,
        required_dependents: gates.required_dependents,
        shutdown: engine.shutdown.clone(),
        force: engine.force.clone(),
        boot: engine.boot,
        startup_span: first_start.clone(),
        shutdown_span: engine.shutdown_span.clone(),
        events: engine.events.clone(),
        fence: engine.fence.clone(),
    }
}

/// Resolves the graph into each actor's gates: whom it waits for, and who must stop before it.
pub(super) fn resolve_gates(graph: &DependencyGraph, handles: &[ServiceHandle]) -> Vec<Gates> {
    let index: HashMap<&str, usize> = handles.iter().enumerate().map(|(i, h)| (h.name(), i)).collect();
    let peer = |name: &str| Peer {
        name: name.to_owned(),
        snapshot: handles[index[name]].snapshot.clone(),
    };
    handles
        .iter()
        .map(|handle| {
            let name = handle.name();
            let required = graph.dependencies(name);
            let mut optional: Vec<Peer> = graph.optional_dependencies(name).into_iter().map(peer).collect();
            // `priority = p` waits, in the optional sense, for every service of a layer below p (each peer
            // once: the actor reads all of them at the same time).
            for other in handles {
                if other.layer < handle.spec.priority
                    && other.name() != name
                    && !required.contains(&other.name())
                    && !optional.iter().any(|p| p.name == other.name())
                {
                    optional.push(peer(other.name()));
                }
            }
            let dependents = graph.dependents(name);
            Gates {
                required: required.iter().map(|d| peer(d)).collect(),
                optional,
                required_dependents: dependents
                    .iter()
                    .filter(|dependent| graph.dependencies(dependent).contains(&name))
                    .map(|d| peer(d))
                    .collect(),
                dependents: stop_first(handle, handles, dependents)
                    .into_iter()
                    .map(peer)
                    .collect(),
            }
        })
        .collect()
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
