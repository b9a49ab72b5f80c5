//! The event stream: every state change, health change, restart, backoff, failure, heartbeat timeout,
//! registry change and reload as a typed event with an increasing id, for programs
//! (`GET /api/orchestration/events`, Server-Sent Events) and for the built-in page.
//!
//! [`EventHub::publish`] never waits: it numbers the event, serializes it once, keeps it in a ring of the
//! last [`RING`] events (what `Last-Event-ID` resumes from) and hands it to a broadcast channel of
//! [`CONSUMER_BUFFER`] events. A consumer that falls that far behind is dropped (its stream ends; counted
//! in `orchestrator_event_consumers_dropped_total`): the engine never waits on a reader. A consumer that
//! resumes from an id the ring no longer holds gets a `reset` event first: it missed events, and should
//! read the current state again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, rfc3339_millis};
use crate::telemetry::metrics::EventMetrics;

/// Events kept for consumers that resume (`Last-Event-ID`).
pub const RING: usize = 4096;

/// Events a live consumer may be behind before it is dropped.
pub const CONSUMER_BUFFER: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A service's lifecycle state changed (`from`, `to`).
    State,
    /// A service's health changed (`from`, `to`).
    Health,
    /// A service is being restarted (`reason`, `attempt`, `restart_count`).
    Restart,
    /// A restart waits out its backoff (`reason`, `attempt`, `delay_seconds`).
    Backoff,
    /// Automatic restarts are exhausted (`attempts`, `error`).
    Failed,
    /// No heartbeat within the timeout.
    HeartbeatTimeout,
    /// A service registered itself (or updated its registration).
    Registered,
    /// A service registered at run time deregistered.
    Deregistered,
    /// A configuration reload (`result`, and on success what it changed and the new `config_hash`).
    Reload,
}

impl EventKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [EventKind; 9] = [
        EventKind::State,
        EventKind::Health,
        EventKind::Restart,
        EventKind::Backoff,
        EventKind::Failed,
        EventKind::HeartbeatTimeout,
        EventKind::Registered,
        EventKind::Deregistered,
        EventKind::Reload,
    ];

    /// The `type` of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Health => "health",
            EventKind::Restart => "restart",
            EventKind::Backoff => "backoff",
            EventKind::Failed => "failed",
            EventKind::HeartbeatTimeout => "heartbeat_timeout",
            EventKind::Registered => "registered",
            EventKind::Deregistered => "deregistered",
            EventKind::Reload => "reload",
        }
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// One published event, serialized once for every consumer.
#[derive(Debug)]
pub struct Published {
    /// Its id: 1 for the first event, one more for each next.
    pub id: u64,
    /// What happened.
    pub kind: EventKind,
    /// The service it is about, if any.
    pub service: Option<String>,
    /// The event as JSON: `id`, `type`, `service`, `time`, `trace_id` and the details.
    pub json: String,
}

/// Which events a consumer wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these services (none: all).
    pub services: Vec<String>,
    /// Only these kinds (none: all).
    pub kinds: Vec<EventKind>,
}

impl Filter {
    /// Whether `event` passes. `reset` and events about no service pass a service filter only when they
    /// are about everything (a reload).
    pub fn keeps(&self, event: &Published) -> bool {
        let service = self.services.is_empty()
            || event
                .service
                .as_ref()
                .is_some_and(|service| self.services.contains(service));
        service && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

/// What a new consumer starts from.
#[derive(Debug)]
pub struct Subscription {
    /// The kept events after the one it resumes from (all kept events when it does not resume).
    pub backlog: Vec<Arc<Published>>,
    /// It resumed from an id the ring no longer holds (or that this orchestrator never gave out): it
    /// missed events. `Some(oldest id kept)`.
    pub reset: Option<u64>,
    /// Everything published from now on.
    pub live: broadcast::Receiver<Arc<Published>>,
}

struct Ring {
    next_id: u64,
    events: VecDeque<Arc<Published>>,
}

/// Where events are published and consumed. Cheap to share (`Arc`).
pub struct EventHub {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Published>>,
    closed: CancellationToken,
    clock: Clock,
    metrics: EventMetrics,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").finish_non_exhaustive()
    }
}

impl EventHub {
    /// An empty hub: the first event gets id 1.
    pub fn new(clock: Clock, metrics: EventMetrics) -> Arc<Self> {
        let (live, _) = broadcast::channel(CONSUMER_BUFFER);
        Arc::new(Self {
            ring: Mutex::new(Ring {
                next_id: 1,
                events: VecDeque::with_capacity(RING),
            }),
            live,
            closed: CancellationToken::new(),
            clock,
            metrics,
        })
    }

    /// Publishes an event; never waits. `details` are merged into the event's JSON object.
    pub fn publish(&self, kind: EventKind, service: Option<&str>, trace_id: Option<String>, details: Value) {
        let time = rfc3339_millis(self.clock.now());
        let mut ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = ring.next_id;
        ring.next_id += 1;
        let mut object = Map::new();
        object.insert("id".into(), json!(id));
        object.insert("type".into(), json!(kind.as_str()));
        object.insert("service".into(), json!(service));
        object.insert("time".into(), json!(time));
        object.insert("trace_id".into(), json!(trace_id));
        if let Value::Object(details) = details {
            object.extend(details);
        }
        let event = Arc::new(Published {
            id,
            kind,
            service: service.map(str::to_owned),
            json: Value::Object(object).to_string(),
        });
        if ring.events.len() == RING {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Under the lock: a consumer subscribing meanwhile sees this event in its backlog or live, never
        // in both and never in neither.
        let _ = self.live.send(event);
        drop(ring);
        self.metrics.published.inc();
    }

    /// A new consumer, resuming after `last_id` when given.
    pub fn subscribe(&self, last_id: Option<u64>) -> Subscription {
        let ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = self.live.subscribe();
        let latest = ring.next_id - 1;
        let oldest = ring.events.front().map_or(ring.next_id, |event| event.id);
        let (backlog, reset) = match last_id {
            None => (ring.events.iter().cloned().collect(), None),
            // It saw everything up to an id that is still kept, or the one just before the oldest kept.
            Some(last) if last <= latest && last + 1 >= oldest => (
                ring.events.iter().filter(|e| e.id > last).cloned().collect(),
                None,
            ),
            Some(_) => (ring.events.iter().cloned().collect(), Some(oldest)),
        };
        Subscription { backlog, reset, live }
    }

    /// The id of the latest event (0 before the first).
    pub fn latest_id(&self) -> u64 {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next_id
            - 1
    }

    /// Ends every stream (the orchestrator shuts down: open streams must not hold the API's drain up).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Cancelled once the hub is closed.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// The stream metrics (consumers, drops).
    pub fn metrics(&self) -> &EventMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    fn hub() -> Arc<EventHub> {
        EventHub::new(Clock::system(), Metrics::new().for_events())
    }

    fn publish(hub: &EventHub, n: usize) {
        for i in 0..n {
            hub.publish(
                EventKind::State,
                Some(&format!("s{}", i % 3)),
                None,
                json!({"from": "pending", "to": "starting"}),
            );
        }
    }

    fn ids(events: &[Arc<Published>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn ids_increase_from_one_and_the_json_carries_every_field() {
        let hub = hub();
        publish(&hub, 3);
        let subscription = hub.subscribe(None);
        assert_eq!(ids(&subscription.backlog), [1, 2, 3]);
        let event: Value = serde_json::from_str(&subscription.backlog[0].json).unwrap();
        assert_eq!(event["id"], 1);
        assert_eq!(event["type"], "state");
        assert_eq!(event["service"], "s0");
        assert_eq!(event["to"], "starting");
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        assert!(event["trace_id"].is_null());
    }

    #[test]
    fn resuming_sends_what_came_after_and_a_reset_when_the_ring_lost_some() {
        let hub = hub();
        publish(&hub, 5);
        let resumed = hub.subscribe(Some(3));
        assert_eq!(ids(&resumed.backlog), [4, 5]);
        assert_eq!(resumed.reset, None);
        assert!(hub.subscribe(Some(5)).backlog.is_empty());

        publish(&hub, RING);
        let fell_off = hub.subscribe(Some(2));
        assert_eq!(fell_off.reset, Some(6), "events 3 to 5 are gone");
        assert_eq!(fell_off.backlog.len(), RING);
        let just_in_time = hub.subscribe(Some(5));
        assert_eq!(just_in_time.reset, None);
        // An id this orchestrator never gave out (a client of an earlier run).
        assert_eq!(hub.subscribe(Some(1_000_000)).reset, Some(6));
    }

    #[test]
    fn filters_keep_services_and_kinds() {
        let hub = hub();
        publish(&hub, 3);
        hub.publish(EventKind::Reload, None, None, json!({"result": "success"}));
        let backlog = hub.subscribe(None).backlog;
        let filter = Filter {
            services: vec!["s1".into()],
            kinds: Vec::new(),
        };
        assert_eq!(
            backlog
                .iter()
                .filter(|e| filter.keeps(e))
                .map(|e| e.id)
                .collect::<Vec<_>>(),
            [2]
        );
        let reloads = Filter {
            services: Vec::new(),
            kinds: vec![EventKind::Reload],
        };
        assert_eq!(
            backlog
                .iter()
                .filter(|e| reloads.keeps(e))
                .map(|e| e.id)
                .collect::<Vec<_>>(),
            [4]
        );
    }

    #[test]
    fn a_consumer_that_never_reads_never_blocks_publishing_and_learns_it_lagged() {
        let hub = hub();
        let mut idle = hub.subscribe(None).live;
        publish(&hub, CONSUMER_BUFFER * 3);
        assert_eq!(hub.latest_id(), (CONSUMER_BUFFER * 3) as u64);
        assert!(matches!(
            idle.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
