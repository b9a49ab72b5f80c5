//! The registry's actor: the one owner of every entry and heartbeat deadline.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::time::{Duration, SystemTime};

use indexmap::IndexMap;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use super::types::{Registration, RegistryEntry, RegistryError, RegistryStats};
use super::{Notice, Request};
use crate::clock::Clock;
use crate::config::Config;
use crate::name::ServiceName;
use crate::status::{EntryStatus, ServiceState};
use crate::telemetry::metrics::RegistryMetrics;

/// One entry and its heartbeat bookkeeping.
struct Record {
    service_type: String,
    address: Option<String>,
    port: Option<u16>,
    tags: Vec<String>,
    metadata: Map<String, Value>,
    managed: bool,
    status: EntryStatus,
    registered_at: SystemTime,
    last_heartbeat: Option<Instant>,
    alive: bool,
    heartbeats: u64,
    timeouts: u64,
    deadline: Option<Key>,
    /// Its process runs: heartbeated every interval by the sweep.
    process_alive: bool,
}

impl Record {
    /// An entry that has had no heartbeat yet.
    fn new(
        service_type: String,
        metadata: Map<String, Value>,
        status: EntryStatus,
        registered_at: SystemTime,
    ) -> Self {
        Self {
            service_type,
            address: None,
            port: None,
            tags: Vec::new(),
            metadata,
            managed: status != EntryStatus::Registered,
            status,
            registered_at,
            last_heartbeat: None,
            alive: false,
            heartbeats: 0,
            timeouts: 0,
            deadline: None,
            process_alive: false,
        }
    }

    /// The entry of a configured service, before its first heartbeat.
    fn configured(spec: &crate::config::ServiceSpec, now: SystemTime) -> Self {
        Self::new(
            spec.service_type.clone(),
            spec.metadata.clone(),
            EntryStatus::Service(ServiceState::Pending),
            now,
        )
    }
}

pub(super) struct RegistryActor {
    records: IndexMap<String, Record>,
    deadlines: DelayQueue<String>,
    clock: Clock,
    metrics: RegistryMetrics,
    events: std::sync::Arc<crate::events::EventHub>,
    heartbeat_interval: Duration,
    /// One timer for every running process's heartbeat, instead of one per service.
    sweep: tokio::time::Interval,
    heartbeat_timeout: Duration,
    max_registered: u32,
    /// Entries registered at run time (not configured), kept with the map so the cap costs no scan.
    registered: usize,
    timeouts: u64,
    requests: mpsc::Receiver<Request>,
    notices: mpsc::UnboundedReceiver<Notice>,
}

impl RegistryActor {
    pub(super) fn new(
        config: &Config,
        clock: Clock,
        metrics: RegistryMetrics,
        events: std::sync::Arc<crate::events::EventHub>,
        requests: mpsc::Receiver<Request>,
        notices: mpsc::UnboundedReceiver<Notice>,
    ) -> Self {
        let now = clock.now();
        let records: IndexMap<String, Record> = config
            .services
            .iter()
            .map(|spec| (spec.name.to_string(), Record::configured(spec, now)))
            .collect();
        metrics.set_timeout(config.registry.heartbeat_timeout);
        metrics.set_entries(records.len());
        Self {
            records,
            deadlines: DelayQueue::new(),
            clock,
            metrics,
            events,
            heartbeat_interval: config.registry.heartbeat_interval,
            sweep: sweep_every(config.registry.heartbeat_interval),
            heartbeat_timeout: config.registry.heartbeat_timeout,
            max_registered: config.registry.max_registered,
            registered: 0,
            timeouts: 0,
            requests,
            notices,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                _ = self.sweep.tick() => self.heartbeat_running_processes(),
                Some(notice) = self.notices.recv() => self.on_notice(notice),
                request = self.requests.recv() => match request {
                    Some(request) => self.on_request(request),
                    None => return,
                },
                Some(expired) = poll_fn(|cx| self.deadlines.poll_expired(cx)), if !self.deadlines.is_empty() => {
                    self.on_expired(expired.into_inner());
                }
            }
        }
    }

    fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Alive(name) => self.beat(&name),
            Notice::Process(name, alive) => {
                if let Some(record) = self.records.get_mut(&name) {
                    record.process_alive = alive;
                }
                if alive {
                    self.beat(&name);
                }
            }
            Notice::State(name, state) => {
                if let Some(record) = self.records.get_mut(&name) {
                    record.status = EntryStatus::Service(state);
                }
            }
        }
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Register(registration, caller, reply) => {
                let _ = reply.send(caller.in_scope(|| self.register(registration)));
            }
            Request::Deregister(name, caller, reply) => {
                let _ = reply.send(caller.in_scope(|| self.deregister(&name)));
            }
            Request::Heartbeat(name, reply) => {
                let _ = reply.send(self.heartbeat(&name));
            }
            Request::Entries(reply) => {
                let now = Instant::now();
                let _ = reply.send(
                    self.records
                        .iter()
                        .map(|(name, r)| self.entry(name, r, now))
                        .collect(),
                );
            }
            Request::Page(filter, offset, limit, reply) => {
                let now = Instant::now();
                let (mut total, mut page) = (0, Vec::with_capacity(limit.min(1024)));
                for (name, record) in &self.records {
                    if !filter.keeps(&record.service_type, record.alive) {
                        continue;
                    }
                    if total >= offset && page.len() < limit {
                        page.push(self.entry(name, record, now));
                    }
                    total += 1;
                }
                let _ = reply.send((total, page));
            }
            Request::Entry(name, reply) => {
                let now = Instant::now();
                let _ = reply.send(self.records.get(&name).map(|r| self.entry(&name, r, now)));
            }
            Request::LastHeartbeat(name, reply) => {
                let _ = reply.send(self.records.get(&name).and_then(|r| r.last_heartbeat));
            }
            Request::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Request::Reconfigure(config, reply) => {
                self.reconfigure(&config);
                let _ = reply.send(());
            }
        }
    }

    /// Takes a reload's configuration.
    fn reconfigure(&mut self, config: &Config) {
        let now = self.clock.now();
        let removed: Vec<String> = self
            .records
            .iter()
            .filter(|(name, record)| record.managed && config.service(name).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in removed {
            if let Some(record) = self.records.shift_remove(&name)
                && let Some(key) = &record.deadline
            {
                self.deadlines.remove(key);
            }
            self.metrics.remove(&name);
        }
        for spec in &config.services {
            match self.records.get_mut(spec.name.as_str()) {
                Some(record) => {
                    if !record.managed {
                        // Registered at run time until now: the configuration owns it from here on.
                        record.managed = true;
                        self.registered -= 1;
                    }
                    record.service_type.clone_from(&spec.service_type);
                    record.metadata.clone_from(&spec.metadata);
                }
                None => {
                    self.records
                        .insert(spec.name.to_string(), Record::configured(spec, now));
                    self.metrics.series(&spec.name);
                }
            }
        }
        let settings = &config.registry;
        self.heartbeat_timeout = settings.heartbeat_timeout;
        self.max_registered = settings.max_registered;
        self.metrics.set_timeout(settings.heartbeat_timeout);
        self.metrics.set_entries(self.records.len());
        if self.heartbeat_interval != settings.heartbeat_interval {
            self.heartbeat_interval = settings.heartbeat_interval;
            self.sweep = sweep_every(settings.heartbeat_interval);
        }
    }

    /// A deadline passed without a heartbeat: the alive → dead transition.
    fn on_expired(&mut self, name: String) {
        let Some(record) = self.records.get_mut(&name) else {
            return;
        };
        record.deadline = None;
        if !record.alive {
            return;
        }
        record.alive = false;
        record.timeouts += 1;
        self.timeouts += 1;
        self.metrics.timed_out(&name);
        // A service registered at run time: a trace of its own (the alive → dead transition is rare and
        // worth finding). A supervised service's heartbeats stop because its process did, which its own
        // restart trace (or its heartbeat probe's check) already tells.
        let span = if record.managed || !crate::telemetry::trace::exporting() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                parent: None,
                "check heartbeat",
                orchestrator.service.name = %name,
                error.type = "heartbeat",
                otel.status_code = "ERROR",
                otel.status_description = "no heartbeat within the heartbeat timeout",
            )
        };
        crate::span_event!(
            parent: &span,
            crate::telemetry::trace::event_name::HEARTBEAT_TIMEOUT,
            orchestrator.heartbeat.timeout_seconds = self.heartbeat_timeout.as_secs_f64(),
            orchestrator.heartbeat.count = i64::try_from(record.heartbeats).unwrap_or(i64::MAX),
        );
        tracing::warn!(
            parent: &span,
            service = %name,
            timeout_ms = self.heartbeat_timeout.as_millis() as u64,
            "heartbeat timeout: service is no longer alive"
        );
        let details = serde_json::json!({
            "managed": record.managed,
            "timeout_seconds": self.heartbeat_timeout.as_secs_f64(),
            "heartbeats": record.heartbeats,
        });
        let trace = crate::telemetry::trace::trace_id(&span);
        self.events.publish(
            crate::events::EventKind::HeartbeatTimeout,
            Some(&name),
            trace,
            details,
        );
    }

    fn heartbeat_running_processes(&mut self) {
        let running: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| r.process_alive)
            .map(|(name, _)| name.clone())
            .collect();
        for name in running {
            self.beat(&name);
        }
    }

    /// A heartbeat from the service, answered with its entry.
    fn heartbeat(&mut self, name: &str) -> Result<RegistryEntry, RegistryError> {
        if !self.records.contains_key(name) {
            return Err(RegistryError::UnknownService(name.to_owned()));
        }
        self.beat(name);
        let record = &self.records[name];
        Ok(self.entry(name, record, Instant::now()))
    }

    /// Records one heartbeat of `name` (unknown names are ignored).
    fn beat(&mut self, name: &str) {
        let now = Instant::now();
        let Some(record) = self.records.get_mut(name) else {
            return;
        };
        record.last_heartbeat = Some(now);
        record.heartbeats += 1;
        self.metrics.heartbeat(name, self.clock.at(now));
        if !record.alive && record.timeouts > 0 {
            tracing::info!(service = %name, "heartbeats resumed: service is alive again");
        }
        record.alive = true;
        match &record.deadline {
            Some(key) => self.deadlines.reset(key, self.heartbeat_timeout),
            None => record.deadline = Some(self.deadlines.insert(name.to_owned(), self.heartbeat_timeout)),
        }
    }

    fn register(&mut self, registration: Registration) -> Result<RegistryEntry, RegistryError> {
        let name = ServiceName::parse(registration.name.clone())
            .map_err(|invalid| RegistryError::Invalid(invalid.to_string()))?;
        let name = String::from(name);
        if registration
            .service_type
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(RegistryError::Invalid("type must not be empty".into()));
        }
        if self.records.get(&name).is_some_and(|r| r.managed) {
            return Err(RegistryError::Configured(name));
        }
        check_bounds(&registration)?;
        if !self.records.contains_key(&name) && self.registered >= self.max_registered as usize {
            return Err(RegistryError::Full(self.max_registered));
        }
        let service_type = registration.service_type.unwrap_or_else(|| name.clone());
        let caller_trace = crate::telemetry::trace::trace_id(&tracing::Span::current());
        self.events.publish(
            crate::events::EventKind::Registered,
            Some(&name),
            caller_trace,
            serde_json::json!({
                "service_type": service_type.clone(),
                "update": self.records.contains_key(&name),
            }),
        );
        match self.records.get_mut(&name) {
            Some(existing) => {
                // Registering again updates what the service says about itself, keeping its history.
                existing.service_type = service_type;
                existing.address = registration.address;
                existing.port = registration.port;
                existing.tags = registration.tags;
                existing.metadata = registration.metadata;
            }
            None => {
                tracing::info!(service = %name, "service registered");
                self.metrics.series(&name);
                let record = Record {
                    address: registration.address,
                    port: registration.port,
                    tags: registration.tags,
                    ..Record::new(
                        service_type,
                        registration.metadata,
                        EntryStatus::Registered,
                        self.clock.now(),
                    )
                };
                self.records.insert(name.clone(), record);
                self.registered += 1;
                self.metrics.set_entries(self.records.len());
                crate::span_event!(
                    parent: &tracing::Span::current(),
                    crate::telemetry::trace::event_name::SERVICE_REGISTERED,
                    orchestrator.service.name = name.as_str(),
                );
            }
        }
        // Registering is a sign of life.
        self.heartbeat(&name)
    }

    fn deregister(&mut self, name: &str) -> Result<RegistryEntry, RegistryError> {
        match self.records.get(name) {
            None => return Err(RegistryError::UnknownService(name.to_owned())),
            Some(record) if record.managed => return Err(RegistryError::Configured(name.to_owned())),
            Some(_) => {}
        }
        let now = Instant::now();
        let Some(record) = self.records.shift_remove(name) else {
            return Err(RegistryError::UnknownService(name.to_owned()));
        };
        self.registered -= 1;
        if let Some(key) = &record.deadline {
            self.deadlines.remove(key);
        }
        self.metrics.remove(name);
        self.metrics.set_entries(self.records.len());
        crate::span_event!(
            parent: &tracing::Span::current(),
            crate::telemetry::trace::event_name::SERVICE_DEREGISTERED,
            orchestrator.service.name = name,
        );
        let caller_trace = crate::telemetry::trace::trace_id(&tracing::Span::current());
        self.events.publish(
            crate::events::EventKind::Deregistered,
            Some(name),
            caller_trace,
            serde_json::json!({}),
        );
        tracing::info!(service = %name, "service deregistered");
        Ok(self.entry(name, &record, now))
    }

    fn entry(&self, name: &str, record: &Record, now: Instant) -> RegistryEntry {
        RegistryEntry {
            name: name.to_owned(),
            service_type: record.service_type.clone(),
            address: record.address.clone(),
            port: record.port,
            tags: record.tags.clone(),
            metadata: record.metadata.clone(),
            managed: record.managed,
            status: record.status,
            registered_at: record.registered_at,
            last_heartbeat: record.last_heartbeat.map(|at| self.clock.at(at)),
            heartbeat_age_seconds: record
                .last_heartbeat
                .map(|at| now.saturating_duration_since(at).as_secs_f64()),
            alive: record.alive,
            heartbeats_received: record.heartbeats,
            heartbeat_timeouts: record.timeouts,
        }
    }

    fn stats(&self) -> RegistryStats {
        let now = Instant::now();
        let mut by_status = BTreeMap::new();
        for record in self.records.values() {
            *by_status.entry(record.status.as_str().to_owned()).or_insert(0) += 1;
        }
        let alive = self.records.values().filter(|r| r.alive).count();
        let managed = self.records.values().filter(|r| r.managed).count();
        RegistryStats {
            total_services: self.records.len(),
            managed_services: managed,
            registered_services: self.records.len() - managed,
            alive_services: alive,
            dead_services: self.records.len() - alive,
            by_status,
            heartbeat_timeouts: self.timeouts,
            oldest_heartbeat_age_seconds: self
                .records
                .values()
                .filter_map(|r| r.last_heartbeat)
                .min()
                .map(|oldest| now.saturating_duration_since(oldest).as_secs_f64()),
            heartbeat_interval_seconds: self.heartbeat_interval.as_secs_f64(),
            heartbeat_timeout_seconds: self.heartbeat_timeout.as_secs_f64(),
        }
    }
}

/// Longest `type` and tag.
pub(super) const MAX_LABEL: usize = 128;
/// Longest `address` (a DNS name's limit).
pub(super) const MAX_ADDRESS: usize = 253;
/// Most tags.
pub(super) const MAX_TAGS: usize = 32;
/// Largest `metadata`, as JSON.
pub(super) const MAX_METADATA: usize = 8192;

/// What a registration may carry: bounded, so the registry's memory and its answers stay small.
fn check_bounds(registration: &Registration) -> Result<(), RegistryError> {
    let invalid = |message: String| Err(RegistryError::Invalid(message));
    if let Some(service_type) = &registration.service_type
        && service_type.chars().count() > MAX_LABEL
    {
        return invalid(format!("type is longer than {MAX_LABEL} characters"));
    }
    if let Some(address) = &registration.address
        && address.len() > MAX_ADDRESS
    {
        return invalid(format!("address is longer than {MAX_ADDRESS} bytes"));
    }
    if registration.tags.len() > MAX_TAGS {
        return invalid(format!("more than {MAX_TAGS} tags"));
    }
    if registration
        .tags
        .iter()
        .any(|tag| tag.chars().count() > MAX_LABEL)
    {
        return invalid(format!("a tag is longer than {MAX_LABEL} characters"));
    }
    let metadata = serde_json::to_vec(&registration.metadata).map_or(usize::MAX, |json| json.len());
    if metadata > MAX_METADATA {
        return invalid(format!("metadata is larger than {MAX_METADATA} bytes of JSON"));
    }
    Ok(())
}

/// The sweep that heartbeats every running process, one timer for all of them.
fn sweep_every(interval: Duration) -> tokio::time::Interval {
    let mut sweep = tokio::time::interval_at(Instant::now() + interval, interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep
}
