//! The actor's traces (DESIGN.md section 7): one incident, one trace.
//!
//! An automatic restart opens `restart service` at the decision, linked to the failed checks that led to
//! it. Everything the recovery does is inside it: `stop service` (SIGTERM, the `service.killed` event on
//! SIGKILL), `wait backoff`, `start service` (the `service.spawned` event) and the first passing
//! `check health`. A crash loop stays one trace: every later attempt until the attempts are forgiven (or
//! the service fails) is another `restart service` in the first one's trace, linked to the attempt before
//! it. A manual restart continues the caller's trace (the API request's span). At shutdown, stops are
//! children of `stop orchestrator`.
//!
//! Steady-state checks are traces of their own, cheap and mostly passing; startup probes (every few
//! milliseconds) are not traced, except the one that passes, which is recorded afterwards with its real
//! start and end inside `start service`.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanContext, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Actor;
use crate::health::ProbeOutcome;
use crate::span_event;
use crate::supervisor::state::{Exit, RestartReason, ServiceState};
use crate::telemetry::trace::{event_name, exported};

/// Links at most this many failed checks to one restart.
const MAX_LINKED_CHECKS: usize = 32;

/// The actor's open spans and what the next one must link to.
#[derive(Default)]
pub(super) struct Traces {
    /// The first attempt of the incident in progress: later attempts join its trace.
    incident: Option<SpanContext>,
    /// The attempt before the current one, which the next attempt links to.
    previous_attempt: Option<SpanContext>,
    /// The open `restart service`.
    attempt: Option<Span>,
    /// The current attempt was opened while handling the current input.
    attempt_fresh: bool,
    /// The open `wait backoff`.
    backoff: Option<Span>,
    /// The open `start service`.
    start: Option<Span>,
    /// Failed checks since the last pass, for the restart they may cause.
    failed_checks: Vec<SpanContext>,
    /// The exit that no span has told yet.
    exit: Option<(Option<u32>, Exit)>,
    /// The API request being served (restart, start, stop): what it does continues its trace.
    pub(super) request: Option<Span>,
    /// Startup probes that failed before the first pass of the current start.
    startup_failures: u32,
}

impl Traces {
    /// The input is handled: a decision can no longer claim an attempt opened for an earlier one, and an
    /// exit no restart followed stays untold (its metric and log line remain).
    pub(super) fn input_done(&mut self) {
        self.attempt_fresh = false;
        self.exit = None;
        self.request = None;
    }
}

/// Marks `span` failed with `message`; `error_type` is the metric's reason (`error.type`).
pub(super) fn fail(span: &Span, error_type: &str, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", message);
    span.record("error.type", error_type);
}

fn exit_event(span: &Span, pid: Option<u32>, exit: &Exit) {
    let pid = pid.map(i64::from);
    match exit {
        Exit::Code(code) => {
            span_event!(parent: span, event_name::SERVICE_EXITED, process.pid = pid, process.exit.code = i64::from(*code))
        }
        Exit::Signal(signal) => {
            span_event!(parent: span, event_name::SERVICE_EXITED, process.pid = pid, process.exit.signal = i64::from(*signal))
        }
        Exit::Error(error) => {
            span_event!(parent: span, event_name::SERVICE_EXITED, process.pid = pid, error.message = %error)
        }
    }
}

impl Actor {
    /// The parent of a stop or start that is not part of a restart: the API request asking for it, else
    /// the shutdown.
    fn outer_parent(&self) -> Option<Span> {
        self.traces.request.clone().or_else(|| self.shutdown_span())
    }

    /// `stop orchestrator`, once the shutdown has begun.
    fn shutdown_span(&self) -> Option<Span> {
        if !self.parts.shutdown.is_cancelled() {
            return None;
        }
        self.parts.shutdown_span.lock().ok().and_then(|span| span.clone())
    }

    /// Opens `restart service` at the decision to restart, closing an attempt still open (its instance
    /// never became ready) as failed.
    pub(super) fn open_attempt(&mut self, reason: RestartReason) {
        if self.traces.attempt_fresh {
            return;
        }
        // Asked for (by the API, or by a reload): it continues the asker's trace instead of an incident's.
        let requested = matches!(reason, RestartReason::Manual | RestartReason::Reload);
        if let Some(previous) = self.traces.attempt.take() {
            // Its instance never became ready: it exited (process_down), or its start timed out.
            match self.traces.exit.take() {
                Some((pid, exit)) => {
                    exit_event(&previous, pid, &exit);
                    fail(
                        &previous,
                        "process_down",
                        &format!("the instance {exit} before it was ready"),
                    );
                }
                None => fail(&previous, "timeout", "the instance did not become ready"),
            }
            self.traces.previous_attempt = exported(&previous);
        }
        let parent = if requested {
            self.traces.request.clone()
        } else {
            None
        };
        let span = tracing::info_span!(
            parent: parent.as_ref().and_then(Span::id),
            "restart service",
            orchestrator.service.name = %self.parts.spec.name,
            orchestrator.restart.reason = reason.as_str(),
            orchestrator.restart.attempt = Empty,
            orchestrator.restart.max_attempts = i64::from(self.parts.spec.restart.max_attempts),
            orchestrator.restart.backoff_seconds = Empty,
            error.type = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        if !requested {
            if self.traces.incident.is_none() {
                self.traces.incident = exported(&span);
            } else {
                self.join_incident(&span);
            }
        }
        self.link_history(&span);
        if let Some((pid, exit)) = self.traces.exit.take() {
            exit_event(&span, pid, &exit);
        }
        self.traces.attempt = Some(span);
        self.traces.attempt_fresh = true;
    }

    /// A failure stops the instance to recover: the stop belongs to the attempt that launched it, if one is
    /// still open (its instance never became ready); else it is the first step of a new restart, or of
    /// `fail service` when no attempt is left.
    pub(super) fn recovery_stop(&mut self, reason: RestartReason) {
        if self.traces.attempt.is_some() {
            return;
        }
        if self.lifecycle.attempts() < self.parts.spec.restart.max_attempts {
            self.open_attempt(reason);
        } else {
            self.traces.attempt = Some(self.fail_span());
        }
    }

    /// The restart waits out its backoff, in `wait backoff` (closed on leaving the backoff state).
    pub(super) fn open_backoff(&mut self, reason: RestartReason, attempt: u32, delay: Duration) {
        self.open_attempt(reason);
        let Some(attempt_span) = &self.traces.attempt else {
            return;
        };
        attempt_span.record("orchestrator.restart.attempt", i64::from(attempt));
        attempt_span.record("orchestrator.restart.backoff_seconds", delay.as_secs_f64());
        self.traces.backoff = Some(tracing::info_span!(
            parent: attempt_span,
            "wait backoff",
            orchestrator.service.name = %self.parts.spec.name,
            orchestrator.restart.attempt = i64::from(attempt),
            orchestrator.restart.backoff_seconds = delay.as_secs_f64(),
        ));
    }

    /// The parent of `stop service`: the shutdown, once it has begun (one `stop orchestrator` trace holds
    /// every stop); else the restart it belongs to, or the request asking for it.
    pub(super) fn stop_parent(&self) -> Option<Span> {
        self.shutdown_span()
            .or_else(|| self.traces.attempt.clone())
            .or_else(|| self.traces.request.clone())
    }

    /// Opens `start service`: inside the restart it belongs to, the request asking for it (an API request,
    /// or the fleet election a singleton's start follows), or `start orchestrator` for the first start.
    pub(super) fn open_start_span(&mut self) {
        let parent = match (self.traces.attempt.clone(), self.started_once) {
            (Some(attempt), _) => Some(attempt),
            (None, false) => self
                .traces
                .request
                .clone()
                .or_else(|| Some(self.parts.startup_span.clone())),
            (None, true) => self.outer_parent(),
        };
        let span = tracing::info_span!(
            parent: parent.as_ref().and_then(Span::id),
            "start service",
            orchestrator.service.name = %self.parts.spec.name,
            orchestrator.service.layer = i64::from(self.parts.layer),
            process.pid = Empty,
            orchestrator.check.failed_before_ready = Empty,
            error.type = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        self.started_once = true;
        self.traces.startup_failures = 0;
        self.traces.start = Some(span);
    }

    /// Whether the next steady-state check gets a span: when traces are exported, at
    /// `telemetry.check_sample_ratio` (decided here, before the span would be made: a check not traced
    /// costs nothing, and if it fails it is recorded afterwards anyway).
    pub(super) fn trace_next_check(&self) -> bool {
        sampled(self.parts.check_sample_ratio)
    }

    /// The trace of the open restart, for the restart counter's exemplar.
    pub(super) fn attempt_trace_id(&self) -> Option<String> {
        let span = self.traces.attempt.as_ref()?;
        crate::telemetry::trace::trace_id(span)
    }

    /// The trace of the incident in progress (the open restart's, else the first attempt's), if any: what
    /// the event stream's events name.
    pub(super) fn incident_trace_id(&self) -> Option<String> {
        self.attempt_trace_id().or_else(|| {
            self.traces
                .incident
                .as_ref()
                .map(|context| context.trace_id().to_string())
        })
    }

    /// The open `start service`, for what runs inside it.
    pub(super) fn traces_start(&self) -> Option<Span> {
        self.traces.start.clone()
    }

    /// The instance runs, as process `pid`.
    pub(super) fn spawned(&self, pid: Option<u32>) {
        if let (Some(span), Some(pid)) = (&self.traces.start, pid) {
            span.record("process.pid", i64::from(pid));
            span_event!(parent: span, event_name::SERVICE_SPAWNED, process.pid = i64::from(pid));
        }
    }

    /// A startup probe failed (not an error: the instance may not listen yet).
    pub(super) fn startup_probe_failed(&mut self) {
        self.traces.startup_failures += 1;
    }

    /// Records the startup probe that passed as `check health` inside `start service`, with its real start
    /// and end (startup probes run every few milliseconds and only this one is worth a span).
    pub(super) fn first_pass(&self, outcome: &ProbeOutcome, took: Duration) {
        let Some(start) = &self.traces.start else { return };
        let parent = start.context();
        if parent.span().span_context().is_sampled() {
            let startup = [KeyValue::new("orchestrator.check.startup", true)];
            self.record_check(&parent, outcome.passed, took, startup, None);
        }
    }

    /// A `check health` span made after the check, with its real start (`took` ago) and end (now), under
    /// `parent` (an empty context: a trace of its own); failed with `error` (type, message) if given.
    fn record_check(
        &self,
        parent: &Context,
        passed: bool,
        took: Duration,
        extra: impl IntoIterator<Item = KeyValue>,
        error: Option<(&str, &str)>,
    ) -> SpanContext {
        let end = SystemTime::now();
        let tracer = opentelemetry::global::tracer(crate::telemetry::otlp::SERVICE_NAME);
        let mut attributes = vec![
            KeyValue::new("orchestrator.service.name", self.parts.spec.name.to_string()),
            KeyValue::new("orchestrator.check.type", self.check_type()),
            KeyValue::new("orchestrator.check.passed", passed),
        ];
        attributes.extend(extra);
        if let Some((error_type, _)) = error {
            attributes.push(KeyValue::new("error.type", error_type.to_owned()));
        }
        let mut span = tracer
            .span_builder("check health")
            .with_start_time(end - took)
            .with_attributes(attributes)
            .start_with_context(&tracer, parent);
        if let Some((_, message)) = error {
            span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
        }
        let context = span.span_context().clone();
        span.end_with_timestamp(end);
        context
    }

    /// Closes `start service` with the startup probes that failed before it ended, failed when `error`
    /// says why (with `error_type`, the metric's reason).
    pub(super) fn close_start_span(&mut self, error: Option<(&str, &str)>) {
        let Some(span) = self.traces.start.take() else {
            return;
        };
        span.record(
            "orchestrator.check.failed_before_ready",
            i64::from(self.traces.startup_failures),
        );
        if let Some((error_type, message)) = error {
            fail(&span, error_type, message);
        }
    }

    /// The instance is ready: the restart it belongs to has done its work.
    pub(super) fn close_attempt(&mut self) {
        if let Some(span) = self.traces.attempt.take() {
            self.traces.previous_attempt = exported(&span);
        }
        if self.lifecycle.attempts() == 0 {
            // Nothing to forgive later: the incident (if any) ends here.
            self.end_incident();
        }
    }

    /// Leaving the backoff state ends `wait backoff`.
    pub(super) fn close_backoff(&mut self) {
        self.traces.backoff = None;
    }

    /// The incident is over (healthy long enough, stopped, or failed): the next failure starts a new trace.
    pub(super) fn end_incident(&mut self) {
        self.traces.incident = None;
        self.traces.previous_attempt = None;
    }

    /// The automatic restarts are spent: told in the open attempt, else in a `fail service` span of the
    /// incident.
    pub(super) fn gave_up(&mut self) {
        let span = match self.traces.attempt.take() {
            Some(span) => span,
            None => self.fail_span(),
        };
        if let Some((pid, exit)) = self.traces.exit.take() {
            exit_event(&span, pid, &exit);
        }
        span_event!(
            parent: &span,
            event_name::SERVICE_FAILED,
            orchestrator.restart.attempts = i64::from(self.lifecycle.attempts()),
            orchestrator.restart.max_attempts = i64::from(self.parts.spec.restart.max_attempts),
        );
        fail(&span, "failed", "automatic restarts exhausted");
        self.end_incident();
    }

    /// `fail service`: the end of an incident without a restart, in the incident's trace.
    fn fail_span(&mut self) -> Span {
        let span = tracing::info_span!(
            parent: None,
            "fail service",
            orchestrator.service.name = %self.parts.spec.name,
            error.type = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        self.join_incident(&span);
        self.link_history(&span);
        span
    }

    /// Makes the root `span` a child of the incident in progress (if any): one incident, one trace.
    fn join_incident(&self, span: &Span) {
        if let Some(incident) = &self.traces.incident {
            let _ = span.set_parent(Context::new().with_remote_span_context(incident.clone()));
        }
    }

    /// Links `span` to what led to it: the attempt before it and the failed checks since the last pass.
    fn link_history(&mut self, span: &Span) {
        if let Some(previous) = &self.traces.previous_attempt {
            let kind = KeyValue::new("orchestrator.link", "previous_attempt");
            span.add_link_with_attributes(previous.clone(), vec![kind]);
        }
        for check in self.traces.failed_checks.drain(..) {
            span.add_link_with_attributes(check, vec![KeyValue::new("orchestrator.link", "failed_check")]);
        }
    }

    /// The instance exited on its own: told in the attempt still open, else in the restart that follows.
    pub(super) fn exit_observed(&mut self, pid: Option<u32>, exit: Exit) {
        self.traces.exit = Some((pid, exit));
    }

    /// The exported trace of a failed check: its own span when sampled, else (a passing check would not
    /// have been kept at `check_sample_ratio`) the same check recorded now as a root span with its real
    /// start and end, which the sampler always keeps. Remembered for the restart it may cause.
    pub(super) fn failed_check(
        &mut self,
        span: &Span,
        error_type: &str,
        message: &str,
        took: Duration,
    ) -> Option<SpanContext> {
        let context = exported(span).or_else(|| {
            if !crate::telemetry::trace::exporting() {
                return None;
            }
            let status = [KeyValue::new(
                "orchestrator.health.status",
                self.health().tracker.status().as_str(),
            )];
            let recorded =
                self.record_check(&Context::new(), false, took, status, Some((error_type, message)));
            recorded.is_sampled().then_some(recorded)
        });
        if let Some(context) = &context
            && self.traces.failed_checks.len() < MAX_LINKED_CHECKS
        {
            self.traces.failed_checks.push(context.clone());
        }
        context
    }

    /// A passing check: earlier failures caused nothing.
    pub(super) fn forget_failures(&mut self) {
        self.traces.failed_checks.clear();
    }

    /// A state change, as an event of the open start or restart span (and a debug log line).
    pub(super) fn state_event(&self, from: ServiceState, to: ServiceState) {
        tracing::debug!(service = %self.parts.spec.name, %from, %to, "state changed");
        if let Some(span) = self.traces.start.as_ref().or(self.traces.attempt.as_ref()) {
            span_event!(parent: span, event_name::STATE_CHANGED, orchestrator.state.from = from.as_str(), orchestrator.state.to = to.as_str());
        }
    }
}

/// Whether a steady-state check gets a span, at sample ratio `ratio` (see [`Actor::trace_next_check`]).
pub(super) fn sampled(ratio: f64) -> bool {
    crate::telemetry::trace::exporting() && (ratio >= 1.0 || fastrand::f64() < ratio)
}
