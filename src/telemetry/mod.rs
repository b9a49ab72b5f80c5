//! Telemetry: log lines, Prometheus [`metrics`], and OTLP traces ([`otlp`]).
//!
//! [`init`] installs one `tracing` subscriber with two layers: log lines to stderr (filtered by `RUST_LOG`,
//! default `info`), and, when an OTLP endpoint is configured, the OpenTelemetry layer, which sees only this
//! crate's spans and events, so the exporter's own transport (hyper, tonic, reqwest) never traces itself.

pub mod metrics;
pub mod otlp;
pub mod trace;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_subscriber::filter::filter_fn;
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

    // By default the OpenTelemetry SDK's own notes (a provider set, ...) stay out; its warnings and errors
    // (an export that failed) do not. RUST_LOG replaces all of it.
    let log_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| {
            EnvFilter::new("info,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn")
        })
        .add_directive(
            format!("{}=off", trace::EVENTS)
                .parse()
                .expect("a valid directive"),
        );
    let dispatch = trace::DispatchHandle::default();
    let log_layer = match settings.log_format {
        LogFormat::Pretty => {
            let format = tracing_subscriber::fmt::format().with_target(false);
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .event_format(trace::WithTraceIds::new(format, false, dispatch.clone()))
                .boxed()
        }
        LogFormat::Json => {
            let format = tracing_subscriber::fmt::format().json().with_current_span(false);
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .event_format(trace::WithTraceIds::new(format, true, dispatch.clone()))
                .boxed()
        }
    }
    .with_filter(log_filter);
    let trace_layer = pipeline.as_ref().map(|pipeline| {
        // This crate's spans (not the children's output relay) and, as span events, only the fixed
        // vocabulary of `trace::EVENTS`: log lines stay log lines.
        let only_ours = filter_fn(|metadata| {
            let target = metadata.target();
            if metadata.is_event() {
                return target == trace::EVENTS;
            }
            target.starts_with("fog_orchestrator") && !target.starts_with("fog_orchestrator::service_output")
        });
        tracing_opentelemetry::layer()
            .with_tracer(pipeline.provider.tracer(otlp::SERVICE_NAME))
            .with_tracked_inactivity(false)
            .with_filter(only_ours)
    });
    let installed = tracing_subscriber::registry()
        .with(dispatch.capture())
        .with(log_layer)
        .with(trace_layer)
        .try_init()
        .is_ok();
    if let (true, Some(pipeline)) = (installed, &pipeline) {
        // For the spans written with the OpenTelemetry API directly (checks timed afterwards).
        opentelemetry::global::set_tracer_provider(pipeline.provider.clone());
        trace::set_exporting();
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let (Some(export), Some(_)) = (&export, &pipeline) {
        let protocol = match export.protocol {
            crate::config::OtlpProtocol::Grpc => "grpc",
            crate::config::OtlpProtocol::Http => "http/protobuf",
        };
        let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_else(|_| "parentbased_always_on".into());
        let ratio = std::env::var("OTEL_TRACES_SAMPLER_ARG").unwrap_or_else(|_| "1.0".into());
        tracing::info!(
            endpoint = %export.endpoint,
            protocol,
            sampler = %sampler,
            sampler_arg = %ratio,
            check_sample_ratio = settings.check_sample_ratio,
            "exporting traces over OTLP"
        );
    }
    Telemetry { pipeline }
}
