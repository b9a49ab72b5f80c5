//! OTLP trace export: where to (config, or the standard `OTEL_EXPORTER_OTLP_*` variables), over gRPC or
//! HTTP/protobuf, through the SDK's batch processor so a slow or absent collector never blocks anything.
//!
//! The batch processor exports from its own thread, which has no Tokio runtime. The HTTP exporter uses the
//! blocking reqwest client, which needs none. The gRPC (tonic) exporter does, so it is wrapped in
//! `OnOwnRuntime`, which gives it a small runtime of its own.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SamplingDecision, SamplingResult, SdkTracerProvider,
    ShouldSample, SpanData, SpanExporter,
};

use crate::config::{OtlpProtocol, TelemetrySettings};

/// The OTel resource `service.name`.
pub const SERVICE_NAME: &str = "fog-orchestrator";
/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where traces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The full endpoint: `http://host:4317` for gRPC, `http://host:4318/v1/traces` for HTTP.
    pub endpoint: String,
    /// The transport.
    pub protocol: OtlpProtocol,
}

/// Decides where traces go: `telemetry.otlp_endpoint` (with `otlp_protocol`), else
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` (with
/// `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: `grpc` or `http/protobuf`); `None` turns export off, as does
/// `OTEL_SDK_DISABLED=true`.
pub fn resolve(settings: &TelemetrySettings, env: impl Fn(&str) -> Option<String>) -> Option<Export> {
    let set = |key: &str| env(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    if let Some(endpoint) = &settings.otlp_endpoint {
        return Some(Export {
            endpoint: with_traces_path(endpoint, settings.otlp_protocol),
            protocol: settings.otlp_protocol,
        });
    }
    let protocol =
        match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            Some(protocol) if protocol.starts_with("http") => OtlpProtocol::Http,
            Some(protocol) if protocol == "grpc" => OtlpProtocol::Grpc,
            Some(_) | None => settings.otlp_protocol,
        };
    if let Some(endpoint) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        // The signal-specific variable is the full URL, per the OTLP exporter specification.
        return Some(Export { endpoint, protocol });
    }
    set("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| Export {
        endpoint: with_traces_path(&base, protocol),
        protocol,
    })
}

/// HTTP endpoints given as a base URL get the `/v1/traces` path; gRPC endpoints stay as they are.
fn with_traces_path(endpoint: &str, protocol: OtlpProtocol) -> String {
    if protocol == OtlpProtocol::Grpc {
        return endpoint.to_owned();
    }
    let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    match after_scheme.split_once('/') {
        Some((_, path)) if !path.is_empty() => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// The tracer provider and what it needs to stay alive.
pub struct Pipeline {
    /// The provider spans are exported through.
    pub provider: SdkTracerProvider,
    runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl Pipeline {
    /// Builds the exporter and batch processor for `export`. Call outside any Tokio runtime: the HTTP
    /// exporter's blocking client must not be created inside one.
    pub fn build(export: &Export) -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        let (processor, runtime) = match export.protocol {
            OtlpProtocol::Http => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(&export.endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()?;
                (batch(exporter), None)
            }
            OtlpProtocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-export")
                    .enable_all()
                    .build()
                    .map_err(|e| opentelemetry_otlp::ExporterBuildError::InternalFailure(e.to_string()))?;
                let runtime = Arc::new(runtime);
                let exporter = {
                    let _inside = runtime.enter();
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(&export.endpoint)
                        .with_timeout(EXPORT_TIMEOUT)
                        .build()?
                };
                let exporter = OnOwnRuntime {
                    inner: exporter,
                    runtime: runtime.clone(),
                };
                (batch(exporter), Some(runtime))
            }
        };
        let resource = Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", instance_id()),
                KeyValue::new("host.name", host_name()),
                KeyValue::new("process.pid", i64::from(std::process::id())),
            ])
            .build();
        // Everything but passing checks: the sampler OTEL_TRACES_SAMPLER / _ARG name (parentbased_always_on
        // by default), as the SDK's default configuration reads it.
        let sampler = ChecksSampler::new(opentelemetry_sdk::trace::Config::default().sampler);
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        Ok(Self { provider, runtime })
    }

    /// Flushes what is queued and stops the exporter. Blocks (bounded by the export timeout): call it off
    /// the async runtime's threads.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: trace export did not shut down cleanly: {error}");
        }
        drop(self.runtime);
    }
}

/// The head sampler: every span follows the sampler `OTEL_TRACES_SAMPLER` names, except a failed check
/// recorded afterwards (a check the actor did not trace at `telemetry.check_sample_ratio`, which turned
/// out to fail: it carries `orchestrator.check.passed = false`), which is always kept, so restarts link to
/// every failing check.
#[derive(Debug, Clone)]
pub struct ChecksSampler {
    others: Box<dyn ShouldSample>,
}

impl ChecksSampler {
    /// Everything by `others`, but failed checks.
    pub fn new(others: Box<dyn ShouldSample>) -> Self {
        Self { others }
    }
}

impl ShouldSample for ChecksSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let is_root = parent_context.is_none_or(|parent| !parent.has_active_span());
        let failed_check = is_root
            && name == "check health"
            && attributes
                .iter()
                .any(|a| a.key.as_str() == "orchestrator.check.passed" && a.value == Value::Bool(false));
        if failed_check {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.others
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// A random UUID (version 4) naming this run of the orchestrator, as `service.instance.id` asks.
fn instance_id() -> String {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The machine's host name (`host.name`), or `unknown`.
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return "unknown".into();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

fn batch(exporter: impl SpanExporter + 'static) -> BatchSpanProcessor {
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(8192)
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build()
}

/// Runs a Tokio-based exporter on a runtime of its own, from the batch processor's plain thread.
#[derive(Debug)]
struct OnOwnRuntime<E> {
    inner: E,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl<E: SpanExporter> OnOwnRuntime<E> {
    fn block_on<T: Send>(&self, work: impl std::future::Future<Output = T> + Send) -> T {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(work);
        }
        // Inside some runtime already (not the batch thread): block on a scoped plain thread instead.
        std::thread::scope(|scope| match scope.spawn(|| self.runtime.block_on(work)).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }
}

impl<E: SpanExporter> SpanExporter for OnOwnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let result = self.block_on(self.inner.export(batch));
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use opentelemetry_sdk::trace::Sampler;

    fn settings(endpoint: Option<&str>, protocol: OtlpProtocol) -> TelemetrySettings {
        TelemetrySettings {
            log_format: LogFormat::Pretty,
            otlp_endpoint: endpoint.map(str::to_owned),
            otlp_protocol: protocol,
            check_sample_ratio: 1.0,
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
    }

    #[test]
    fn a_failed_check_is_always_kept_and_everything_else_follows_the_configured_sampler() {
        let decide = |sampler: &ChecksSampler, name: &str, attributes: &[KeyValue]| {
            sampler
                .should_sample(None, TraceId::from(7), name, &SpanKind::Internal, attributes, &[])
                .decision
        };
        let off = ChecksSampler::new(Box::new(Sampler::AlwaysOff));
        let failed = [KeyValue::new("orchestrator.check.passed", false)];
        assert_eq!(
            decide(&off, "check health", &failed),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(decide(&off, "check health", &[]), SamplingDecision::Drop);
        assert_eq!(decide(&off, "restart service", &[]), SamplingDecision::Drop);
        let on = ChecksSampler::new(Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))));
        assert_eq!(
            decide(&on, "check health", &[]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&on, "restart service", &[]),
            SamplingDecision::RecordAndSample
        );
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(resolve(&settings(None, OtlpProtocol::Grpc), env(&[])), None);
    }

    #[test]
    fn the_config_endpoint_wins_and_http_gets_the_traces_path() {
        let grpc = resolve(
            &settings(Some("http://127.0.0.1:4317"), OtlpProtocol::Grpc),
            env(&[]),
        );
        assert_eq!(grpc.unwrap().endpoint, "http://127.0.0.1:4317");
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4317")];
        let http = resolve(
            &settings(Some("http://127.0.0.1:4318"), OtlpProtocol::Http),
            env(&vars),
        )
        .unwrap();
        assert_eq!(
            http,
            Export {
                endpoint: "http://127.0.0.1:4318/v1/traces".into(),
                protocol: OtlpProtocol::Http
            }
        );
        let custom = resolve(
            &settings(Some("http://c:4318/custom/path"), OtlpProtocol::Http),
            env(&[]),
        );
        assert_eq!(custom.unwrap().endpoint, "http://c:4318/custom/path");
    }

    #[test]
    fn standard_variables_are_honoured() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        let export = resolve(&settings(None, OtlpProtocol::Grpc), env(&vars)).unwrap();
        assert_eq!(
            export,
            Export {
                endpoint: "http://c:4318/v1/traces".into(),
                protocol: OtlpProtocol::Http
            }
        );

        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let export = resolve(&settings(None, OtlpProtocol::Http), env(&vars)).unwrap();
        assert_eq!(
            export,
            Export {
                endpoint: "http://c:4317".into(),
                protocol: OtlpProtocol::Grpc
            }
        );

        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(resolve(&settings(None, OtlpProtocol::Grpc), env(&vars)), None);
    }
}
