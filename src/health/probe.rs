//! The probes that talk to services over the network or run a command: `http`, `tcp` and `exec`.
//!
//! The `heartbeat` probe and in-process services' own health are answered by the service's actor, which
//! owns the facts they need. Every probe is bounded by the caller with the service's `timeout`; a probe that
//! hangs is dropped there (an exec probe's process is killed on drop).

use std::process::Stdio;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::process::Command;
use tracing::Instrument;

use super::{FailureReason, ProbeOutcome};
use crate::config::Probe;

/// Most bytes of a response body or command output read by a probe.
const READ_LIMIT: usize = 64 * 1024;
/// Most characters of output quoted in a failure message.
const QUOTE_LIMIT: usize = 200;

/// Runs one health check of a service.
#[async_trait]
pub trait Prober: Send + Sync + 'static {
    /// Checks `service` with `probe` once. Called with `http`, `tcp` and `exec` probes only.
    async fn probe(&self, service: &str, probe: &Probe) -> ProbeOutcome;
}

/// The real probes: HTTP GET with connection reuse, TCP connect, and exec.
#[derive(Debug, Clone)]
pub struct NetworkProber {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for NetworkProber {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

#[async_trait]
impl Prober for NetworkProber {
    async fn probe(&self, _service: &str, probe: &Probe) -> ProbeOutcome {
        match probe {
            Probe::Http(url) => self.http(url).await,
            Probe::Tcp(address) => tcp(address).await,
            Probe::Exec(command) => exec(command).await,
            Probe::Heartbeat => {
                ProbeOutcome::fail(FailureReason::Error, "heartbeat probes are answered by the actor")
            }
        }
    }
}

impl NetworkProber {
    /// One HTTP probe, as a CLIENT span (OTel HTTP semantic conventions) inside the check's span, which is
    /// what its `traceparent` names: the probed service's server span joins the check's trace.
    async fn http(&self, url: &str) -> ProbeOutcome {
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => return ProbeOutcome::fail(FailureReason::Error, format!("bad URL {url}: {error}")),
        };
        let parent = tracing::Span::current();
        if parent.is_disabled() || !crate::telemetry::trace::is_sampled(&parent) {
            // An untraced check (a startup probe) or one not sampled: no span of its own either (the
            // traceparent still says "not sampled" to the service).
            return self.http_request(url, uri).await;
        }
        let span = tracing::info_span!(
            "GET",
            otel.kind = "client",
            http.request.method = "GET",
            url.full = url,
            server.address = uri.host().unwrap_or_default(),
            server.port = i64::from(uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 })),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let outcome = self.http_request(url, uri).instrument(span.clone()).await;
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

    async fn http_request(&self, url: &str, uri: Uri) -> ProbeOutcome {
        let request = hyper::Request::get(uri)
            .header(
                hyper::header::USER_AGENT,
                concat!("fog-orchestrator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new());
        let mut request = match request {
            Ok(request) => request,
            Err(error) => return ProbeOutcome::fail(FailureReason::Error, format!("bad request: {error}")),
        };
        crate::telemetry::trace::inject(request.headers_mut());
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(error) if error.is_connect() => {
                return ProbeOutcome::fail(FailureReason::Connect, format!("GET {url}: cannot connect"));
            }
            Err(error) => return ProbeOutcome::fail(FailureReason::Error, format!("GET {url}: {error}")),
        };
        let status = response.status();
        // Read the body (bounded) so the connection can be reused for the next check.
        let body = match Limited::new(response.into_body(), READ_LIMIT).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let outcome = if status.is_success() {
            ProbeOutcome::pass("Service health check passed")
        } else {
            ProbeOutcome::fail(
                FailureReason::HttpStatus,
                format!("GET {url} answered {status}: {}", quote(&body)),
            )
        };
        outcome.with_detail("http_status", status.as_u16())
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
    let output = Command::new(program)
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
