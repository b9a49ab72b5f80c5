//! The merged configuration tree → validated settings, recording every problem on the way.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::fields::{Problems, Table};
use super::schema::{
    ApiSettings, HealthSettings, LogFormat, OtlpProtocol, RegistrySettings, RestartPolicy, ServiceSpec,
    ShutdownSettings, TelemetrySettings,
};
use super::service::service;
use crate::graph::Node;

const TOP_LEVEL: &[&str] = &["api", "telemetry", "defaults", "registry", "services"];
const API: &[&str] = &["listen", "token", "allow_unauthenticated"];
const TELEMETRY: &[&str] = &["log_format", "otlp_endpoint", "otlp_protocol"];
const DEFAULTS: &[&str] = &["health", "restart", "shutdown"];
pub(super) const HEALTH: &[&str] = &[
    "check_interval",
    "timeout",
    "failure_threshold",
    "recovery_threshold",
    "auto_recovery",
    "startup_interval",
    "startup_timeout",
];
pub(super) const PROBES: &[&str] = &["http", "tcp", "exec", "heartbeat"];
pub(super) const RESTART: &[&str] = &[
    "max_attempts",
    "initial_delay",
    "backoff_base",
    "max_delay",
    "jitter",
    "reset_after",
];
pub(super) const SHUTDOWN: &[&str] = &["timeout"];
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

/// The `[defaults.*]` sections every service inherits.
pub(super) struct Inherited {
    pub health: Option<HealthSettings>,
    pub restart: Option<RestartPolicy>,
    pub shutdown: Option<ShutdownSettings>,
}

/// Reads `key` from `table` when it is set there, else takes the inherited value.
fn setting<'a, T>(
    table: Option<&Table<'a>>,
    inherited: Option<T>,
    key: &str,
    problems: &mut Problems,
    read: impl FnOnce(&Table<'a>, &str, &mut Problems) -> Option<T>,
) -> Option<T> {
    match table {
        Some(table) if table.has(key) => read(table, key, problems),
        _ => inherited,
    }
}

/// Whether a check should be reported for this table: always for `[defaults.*]` (no inherited values),
/// and for a service only when it sets one of `keys` itself, so a bad default is reported once.
fn sets_any(table: Option<&Table<'_>>, inherited: bool, keys: &[&str]) -> bool {
    !inherited || table.is_some_and(|t| keys.iter().any(|k| t.has(k)))
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

/// A duration as quoted in messages: `"30s"`.
fn quote(duration: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(duration))
}

/// Records a problem when a duration that must be positive is zero.
fn positive(
    table: &Table<'_>,
    key: &str,
    value: Option<Duration>,
    problems: &mut Problems,
) -> Option<Duration> {
    let value = value?;
    if value.is_zero() {
        problems.push(
            table.key_path(key),
            format!("{} must be longer than zero", quote(value)),
        );
        return None;
    }
    Some(value)
}

/// Health settings of `table` over `inherited` (`None` for `[defaults.health]` itself).
pub(super) fn health(
    table: Option<&Table<'_>>,
    inherited: Option<&HealthSettings>,
    problems: &mut Problems,
) -> Option<HealthSettings> {
    let base = |pick: fn(&HealthSettings) -> Duration| inherited.map(pick);
    let duration = |key: &str, inherited: Option<Duration>, problems: &mut Problems| {
        let value = setting(table, inherited, key, problems, Table::duration);
        match table {
            Some(t) if t.has(key) => positive(t, key, value, problems),
            _ => value,
        }
    };
    let check_interval = duration("check_interval", base(|h| h.check_interval), problems);
    let timeout = duration("timeout", base(|h| h.timeout), problems);
    let startup_interval = duration("startup_interval", base(|h| h.startup_interval), problems);
    let startup_timeout = duration("startup_timeout", base(|h| h.startup_timeout), problems);

    let threshold = |key: &str, inherited: Option<u32>, problems: &mut Problems| {
        let value = setting(table, inherited, key, problems, Table::count)?;
        if value == 0 {
            if let Some(t) = table {
                problems.push(
                    t.key_path(key),
                    "0 is not allowed: a threshold counts checks, at least 1",
                );
            }
            return None;
        }
        Some(value)
    };
    let failure_threshold = threshold(
        "failure_threshold",
        inherited.map(|h| h.failure_threshold),
        problems,
    );
    let recovery_threshold = threshold(
        "recovery_threshold",
        inherited.map(|h| h.recovery_threshold),
        problems,
    );
    let auto_recovery = setting(
        table,
        inherited.map(|h| h.auto_recovery),
        "auto_recovery",
        problems,
        Table::boolean,
    );

    let (check_interval, timeout) = (check_interval?, timeout?);
    if timeout >= check_interval && sets_any(table, inherited.is_some(), &["timeout", "check_interval"]) {
        let path = table.map_or_else(|| "health.timeout".to_owned(), |t| t.key_path("timeout"));
        problems.push(
            path,
            format!(
                "{} must be shorter than check_interval {}",
                quote(timeout),
                quote(check_interval)
            ),
        );
        return None;
    }
    Some(HealthSettings {
        check_interval,
        timeout,
        failure_threshold: failure_threshold?,
        recovery_threshold: recovery_threshold?,
        auto_recovery: auto_recovery?,
        startup_interval: startup_interval?,
        startup_timeout: startup_timeout?,
    })
}

/// Restart policy of `table` over `inherited` (`None` for `[defaults.restart]` itself).
pub(super) fn restart(
    table: Option<&Table<'_>>,
    inherited: Option<&RestartPolicy>,
    problems: &mut Problems,
) -> Option<RestartPolicy> {
    let max_attempts = setting(
        table,
        inherited.map(|r| r.max_attempts),
        "max_attempts",
        problems,
        Table::count,
    );
    let initial_delay = setting(
        table,
        inherited.map(|r| r.initial_delay),
        "initial_delay",
        problems,
        Table::duration,
    );
    let max_delay = setting(
        table,
        inherited.map(|r| r.max_delay),
        "max_delay",
        problems,
        Table::duration,
    );
    let reset_after = setting(
        table,
        inherited.map(|r| r.reset_after),
        "reset_after",
        problems,
        Table::duration,
    );

    let backoff_base = setting(
        table,
        inherited.map(|r| r.backoff_base),
        "backoff_base",
        problems,
        Table::number,
    )
    .filter(|base| {
        let ok = *base >= 1.0;
        if !ok && let Some(t) = table {
            problems.push(
                t.key_path("backoff_base"),
                format!("{base} must be at least 1.0 (delays may not shrink between attempts)"),
            );
        }
        ok
    });
    let jitter = setting(
        table,
        inherited.map(|r| r.jitter),
        "jitter",
        problems,
        Table::number,
    )
    .filter(|jitter| {
        let ok = (0.0..=1.0).contains(jitter);
        if !ok && let Some(t) = table {
            problems.push(t.key_path("jitter"), format!("{jitter} is outside 0.0..=1.0"));
        }
        ok
    });
    Some(RestartPolicy {
        max_attempts: max_attempts?,
        initial_delay: initial_delay?,
        backoff_base: backoff_base?,
        max_delay: max_delay?,
        jitter: jitter?,
        reset_after: reset_after?,
    })
}

/// Shutdown settings of `table` over `inherited` (`None` for `[defaults.shutdown]` itself).
pub(super) fn shutdown(
    table: Option<&Table<'_>>,
    inherited: Option<&ShutdownSettings>,
    problems: &mut Problems,
) -> Option<ShutdownSettings> {
    let timeout = setting(
        table,
        inherited.map(|s| s.timeout),
        "timeout",
        problems,
        Table::duration,
    )?;
    Some(ShutdownSettings { timeout })
}
