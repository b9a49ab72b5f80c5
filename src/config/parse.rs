//! The merged configuration tree → validated settings, recording every problem on the way.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde_json::Value;

use super::fields::{Problems, Table};
use super::schema::{
    ApiSettings, ClusterSettings, LogFormat, OtlpProtocol, RegistrySettings, ServiceSpec, TelemetrySettings,
};
use super::sections::{
    HEALTH, Inherited, OUTPUT, RESTART, SHUTDOWN, health, output, positive, quote, restart, shutdown,
};
use super::service::service;
use crate::graph::Node;

const TOP_LEVEL: &[&str] = &["api", "telemetry", "defaults", "registry", "cluster", "services"];
const API: &[&str] = &[
    "listen",
    "token",
    "allow_unauthenticated",
    "allowed_hosts",
    "allowed_origins",
    "ui",
];
const TELEMETRY: &[&str] = &[
    "log_format",
    "otlp_endpoint",
    "otlp_protocol",
    "check_sample_ratio",
];
const DEFAULTS: &[&str] = &["health", "restart", "shutdown", "output"];
const REGISTRY: &[&str] = &["heartbeat_interval", "heartbeat_timeout", "max_registered"];
const CLUSTER: &[&str] = &[
    "etcd_endpoints",
    "name",
    "node",
    "lease_ttl",
    "advertise_url",
    "ca_file",
    "client_cert",
    "client_key",
    "username",
    "password",
];

/// Everything read from the tree, before the dependency graph is built.
pub(super) struct Parsed {
    pub api: ApiSettings,
    pub telemetry: TelemetrySettings,
    pub registry: RegistrySettings,
    pub cluster: Option<ClusterSettings>,
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

    let cluster = match root.table("cluster", problems) {
        Some(table) => cluster(&table, problems, warnings),
        None if root.has("cluster") => None,
        None => Some(None),
    };

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
    let default_output = section("output", problems).and_then(|t| {
        t.deny_unknown(OUTPUT, problems);
        output(Some(&t), None, problems)
    });
    let inherited = Inherited {
        health: default_health,
        restart: default_restart,
        shutdown: default_shutdown,
        output: default_output,
    };

    let mut services = Vec::new();
    let mut nodes = Vec::new();
    let mut all_services_read = true;
    if let Some(table) = root.table("services", problems) {
        let known: HashSet<&str> = table.entries().map(|(name, _)| name.as_str()).collect();
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

    let parsed = match (api, telemetry, registry, cluster, all_services_read) {
        (Some(api), Some(telemetry), Some(registry), Some(cluster), true) => Some(Parsed {
            api,
            telemetry,
            registry,
            cluster,
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
    let ui = table.boolean("ui", problems)?;
    let allowed_hosts = allowed(
        table,
        "allowed_hosts",
        is_host_pattern,
        "a host name such as \"orchestrator.internal\" or \".example.com\"",
        problems,
    );
    let allowed_origins = allowed(
        table,
        "allowed_origins",
        is_origin,
        "an origin such as \"https://grafana.example.com\" (scheme, host, optional port; no path)",
        problems,
    );
    let (allowed_hosts, allowed_origins) = (allowed_hosts?, allowed_origins?);
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
        allowed_hosts,
        allowed_origins,
        ui,
    })
}

/// A list of `key` (empty when unset) whose every entry passes `valid`, else a problem per bad entry.
fn allowed(
    table: &Table<'_>,
    key: &str,
    valid: fn(&str) -> bool,
    expected: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    if !table.has(key) {
        return Some(Vec::new());
    }
    let entries = table.comma_list(key, problems)?;
    let mut ok = true;
    for entry in &entries {
        if !valid(entry) {
            problems.push(table.key_path(key), format!("{entry:?} is not {expected}"));
            ok = false;
        }
    }
    ok.then_some(entries)
}

/// An `http://` or `https://` URL (the scheme is all that is checked; the rest is the server's to judge).
fn is_http_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// A host name, or `.domain` for a domain and its subdomains.
fn is_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// `http://host[:port]` or `https://host[:port]`, as browsers send it in `Origin`.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((ip, rest)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let host = authority.split(':').next().unwrap_or_default();
            let ok = !host.starts_with('.') && is_host_pattern(host);
            (ok, &authority[host.len()..])
        }
    };
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
    matches!(scheme, "http" | "https") && host_ok && port_ok
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
        && !is_http_url(endpoint)
    {
        problems.push(
            table.key_path("otlp_endpoint"),
            format!("{endpoint:?} is not an http:// or https:// URL"),
        );
        return None;
    }
    let check_sample_ratio = table.number("check_sample_ratio", problems).filter(|ratio| {
        let ok = (0.0..=1.0).contains(ratio);
        if !ok {
            problems.push(
                table.key_path("check_sample_ratio"),
                format!("{ratio} is outside 0.0..=1.0"),
            );
        }
        ok
    });
    Some(TelemetrySettings {
        log_format: log_format?,
        otlp_endpoint,
        otlp_protocol: otlp_protocol?,
        check_sample_ratio: check_sample_ratio?,
    })
}

/// The most services the registry may accept at run time.
const MAX_REGISTERED: u32 = 100_000;

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
    let max_registered = table.count("max_registered", problems)?;
    if max_registered > MAX_REGISTERED {
        problems.push(
            table.key_path("max_registered"),
            format!("{max_registered} is above {MAX_REGISTERED}"),
        );
        return None;
    }
    Some(RegistrySettings {
        heartbeat_interval: interval,
        heartbeat_timeout: timeout,
        max_registered,
    })
}

/// The shortest `cluster.lease_ttl`: etcd's own minimum lease is a few seconds, and a node must renew its
/// lease several times within it.
const MIN_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The shortest `cluster.lease_ttl` that rides out an etcd leader election (without a warning): a node stops
/// its singletons once no renewal has been confirmed for half the granted TTL (`lease_ttl` less a second),
/// renewals go every fifth of it, and an election takes up to twice etcd's `--election-timeout` (1 s by
/// default). From 8 s, 0.3 × 7 s leaves 2.1 s for the election.
const STEADY_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(8);

/// `[cluster]`: `None` inside when fleet mode is off (no `etcd_endpoints`).
fn cluster(
    table: &Table<'_>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<Option<ClusterSettings>> {
    table.deny_unknown(CLUSTER, problems);
    let endpoints = if table.has("etcd_endpoints") {
        table.comma_list("etcd_endpoints", problems)?
    } else {
        Vec::new()
    };
    let mut ok = true;
    for endpoint in &endpoints {
        let valid = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !valid {
            problems.push(
                table.key_path("etcd_endpoints"),
                format!("{endpoint:?} is not an etcd client URL such as \"http://127.0.0.1:2379\""),
            );
            ok = false;
        }
    }
    let name = table.string("name", problems);
    let name = name.filter(|name| {
        let valid = crate::name::ServiceName::parse(name.clone()).is_ok();
        if !valid {
            problems.push(
                table.key_path("name"),
                format!("{name:?} is not a fleet name ([a-z0-9_-], 1 to 63 characters)"),
            );
        }
        valid
    });
    let node = match table.string("node", problems) {
        Some(node) => Some(node),
        None if table.has("node") => None,
        None => Some(crate::telemetry::otlp::host_name().to_ascii_lowercase()),
    };
    let node = node.filter(|node| {
        let valid = !node.is_empty()
            && node.len() <= 253
            && node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            problems.push(
                table.key_path("node"),
                format!(
                    "{node:?} is not a node name (letters, digits, '-', '_' and '.', 1 to 253 characters)"
                ),
            );
        }
        valid
    });
    let lease_ttl = table.duration("lease_ttl", problems).filter(|ttl| {
        let valid = *ttl >= MIN_LEASE_TTL && ttl.subsec_nanos() == 0;
        if !valid {
            problems.push(
                table.key_path("lease_ttl"),
                format!(
                    "{} must be whole seconds, at least {}",
                    quote(*ttl),
                    quote(MIN_LEASE_TTL)
                ),
            );
        }
        valid
    });
    let advertise_url = table.string("advertise_url", problems);
    if let Some(url) = &advertise_url
        && !is_http_url(url)
    {
        problems.push(
            table.key_path("advertise_url"),
            format!("{url:?} is not an http:// or https:// URL"),
        );
        ok = false;
    }
    let ca_file = table.string("ca_file", problems).map(std::path::PathBuf::from);
    let client_cert = table.string("client_cert", problems);
    let client_key = table.string("client_key", problems);
    let client_identity = match (client_cert, client_key) {
        (Some(cert), Some(key)) => Some((cert.into(), key.into())),
        (None, None) => None,
        _ => {
            problems.push(table.path(), "client_cert and client_key go together");
            ok = false;
            None
        }
    };
    let username = table.string("username", problems);
    let password = table.string("password", problems);
    let credentials = match (username, password) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => {
            problems.push(table.path(), "username and password go together");
            ok = false;
            None
        }
    };
    let (name, node, lease_ttl) = (name?, node?, lease_ttl?);
    if !ok {
        return None;
    }
    if endpoints.is_empty() {
        return Some(None);
    }
    if lease_ttl < STEADY_LEASE_TTL {
        warnings.push(format!(
            "{}: {} is shorter than {}: a node stops its singletons when no lease renewal was confirmed for \
             half the lease, and an etcd leader election (losing etcd's leader) takes up to twice etcd's \
             --election-timeout, 2 s by default, so the singletons may move when etcd's leader is lost",
            table.key_path("lease_ttl"),
            quote(lease_ttl),
            quote(STEADY_LEASE_TTL)
        ));
    }
    Some(Some(ClusterSettings {
        etcd_endpoints: endpoints,
        name,
        node,
        lease_ttl,
        advertise_url,
        ca_file,
        client_identity,
        credentials,
    }))
}
