//! Trace export end to end: the built orchestrator sends its spans to a real OTLP receiver in the test,
//! over gRPC (a tonic server from `opentelemetry-proto`) and over HTTP/protobuf (a hyper handler decoding
//! the protobuf body), and its HTTP probes carry the check's W3C `traceparent`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use tokio::net::TcpListener;

use crate::binary::{Orchestrator, http, message};

/// Everything a receiver got: spans with the resource's `service.name`.
#[derive(Clone, Default)]
pub(crate) struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| text(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }

    pub(crate) fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

pub(crate) fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            AnyValue::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        })
}

struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub(crate) async fn grpc_receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(GrpcReceiver(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{address}"), received)
}

/// A tiny HTTP server: `/v1/traces` takes OTLP protobuf; anything else is a health target that records the
/// `traceparent` header of each request.
async fn http_server(received: Received, traceparents: Arc<Mutex<Vec<String>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (received, traceparents) = (received.clone(), traceparents.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (received, traceparents) = (received.clone(), traceparents.clone());
                    async move {
                        if request.uri().path() == "/v1/traces" {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            received.add(ExportTraceServiceRequest::decode(body).unwrap());
                            let reply = ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec();
                            let mut response = hyper::Response::new(Full::new(Bytes::from(reply)));
                            response
                                .headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            return Ok::<_, Infallible>(response);
                        }
                        if let Some(header) = request.headers().get("traceparent") {
                            traceparents
                                .lock()
                                .unwrap()
                                .push(header.to_str().unwrap_or_default().to_owned());
                        }
                        Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

/// Runs the orchestrator with `config` and the OTLP variables until it has started, passes one round of
/// check-now, restarts `worker` through the API, then stops it with SIGTERM (which flushes the spans).
async fn run_and_stop(config: &str, otlp: &[(&str, &str)]) {
    let mut orchestrator = Orchestrator::start_with(config, otlp);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    for path in [
        "/api/orchestration/health/check-now",
        "/api/orchestration/restart/worker",
    ] {
        assert_eq!(http("POST", &format!("{api}{path}"), "").await.0, 200, "{path}");
    }
    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

fn config(target: &str) -> String {
    format!(
        "[services.db]\ncommand = [\"sleep\", \"3600\"]\n\
         [services.worker]\ndepends_on = [\"db\"]\ncommand = [\"sleep\", \"3600\"]\n\
         [services.worker.restart]\ninitial_delay = \"0s\"\n\
         [services.target]\nhealth.http = \"{target}/health\"\n"
    )
}

pub(crate) fn find<'a>(spans: &'a [(String, Span)], name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|(_, s)| s.name == name)
        .map(|(_, s)| s)
        .collect()
}

fn assert_trace_shape(spans: &[(String, Span)]) {
    let names: HashMap<&str, usize> = spans.iter().fold(HashMap::new(), |mut counts, (_, s)| {
        *counts.entry(s.name.as_str()).or_insert(0) += 1;
        counts
    });
    for expected in [
        "start orchestrator",
        "resolve dependencies",
        "start service",
        "check health",
        "restart service",
        "stop service",
    ] {
        assert!(names.contains_key(expected), "no {expected:?} span in {names:?}");
    }
    assert!(spans.iter().all(|(service, _)| service == "fog-orchestrator"));

    // The startup waterfall: every first start is a child of `start orchestrator`, in its trace.
    let root = find(spans, "start orchestrator")[0];
    let first_starts: Vec<&Span> = find(spans, "start service")
        .into_iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let started: Vec<String> = first_starts
        .iter()
        .filter_map(|s| text(&s.attributes, "orchestrator.service.name"))
        .collect();
    for service in ["db", "worker", "target"] {
        assert!(
            started.contains(&service.to_owned()),
            "{service} start not under the root: {started:?}"
        );
    }
    assert!(first_starts.iter().all(|s| s.trace_id == root.trace_id));
    let resolve = find(spans, "resolve dependencies")[0];
    assert_eq!(resolve.parent_span_id, root.span_id);

    // The manual restart, with its reason, and the stop and start it contains.
    let restart = find(spans, "restart service")
        .into_iter()
        .find(|s| text(&s.attributes, "orchestrator.service.name").as_deref() == Some("worker"))
        .expect("a restart span for worker");
    assert_eq!(
        text(&restart.attributes, "orchestrator.restart.reason").as_deref(),
        Some("manual")
    );
    let children: Vec<&str> = spans
        .iter()
        .filter(|(_, s)| s.parent_span_id == restart.span_id)
        .map(|(_, s)| s.name.as_str())
        .collect();
    assert!(
        children.contains(&"stop service") && children.contains(&"start service"),
        "{children:?}"
    );

    let check = find(spans, "check health")
        .into_iter()
        .find(|s| text(&s.attributes, "orchestrator.service.name").as_deref() == Some("target"))
        .expect("a check span for target");
    assert_eq!(
        text(&check.attributes, "orchestrator.check.type").as_deref(),
        Some("http")
    );
    assert_eq!(
        text(&check.attributes, "orchestrator.check.passed").as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn spans_reach_an_otlp_grpc_receiver() {
    let (endpoint, received) = grpc_receiver().await;
    let traceparents = Arc::new(Mutex::new(Vec::new()));
    let target = http_server(Received::default(), traceparents.clone()).await;
    run_and_stop(
        &config(&target),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    let spans = received.spans();
    assert_trace_shape(&spans);

    // The probe carried the check's trace context.
    let check_traces: Vec<String> = find(&spans, "check health")
        .iter()
        .map(|s| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let carried = traceparents.lock().unwrap().clone();
    assert!(
        carried.iter().any(|tp| check_traces
            .iter()
            .any(|trace| tp.starts_with(&format!("00-{trace}-")))),
        "no probe carried a check's traceparent: {carried:?}"
    );
}

#[tokio::test]
async fn spans_reach_an_otlp_http_receiver() {
    let received = Received::default();
    let server = http_server(received.clone(), Arc::new(Mutex::new(Vec::new()))).await;
    run_and_stop(
        &config(&server),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &server),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    )
    .await;
    assert_trace_shape(&received.spans());
}

#[tokio::test]
async fn a_failed_check_is_an_error_span_and_the_restart_links_to_it() {
    let (endpoint, received) = grpc_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("healthy");
    std::fs::write(&marker, "").unwrap();
    // Healthy while the marker exists; with failure_threshold 1 the first failed check restarts it.
    let config = format!(
        "[services.flaky]\ncommand = [\"sleep\", \"3600\"]\n\
         [services.flaky.health]\nexec = [\"test\", \"-e\", \"{}\"]\nfailure_threshold = 1\n\
         check_interval = \"200ms\"\ntimeout = \"150ms\"\nstartup_timeout = \"500ms\"\n\
         [services.flaky.restart]\ninitial_delay = \"0s\"\nmax_attempts = 1\n",
        marker.display()
    );
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ];
    let mut orchestrator = Orchestrator::start_with(&config, &otlp);
    orchestrator
        .wait_for("flaky ready", |f| message(f) == "service ready")
        .await;
    std::fs::remove_file(&marker).unwrap();
    orchestrator
        .wait_for("restarts exhausted", |f| {
            message(f).contains("automatic restarts exhausted")
        })
        .await;
    assert_eq!(orchestrator.stop().await.code(), Some(0));

    let spans = received.spans();
    let failed_check = find(&spans, "check health")
        .into_iter()
        .find(|s| s.status.as_ref().map(|st| st.code) == Some(StatusCode::Error as i32))
        .expect("a failed check span");
    assert!(
        !failed_check.status.as_ref().unwrap().message.is_empty(),
        "the failure says why"
    );
    let restarts = find(&spans, "restart service");
    assert_eq!(restarts.len(), 1, "one restart before failing");
    let restart = restarts[0];
    assert_eq!(
        text(&restart.attributes, "orchestrator.restart.reason").as_deref(),
        Some("unhealthy")
    );
    assert_eq!(
        text(&restart.attributes, "orchestrator.restart.attempt").as_deref(),
        Some("1")
    );
    assert!(
        restart
            .links
            .iter()
            .any(|link| link.span_id == failed_check.span_id && link.trace_id == failed_check.trace_id),
        "the restart links to the check that failed"
    );
    assert_eq!(
        restart.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32),
        "the restart did not bring it back"
    );
    let failed_start = find(&spans, "start service")
        .into_iter()
        .filter(|s| s.parent_span_id == restart.span_id)
        .count();
    assert_eq!(failed_start, 1, "the restart's start is its child");
}

#[tokio::test]
async fn a_collector_that_is_down_never_blocks_the_orchestrator() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let target = http_server(Received::default(), Arc::new(Mutex::new(Vec::new()))).await;
    for protocol in ["grpc", "http/protobuf"] {
        let started = std::time::Instant::now();
        run_and_stop(
            &config(&target),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &closed),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ],
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{protocol}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_grpc_probe_is_a_client_span_inside_its_check() {
    let (endpoint, received) = grpc_receiver().await;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("fog.Ledger", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let config = format!(
        "[services.ledger.health]\ngrpc = \"{address}\"\ngrpc_service = \"fog.Ledger\"\n\
         check_interval = \"200ms\"\ntimeout = \"150ms\"\n"
    );
    let mut orchestrator = Orchestrator::start_with(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let path = format!("{api}/api/orchestration/health/check-now");
    assert_eq!(http("POST", &path, "").await.0, 200);
    assert_eq!(orchestrator.stop().await.code(), Some(0));

    let spans = received.spans();
    let calls = find(&spans, "grpc.health.v1.Health/Check");
    assert!(!calls.is_empty(), "no gRPC client span");
    let checks = find(&spans, "check health");
    for call in calls {
        assert_eq!(call.kind, SpanKind::Client as i32);
        assert_eq!(text(&call.attributes, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            text(&call.attributes, "rpc.service").as_deref(),
            Some("grpc.health.v1.Health")
        );
        assert_eq!(text(&call.attributes, "rpc.method").as_deref(), Some("Check"));
        assert_eq!(
            text(&call.attributes, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        let parent = checks
            .iter()
            .find(|check| check.span_id == call.parent_span_id)
            .expect("the gRPC call inside a check health span");
        assert_eq!(parent.trace_id, call.trace_id);
        assert_eq!(
            text(&parent.attributes, "orchestrator.check.type").as_deref(),
            Some("grpc")
        );
    }
}
