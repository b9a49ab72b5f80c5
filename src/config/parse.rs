//! The merged configuration tree → validated settings, recording every problem on the way.

use std::net::SocketAddr;

use serde_json::Value;

use super::fields::{Problems, Table};
use super::schema::{ApiSettings, LogFormat, OtlpProtocol, RegistrySettings, ServiceSpec, TelemetrySettings};
use super::sections::{HEALTH, Inherited, RESTART, SHUTDOWN, health, positive, quote, restart, shutdown};
use super::service::service;
use crate::graph::Node;

const TOP_LEVEL: &[&str] = &["api", "telemetry", "defaults", "registry", "services"];
const API: &[&str] = &["listen", "token", "allow_unauthenticated"];
const TELEMETRY: &[&str] = &["log_format", "otlp_endpoint", "otlp_protocol"];
const DEFAULTS: &[&str] = &["health", "restart", "shutdown"];
const REGISTRY: &[&str] = &["heartbeat_interval", "heartbeat_timeout"];

/// Everything read from the tree, before the dependency graph is built.
pub(super) struct Parsed {
    pub api: ApiSettings,
    pub telemetry: TelemetrySettings,
    pub registry: RegistrySettings,
    pub services: Vec<ServiceSpec>,
}

/// Reads the whole tree. Returns the graph's input even when other parts failed, so dependency problems are
/// reported in the same run as every other problem.
pub(super) fn parse(
    root: &Value,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Option<Parsed>, Vec<Node>) {
    let Some(root) = Table::new(String::new(), root, problems) else {
        return (None, Vec::new());
    };
    root.deny_unknown(TOP_LEVEL, problems);

    let api = root.table("api", problems).and_then(|t| api(&t, problems));
    let telemetry = root
        .table("telemetry", problems)
        .and_then(|t| telemetry(&t, problems));
    let registry = root
        .table("registry", problems)
        .and_then(|t| registry(&t, problems));

    let defaults = root.table("defaults", problems);
    if let Some(defaults) = &defaults {
        defaults.deny_unknown(DEFAULTS, problems);
    }
    let section = |key: &str, problems: &mut Problems| defaults.as_ref().and_then(|d| d.table(key, problems));
    let default_health = section("health", problems).and_then(|t| {
        t.deny_unknown(HEALTH, problems);
        health(Some(&t), None, problems)
    });
    let default_restart = section("restart", problems).and_then(|t| {
        t.deny_unknown(RESTART, problems);
        restart(Some(&t), None, problems)
    });
    let default_shutdown = section("shutdown", problems).and_then(|t| {
        t.deny_unknown(SHUTDOWN, problems);
        shutdown(Some(&t), None, problems)
    });
    let inherited = Inherited {
        health: default_health,
        restart: default_restart,
        shutdown: default_shutdown,
    };

    let mut services = Vec::new();
    let mut nodes = Vec::new();
    let mut all_services_read = true;
    if let Some(table) = root.table("services", problems) {
        let known: Vec<&str> = table.entries().map(|(name, _)| name.as_str()).collect();
        for (name, value) in table.entries() {
            let Some(service_table) = Table::new(table.key_path(name), value, problems) else {
                all_services_read = false;
                continue;
            };
            let (spec, node) = service(name, &service_table, &known, &inherited, problems, warnings);
            nodes.push(node);
            match spec {
                Some(spec) => services.push(spec),
                None => all_services_read = false,
            }
        }
    }

    let parsed = match (api, telemetry, registry, all_services_read) {
        (Some(api), Some(telemetry), Some(registry), true) => Some(Parsed {
            api,
            telemetry,
            registry,
            services,
        }),
        _ => None,
    };
    (parsed, nodes)
}

fn api(table: &Table<'_>, problems: &mut Problems) -> Option<ApiSettings> {
    table.deny_unknown(API, problems);
    let listen_path = table.key_path("listen");
    let listen = table.string("listen", problems).and_then(|text| {
        text.parse::<SocketAddr>().map_or_else(
            |_| {
                problems.push(
                    &listen_path,
                    format!("{text:?} is not a socket address such as \"127.0.0.1:8400\""),
                );
                None
            },
            Some,
        )
    });
    let token = table.string("token", problems);
    if token.as_deref().is_some_and(str::is_empty) {
        problems.push(
            table.key_path("token"),
            "must not be empty (remove the key to disable authentication)",
        );
    }
    let allow_unauthenticated = table.boolean("allow_unauthenticated", problems)?;
    let listen = listen?;
    if !listen.ip().is_loopback() && token.is_none() && !allow_unauthenticated {
        problems.push(
            listen_path,
            format!(
                "\"{listen}\" is not a loopback address and api.token is not set: set a token, or set \
                 api.allow_unauthenticated = true to serve the API to the network without authentication"
            ),
        );
        return None;
    }
    Some(ApiSettings {
        listen,
        token: token.filter(|t| !t.is_empty()),
        allow_unauthenticated,
    })
}

fn telemetry(table: &Table<'_>, problems: &mut Problems) -> Option<TelemetrySettings> {
    table.deny_unknown(TELEMETRY, problems);
    let log_format = table
        .string("log_format", problems)
        .and_then(|text| match text.as_str() {
            "pretty" => Some(LogFormat::Pretty),
            "json" => Some(LogFormat::Json),
            _ => {
                problems.push(
                    table.key_path("log_format"),
                    format!("{text:?} is not \"pretty\" or \"json\""),
                );
                None
            }
        });
    let otlp_protocol = table
        .string("otlp_protocol", problems)
        .and_then(|text| match text.as_str() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http" => Some(OtlpProtocol::Http),
            _ => {
                problems.push(
                    table.key_path("otlp_protocol"),
                    format!("{text:?} is not \"grpc\" or \"http\""),
                );
                None
            }
        });
    let otlp_endpoint = table.string("otlp_endpoint", problems);
    if let Some(endpoint) = &otlp_endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        problems.push(
            table.key_path("otlp_endpoint"),
            format!("{endpoint:?} is not an http:// or https:// URL"),
        );
        return None;
    }
    Some(TelemetrySettings {
        log_format: log_format?,
        otlp_endpoint,
        otlp_protocol: otlp_protocol?,
    })
}

fn registry(table: &Table<'_>, problems: &mut Problems) -> Option<RegistrySettings> {
    table.deny_unknown(REGISTRY, problems);
    let interval = table.duration("heartbeat_interval", problems);
    let timeout = table.duration("heartbeat_timeout", problems);
    let interval = positive(table, "heartbeat_interval", interval, problems)?;
    let timeout = positive(table, "heartbeat_timeout", timeout, problems)?;
    if timeout <= interval {
        problems.push(
            table.key_path("heartbeat_timeout"),
            format!(
                "{} must be longer than heartbeat_interval {} (a service would be declared dead between two \
                 heartbeats)",
                quote(timeout),
                quote(interval)
            ),
        );
        return None;
    }
    Some(RegistrySettings {
        heartbeat_interval: interval,
        heartbeat_timeout: timeout,
    })
}
