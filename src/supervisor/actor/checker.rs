//! The checker: a task of its own that checks a running service at its cadence, so that a check costs
//! the actor nothing when it changes nothing.
//!
//! Most checks of a healthy service pass, and a pass of a healthy service changes no state: it only adds
//! to the health record (the history, the counts, the last result) and to the metrics. The checker
//! records such a **quiet pass** itself, under the record's lock, and publishes it into the service's
//! snapshot; the actor is not woken. Everything else is handed to the actor, which records it as it
//! records its own checks: a failure, a pass of a service that is not healthy (it may recover), a traced
//! check (its span and exemplar are the actor's), and any check once the actor has stopped this checker
//! (the record names the checker whose passes count).
//!
//! The actor starts a checker when the service becomes ready (and after a reload), for the probes run by
//! the prober (`http`, `tcp`, `grpc`, `exec`), and stops it when the service leaves `running`. Startup
//! probes, checks asked for through the API, heartbeat probes and in-process services' own health stay
//! with the actor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::checks::{check_span, observed_alive, timed_out};
use super::{Actor, SharedRecord, lock_record};
use crate::clock::Clock;
use crate::config::{Probe, ServiceSpec};
use crate::health::probe::Prober;
use crate::health::{HealthStatus, ProbeOutcome};
use crate::registry::RegistryHandle;
use crate::supervisor::state::Snapshot;
use crate::telemetry::metrics::ServiceMetrics;

/// A check the checker hands to the actor: its outcome, how long it took, and its span.
type Handed = (ProbeOutcome, Duration, Span);

/// How late a check may start before the next ones are delayed (tokio's `Interval` allows the same).
const LATE: Duration = Duration::from_millis(5);

/// Numbers the checkers, so that the record can name the one whose passes count.
static NEXT_CHECKER: AtomicU64 = AtomicU64::new(1);

/// The actor's end of its checker: the checks handed over, and the task (stopped when this is dropped).
pub(in crate::supervisor) struct CheckerLink {
    handed: mpsc::Receiver<Handed>,
    task: JoinHandle<()>,
}

impl CheckerLink {
    /// The next check handed over.
    pub(super) fn poll_handed_over(&mut self, cx: &mut Context<'_>) -> Poll<Handed> {
        match self.handed.poll_recv(cx) {
            Poll::Ready(Some(handed)) => Poll::Ready(handed),
            // The task ended (it does not, before it is stopped): nothing more comes.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for CheckerLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the checker task owns.
struct Checker {
    id: u64,
    spec: Arc<ServiceSpec>,
    prober: Arc<dyn Prober>,
    clock: Clock,
    metrics: ServiceMetrics,
    registry: RegistryHandle,
    record: SharedRecord,
    publish: Arc<watch::Sender<Snapshot>>,
    published: Arc<AtomicU64>,
    handed: mpsc::Sender<Handed>,
    check_sample_ratio: f64,
    /// Not a process of ours: a pass is the engine observing it alive (see [`Actor::record`]).
    external: bool,
    heartbeat_interval: Duration,
    last_alive_notice: Option<Instant>,
}

impl Actor {
    /// Starts checking the running service from `first` on, at its interval, when its probe is one the
    /// prober runs; replaces the checker there was.
    pub(super) fn start_checker(&mut self, first: Instant) {
        self.stop_checker();
        match &self.parts.spec.probe {
            Some(Probe::Heartbeat) | None => return,
            Some(_) => {}
        }
        let id = NEXT_CHECKER.fetch_add(1, Ordering::Relaxed);
        self.health().checker = id;
        let (handed, receiver) = mpsc::channel(1);
        let parts = &self.parts;
        let checker = Checker {
            id,
            spec: parts.spec.clone(),
            prober: parts.prober.clone(),
            clock: parts.clock,
            metrics: parts.metrics.clone(),
            registry: parts.registry.clone(),
            record: self.health.clone(),
            publish: parts.publish.clone(),
            published: parts.published.clone(),
            handed,
            check_sample_ratio: parts.check_sample_ratio,
            external: self.is_external(),
            heartbeat_interval: parts.heartbeat_interval,
            last_alive_notice: None,
        };
        self.checker = Some(CheckerLink {
            handed: receiver,
            task: tokio::spawn(checker.run(first)),
        });
    }

    /// Stops the checker, if one runs: from now on none of its checks is recorded.
    pub(super) fn stop_checker(&mut self) {
        if self.checker.take().is_some() {
            self.health().checker = 0;
        }
    }
}

impl Checker {
    /// Checks at `first` and then every `check_interval`; a check that is late delays the next ones rather
    /// than bunching them (as the actor's ticker does). One timer serves the cadence and each check's
    /// timeout.
    async fn run(mut self, first: Instant) {
        let Some(probe) = self.spec.probe.clone() else {
            return;
        };
        let (interval, limit) = (self.spec.health.check_interval, self.spec.health.timeout);
        let timer = tokio::time::sleep_until(first);
        tokio::pin!(timer);
        let mut due = first;
        loop {
            timer.as_mut().await;
            let started = Instant::now();
            let from = if started > due + LATE { started } else { due };
            due = from + interval;
            let traced = super::spans::sampled(self.check_sample_ratio);
            let span = check_span(&self.spec, traced);
            timer.as_mut().reset(started + limit);
            let mut work = self.prober.probe(&self.spec.name, &probe);
            if !span.is_none() {
                // Only a traced check pays for entering its span at each poll.
                work = Box::pin(work.instrument(span.clone()));
            }
            let outcome = tokio::select! {
                biased;
                outcome = work => outcome,
                () = timer.as_mut() => timed_out(limit),
            };
            let elapsed = started.elapsed();
            timer.as_mut().reset(due);
            let outcome = if span.is_none() {
                match self.record_quiet(outcome, elapsed) {
                    Ok(()) => continue,
                    Err(outcome) => outcome,
                }
            } else {
                outcome
            };
            if self.handed.send((outcome, elapsed, span)).await.is_err() {
                return;
            }
        }
    }

    /// Records `outcome` if it is a quiet pass (a pass of a healthy service, while this checker's passes
    /// count) and publishes it; gives it back otherwise.
    fn record_quiet(&mut self, outcome: ProbeOutcome, elapsed: Duration) -> Result<(), ProbeOutcome> {
        let now = Instant::now();
        {
            let mut health = lock_record(&self.record);
            let quiet = health.checker == self.id
                && outcome.passed
                && health.tracker.status() == HealthStatus::Healthy
                && health.tracker.consecutive_failures() == 0
                && health.healthy_since.is_some();
            if !quiet {
                return Err(outcome);
            }
            let at = self.clock.at(now);
            let (result, transition) = health.tracker.record(&self.spec.name, outcome, elapsed, at, now);
            debug_assert!(
                transition.is_none(),
                "a pass of a healthy service changes nothing"
            );
            health.last_check = Some(result);
            // Published while the record is held, as the actor publishes (see `Actor::publish`).
            self.publish.send_modify(|snapshot| health.publish_into(snapshot));
        }
        // After the snapshot is out, as the actor does (see `Supervisor::generation`).
        self.published.fetch_add(1, Ordering::Release);
        self.metrics.check(None, elapsed, 0);
        if self.external {
            observed_alive(
                &self.registry,
                &self.spec.name,
                &mut self.last_alive_notice,
                self.heartbeat_interval,
                now,
            );
        }
        Ok(())
    }
}
