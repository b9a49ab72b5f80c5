//! The probes that talk to services over the network or run a command: `http`, `tcp` and `exec`.
//!
//! The `heartbeat` probe and in-process services' own health are answered by the service's actor, which
//! owns the facts they need. Every probe is bounded by the caller with the service's `timeout`; a probe that
//! hangs is dropped there (an exec probe's process is killed on drop).

use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::TcpStream;
use tokio::process::Command;
use tracing::Instrument;

use super::engine::{Engine, SteadyHttp};
use super::http::{Client, Failure, READ_LIMIT, Response, Target};
use super::{FailureReason, ProbeOutcome};
use crate::config::{GrpcProbe, HttpProbe, Probe};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Most characters of output quoted in a failure message.
const QUOTE_LIMIT: usize = 200;

/// Runs one health check of a service.
#[async_trait]
pub trait Prober: Send + Sync + 'static {
    /// Checks `service` with `probe` once. Called with `http`, `tcp` and `exec` probes only.
    async fn probe(&self, service: &str, probe: &Probe) -> ProbeOutcome;

    /// `service` is gone or stopped: whatever is kept for its next check (a connection) can go.
    fn forget(&self, _service: &str) {}

    /// A cheaper way to run a running service's steady checks of `probe`, if this prober has one: the
    /// real prober's engine runs those of plain `http://` probes to an IP address ([`super::engine`]).
    fn steady(&self, _probe: &Probe) -> Option<SteadyHttp> {
        None
    }
}

/// The real probes: HTTP GET (on a connection kept per service while the target keeps it alive), TCP
/// connect, gRPC health, and exec; and the engine that runs running services' steady checks of plain
/// `http://` probes to IP addresses ([`super::engine`]).
#[derive(Debug, Default)]
pub struct NetworkProber {
    client: Client,
    /// One HTTP/2 channel per gRPC address, made on first use and kept (it reconnects by itself).
    grpc: std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>,
    /// Each service's HTTP target, parsed from its probe at the first check and again when the probe
    /// changes (a reload), not at every check.
    targets: std::sync::Mutex<std::collections::HashMap<String, (HttpProbe, Arc<Target>)>>,
    /// What runs the steady checks of plain HTTP probes, started at the first such check.
    engine: Engine,
}

#[async_trait]
impl Prober for NetworkProber {
    async fn probe(&self, service: &str, probe: &Probe) -> ProbeOutcome {
        match probe {
            Probe::Http(http) => self.http(service, http).await,
            Probe::Tcp(address) => tcp(address).await,
            Probe::Grpc(grpc) => self.grpc(grpc).await,
            Probe::Exec(command) => exec(command).await,
            Probe::Heartbeat => {
                ProbeOutcome::fail(FailureReason::Error, "heartbeat probes are answered by the actor")
            }
        }
    }

    fn steady(&self, probe: &Probe) -> Option<SteadyHttp> {
        let Probe::Http(http) = probe else {
            return None;
        };
        let target = Target::parse(http).ok()?;
        self.engine.steady(http, target)
    }

    fn forget(&self, service: &str) {
        self.client.forget(service);
        self.targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(service);
    }
}

impl NetworkProber {
    /// One HTTP probe, as a CLIENT span (OTel HTTP semantic conventions) inside the check's span, which is
    /// what its `traceparent` names: the probed service's server span joins the check's trace.
    async fn http(&self, service: &str, probe: &HttpProbe) -> ProbeOutcome {
        let url = probe.url.as_str();
        let target = match self.target(service, probe) {
            Ok(target) => target,
            Err(error) => return ProbeOutcome::fail(FailureReason::Error, error),
        };
        if !traced() {
            // An untraced check (a startup probe) or one not sampled: no span of its own either (the
            // traceparent still says "not sampled" to the service).
            return self.http_request(service, probe, &target).await;
        }
        let span = tracing::info_span!(
            "GET",
            otel.kind = "client",
            http.request.method = "GET",
            url.full = url,
            server.address = target.host.as_str(),
            server.port = i64::from(target.port),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let outcome = self
            .http_request(service, probe, &target)
            .instrument(span.clone())
            .await;
        if let Some(status) = outcome
            .details
            .get("http_status")
            .and_then(serde_json::Value::as_i64)
        {
            span.record("http.response.status_code", status);
            if status >= 400 {
                span.record("error.type", status.to_string());
                span.record("otel.status_code", "ERROR");
            }
        } else if let Some(reason) = outcome.reason {
            span.record("error.type", reason.as_str());
            span.record("otel.status_code", "ERROR");
        }
        outcome
    }

    /// `service`'s target for `probe`.
    fn target(&self, service: &str, probe: &HttpProbe) -> Result<Arc<Target>, String> {
        let mut targets = self
            .targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((parsed, target)) = targets.get(service)
            && parsed == probe
        {
            return Ok(target.clone());
        }
        let target = Arc::new(Target::parse(probe)?);
        targets.insert(service.to_owned(), (probe.clone(), target.clone()));
        Ok(target)
    }

    async fn http_request(&self, service: &str, probe: &HttpProbe, target: &Target) -> ProbeOutcome {
        let url = probe.url.as_str();
        let traceparent = if crate::telemetry::trace::exporting() {
            crate::telemetry::trace::traceparent()
        } else {
            None
        };
        match self.client.get(service, target, traceparent.as_deref()).await {
            Ok(response) => judged(url, probe.passing, &response),
            Err(failure) => unanswered(url, &failure),
        }
    }
}

/// The outcome of an HTTP probe of `url` that got `response`: a pass when its status is in `passing`.
pub(super) fn judged(url: &str, passing: (u16, u16), response: &Response) -> ProbeOutcome {
    let (low, high) = passing;
    let outcome = if (low..=high).contains(&response.status) {
        ProbeOutcome::pass("Service health check passed")
    } else {
        ProbeOutcome::fail(
            FailureReason::HttpStatus,
            format!(
                "GET {url} answered {}: {}",
                status_line(response.status),
                quote(&response.body)
            ),
        )
    };
    outcome.with_detail("http_status", response.status)
}

/// The outcome of an HTTP probe of `url` that got no response.
pub(super) fn unanswered(url: &str, failure: &Failure) -> ProbeOutcome {
    let reason = match failure {
        Failure::Connect(_) | Failure::Tls(_) => FailureReason::Connect,
        Failure::Io(_) | Failure::Malformed(_) => FailureReason::Error,
    };
    ProbeOutcome::fail(reason, format!("GET {url}: {failure}"))
}

impl NetworkProber {
    /// One `grpc.health.v1.Health/Check`, as a CLIENT span (OTel RPC semantic conventions): `SERVING`
    /// passes; any other status, or a gRPC error, fails and says which.
    async fn grpc(&self, probe: &GrpcProbe) -> ProbeOutcome {
        let channel = match self.channel(&probe.address) {
            Ok(channel) => channel,
            Err(error) => return ProbeOutcome::fail(FailureReason::Error, error),
        };
        let span = if !traced() {
            tracing::Span::none()
        } else {
            let (host, port) = probe.address.rsplit_once(':').unwrap_or((&probe.address, ""));
            tracing::info_span!(
                "grpc.health.v1.Health/Check",
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = "grpc.health.v1.Health",
                rpc.method = "Check",
                server.address = host,
                server.port = port.parse::<i64>().unwrap_or_default(),
                rpc.grpc.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        };
        let request = HealthCheckRequest {
            service: probe.service.clone(),
        };
        let answer = HealthClient::new(channel)
            .check(request)
            .instrument(span.clone())
            .await;
        let what = if probe.service.is_empty() {
            format!("gRPC health of {}", probe.address)
        } else {
            format!("gRPC health of {} at {}", probe.service, probe.address)
        };
        match answer {
            Ok(response) => {
                span.record("rpc.grpc.status_code", 0_i64);
                let status = response.into_inner().status();
                if status == ServingStatus::Serving {
                    ProbeOutcome::pass("Service health check passed").with_detail("grpc_status", "SERVING")
                } else {
                    span.record("error.type", status.as_str_name());
                    span.record("otel.status_code", "ERROR");
                    ProbeOutcome::fail(FailureReason::Error, format!("{what}: {}", status.as_str_name()))
                        .with_detail("grpc_status", status.as_str_name())
                }
            }
            Err(status) => {
                span.record("rpc.grpc.status_code", status.code() as i64);
                span.record("error.type", format!("{:?}", status.code()));
                span.record("otel.status_code", "ERROR");
                // No connection at all is a connect failure, as for the other probes.
                let reason = if status.code() == tonic::Code::Unavailable {
                    FailureReason::Connect
                } else {
                    FailureReason::Error
                };
                let message = if status.message().is_empty() {
                    format!("{what}: {:?}", status.code())
                } else {
                    format!("{what}: {:?}: {}", status.code(), status.message())
                };
                ProbeOutcome::fail(reason, message)
            }
        }
    }

    fn channel(&self, address: &str) -> Result<tonic::transport::Channel, String> {
        let mut channels = self.grpc.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| format!("bad gRPC address {address}: {error}"))?
            .tcp_nodelay(true);
        // Connects on first use, and again after the server went away.
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Whether the check this probe runs in is traced (a startup probe is not, nor a check not sampled): a probe
/// makes no CLIENT span of its own otherwise.
fn traced() -> bool {
    if !crate::telemetry::trace::exporting() {
        return false;
    }
    let parent = tracing::Span::current();
    !parent.is_disabled() && crate::telemetry::trace::is_sampled(&parent)
}

/// `503 Service Unavailable`, as hyper's `StatusCode` shows it.
fn status_line(status: u16) -> String {
    match hyper::StatusCode::from_u16(status) {
        Ok(code) => code.to_string(),
        Err(_) => status.to_string(),
    }
}

async fn tcp(address: &str) -> ProbeOutcome {
    match TcpStream::connect(address).await {
        Ok(_) => ProbeOutcome::pass("Service health check passed"),
        Err(error) => ProbeOutcome::fail(FailureReason::Connect, format!("connect {address}: {error}")),
    }
}

async fn exec(command: &[String]) -> ProbeOutcome {
    let Some((program, args)) = command.split_first() else {
        return ProbeOutcome::fail(FailureReason::Error, "empty exec probe");
    };
    let mut command = Command::new(program);
    crate::supervisor::containment::with_service_open_files(&mut command);
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => {
            ProbeOutcome::pass("Service health check passed").with_detail("exit_code", 0)
        }
        Ok(output) => {
            let text = if output.stderr.is_empty() {
                &output.stdout
            } else {
                &output.stderr
            };
            let outcome = ProbeOutcome::fail(
                FailureReason::Exit,
                format!("{program} {}: {}", output.status, quote(text)),
            );
            match output.status.code() {
                Some(code) => outcome.with_detail("exit_code", code),
                None => outcome,
            }
        }
        Err(error) => ProbeOutcome::fail(FailureReason::Exit, format!("cannot run {program}: {error}")),
    }
}

/// The start of some output, on one line, for a message.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(READ_LIMIT)]);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > QUOTE_LIMIT {
        format!("{}…", line.chars().take(QUOTE_LIMIT).collect::<String>())
    } else {
        line
    }
}
