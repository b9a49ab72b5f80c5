//! Configuration: the file's shape, layering and validation into types that cannot be invalid.
//!
//! [`Source`] merges embedded defaults, a TOML file, `ORCHESTRATOR__*` environment variables and CLI
//! overrides; [`Config::load`] reads the merged tree into [`Config`], reporting **every** problem at once,
//! each naming its key path and value, and builds the [`DependencyGraph`] (which adds cycle and unknown
//! dependency problems to the same report).

mod diff;
mod fields;
mod parse;
mod schema;
mod sections;
mod service;
mod source;

use std::fmt;

pub use self::diff::{Change, Plan};
pub use crate::name::{MAX_SERVICE_NAME_LEN, ServiceName};
pub use schema::{
    ApiSettings, ClusterSettings, GrpcProbe, HealthSettings, HttpProbe, LogFormat, OtlpProtocol,
    OutputSettings, Probe, RegistrySettings, RestartPolicy, ServiceSpec, ShutdownSettings, TelemetrySettings,
};
pub use source::{ConfigFile, DEFAULT_CONFIG_FILE, EMBEDDED_FOG, ENV_PREFIX, ENV_SEPARATOR, Source};

use crate::graph::{DependencyGraph, GraphError};
use fields::Problems;

/// The exit code for a configuration error (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, such as `services.dao.health.timeout`.
    pub path: String,
    /// What is wrong, quoting the value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or is not valid TOML, or a layer could not be merged.
    #[error("cannot load configuration from {origin}: {message}")]
    Load {
        /// Which file.
        origin: String,
        /// What went wrong.
        message: String,
    },
    /// The configuration was read but breaks one or more rules.
    #[error("{}", describe_problems(origin, problems))]
    Invalid {
        /// Which file.
        origin: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn describe_problems(origin: &str, problems: &[Problem]) -> String {
    let count = problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    let mut text = format!("invalid configuration {origin} ({count} {noun}):");
    for problem in problems {
        text.push_str("\n  - ");
        text.push_str(&problem.to_string());
    }
    text
}

/// A validated configuration: settings, services in declaration order, and their dependency graph.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[api]`.
    pub api: ApiSettings,
    /// `[telemetry]`.
    pub telemetry: TelemetrySettings,
    /// `[registry]`.
    pub registry: RegistrySettings,
    /// `[cluster]`: fleet mode, when `etcd_endpoints` is set.
    pub cluster: Option<ClusterSettings>,
    /// `[services.*]` in declaration order, defaults applied.
    pub services: Vec<ServiceSpec>,
    /// The validated dependency graph of `services`.
    pub graph: DependencyGraph,
    /// Things worth saying that do not stop the configuration from being used.
    pub warnings: Vec<String>,
    /// Where the config file layer came from.
    pub origin: String,
}

impl Config {
    /// Merges `source`'s layers and validates the result.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let tree = source.merge()?;
        Self::from_tree(&tree, source.file().describe())
    }

    /// A short fingerprint of the effective configuration (settings and services, after layering and
    /// defaults; not the API token, not where it was read from): the same exactly when a reload would
    /// find nothing to change. `config_info{hash}` exports it.
    pub fn fingerprint(&self) -> String {
        let api = &self.api;
        let effective = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            api.listen,
            api.allowed_hosts,
            api.allowed_origins,
            api.allow_unauthenticated,
            self.telemetry,
            self.registry,
            self.cluster.as_ref().map(|cluster| (
                &cluster.etcd_endpoints,
                &cluster.name,
                &cluster.node,
                cluster.lease_ttl,
                &cluster.advertise_url,
            )),
            self.services
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, effective.as_bytes());
        digest.as_ref()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// `text` over the embedded defaults, ignoring the environment: for embedding programs and tests.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file = ConfigFile::Text {
            name: "inline configuration".to_owned(),
            text: text.to_owned(),
        };
        Self::load(&Source::new(file).with_env(Default::default()))
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|spec| spec.name == name)
    }

    fn from_tree(tree: &serde_json::Value, origin: String) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let mut warnings = Vec::new();
        let (parsed, nodes) = parse::parse(tree, &mut problems, &mut warnings);
        for spec in parsed.iter().flat_map(|parsed| &parsed.services) {
            if let Some(Probe::Http(http)) = &spec.probe
                && http.skip_verify
            {
                warnings.push(format!(
                    "services.{}.health.tls_skip_verify: the server's certificate is not verified (the probe's \
                     connection is encrypted, not authenticated)",
                    spec.name
                ));
            }
        }
        let graph = DependencyGraph::new(nodes).map_err(|errors| {
            for error in errors {
                let path = graph_error_path(&error);
                problems.push(path, error.to_string());
            }
        });
        let problems = problems.into_vec();
        match (parsed, graph) {
            (Some(parsed), Ok(graph)) if problems.is_empty() => Ok(Config {
                api: parsed.api,
                telemetry: parsed.telemetry,
                registry: parsed.registry,
                cluster: parsed.cluster,
                services: parsed.services,
                graph,
                warnings,
                origin,
            }),
            _ if problems.is_empty() => Err(ConfigError::Invalid {
                origin,
                problems: vec![Problem {
                    path: String::new(),
                    message: "incomplete configuration (a required setting is missing)".to_owned(),
                }],
            }),
            _ => Err(ConfigError::Invalid { origin, problems }),
        }
    }
}

/// The key path a graph error is about.
fn graph_error_path(error: &GraphError) -> String {
    match error {
        GraphError::DuplicateService(service) => format!("services.{service}"),
        GraphError::SelfDependency { service, kind }
        | GraphError::UnknownDependency { service, kind, .. } => {
            format!("services.{service}.{}", kind.config_key())
        }
        GraphError::Cycle { .. } => "services".to_owned(),
    }
}

#[cfg(test)]
mod tests;
