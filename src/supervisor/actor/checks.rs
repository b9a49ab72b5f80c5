//! The actor's health checks: building one bounded check, and recording its outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::checker::CheckerLink;
use super::{Actor, CheckFuture};
use crate::config::{Probe, ServiceSpec};
use crate::health::probe::Prober;
use crate::health::{CheckResult, FailureReason, HealthStatus, ProbeOutcome};
use crate::registry::RegistryHandle;
use crate::span_event;
use crate::supervisor::launcher::{Instance, Service};
use crate::supervisor::lifecycle::Event;
use crate::supervisor::state::{RestartReason, ServiceState};
use crate::telemetry::trace::event_name;

impl Actor {
    pub(super) fn has_health_check(&self) -> bool {
        self.parts.spec.probe.is_some()
            || self
                .instance
                .as_ref()
                .is_some_and(|i| i.health_source().is_some())
    }

    /// What kind of check this service has (`orchestrator.check.type`).
    pub(super) fn check_type(&self) -> &'static str {
        check_type(&self.parts.spec)
    }

    /// One check of the service, bounded by its timeout; owns what it needs so it can run inside `select!`.
    /// A `traced` check runs in its own `check health` trace (startup probes, every few milliseconds, don't:
    /// the one that passes is recorded afterwards, inside `start service`).
    pub(super) fn check_future(&self, traced: bool) -> CheckFuture {
        let span = check_span(&self.parts.spec, traced);
        let work: Pin<Box<dyn Future<Output = ProbeOutcome> + Send>> = match &self.parts.spec.probe {
            Some(Probe::Heartbeat) => {
                let (registry, name) = (self.parts.registry.clone(), self.name().to_owned());
                let limit = self.parts.heartbeat_timeout;
                Box::pin(async move {
                    let last = registry.last_heartbeat(&name).await.ok().flatten();
                    heartbeat_outcome(last, limit)
                })
            }
            Some(_) => return probe_check(&self.parts.prober, &self.parts.spec, span),
            None => match self.instance.as_ref().and_then(Instance::health_source) {
                Some(service) => Box::pin(async move { in_process_health(service).await }),
                None => Box::pin(async { ProbeOutcome::pass("no probe configured") }),
            },
        };
        bounded(work, self.parts.spec.health.timeout, span)
    }

    /// A check finished. While the instance is starting, a pass is its readiness and a failure is only
    /// remembered (a probe that ran before the instance listened is not an error); once it runs, the result
    /// moves the health record, and reaching the failure threshold is reported.
    pub(super) fn checked(&mut self, outcome: ProbeOutcome, elapsed: Duration, span: Span) -> Option<Event> {
        if self.lifecycle.state() == ServiceState::Starting {
            if outcome.passed {
                self.first_pass(&outcome, elapsed);
                self.record(outcome, elapsed, &span);
                return Some(Event::Ready);
            }
            self.startup_probe_failed();
            self.startup_failure = Some(outcome.message);
            return None;
        }
        let result = self.record(outcome, elapsed, &span);
        drop(span);
        for waiter in self.check_waiters.drain(..) {
            let _ = waiter.send(CheckResult::clone(&result));
        }
        let (status, failures) = {
            let health = self.health();
            (health.tracker.status(), health.tracker.consecutive_failures())
        };
        if result.passed || status != HealthStatus::Unhealthy {
            return None;
        }
        let reason = match self.parts.spec.probe {
            Some(Probe::Heartbeat) => RestartReason::HeartbeatTimeout,
            _ => RestartReason::Unhealthy,
        };
        tracing::warn!(service = self.name(), failures, error = %result.message, "service unhealthy");
        Some(Event::Unhealthy(reason, result.message.clone()))
    }

    /// Applies one check's outcome: thresholds, history, metrics, and its span's status and events.
    fn record(&mut self, outcome: ProbeOutcome, elapsed: Duration, span: &Span) -> Arc<CheckResult> {
        let now = Instant::now();
        let passed = outcome.passed;
        let reason = outcome.reason;
        let at = self.parts.clock.at(now);
        let (result, transition, status, failures) = {
            let mut health = self.health();
            let (result, transition) =
                health
                    .tracker
                    .record(&self.parts.spec.name, outcome, elapsed, at, now);
            health.last_check = Some(result.clone());
            let status = health.tracker.status();
            match status {
                HealthStatus::Healthy => {
                    health.healthy_since.get_or_insert(now);
                }
                _ => health.healthy_since = None,
            }
            (result, transition, status, health.tracker.consecutive_failures())
        };
        self.parts.metrics.check(reason, elapsed, failures);
        span.record("orchestrator.check.passed", passed);
        span.record("orchestrator.health.status", status.as_str());
        let trace_id = match reason {
            None => {
                self.forget_failures();
                crate::telemetry::trace::trace_id(span)
            }
            Some(reason) => {
                self.set_last_error(result.message.clone(), at);
                super::spans::fail(span, reason.as_str(), &result.message);
                let context = self.failed_check(span, reason.as_str(), &result.message, elapsed);
                if reason == FailureReason::Heartbeat {
                    span_event!(
                        parent: span,
                        event_name::HEARTBEAT_TIMEOUT,
                        orchestrator.heartbeat.timeout_seconds = self.parts.heartbeat_timeout.as_secs_f64(),
                    );
                    tracing::warn!(parent: span, service = self.name(), error = %result.message, "heartbeat timeout");
                }
                context.map(|context| context.trace_id().to_string())
            }
        };
        if let Some(trace_id) = trace_id {
            self.parts.metrics.check_trace(elapsed, trace_id, at);
        }
        if passed && self.instance.is_none() && self.parts.spec.probe != Some(Probe::Heartbeat) {
            // A passing check of a service without a process of ours is the engine observing it alive
            // (processes are heartbeated while they run).
            let parts = &self.parts;
            observed_alive(
                &parts.registry,
                &parts.spec.name,
                &mut self.last_alive_notice,
                parts.heartbeat_interval,
                now,
            );
        }
        if let Some(transition) = transition {
            self.parts.metrics.health_changed(transition.from, transition.to);
            self.health_event(transition.from, transition.to, &result.message);
            span_event!(
                parent: span,
                event_name::HEALTH_CHANGED,
                orchestrator.health.from = transition.from.as_str(),
                orchestrator.health.to = transition.to.as_str(),
            );
            tracing::info!(parent: span, service = self.name(), from = %transition.from, to = %transition.to, detail = %result.message, "health changed");
        }
        self.publish();
        result
    }
}

/// What kind of check `spec`'s service has (`orchestrator.check.type`).
fn check_type(spec: &ServiceSpec) -> &'static str {
    spec.probe.as_ref().map_or("in_process", |p| p.kind())
}

/// Tells the registry that `service`, which has no process of ours, was seen alive by a passing check: at
/// most once per quarter heartbeat interval (`last` is when it was told last).
pub(super) fn observed_alive(
    registry: &RegistryHandle,
    service: &str,
    last: &mut Option<Instant>,
    heartbeat_interval: Duration,
    now: Instant,
) {
    if last.is_none_or(|at| now.duration_since(at) >= heartbeat_interval / 4) {
        *last = Some(now);
        registry.observed_alive(service);
    }
}

/// The `check health` span of a traced check (none otherwise).
pub(super) fn check_span(spec: &ServiceSpec, traced: bool) -> Span {
    if !traced {
        return Span::none();
    }
    tracing::info_span!(
        parent: None,
        "check health",
        orchestrator.service.name = %spec.name,
        orchestrator.check.type = check_type(spec),
        orchestrator.check.passed = Empty,
        orchestrator.health.status = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// One check with `spec`'s own probe (not a heartbeat one) through `prober`, bounded by its timeout.
pub(super) fn probe_check(prober: &Arc<dyn Prober>, spec: &Arc<ServiceSpec>, span: Span) -> CheckFuture {
    // The spec is shared, not copied: a check clones no name and no probe.
    let (prober, shared) = (prober.clone(), spec.clone());
    let work = Box::pin(async move {
        match &shared.probe {
            Some(probe) => prober.probe(&shared.name, probe).await,
            // Not reached: the callers check a probe first, and a spec does not change.
            None => ProbeOutcome::pass("no probe configured"),
        }
    });
    bounded(work, spec.health.timeout, span)
}

/// `work`, given at most `limit`, inside `span`; with the time it took.
fn bounded(
    work: Pin<Box<dyn Future<Output = ProbeOutcome> + Send>>,
    limit: Duration,
    span: Span,
) -> CheckFuture {
    let started = Instant::now();
    let inside = span.clone();
    Box::pin(
        async move {
            let outcome = match timeout(limit, work).await {
                Ok(outcome) => outcome,
                Err(_) => ProbeOutcome::timed_out(limit),
            };
            (outcome, started.elapsed(), span)
        }
        .instrument(inside),
    )
}

/// Resolves with the next check that finished: the actor's own (`true` first) or one its checker hands
/// over; never, when neither runs.
pub(super) async fn poll_check(
    check: &mut Option<CheckFuture>,
    mut checker: Option<&mut CheckerLink>,
) -> (bool, ProbeOutcome, Duration, Span) {
    std::future::poll_fn(|cx| {
        if let Some(future) = check.as_mut()
            && let Poll::Ready((outcome, elapsed, span)) = future.as_mut().poll(cx)
        {
            return Poll::Ready((true, outcome, elapsed, span));
        }
        if let Some(link) = checker.as_mut()
            && let Poll::Ready((outcome, elapsed, span)) = link.poll_handed_over(cx)
        {
            return Poll::Ready((false, outcome, elapsed, span));
        }
        Poll::Pending
    })
    .await
}

fn heartbeat_outcome(last: Option<Instant>, limit: Duration) -> ProbeOutcome {
    match last {
        Some(at) if at.elapsed() <= limit => ProbeOutcome::pass("heartbeat received")
            .with_detail("heartbeat_age_seconds", at.elapsed().as_secs_f64()),
        Some(at) => ProbeOutcome::fail(
            FailureReason::Heartbeat,
            format!(
                "no heartbeat for {}",
                humantime::format_duration(round_seconds(at.elapsed()))
            ),
        ),
        None => ProbeOutcome::fail(FailureReason::Heartbeat, "no heartbeat received yet"),
    }
}

fn round_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

async fn in_process_health(service: Arc<dyn Service>) -> ProbeOutcome {
    service.health().await
}
