//! Fleet mode (DESIGN.md section 9): many orchestrators, one per machine, coordinated through etcd.
//!
//! Each node holds one etcd **lease** and renews it every fifth of its TTL. The lease is granted for
//! `cluster.lease_ttl` less a second (from 5 s up): etcd notices an expired lease up to half a second late,
//! and the election round that follows takes a moment, so that a singleton still moves within `lease_ttl`
//! (plus its start) of its node's death. Under the lease
//! the node publishes what it runs, so a dead or cut-off node's keys expire by themselves:
//!
//! ```text
//! /fog-orchestrator/<fleet>/members/<node>                 {"node", "api", "version", "started"}
//! /fog-orchestrator/<fleet>/nodes/<node>/services/<name>   the service's /services summary, with "node"
//! /fog-orchestrator/<fleet>/nodes/<node>/registry/<name>   its registry entry (without heartbeat times)
//! /fog-orchestrator/<fleet>/singletons/<service>           the node leading a singleton's election
//! ```
//!
//! Writes are the difference from what was last written, at most [`MAX_WRITES_PER_TICK`] keys a tick in
//! transactions of [`TXN_OPS`]; registry entries leave out their heartbeat times, so a heartbeat storm writes
//! nothing until an entry's `alive` changes.
//!
//! A **singleton** runs where its election key points: a node that finds the key absent, and may run the
//! service (not stopped on request, not failed), creates it on its own lease in a transaction that only
//! succeeds if nobody else did. The winner starts the service; the others stand by (`pending`). The key
//! goes when the leader's lease ends (node killed, cut off, shut down: it revokes its lease on the way out)
//! or when the leader gives it up (its service stopped on request, or failed for good). Every node watches
//! the election keys, so a key that goes is seen at once; the keys are also read when one of the node's
//! singletons changes state, at least every fifth of the lease, and at every tick while no watch is open.
//! A node whose lease
//! renewal has not been confirmed for half the TTL stops its singletons at once, and each instance's
//! [`fence`] kills it before the lease can have expired, even if the orchestrator itself is paused.
//!
//! Local supervision never depends on etcd: while etcd is unreachable the node supervises as before, says
//! so in `/readyz`, `orchestrator_cluster_up` and its log, and republishes everything once it is back
//! (with a new lease: the old one has expired by then).

mod etcd;
pub mod fence;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use self::etcd::EtcdError;
use self::etcd::{Etcd, Operation};
pub use self::fence::{Fence, FenceGuard};
use crate::config::ClusterSettings;
use crate::status::ServiceState;
use crate::supervisor::Supervisor;
use crate::telemetry::metrics::cluster::ClusterMetrics;

/// How often the node looks at etcd: elections, publication, lease renewal when due.
const TICK: Duration = Duration::from_millis(250);
/// The most keys written in one tick (the rest follows in the next ones).
const MAX_WRITES_PER_TICK: usize = 1024;
/// Operations per transaction: etcd's default `--max-txn-ops` is 128.
const TXN_OPS: usize = 128;
/// How often the registry is published.
const REGISTRY_EVERY: Duration = Duration::from_secs(2);
/// The shortest time between two publications of the services (a check changes a snapshot; building every
/// summary at every tick would be work for nothing).
const SERVICES_EVERY: Duration = Duration::from_secs(1);
/// The wait before a watch that could not be opened, or ended, is opened again.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// The longest a fleet-wide read may take (a whole fleet's registry is tens of megabytes at most).
const FLEET_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What `/readyz` and the fleet views say about the node's place in the fleet.
#[derive(Debug, Clone)]
pub struct Status {
    /// A live lease is held.
    pub up: bool,
    /// The lease's id.
    pub lease: Option<i64>,
    /// The last etcd failure, while it lasts.
    pub last_error: Option<String>,
    /// Since when `up` has its value.
    pub since: SystemTime,
    /// Nodes with a live lease, as last read.
    pub nodes: Vec<String>,
    /// The leader of every singleton, as last read (`None`: no leader).
    pub leaders: BTreeMap<String, Option<String>>,
}

/// A node of the fleet. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClusterSettings,
    prefix: String,
    /// The node's own calls: lease, publication, elections.
    etcd: Etcd,
    /// Fleet-wide reads for the API, on a connection of their own: a large read must never delay a lease
    /// renewal.
    reads: Etcd,
    fence: Arc<Fence>,
    metrics: ClusterMetrics,
    status: RwLock<Status>,
    /// This node's API, as published for the others and for service discovery.
    api: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("fleet", &self.inner.settings.name)
            .field("node", &self.inner.settings.node)
            .finish_non_exhaustive()
    }
}

/// Why a fleet-wide view could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd could not be read.
    #[error("the fleet cannot be read: {0}")]
    Etcd(#[from] EtcdError),
}

impl Cluster {
    /// A node of the fleet `settings` names; its API is reachable at `api` (the advertised URL, else the
    /// address the API listens on). Nothing is contacted until [`Cluster::run`].
    pub fn new(
        settings: ClusterSettings,
        api: String,
        fence: Arc<Fence>,
        metrics: ClusterMetrics,
    ) -> Result<Self, String> {
        // A call waits at most a fifth of the lease: a slow endpoint must not use up the lease.
        let timeout = (granted_ttl(settings.lease_ttl) / 5).max(Duration::from_millis(500));
        let etcd = Etcd::new(&settings, timeout)?;
        let reads = Etcd::new(&settings, FLEET_READ_TIMEOUT)?;
        let prefix = format!("/fog-orchestrator/{}/", settings.name);
        Ok(Self {
            inner: Arc::new(Inner {
                api: settings.advertise_url.clone().unwrap_or(api),
                settings,
                prefix,
                etcd,
                reads,
                fence,
                metrics,
                status: RwLock::new(Status {
                    up: false,
                    lease: None,
                    last_error: None,
                    since: SystemTime::now(),
                    nodes: Vec::new(),
                    leaders: BTreeMap::new(),
                }),
            }),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.settings.node
    }

    /// The fleet's name.
    pub fn fleet(&self) -> &str {
        &self.inner.settings.name
    }

    /// The node's standing, as last seen.
    pub fn status(&self) -> Status {
        self.inner
            .status
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Every node with a live lease: what it published about itself (`node`, `api`, `version`,
    /// `started`), by name.
    pub async fn members(&self) -> Result<Vec<Value>, FleetError> {
        let members = format!("{}members/", self.inner.prefix);
        let keys = self.inner.reads.range_prefix(&members).await?;
        Ok(keys
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    /// Every node's published keys under `kind` (`services` or `registry`), as `(node, name, value)`.
    pub async fn published(&self, kind: &str) -> Result<Vec<(String, String, Value)>, FleetError> {
        let nodes = format!("{}nodes/", self.inner.prefix);
        let keys = self.inner.reads.range_prefix(&nodes).await?;
        let mut found = Vec::new();
        for kv in keys {
            let Some(rest) = kv.key.strip_prefix(&nodes) else {
                continue;
            };
            let mut parts = rest.splitn(3, '/');
            let (Some(node), Some(section), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if section != kind {
                continue;
            }
            if let Ok(value) = serde_json::from_slice::<Value>(&kv.value) {
                found.push((node.to_owned(), name.to_owned(), value));
            }
        }
        Ok(found)
    }

    /// Takes part in the fleet until `stop` is cancelled: keeps the lease, publishes, runs elections. Call
    /// [`Cluster::leave`] after the services have stopped.
    pub async fn run(self, supervisor: Supervisor, stop: CancellationToken) {
        let mut node = NodeState::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let watching = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(self.clone().watch_elections(
            changed.clone(),
            watching.clone(),
            stop.clone(),
        ));
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
                // An election key changed (a leader gone, say): look at once.
                () = changed.notified() => node.elections_due = true,
            }
            node.watching = watching.load(Ordering::Relaxed);
            self.tick(&supervisor, &mut node).await;
        }
        let _ = watcher.await;
        self.inner.status_mut().lease = node.session.map(|session| session.lease);
    }

    /// Watches the election keys and says when one changed; while no watch is open (etcd unreachable, or it
    /// ended one), `watching` is false and the elections are read at every tick instead.
    async fn watch_elections(
        self,
        changed: Arc<tokio::sync::Notify>,
        watching: Arc<AtomicBool>,
        stop: CancellationToken,
    ) {
        let elections = format!("{}singletons/", self.inner.prefix);
        loop {
            let opened = tokio::select! {
                () = stop.cancelled() => return,
                opened = self.inner.reads.watch(&elections) => opened,
            };
            if let Ok(mut watch) = opened {
                watching.store(true, Ordering::Relaxed);
                // Whatever changed before the watch opened is read now.
                changed.notify_one();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        event = watch.changed() => match event {
                            Ok(()) => changed.notify_one(),
                            Err(_) => break,
                        },
                    }
                }
                watching.store(false, Ordering::Relaxed);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(WATCH_RETRY) => {}
            }
        }
    }

    /// Leaves the fleet (after the services stopped): revokes the lease, so this node's keys and
    /// elections go at once and another node may take its singletons without waiting for the TTL.
    pub async fn leave(&self) {
        let lease = self.inner.status_mut().lease.take();
        if let Some(lease) = lease {
            match self.inner.etcd.revoke(lease).await {
                Ok(()) => tracing::info!(node = self.node(), "left the fleet: lease revoked"),
                Err(error) => {
                    tracing::warn!(%error, "could not revoke the lease: this node's keys expire with it")
                }
            }
        }
        self.inner.fence.set_deadline(0);
        self.inner.metrics.up.set(0);
    }

    async fn tick(&self, supervisor: &Supervisor, node: &mut NodeState) {
        let inner = &self.inner;
        let ttl = granted_ttl(inner.settings.lease_ttl);
        self.keep_session(supervisor, node).await;
        self.sync_traffic(node);
        let Some(session) = node.session.clone() else {
            return;
        };
        if session.confirmed.elapsed() > ttl / 2 {
            // Renewals have failed for half the lease: it may expire before the next one gets through.
            self.step_down_all(supervisor, node, "the lease is no longer certainly held")
                .await;
            return;
        }
        if let Err(error) = self.publish(supervisor, node, session.lease).await {
            self.failed(&error);
            return;
        }
        // The elections are read when a key changed, when one of this node's singletons changed state,
        // while no watch is open, and at least every fifth of the lease (in case a watch missed something).
        let signature = singleton_states(supervisor);
        let due = node.elections_due
            || !node.watching
            || node.singleton_states != signature
            || node.elected_at.is_none_or(|at| at.elapsed() >= ttl / 5);
        if !due {
            return;
        }
        match self.elect(supervisor, node, session.lease).await {
            Ok(()) => {
                node.elections_due = false;
                node.singleton_states = signature;
                node.elected_at = Some(Instant::now());
            }
            Err(error) => self.failed(&error),
        }
    }

    /// Grants a lease when there is none, renews it when due; moves the fences after each confirmed renewal.
    async fn keep_session(&self, supervisor: &Supervisor, node: &mut NodeState) {
        let inner = &self.inner;
        let ttl = granted_ttl(inner.settings.lease_ttl);
        let renew_every = ttl / 5;
        let margin = (ttl / 5).max(Duration::from_millis(500));
        match &mut node.session {
            None => {
                if node.last_attempt.is_some_and(|at| at.elapsed() < renew_every) {
                    return;
                }
                node.last_attempt = Some(Instant::now());
                let sent = Instant::now();
                let sent_monotonic = fence::monotonic_ns();
                match inner.etcd.grant(ttl).await {
                    Ok(lease) => {
                        node.session = Some(Session {
                            lease,
                            confirmed: sent,
                            renewed: sent,
                        });
                        node.published.clear();
                        node.info_written = false;
                        node.services_generation = None;
                        node.registry_at = None;
                        inner.fence.set_deadline(deadline(sent_monotonic, ttl, margin));
                        self.came_up(lease);
                    }
                    Err(error) => self.failed(&error),
                }
            }
            Some(session) => {
                // Every fifth of the lease; after a failed renewal (an etcd leader election, a member lost),
                // at every tick until one is confirmed.
                let failing = session.confirmed < session.renewed;
                if !failing && session.renewed.elapsed() < renew_every {
                    return;
                }
                let sent = Instant::now();
                let sent_monotonic = fence::monotonic_ns();
                session.renewed = sent;
                match inner.etcd.keep_alive(session.lease).await {
                    Ok(Some(_)) => {
                        session.confirmed = sent;
                        inner.fence.set_deadline(deadline(sent_monotonic, ttl, margin));
                        self.came_up(session.lease);
                    }
                    Ok(None) => {
                        // Expired at etcd: another node may run our singletons already.
                        inner.fence.set_deadline(0);
                        inner.metrics.lease_losses.inc();
                        node.session = None;
                        self.went_down("the lease expired at etcd".into());
                        self.step_down_all(supervisor, node, "the lease expired").await;
                    }
                    Err(error) => self.failed(&error),
                }
            }
        }
    }

    /// Writes what changed in this node's services and registry since the last tick.
    async fn publish(
        &self,
        supervisor: &Supervisor,
        node: &mut NodeState,
        lease: i64,
    ) -> Result<(), EtcdError> {
        let inner = &self.inner;
        let base = format!("{}nodes/{}/", inner.prefix, inner.settings.node);
        if !node.info_written {
            let info = json!({
                "node": inner.settings.node,
                "api": inner.api,
                "version": env!("CARGO_PKG_VERSION"),
                "started": crate::clock::rfc3339(SystemTime::now()),
            });
            inner
                .etcd
                .write(&[Operation::Put {
                    key: format!("{}members/{}", inner.prefix, inner.settings.node),
                    value: info.to_string().into_bytes(),
                    lease,
                }])
                .await?;
            node.info_written = true;
        }
        let generation = supervisor.generation();
        let services_due = node.services_generation != Some(generation)
            && node.services_at.is_none_or(|at| at.elapsed() >= SERVICES_EVERY);
        let registry_due = node.registry_at.is_none_or(|at| at.elapsed() >= REGISTRY_EVERY);
        if !services_due && !registry_due {
            return Ok(());
        }
        // What is not due keeps its last published value.
        let (services, registry) = (format!("{base}services/"), format!("{base}registry/"));
        let mut current: HashMap<String, Vec<u8>> = node
            .published
            .iter()
            .filter(|(key, _)| {
                let service = key.starts_with(&services);
                (service && !services_due) || (!service && !registry_due)
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        for handle in supervisor.services().iter().filter(|_| services_due) {
            let mut summary = crate::api::service_summary(handle, &handle.snapshot());
            summary["node"] = json!(inner.settings.node);
            current.insert(
                format!("{services}{}", handle.name()),
                summary.to_string().into_bytes(),
            );
        }
        let entries = if registry_due {
            supervisor.registry().entries().await.ok()
        } else {
            None
        };
        if let Some(entries) = entries {
            for entry in entries {
                let mut value = json!(entry);
                if let Some(fields) = value.as_object_mut() {
                    // Heartbeat times change with every heartbeat: they stay local (alive is published).
                    for field in ["last_heartbeat", "heartbeat_age_seconds", "heartbeats_received"] {
                        fields.remove(field);
                    }
                    fields.insert("node".into(), json!(inner.settings.node));
                }
                current.insert(
                    format!("{registry}{}", entry.name),
                    value.to_string().into_bytes(),
                );
            }
        }
        let mut writes: Vec<Operation> = current
            .iter()
            .filter(|(key, value)| node.published.get(*key) != Some(*value))
            .map(|(key, value)| Operation::Put {
                key: key.clone(),
                value: value.clone(),
                lease,
            })
            .collect();
        writes.extend(
            node.published
                .keys()
                .filter(|key| !current.contains_key(*key))
                .map(|key| Operation::Delete(key.clone())),
        );
        let complete = writes.len() <= MAX_WRITES_PER_TICK;
        writes.truncate(MAX_WRITES_PER_TICK);
        for batch in writes.chunks(TXN_OPS) {
            inner.etcd.write(batch).await?;
            for operation in batch {
                match operation {
                    Operation::Put { key, value, .. } => {
                        node.published.insert(key.clone(), value.clone());
                    }
                    Operation::Delete(key) => {
                        node.published.remove(key);
                    }
                }
            }
        }
        // What was due is published, unless the cap left some for the next tick (or a write failed: the
        // `?` above left early, and all of it is due again).
        if complete {
            if services_due {
                node.services_generation = Some(generation);
                node.services_at = Some(Instant::now());
            }
            if registry_due {
                node.registry_at = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// One round of every singleton's election, and the fleet's membership.
    async fn elect(
        &self,
        supervisor: &Supervisor,
        node: &mut NodeState,
        lease: i64,
    ) -> Result<(), EtcdError> {
        let inner = &self.inner;
        let me = inner.settings.node.clone();
        if node
            .members_read
            .is_none_or(|at| at.elapsed() >= inner.settings.lease_ttl / 5)
        {
            // The members change slowly: read with the lease's cadence, not every tick.
            node.members_read = Some(Instant::now());
            let members = format!("{}members/", inner.prefix);
            let nodes: Vec<String> = inner
                .etcd
                .range_prefix(&members)
                .await?
                .iter()
                .filter_map(|kv| kv.key.strip_prefix(&members).map(str::to_owned))
                .collect();
            let count = i64::try_from(nodes.len()).unwrap_or(i64::MAX);
            inner.metrics.nodes.set(count);
            inner.status_mut().nodes = nodes;
        }
        let singletons: Vec<_> = supervisor
            .services()
            .iter()
            .filter(|handle| handle.spec().singleton)
            .cloned()
            .collect();
        let elections = format!("{}singletons/", inner.prefix);
        let holders: HashMap<String, (String, i64)> = if singletons.is_empty() {
            HashMap::new()
        } else {
            inner
                .etcd
                .range_prefix(&elections)
                .await?
                .into_iter()
                .filter_map(|kv| {
                    let service = kv.key.strip_prefix(&elections)?.to_owned();
                    Some((
                        service,
                        (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease),
                    ))
                })
                .collect()
        };
        let mut leaders = BTreeMap::new();
        for handle in singletons {
            let name = handle.name().to_owned();
            // Every singleton's counters exist from the start, at 0 (increase() needs a first sample).
            inner.metrics.elections.with_label_values(&[name.as_str()]);
            inner.metrics.failovers.with_label_values(&[name.as_str()]);
            let snapshot = handle.snapshot();
            let eligible = !matches!(snapshot.state, ServiceState::Stopped | ServiceState::Failed)
                && !snapshot.stop_requested;
            let key = format!("{elections}{name}");
            let leader = match holders.get(&name) {
                Some((_, holder_lease)) if *holder_lease == lease => {
                    if !eligible && snapshot.is_down() {
                        // Stopped on request, or failed for good: another node may run it.
                        inner.etcd.delete_if_leased(&key, lease).await?;
                        self.set_leader(&handle, node, false).await;
                        tracing::info!(service = %name, state = %snapshot.state, "singleton given up: another node may run it");
                        None
                    } else {
                        self.set_leader(&handle, node, true).await;
                        Some(me.clone())
                    }
                }
                Some((holder, _)) => {
                    self.set_leader(&handle, node, false).await;
                    node.last_leader.insert(name.clone(), holder.clone());
                    Some(holder.clone())
                }
                None if eligible => match inner.etcd.create(&key, &me, lease).await? {
                    None => {
                        let previous = node
                            .last_leader
                            .get(&name)
                            .filter(|previous| **previous != me)
                            .cloned();
                        self.won(&handle, node, previous).await;
                        Some(me.clone())
                    }
                    Some(holder) => {
                        let holder = String::from_utf8_lossy(&holder).into_owned();
                        self.set_leader(&handle, node, false).await;
                        node.last_leader.insert(name.clone(), holder.clone());
                        Some(holder)
                    }
                },
                None => {
                    self.set_leader(&handle, node, false).await;
                    None
                }
            };
            // Leading, under this lease (a key of this node's name on an older lease, left by a restart, is
            // not: it stands by until that lease expires).
            let leading = i64::from(node.leading.contains(&name));
            inner
                .metrics
                .leader
                .with_label_values(&[name.as_str()])
                .set(leading);
            leaders.insert(name, leader);
        }
        inner.status_mut().leaders = leaders;
        Ok(())
    }

    /// This node won `handle`'s election: a trace of its own (`elect singleton`, or `fail over singleton`
    /// when another node had it) holds the start that follows.
    async fn won(
        &self,
        handle: &crate::supervisor::ServiceHandle,
        node: &mut NodeState,
        previous: Option<String>,
    ) {
        let name = handle.name();
        let span = if let Some(previous) = &previous {
            tracing::info_span!(
                parent: None,
                "fail over singleton",
                orchestrator.service.name = name,
                orchestrator.node = self.node(),
                orchestrator.previous_node = previous.as_str(),
                orchestrator.fleet = self.fleet(),
            )
        } else {
            tracing::info_span!(
                parent: None,
                "elect singleton",
                orchestrator.service.name = name,
                orchestrator.node = self.node(),
                orchestrator.fleet = self.fleet(),
            )
        };
        self.inner.metrics.elections.with_label_values(&[name]).inc();
        if let Some(previous) = &previous {
            self.inner.metrics.failovers.with_label_values(&[name]).inc();
            tracing::warn!(parent: &span, service = name, previous_node = %previous, "singleton failed over to this node");
        } else {
            tracing::info!(parent: &span, service = name, "this node leads the singleton");
        }
        node.last_leader.insert(name.to_owned(), self.node().to_owned());
        node.leading.insert(name.to_owned());
        let _ = handle.set_leadership(true).instrument(span).await;
    }

    async fn set_leader(
        &self,
        handle: &crate::supervisor::ServiceHandle,
        node: &mut NodeState,
        leader: bool,
    ) {
        let name = handle.name();
        let changed = if leader {
            node.leading.insert(name.to_owned())
        } else {
            node.leading.remove(name)
        };
        // Also when nothing changed here: a singleton added by a reload starts out standing by.
        if changed || handle.snapshot().leader != Some(leader) {
            let _ = handle.set_leadership(leader).await;
        }
    }

    /// Every singleton this node leads stops now.
    async fn step_down_all(&self, supervisor: &Supervisor, node: &mut NodeState, why: &str) {
        if node.leading.is_empty() {
            return;
        }
        tracing::warn!(reason = why, singletons = ?node.leading, "stopping this node's singletons");
        for name in std::mem::take(&mut node.leading) {
            if let Some(handle) = supervisor.service(&name) {
                let _ = handle.set_leadership(false).await;
            }
            self.inner
                .metrics
                .leader
                .with_label_values(&[name.as_str()])
                .set(0);
        }
    }

    fn came_up(&self, lease: i64) {
        let mut status = self.inner.status_mut();
        if !status.up {
            status.since = SystemTime::now();
            tracing::info!(
                node = self.node(),
                fleet = self.fleet(),
                lease,
                "joined the fleet (etcd lease held)"
            );
        }
        status.up = true;
        status.lease = Some(lease);
        status.last_error = None;
        self.inner.metrics.up.set(1);
    }

    fn failed(&self, error: &EtcdError) {
        let message = error.to_string();
        self.went_down(message);
    }

    fn went_down(&self, message: String) {
        let mut status = self.inner.status_mut();
        if status.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "etcd: local supervision goes on; the fleet view and elections wait");
        }
        if status.up {
            status.since = SystemTime::now();
        }
        status.up = false;
        status.last_error = Some(message);
        self.inner.metrics.up.set(0);
    }

    fn sync_traffic(&self, node: &mut NodeState) {
        use std::sync::atomic::Ordering::Relaxed;
        let traffic = self.inner.etcd.traffic();
        let now = [
            traffic.sent.load(Relaxed),
            traffic.received.load(Relaxed),
            traffic.ok.load(Relaxed),
            traffic.failed.load(Relaxed),
        ];
        let [sent, received, ok, failed] = now;
        let [was_sent, was_received, was_ok, was_failed] = node.traffic;
        let metrics = &self.inner.metrics;
        metrics.sent.inc_by(sent - was_sent);
        metrics.received.inc_by(received - was_received);
        metrics.requests.with_label_values(&["ok"]).inc_by(ok - was_ok);
        metrics
            .requests
            .with_label_values(&["error"])
            .inc_by(failed - was_failed);
        node.traffic = now;
    }
}

impl Inner {
    fn status_mut(&self) -> std::sync::RwLockWriteGuard<'_, Status> {
        self.status
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Each singleton's state and whether it was stopped on request: what makes it eligible.
fn singleton_states(supervisor: &Supervisor) -> Vec<(String, ServiceState, bool)> {
    supervisor
        .services()
        .iter()
        .filter(|handle| handle.spec().singleton)
        .map(|handle| {
            let snapshot = handle.snapshot();
            (handle.name().to_owned(), snapshot.state, snapshot.stop_requested)
        })
        .collect()
}

/// The TTL the lease is granted for: `lease_ttl` less the second that etcd's expiry sweep (every 500 ms)
/// and the election round may add before another node runs a singleton; a lease of less than
/// 5 s is granted whole (etcd's own minimum is about 1.5 s).
fn granted_ttl(lease_ttl: Duration) -> Duration {
    if lease_ttl >= Duration::from_secs(5) {
        lease_ttl - Duration::from_secs(1)
    } else {
        lease_ttl
    }
}

/// When a fence must have killed its instance: `ttl - margin` after the confirmed renewal was sent.
fn deadline(sent_monotonic: u64, ttl: Duration, margin: Duration) -> u64 {
    let ahead = ttl.saturating_sub(margin);
    sent_monotonic.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX))
}

/// The node's side of the fleet, kept between ticks.
#[derive(Default)]
struct NodeState {
    session: Option<Session>,
    /// The last grant attempt, while there is no session.
    last_attempt: Option<Instant>,
    /// Keys written under the current lease, with their values.
    published: HashMap<String, Vec<u8>>,
    info_written: bool,
    /// Singletons this node leads.
    leading: HashSet<String>,
    /// The last leader seen of every singleton: winning after another node held it is a failover.
    last_leader: HashMap<String, String>,
    /// The supervisor's generation whose services are published, and when.
    services_generation: Option<u64>,
    services_at: Option<Instant>,
    /// An election key changed since the last round.
    elections_due: bool,
    /// A watch on the election keys is open.
    watching: bool,
    /// This node's singletons' states at the last round: a change (stopped, failed, started) is a reason to
    /// look again.
    singleton_states: Vec<(String, ServiceState, bool)>,
    /// When the last election round was read.
    elected_at: Option<Instant>,
    /// When the registry was last published whole.
    registry_at: Option<Instant>,
    /// When the members were last read.
    members_read: Option<Instant>,
    /// Traffic counters already exported: sent, received, ok, failed.
    traffic: [u64; 4],
}

#[derive(Debug, Clone)]
struct Session {
    lease: i64,
    /// When the last renewal etcd confirmed was sent.
    confirmed: Instant,
    /// When the last renewal was sent.
    renewed: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_leaves_room_for_etcds_sweep_and_the_election_round() {
        assert_eq!(granted_ttl(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(granted_ttl(Duration::from_secs(5)), Duration::from_secs(4));
        assert_eq!(granted_ttl(Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn a_fence_fires_a_margin_before_the_lease_can_expire() {
        let ttl = Duration::from_secs(10);
        let margin = Duration::from_secs(2);
        assert_eq!(deadline(1_000, ttl, margin), 1_000 + 8_000_000_000);
        assert_eq!(deadline(u64::MAX - 1, ttl, margin), u64::MAX);
    }
}
