//! Telemetry: log lines, Prometheus [`metrics`], and OTLP traces ([`otlp`]).
//!
//! [`init`] installs one `tracing` subscriber with two layers: log lines to stderr (filtered by `RUST_LOG`,
//! default `info`), and, when an OTLP endpoint is configured, the OpenTelemetry layer, which sees only this
//! crate's spans and events, so the exporter's own transport (hyper, tonic, reqwest) never traces itself.

pub mod metrics;
pub mod otlp;

use std::io::IsTerminal;

use opentelemetry::propagation::Injector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// What must be flushed and stopped when the program ends.
pub struct Telemetry {
    pipeline: Option<otlp::Pipeline>,
}

impl Telemetry {
    /// Flushes queued spans and stops the exporter (bounded by the export timeout). Call it after the
    /// async runtime has finished its work, from a thread that is not one of its workers.
    pub fn shutdown(self) {
        if let Some(pipeline) = self.pipeline {
            pipeline.shutdown();
        }
    }
}

/// Installs logging and, when configured, trace export. Call it before starting the async runtime. A
/// second call (tests, embedding programs) keeps the first subscriber.
pub fn init(settings: &TelemetrySettings) -> Telemetry {
    let export = otlp::resolve(settings, |key| std::env::var(key).ok());
    let pipeline = export
        .as_ref()
        .and_then(|export| match otlp::Pipeline::build(export) {
            Ok(pipeline) => Some(pipeline),
            Err(error) => {
                eprintln!("warning: trace export to {} is off: {error}", export.endpoint);
                None
            }
        });

    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log_layer = match settings.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(log_filter);
    let trace_layer = pipeline.as_ref().map(|pipeline| {
        let only_ours = Targets::new()
            .with_target("fog_orchestrator", Level::DEBUG)
            .with_target("fog_orchestrator::service_output", LevelFilter::OFF);
        tracing_opentelemetry::layer()
            .with_tracer(pipeline.provider.tracer(otlp::SERVICE_NAME))
            .with_filter(only_ours)
    });
    let _ = tracing_subscriber::registry()
        .with(log_layer)
        .with(trace_layer)
        .try_init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let (Some(export), Some(_)) = (&export, &pipeline) {
        let protocol = match export.protocol {
            crate::config::OtlpProtocol::Grpc => "grpc",
            crate::config::OtlpProtocol::Http => "http/protobuf",
        };
        tracing::info!(endpoint = %export.endpoint, protocol, "exporting traces over OTLP");
    }
    Telemetry { pipeline }
}

/// Writes the W3C `traceparent` (and `tracestate`) of the current span into outgoing HTTP headers, so a
/// probed service's own spans join the check's trace. Writes nothing when traces are not exported.
pub fn inject_trace_context(headers: &mut hyper::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
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
