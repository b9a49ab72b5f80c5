//! The merged configuration tree → validated settings, recording every problem on the way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::fields::{Problems, Table, scalar_text, show};
use super::schema::{
    ApiSettings, HealthSettings, LogFormat, OtlpProtocol, Probe, RegistrySettings, RestartPolicy,
    ServiceSpec, ShutdownSettings, TelemetrySettings,
};
use crate::graph::Node;

const TOP_LEVEL: &[&str] = &["api", "telemetry", "defaults", "registry", "services"];
const API: &[&str] = &["listen", "token", "allow_unauthenticated"];
const TELEMETRY: &[&str] = &["log_format", "otlp_endpoint", "otlp_protocol"];
const DEFAULTS: &[&str] = &["health", "restart", "shutdown"];
const HEALTH: &[&str] = &[
    "check_interval",
    "timeout",
    "failure_threshold",
    "recovery_threshold",
    "auto_recovery",
    "startup_interval",
    "startup_timeout",
];
const PROBES: &[&str] = &["http", "tcp", "exec", "heartbeat"];
const RESTART: &[&str] = &[
    "max_attempts",
    "initial_delay",
    "backoff_base",
    "max_delay",
    "jitter",
    "reset_after",
];
const SHUTDOWN: &[&str] = &["timeout"];
const REGISTRY: &[&str] = &["heartbeat_interval", "heartbeat_timeout"];
const SERVICE: &[&str] = &[
    "type",
    "critical",
    "priority",
    "depends_on",
    "optional_depends_on",
    "command",
    "env",
    "working_dir",
    "metadata",
    "health",
    "restart",
    "shutdown",
];

/// Longest allowed service name (a DNS label, so names fit in hostnames and label values).
pub const MAX_SERVICE_NAME_LEN: usize = 63;

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
struct Inherited {
    health: Option<HealthSettings>,
    restart: Option<RestartPolicy>,
    shutdown: Option<ShutdownSettings>,
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
fn health(
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
fn restart(
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
fn shutdown(
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

/// Whether `name` is a valid service name: 1 to 63 characters of `a-z`, `0-9`, `_` and `-`.
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// One `[services.NAME]` table: the full spec when every key is valid, and the graph node in any case.
fn service(
    name: &str,
    table: &Table<'_>,
    known: &[&str],
    inherited: &Inherited,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Option<ServiceSpec>, Node) {
    table.deny_unknown(SERVICE, problems);
    let mut valid = true;
    if !is_valid_service_name(name) {
        problems.push(
            table.path(),
            format!(
                "invalid service name {name:?}: use 1 to {MAX_SERVICE_NAME_LEN} characters of a-z, 0-9, _ and -"
            ),
        );
        valid = false;
    }
    let service_type = table.string("type", problems);
    if service_type.as_deref().is_some_and(|t| t.trim().is_empty()) {
        problems.push(
            table.key_path("type"),
            "must not be empty (remove it to use the service name)",
        );
        valid = false;
    }
    let priority = if table.has("priority") {
        table.count("priority", problems)
    } else {
        Some(0)
    };
    let critical = if table.has("critical") {
        table.boolean("critical", problems)
    } else {
        Some(false)
    };

    let (depends_on, optional_depends_on) = dependencies(name, table, known, problems, warnings);
    let node = Node {
        name: name.to_owned(),
        service_type: service_type
            .clone()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| name.to_owned()),
        priority: priority.unwrap_or(0),
        depends_on: depends_on.clone().unwrap_or_default(),
        optional_depends_on: optional_depends_on.clone().unwrap_or_default(),
    };

    let command = command(table, problems);
    let env = env(table, problems);
    let working_dir = table.string("working_dir", problems).and_then(|dir| {
        if dir.is_empty() {
            problems.push(table.key_path("working_dir"), "must not be empty");
            return None;
        }
        Some(PathBuf::from(dir))
    });
    let working_dir_ok = !table.has("working_dir") || working_dir.is_some();
    let metadata = match table.table("metadata", problems) {
        Some(meta) => Some(
            meta.entries()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<_, _>>(),
        ),
        None if table.has("metadata") => None,
        None => Some(Map::new()),
    };

    let health_table = table.table("health", problems);
    let health_ok = !table.has("health") || health_table.is_some();
    if let Some(t) = &health_table {
        let allowed: Vec<&str> = HEALTH.iter().chain(PROBES).copied().collect();
        t.deny_unknown(&allowed, problems);
    }
    let probe = probe(health_table.as_ref(), problems);
    let health = inherited
        .health
        .as_ref()
        .and_then(|base| health(health_table.as_ref(), Some(base), problems));

    let restart = section(
        table,
        "restart",
        RESTART,
        inherited.restart.as_ref(),
        restart,
        problems,
    );
    let shutdown = section(
        table,
        "shutdown",
        SHUTDOWN,
        inherited.shutdown.as_ref(),
        shutdown,
        problems,
    );

    let spec = (|| {
        if !(valid && working_dir_ok && health_ok) {
            return None;
        }
        Some(ServiceSpec {
            name: name.to_owned(),
            service_type: service_type.unwrap_or_else(|| name.to_owned()),
            critical: critical?,
            priority: priority?,
            depends_on: depends_on?,
            optional_depends_on: optional_depends_on?,
            command: command?,
            env: env?,
            working_dir,
            metadata: metadata?,
            probe: probe?,
            health: health?,
            restart: restart?,
            shutdown: shutdown?,
        })
    })();
    (spec, node)
}

/// A per-service override section (`restart`, `shutdown`) over its inherited default.
fn section<T>(
    service: &Table<'_>,
    key: &str,
    allowed: &[&str],
    inherited: Option<&T>,
    read: fn(Option<&Table<'_>>, Option<&T>, &mut Problems) -> Option<T>,
    problems: &mut Problems,
) -> Option<T> {
    let table = service.table(key, problems);
    if service.has(key) && table.is_none() {
        return None;
    }
    if let Some(t) = &table {
        t.deny_unknown(allowed, problems);
    }
    read(table.as_ref(), Some(inherited?), problems)
}

/// `depends_on` and `optional_depends_on`: duplicates and overlaps are errors, unknown optional dependencies
/// are dropped with a warning. Unknown required ones and self-dependencies are left to the graph.
fn dependencies(
    name: &str,
    table: &Table<'_>,
    known: &[&str],
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let list = |key: &str, problems: &mut Problems| -> Option<Vec<String>> {
        if !table.has(key) {
            return Some(Vec::new());
        }
        let items = table.string_list(key, problems)?;
        let mut seen: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            if seen.contains(&item) {
                problems.push(table.key_path(key), format!("{item:?} is listed more than once"));
            } else {
                seen.push(item);
            }
        }
        Some(seen)
    };
    let required = list("depends_on", problems);
    let optional = list("optional_depends_on", problems).map(|optional| {
        optional
            .into_iter()
            .filter(|dependency| {
                if required.as_ref().is_some_and(|r| r.contains(dependency)) {
                    problems.push(
                        table.key_path("optional_depends_on"),
                        format!("{dependency:?} is also in depends_on: a dependency is either required or optional"),
                    );
                    return false;
                }
                if !known.contains(&dependency.as_str()) {
                    warnings.push(format!(
                        "{}: service {name:?} optionally depends on unknown service {dependency:?}; ignored",
                        table.key_path("optional_depends_on")
                    ));
                    return false;
                }
                true
            })
            .collect()
    });
    (required, optional)
}

/// `command`: absent for an external service; else a non-empty program and its arguments.
fn command(table: &Table<'_>, problems: &mut Problems) -> Option<Option<Vec<String>>> {
    if !table.has("command") {
        return Some(None);
    }
    let command = table.string_list("command", problems)?;
    match command.first() {
        Some(program) if !program.is_empty() => Some(Some(command)),
        Some(_) => {
            problems.push(
                table.key_path("command"),
                "the program (first element) is an empty string",
            );
            None
        }
        None => {
            problems.push(
                table.key_path("command"),
                "[] names no program (remove the key for an external, probe-only service)",
            );
            None
        }
    }
}

/// `env`: variable names to values; numbers and booleans are taken as their text.
fn env(table: &Table<'_>, problems: &mut Problems) -> Option<Vec<(String, String)>> {
    if !table.has("env") {
        return Some(Vec::new());
    }
    let env = table.table("env", problems)?;
    let mut vars = Vec::new();
    let mut ok = true;
    for (key, value) in env.entries() {
        let path = env.key_path(key);
        if key.is_empty() || key.contains(['=', '\0']) {
            problems.push(&path, format!("{key:?} is not a valid environment variable name"));
            ok = false;
            continue;
        }
        match scalar_text(&path, value, problems) {
            Some(text) if !text.contains('\0') => vars.push((key.clone(), text)),
            Some(_) => {
                problems.push(&path, "contains a NUL character");
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(vars)
}

/// The probe keys of a `[services.NAME.health]` table: at most one.
fn probe(table: Option<&Table<'_>>, problems: &mut Problems) -> Option<Option<Probe>> {
    let Some(table) = table else {
        return Some(None);
    };
    let set: Vec<&str> = PROBES.iter().copied().filter(|key| table.has(key)).collect();
    if set.len() > 1 {
        problems.push(
            table.path(),
            format!(
                "more than one probe ({}): a service has exactly one probe, or none",
                set.join(", ")
            ),
        );
        return None;
    }
    let Some(&kind) = set.first() else {
        return Some(None);
    };
    let path = table.key_path(kind);
    let probe = match kind {
        "http" => table
            .string("http", problems)
            .and_then(|url| http_probe(&path, url, problems)),
        "tcp" => table
            .string("tcp", problems)
            .and_then(|address| tcp_probe(&path, address, problems)),
        "exec" => table.string_list("exec", problems).and_then(|command| {
            if command.first().is_some_and(|program| !program.is_empty()) {
                Some(Probe::Exec(command))
            } else {
                problems.push(&path, "names no program");
                None
            }
        }),
        _ => {
            let on = table.boolean("heartbeat", problems)?;
            return Some(on.then_some(Probe::Heartbeat));
        }
    };
    probe.map(Some)
}

fn http_probe(path: &str, url: String, problems: &mut Problems) -> Option<Probe> {
    let Some(rest) = url.strip_prefix("http://") else {
        let hint = if url.starts_with("https://") {
            "https probes are not supported yet; probe a plain http:// health port"
        } else {
            "is not an http:// URL"
        };
        problems.bad_value(path, &Value::String(url), hint);
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        problems.bad_value(path, &Value::String(url), "has no valid host");
        return None;
    }
    Some(Probe::Http(url))
}

fn tcp_probe(path: &str, address: String, problems: &mut Problems) -> Option<Probe> {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        problems.push(
            path,
            format!("{} is not a host:port address", show(&Value::String(address))),
        );
        return None;
    }
    Some(Probe::Tcp(address))
}
