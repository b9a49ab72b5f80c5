//! The service registry: every configured service plus those that register themselves at run time, with
//! their metadata and heartbeats.
//!
//! One actor owns the entries. A heartbeat (from the engine whenever it observes a managed service alive,
//! or from a service through the API) re-arms that entry's deadline in a `DelayQueue`; a deadline that
//! expires is the alive → dead transition: a log line and a count, and a `heartbeat` probe that fails from
//! then on. API requests arrive on a bounded channel; the engine's notifications (heartbeats, states) on an
//! unbounded one, so the engine never waits on the registry and never drops a notification (their rate is
//! bounded by the checks that cause them).

mod actor;
mod types;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::actor::RegistryActor;
pub use self::types::{Registration, RegistryEntry, RegistryError, RegistryStats};

use crate::clock::Clock;
use crate::config::Config;
use crate::status::ServiceState;
use crate::telemetry::metrics::RegistryMetrics;

/// Requests the API's channel holds before senders wait.
const REQUEST_QUEUE: usize = 256;

/// A question or change from the API.
#[derive(Debug)]
enum Request {
    /// With the caller's span: the registration is an event of its trace.
    Register(
        Registration,
        tracing::Span,
        oneshot::Sender<Result<RegistryEntry, RegistryError>>,
    ),
    /// With the caller's span, as `Register`.
    Deregister(
        String,
        tracing::Span,
        oneshot::Sender<Result<RegistryEntry, RegistryError>>,
    ),
    Heartbeat(String, oneshot::Sender<Result<RegistryEntry, RegistryError>>),
    Entries(oneshot::Sender<Vec<RegistryEntry>>),
    Page(
        EntryFilter,
        usize,
        usize,
        oneshot::Sender<(usize, Vec<RegistryEntry>)>,
    ),
    Entry(String, oneshot::Sender<Option<RegistryEntry>>),
    LastHeartbeat(String, oneshot::Sender<Option<Instant>>),
    Stats(oneshot::Sender<RegistryStats>),
    Reconfigure(std::sync::Arc<Config>, oneshot::Sender<()>),
}

/// Which entries a listing keeps: all, or those of one type, and/or alive or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Only entries of this type.
    pub service_type: Option<String>,
    /// Only entries that are (or are not) alive.
    pub alive: Option<bool>,
}

impl EntryFilter {
    /// Whether an entry of `service_type`, alive or not, is kept.
    pub fn keeps(&self, service_type: &str, alive: bool) -> bool {
        self.service_type.as_deref().is_none_or(|t| t == service_type)
            && self.alive.is_none_or(|wanted| wanted == alive)
    }
}

/// Something the engine saw: never waited on.
#[derive(Debug)]
enum Notice {
    /// A managed service was observed alive.
    Alive(String),
    /// A managed service changed lifecycle state.
    State(String, ServiceState),
    /// A managed service's process started (true) or ended (false).
    Process(String, bool),
}

/// The way in to the registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RegistryHandle {
    requests: mpsc::Sender<Request>,
    notices: mpsc::UnboundedSender<Notice>,
}

impl RegistryHandle {
    /// Starts the registry with every configured service registered (managed, not alive until its first
    /// heartbeat); registrations, deregistrations and heartbeat timeouts are published on `events`.
    pub fn start(
        config: &Config,
        clock: Clock,
        metrics: RegistryMetrics,
        events: std::sync::Arc<crate::events::EventHub>,
    ) -> Self {
        let (requests, request_receiver) = mpsc::channel(REQUEST_QUEUE);
        let (notices, notice_receiver) = mpsc::unbounded_channel();
        let actor = RegistryActor::new(config, clock, metrics, events, request_receiver, notice_receiver);
        tokio::spawn(actor.run());
        Self { requests, notices }
    }

    /// Registers (or updates) a service that is not in the configuration.
    pub async fn register(&self, registration: Registration) -> Result<RegistryEntry, RegistryError> {
        self.ask(|reply| Request::Register(registration, tracing::Span::current(), reply))
            .await?
    }

    /// Removes a service registered at run time.
    pub async fn deregister(&self, name: &str) -> Result<RegistryEntry, RegistryError> {
        self.ask(|reply| Request::Deregister(name.to_owned(), tracing::Span::current(), reply))
            .await?
    }

    /// Records a heartbeat sent by the service itself.
    pub async fn heartbeat(&self, name: &str) -> Result<RegistryEntry, RegistryError> {
        self.ask(|reply| Request::Heartbeat(name.to_owned(), reply))
            .await?
    }

    /// Every entry: configured services in declaration order, then registered ones in registration order.
    pub async fn entries(&self) -> Result<Vec<RegistryEntry>, RegistryError> {
        self.ask(Request::Entries).await
    }

    /// The entries `filter` keeps, from the `offset`-th on, at most `limit` of them, in the order of
    /// [`RegistryHandle::entries`]; and how many it keeps in all. Only the page's entries are copied.
    pub async fn page(
        &self,
        filter: EntryFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<RegistryEntry>), RegistryError> {
        self.ask(|reply| Request::Page(filter, offset, limit, reply))
            .await
    }

    /// One entry.
    pub async fn entry(&self, name: &str) -> Result<Option<RegistryEntry>, RegistryError> {
        self.ask(|reply| Request::Entry(name.to_owned(), reply)).await
    }

    /// When the last heartbeat of `name` arrived.
    pub async fn last_heartbeat(&self, name: &str) -> Result<Option<Instant>, RegistryError> {
        self.ask(|reply| Request::LastHeartbeat(name.to_owned(), reply))
            .await
    }

    /// Totals.
    pub async fn stats(&self) -> Result<RegistryStats, RegistryError> {
        self.ask(Request::Stats).await
    }

    /// A reload's configuration: entries for added services, none for removed ones (their heartbeat
    /// series go with them), new type and metadata for the others (their heartbeats and counts stay), and
    /// the new heartbeat interval, timeout and cap.
    pub async fn reconfigure(&self, config: std::sync::Arc<Config>) -> Result<(), RegistryError> {
        self.ask(|reply| Request::Reconfigure(config, reply)).await
    }

    /// The engine observed `name` alive (never waits).
    pub fn observed_alive(&self, name: &str) {
        let _ = self.notices.send(Notice::Alive(name.to_owned()));
    }

    /// The process of `name` started or ended (never waits). While it runs, the registry records a
    /// heartbeat for it every heartbeat interval.
    pub fn process_alive(&self, name: &str, alive: bool) {
        let _ = self.notices.send(Notice::Process(name.to_owned(), alive));
    }

    /// The engine moved `name` to `state` (never waits).
    pub fn state_changed(&self, name: &str, state: ServiceState) {
        let _ = self.notices.send(Notice::State(name.to_owned(), state));
    }

    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, RegistryError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| RegistryError::Unavailable)?;
        answer.await.map_err(|_| RegistryError::Unavailable)
    }
}

#[cfg(test)]
mod tests;
