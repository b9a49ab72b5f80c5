//! What joins traces to the other signals and to the outside: the fixed vocabulary of span events, the
//! trace ids on log lines, and W3C trace context in and out (API requests, HTTP probes, spawned children).
//!
//! Span events are `tracing` events of one target ([`EVENTS`]) whose message is a name from
//! [`event_name`]: the OpenTelemetry layer turns them into span events and sees no other event, the log
//! layers never see them. Log lines therefore keep their human wording, and span events keep a fixed
//! vocabulary with details as attributes.

use std::fmt;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of span events: seen by the OpenTelemetry layer only.
pub const EVENTS: &str = "fog_orchestrator::span_event";

/// The names span events may have (DESIGN.md section 7).
pub mod event_name {
    /// The process exited without being asked to (`process.pid`, `process.exit.code` or `signal`).
    pub const SERVICE_EXITED: &str = "service.exited";
    /// The process did not stop within the shutdown timeout (or the stop was forced): SIGKILL sent.
    pub const SERVICE_KILLED: &str = "service.killed";
    /// A new process runs (`process.pid`).
    pub const SERVICE_SPAWNED: &str = "service.spawned";
    /// Automatic restarts are exhausted: the service stays down.
    pub const SERVICE_FAILED: &str = "service.failed";
    /// The lifecycle state changed (`orchestrator.state.from`, `orchestrator.state.to`).
    pub const STATE_CHANGED: &str = "state.changed";
    /// The health status changed (`orchestrator.health.from`, `orchestrator.health.to`).
    pub const HEALTH_CHANGED: &str = "health.changed";
    /// No heartbeat within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: &str = "heartbeat.timeout";
    /// A restart was decided and waits out its backoff (`orchestrator.restart.attempt`).
    pub const RESTART_SCHEDULED: &str = "restart.scheduled";
    /// A service registered itself in the registry.
    pub const SERVICE_REGISTERED: &str = "service.registered";
    /// A service left the registry.
    pub const SERVICE_DEREGISTERED: &str = "service.deregistered";
    /// The service stayed healthy for `reset_after`: the crash loop is over, attempts are forgiven.
    pub const ATTEMPTS_RESET: &str = "attempts.reset";
}

/// Records a span event: `span_event!(parent: span, event_name::X, key = value, ...)`.
#[macro_export]
#[doc(hidden)]
macro_rules! span_event {
    (parent: $parent:expr, $name:expr $(, $($fields:tt)*)?) => {
        ::tracing::event!(
            target: $crate::telemetry::trace::EVENTS,
            parent: $parent,
            ::tracing::Level::INFO,
            message = $name,
            $($($fields)*)?
        )
    };
}

/// The trace and span id of `span` (hex), when it is exported (valid and sampled).
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    let context = span.context();
    let span = context.span();
    let context = span.span_context();
    (context.is_valid() && context.is_sampled())
        .then(|| (context.trace_id().to_string(), context.span_id().to_string()))
}

/// The W3C `traceparent` of the current span, for a spawned child's environment (`TRACEPARENT`).
pub fn traceparent() -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier.remove("traceparent")
}

/// Makes `span` continue the trace of the incoming `headers` (`traceparent`, `tracestate`), if any.
pub fn continue_trace(span: &tracing::Span, headers: &hyper::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Writes the W3C `traceparent` (and `tracestate`) of the current span into outgoing HTTP headers, so a
/// probed service's own spans join the check's trace. Writes nothing when traces are not exported.
pub fn inject(headers: &mut hyper::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

struct HeaderInjector<'a>(&'a mut hyper::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(key.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a hyper::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(hyper::header::HeaderName::as_str).collect()
    }
}

/// A log line format that adds the `trace_id` and `span_id` of the span the event happened in, when that
/// span is exported: as two more keys of the JSON object, or as `trace_id=… span_id=…` at the end of a
/// pretty line.
pub struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<F> WithTraceIds<F> {
    /// Wraps the `inner` format; `json` says how the ids are written.
    pub fn new(inner: F, json: bool) -> Self {
        Self { inner, json }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = event_ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        if self.json && body.ends_with('}') {
            let open = &body[..body.len() - 1];
            writeln!(
                writer,
                "{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            )
        } else {
            writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
        }
    }
}

/// The ids of the innermost exported span around the event (its explicit parent, else the current span).
fn event_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    for span in scope {
        if let Some(context) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch) {
            let span = context.span();
            let context = span.span_context();
            if context.is_valid() && context.is_sampled() {
                return Some((context.trace_id().to_string(), context.span_id().to_string()));
            }
        }
    }
    None
}
