//! The validated configuration types. Every value here has passed validation: durations are positive where
//! they must be, thresholds are at least 1, probes are well-formed, names are valid.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::name::ServiceName;

/// `[api]`: the REST API and `/metrics` server.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// Address the hyper server listens on.
    pub listen: SocketAddr,
    /// Bearer token every POST/DELETE must carry, when set.
    pub token: Option<String>,
    /// Allow listening on a non-loopback address without a token.
    pub allow_unauthenticated: bool,
    /// Extra host names browsers may use in `Host` (`.example.com` also allows its subdomains).
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://grafana.example.com`) whose pages may call the API.
    pub allowed_origins: Vec<String>,
    /// Serve the built-in page at `/`.
    pub ui: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The OTLP transport used to export traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (usually port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (usually port 4318, path `/v1/traces`).
    Http,
}

/// `[telemetry]`: logs and trace export.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// Log line format.
    pub log_format: LogFormat,
    /// OTLP endpoint; `None` disables trace export (the `OTEL_EXPORTER_OTLP_*` variables may still set one).
    pub otlp_endpoint: Option<String>,
    /// OTLP transport.
    pub otlp_protocol: OtlpProtocol,
    /// The share of steady-state health checks traced (0.0 to 1.0); a check not traced that fails is
    /// recorded afterwards, so failures are always exported (as is every other span, as far as
    /// `OTEL_TRACES_SAMPLER` allows).
    pub check_sample_ratio: f64,
}

/// `[defaults.health]` and `[services.NAME.health]`: how often and how strictly a service is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Time between checks once the service is ready.
    pub check_interval: Duration,
    /// A check that takes longer has failed.
    pub timeout: Duration,
    /// Consecutive failures that make a service unhealthy.
    pub failure_threshold: u32,
    /// Consecutive passes that make an unhealthy service healthy again.
    pub recovery_threshold: u32,
    /// Restart the service when it turns unhealthy.
    pub auto_recovery: bool,
    /// Probe cadence while starting, until the first pass.
    pub startup_interval: Duration,
    /// A start that has not passed a check within this time has failed.
    pub startup_timeout: Duration,
}

/// `[defaults.restart]` and `[services.NAME.restart]`: automatic restarts with exponential backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// Automatic restarts before the service is marked failed.
    pub max_attempts: u32,
    /// Delay before the first restart.
    pub initial_delay: Duration,
    /// Factor between successive delays (at least 1).
    pub backoff_base: f64,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Random spread of each delay, as a fraction in `0.0..=1.0`.
    pub jitter: f64,
    /// Healthy this long resets the attempt counter; zero means only a manual restart resets it.
    pub reset_after: Duration,
}

/// `[defaults.shutdown]` and `[services.NAME.shutdown]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownSettings {
    /// Time between SIGTERM and SIGKILL.
    pub timeout: Duration,
}

/// `[defaults.output]` and `[services.NAME.output]`: where a service's stdout and stderr go.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSettings {
    /// Lines per second (both streams together) forwarded into the orchestrator's log; the rest are
    /// dropped and counted. 0 = no limit.
    pub rate_limit: u32,
    /// Write the output to this file instead of the orchestrator's log (per service only).
    pub file: Option<PathBuf>,
    /// Rotate the file when a write would take it past this many bytes.
    pub max_size: u64,
    /// Rotated files kept (`file.1` .. `file.N`); 0 truncates instead.
    pub backups: u32,
}

/// `[registry]`: heartbeats.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrySettings {
    /// How often services are expected to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// No heartbeat for this long means the service is not alive.
    pub heartbeat_timeout: Duration,
    /// Services that may register at run time (configured ones do not count).
    pub max_registered: u32,
}

/// `[cluster]`: fleet mode through etcd (DESIGN.md section 9); absent when `etcd_endpoints` is empty.
#[derive(Clone, PartialEq)]
pub struct ClusterSettings {
    /// etcd client URLs (`http://` or `https://`), tried in turn.
    pub etcd_endpoints: Vec<String>,
    /// The fleet's name: the key prefix `/fog-orchestrator/<name>/`.
    pub name: String,
    /// This node's name in the fleet (default: the host name).
    pub node: String,
    /// The lease this node's keys and elections hang on: a node silent for this long is gone.
    pub lease_ttl: Duration,
    /// The `http://host:port` other nodes and Prometheus reach this node's API at (default: `api.listen`).
    pub advertise_url: Option<String>,
    /// CA certificates (PEM) that etcd's certificate must chain to (default: the system's).
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for etcd's mutual TLS.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// etcd user name and password (etcd's auth).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for ClusterSettings {
    /// Everything but the etcd password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("etcd_endpoints", &self.etcd_endpoints)
            .field("name", &self.name)
            .field("node", &self.node)
            .field("lease_ttl", &self.lease_ttl)
            .field("advertise_url", &self.advertise_url)
            .field("ca_file", &self.ca_file)
            .field("client_identity", &self.client_identity)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish_non_exhaustive()
    }
}

/// How a service's health is checked: at most one probe per service.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// GET an `http://` or `https://` URL; statuses in its passing range pass.
    Http(HttpProbe),
    /// Connect to this `host:port`.
    Tcp(String),
    /// Call `grpc.health.v1.Health/Check` at this `host:port`; `SERVING` passes.
    Grpc(GrpcProbe),
    /// Run this program with its arguments; exit status 0 passes.
    Exec(Vec<String>),
    /// Passes while a heartbeat arrived within the registry's heartbeat timeout.
    Heartbeat,
}

/// A `grpc` probe: where, and which service to ask about (empty: the server as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcProbe {
    /// `host:port` of the gRPC server (plaintext HTTP/2).
    pub address: String,
    /// The `service` field of the request (`health.grpc_service`; default empty: the whole server).
    pub service: String,
}

/// An `http` probe: the URL, the statuses that pass, and for `https` how the server is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `http://` or `https://` URL.
    pub url: String,
    /// The lowest and highest status that pass (`health.http_status`; default 200 to 299).
    pub passing: (u16, u16),
    /// PEM file of the CA certificates trusted instead of the system's (`health.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (`health.tls_skip_verify`; warned about at start).
    pub skip_verify: bool,
    /// PEM client certificate chain and private key for mutual TLS (`health.client_cert`,
    /// `health.client_key`).
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl HttpProbe {
    /// A probe of `url` with the defaults: 2xx passes, the system's CAs, no client certificate.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            passing: (200, 299),
            ca_file: None,
            skip_verify: false,
            client_identity: None,
        }
    }

    /// Whether the URL is `https://`.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }
}

impl Probe {
    /// An `http` probe of `url` with the defaults (see [`HttpProbe::new`]).
    pub fn http(url: impl Into<String>) -> Self {
        Probe::Http(HttpProbe::new(url))
    }

    /// The probe's kind as used in metrics and spans (`http`, `tcp`, `grpc`, `exec`, `heartbeat`).
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Http(_) => "http",
            Probe::Tcp(_) => "tcp",
            Probe::Grpc(_) => "grpc",
            Probe::Exec(_) => "exec",
            Probe::Heartbeat => "heartbeat",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Http(http) => write!(f, "http {}", http.url),
            Probe::Tcp(address) => write!(f, "tcp {address}"),
            Probe::Grpc(grpc) if grpc.service.is_empty() => write!(f, "grpc {}", grpc.address),
            Probe::Grpc(grpc) => write!(f, "grpc {} {}", grpc.address, grpc.service),
            Probe::Exec(command) => write!(f, "exec {}", command.join(" ")),
            Probe::Heartbeat => f.write_str("heartbeat"),
        }
    }
}

/// One `[services.NAME]` table, with the defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// The table key: `[a-z0-9_-]`, 1 to 63 characters.
    pub name: ServiceName,
    /// Free-form type shown by the API; defaults to the name.
    pub service_type: String,
    /// Readiness needs every critical service running and healthy.
    pub critical: bool,
    /// Floor for the startup layer.
    pub priority: u32,
    /// Required dependencies, in declaration order.
    pub depends_on: Vec<String>,
    /// Optional dependencies that exist, in declaration order (unknown ones are dropped with a warning).
    pub optional_depends_on: Vec<String>,
    /// Program and arguments; `None` for an external service that is only probed.
    pub command: Option<Vec<String>>,
    /// Extra environment variables for the process, in declaration order.
    pub env: Vec<(String, String)>,
    /// Working directory for the process.
    pub working_dir: Option<PathBuf>,
    /// Free-form metadata published in the registry.
    pub metadata: Map<String, Value>,
    /// The health probe; `None` means ready as soon as the process started.
    pub probe: Option<Probe>,
    /// Effective health settings.
    pub health: HealthSettings,
    /// Effective restart policy.
    pub restart: RestartPolicy,
    /// Effective shutdown settings.
    pub shutdown: ShutdownSettings,
    /// Where its output goes.
    pub output: OutputSettings,
    /// Fleet mode: runs on exactly one node of the fleet at a time, the winner of an etcd election
    /// (DESIGN.md section 9). Without `[cluster]` it runs here, as any service.
    pub singleton: bool,
}

impl ServiceSpec {
    /// Whether the orchestrator owns a process for this service.
    pub fn is_external(&self) -> bool {
        self.command.is_none()
    }
}
