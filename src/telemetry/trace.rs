//! What joins traces to the other signals and to the outside: the fixed vocabulary of span events, the
//! trace ids on log lines, and W3C trace context in and out (API requests, HTTP probes, spawned children).
//!
//! Span events are `tracing` events of one target ([`EVENTS`]) whose message is a name from
//! [`event_name`]: the OpenTelemetry layer turns them into span events and sees no other event, the log
//! layers never see them. Log lines therefore keep their human wording, and span events keep a fixed
//! vocabulary with details as attributes.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether spans are exported (an OTLP pipeline is installed).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Spans are exported from now on (set once the pipeline is installed).
pub fn set_exporting() {
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether spans are exported: without export, spans only nobody would see are not worth making.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

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
    exported(span).map(|context| (context.trace_id().to_string(), context.span_id().to_string()))
}

/// The trace id of `span`, when it is exported (what exemplars and events name).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    exported(span).map(|context| context.trace_id().to_string())
}

/// Whether `span` is exported (valid and sampled): only then is a child span worth making.
pub fn is_sampled(span: &tracing::Span) -> bool {
    exported(span).is_some()
}

/// The OpenTelemetry context of `span`, when it is exported (valid and sampled).
pub fn exported(span: &tracing::Span) -> Option<opentelemetry::trace::SpanContext> {
    let context = span.context().span().span_context().clone();
    (context.is_valid() && context.is_sampled()).then_some(context)
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

/// The dispatcher the log format asks for span contexts. A formatter runs inside the dispatcher's own call,
/// where `tracing::dispatcher::get_default` answers "none" under a scoped dispatcher, so the dispatcher is
/// captured when it is built, by [`DispatchCapture`], a layer of the same subscriber.
#[derive(Clone, Default)]
pub struct DispatchHandle(Arc<OnceLock<WeakDispatch>>);

impl DispatchHandle {
    /// The layer that fills this handle when the subscriber becomes a dispatcher.
    pub fn capture(&self) -> DispatchCapture {
        DispatchCapture(self.clone())
    }
}

/// Fills a [`DispatchHandle`]; does nothing else.
pub struct DispatchCapture(DispatchHandle);

impl<S: Subscriber> tracing_subscriber::Layer<S> for DispatchCapture {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0.0.set(dispatch.downgrade());
    }
}

/// A log line format that adds the `trace_id` and `span_id` of the span the event happened in, when that
/// span is exported: as two more keys of the JSON object, or as `trace_id=… span_id=…` at the end of a
/// pretty line.
pub struct WithTraceIds<F> {
    inner: F,
    json: bool,
    dispatch: DispatchHandle,
}

impl<F> WithTraceIds<F> {
    /// Wraps the `inner` format; `json` says how the ids are written; `dispatch` is captured by a layer of
    /// the same subscriber.
    pub fn new(inner: F, json: bool, dispatch: DispatchHandle) -> Self {
        Self {
            inner,
            json,
            dispatch,
        }
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
        let dispatch = self.dispatch.0.get().and_then(WeakDispatch::upgrade);
        let Some((trace_id, span_id)) = dispatch.and_then(|dispatch| event_ids(ctx, &dispatch)) else {
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
fn event_ids<S, N>(ctx: &FmtContext<'_, S, N>, dispatch: &Dispatch) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    for span in scope {
        if let Some(context) = tracing_opentelemetry::get_otel_context(&span.id(), dispatch) {
            let span = context.span();
            let context = span.span_context();
            if context.is_valid() && context.is_sampled() {
                return Some((context.trace_id().to_string(), context.span_id().to_string()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one line outside any span and one inside an exported span, in both formats; returns the
    /// lines and the span's ids.
    fn log_lines(json: bool) -> (Vec<String>, (String, String)) {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let provider = SdkTracerProvider::builder().build();
        let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let make = move || writer.clone();
        let handle = DispatchHandle::default();
        let subscriber = tracing_subscriber::registry().with(otel).with(handle.capture());
        let ids = if json {
            let format = tracing_subscriber::fmt::format().json().with_current_span(false);
            let fmt = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(make)
                .event_format(WithTraceIds::new(format, true, handle.clone()));
            tracing::subscriber::with_default(subscriber.with(fmt), emit)
        } else {
            let format = tracing_subscriber::fmt::format().with_ansi(false);
            let fmt = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(make)
                .event_format(WithTraceIds::new(format, false, handle.clone()));
            tracing::subscriber::with_default(subscriber.with(fmt), emit)
        };
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(str::to_owned).collect(), ids)
    }

    fn emit() -> (String, String) {
        tracing::info!("outside");
        let span = tracing::info_span!("stop service");
        tracing::info!(parent: &span, pid = 7, "inside");
        ids(&span).expect("an exported span has ids")
    }

    #[test]
    fn json_lines_inside_a_span_carry_its_ids_and_stay_one_object() {
        let (lines, (trace_id, span_id)) = log_lines(true);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let outside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert!(outside.get("trace_id").is_none());
        let inside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(inside["trace_id"], trace_id.as_str());
        assert_eq!(inside["span_id"], span_id.as_str());
        assert_eq!(inside["fields"]["message"], "inside");
        assert_eq!((trace_id.len(), span_id.len()), (32, 16));
    }

    #[test]
    fn pretty_lines_inside_a_span_end_with_its_ids() {
        let (lines, (trace_id, span_id)) = log_lines(false);
        assert!(!lines[0].contains("trace_id="), "{}", lines[0]);
        assert!(
            lines[1].ends_with(&format!(" trace_id={trace_id} span_id={span_id}")),
            "{}",
            lines[1]
        );
    }
}
