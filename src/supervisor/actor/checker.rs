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
//!
//! Where the prober has an engine for the probe (the real prober's, for plain `http://` to an IP address:
//! [`crate::health::engine`]), the checker hands its checks to it and sleeps: the engine checks every such
//! service from one task and settles each outcome with the checker's [`Quiet`], as the checker would. The
//! checker wakes only for what the engine gives back: a check to be traced, or an outcome the actor could
//! not take at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::checks::{check_span, observed_alive};
use super::{Actor, SharedRecord, lock_record};
use crate::clock::Clock;
use crate::config::{Probe, ServiceSpec};
use crate::health::engine::{Returned, Steady, next_due};
use crate::health::probe::Prober;
use crate::health::{HealthStatus, ProbeOutcome};
use crate::registry::RegistryHandle;
use crate::supervisor::state::Snapshot;
use crate::telemetry::metrics::ServiceMetrics;

/// A check the checker hands to the actor: its outcome, how long it took, and its span.
type Handed = (ProbeOutcome, Duration, Span);

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
    prober: Arc<dyn Prober>,
    /// Holds the service's spec too.
    quiet: Quiet,
}

/// What records a checker's quiet passes and hands the rest to the actor: in the checker's task, or in the
/// prober's engine.
#[derive(Clone)]
struct Quiet {
    id: u64,
    spec: Arc<ServiceSpec>,
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
            prober: parts.prober.clone(),
            quiet: Quiet {
                id,
                spec: parts.spec.clone(),
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
            },
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
    /// than bunching them (as the actor's ticker does).
    ///
    /// The prober's engine runs the checks when it can ([`crate::health::engine`]); it gives back a check
    /// to be traced, which runs here, and one it could not settle, which is handed to the actor here (with
    /// back-pressure). Otherwise the checks run here, on one timer for the cadence and each check's timeout.
    async fn run(mut self, first: Instant) {
        let spec = self.quiet.spec.clone();
        let Some(probe) = spec.probe.clone() else {
            return;
        };
        let (interval, limit) = (spec.health.check_interval, spec.health.timeout);
        // With every check traced, the engine would give each one back.
        let every_traced = self.quiet.check_sample_ratio >= 1.0 && crate::telemetry::trace::exporting();
        let mut steady = self.prober.steady(&probe).filter(|_| !every_traced);
        let timer = tokio::time::sleep_until(first);
        tokio::pin!(timer);
        let mut due = first;
        loop {
            let mut traced = None;
            if let Some(engine) = &steady {
                match engine
                    .run(due, interval, limit, Box::new(self.quiet.clone()))
                    .await
                {
                    Returned::Traced { due: at } => {
                        due = at;
                        traced = Some(true);
                    }
                    Returned::Unsettled {
                        outcome,
                        elapsed,
                        next,
                    } => {
                        due = next;
                        if self
                            .quiet
                            .handed
                            .send((outcome, elapsed, Span::none()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Returned::Stopped => steady = None,
                }
            }
            timer.as_mut().reset(due);
            timer.as_mut().await;
            let started = Instant::now();
            due = next_due(due, started, interval);
            let traced = traced.unwrap_or_else(|| self.quiet.traced());
            let span = check_span(&spec, traced);
            timer.as_mut().reset(started + limit);
            let mut work = self.prober.probe(&spec.name, &probe);
            if !span.is_none() {
                // Only a traced check pays for entering its span at each poll.
                work = Box::pin(work.instrument(span.clone()));
            }
            let outcome = tokio::select! {
                biased;
                outcome = work => outcome,
                () = timer.as_mut() => ProbeOutcome::timed_out(limit),
            };
            let elapsed = started.elapsed();
            let outcome = if span.is_none() {
                match self.quiet.record(outcome, elapsed) {
                    Ok(()) => continue,
                    Err(outcome) => outcome,
                }
            } else {
                outcome
            };
            if self.quiet.handed.send((outcome, elapsed, span)).await.is_err() {
                return;
            }
        }
    }
}

impl Quiet {
    /// Records `outcome` if it is a quiet pass (a pass of a healthy service, while this checker's passes
    /// count) and publishes it; gives it back otherwise.
    fn record(&mut self, outcome: ProbeOutcome, elapsed: Duration) -> Result<(), ProbeOutcome> {
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

impl Steady for Quiet {
    fn traced(&mut self) -> bool {
        super::spans::sampled(self.check_sample_ratio)
    }

    /// A quiet pass is recorded; anything else is handed to the actor, unless the actor has not taken the
    /// last one yet (or is gone): then it goes back to the checker.
    fn settle(&mut self, outcome: ProbeOutcome, elapsed: Duration) -> Result<(), ProbeOutcome> {
        let outcome = match self.record(outcome, elapsed) {
            Ok(()) => return Ok(()),
            Err(outcome) => outcome,
        };
        match self.handed.try_send((outcome, elapsed, Span::none())) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((outcome, ..)) | TrySendError::Closed((outcome, ..))) => Err(outcome),
        }
    }
}
