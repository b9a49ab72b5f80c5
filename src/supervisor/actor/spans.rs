//! The actor's trace spans (DESIGN.md section 7): `start service` from launch to ready, `restart service`
//! from the decision to the service running again (linked to the check that failed), and the events that
//! state changes leave in whichever of them is open.

use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Actor;
use crate::supervisor::state::{RestartReason, ServiceState};

/// Marks `span` failed with `message` (`otel.status_code` is read by the OpenTelemetry layer).
pub(super) fn fail(span: &Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", message);
}

impl Actor {
    /// Opens `start service`: under the restart it belongs to, or under `start orchestrator` for the
    /// first start, or as a new trace for a manual start.
    pub(super) fn open_start_span(&mut self) {
        let parent = match (&self.restart_span, self.started_once) {
            (Some(restart), _) => restart.id(),
            (None, false) => self.parts.startup_span.id(),
            (None, true) => None,
        };
        let span = tracing::info_span!(
            parent: parent,
            "start service",
            orchestrator.service.name = %self.parts.spec.name,
            orchestrator.service.layer = self.parts.layer,
            orchestrator.process.pid = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        self.started_once = true;
        self.start_span = Some(span);
    }

    /// Closes `start service`, failed when `error` says why.
    pub(super) fn close_start_span(&mut self, error: Option<&str>) {
        if let Some(span) = self.start_span.take() {
            if let Some(pid) = self.snapshot.pid {
                span.record("orchestrator.process.pid", pid);
            }
            if let Some(error) = error {
                fail(&span, error);
            }
        }
    }

    /// Opens `restart service`, linked to the failed check that caused it, if a check did.
    pub(super) fn open_restart_span(&mut self, reason: RestartReason, attempt: u32, delay: Duration) {
        self.close_restart_span(Some("superseded by another restart"));
        let span = tracing::info_span!(
            parent: None,
            "restart service",
            orchestrator.service.name = %self.parts.spec.name,
            orchestrator.restart.reason = reason.as_str(),
            orchestrator.restart.attempt = attempt,
            orchestrator.restart.max_attempts = self.parts.spec.restart.max_attempts,
            orchestrator.restart.backoff_seconds = delay.as_secs_f64(),
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        if let Some(cause) = self.last_failure.take() {
            span.add_link(cause);
        }
        self.restart_span = Some(span);
    }

    /// Closes `restart service`, failed when `error` says why.
    pub(super) fn close_restart_span(&mut self, error: Option<&str>) {
        if let Some(span) = self.restart_span.take()
            && let Some(error) = error
        {
            fail(&span, error);
        }
    }

    /// Remembers the failed check `span` as the cause of a restart that may follow.
    pub(super) fn remember_failure(&mut self, span: &Span) {
        let context = span.context().span().span_context().clone();
        if context.is_valid() {
            self.last_failure = Some(context);
        }
    }

    /// A state change, as an event of the open start or restart span (and a debug log line).
    pub(super) fn state_event(&self, from: ServiceState, to: ServiceState) {
        let parent = self
            .start_span
            .as_ref()
            .or(self.restart_span.as_ref())
            .and_then(Span::id);
        tracing::debug!(parent: parent, service = %self.parts.spec.name, %from, %to, "state changed");
    }
}
