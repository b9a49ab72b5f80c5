//! One `[services.NAME]` table: name, dependencies, command, environment, probe and per-service overrides.

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::fields::{Problems, Table, scalar_text, show};
use super::schema::{GrpcProbe, HttpProbe, Probe, ServiceSpec};
use super::sections::{
    GRPC_OPTIONS, HEALTH, HTTP_OPTIONS, Inherited, OUTPUT, PROBES, RESTART, SHUTDOWN, health, output,
    restart, shutdown,
};
use crate::graph::Node;
use crate::name::ServiceName;

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
    "output",
    "singleton",
];

/// The highest `priority`: a layer floor far above any real graph's depth only makes empty layers.
pub const MAX_PRIORITY: u32 = 10_000;

/// One `[services.NAME]` table: the full spec when every key is valid, and the graph node in any case.
pub(super) fn service(
    name: &str,
    table: &Table<'_>,
    known: &HashSet<&str>,
    inherited: &Inherited,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Option<ServiceSpec>, Node) {
    table.deny_unknown(SERVICE, problems);
    let mut valid = true;
    let checked = ServiceName::parse(name);
    if let Err(invalid) = &checked {
        problems.push(table.path(), invalid.to_string());
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
        table.count("priority", problems).filter(|&priority| {
            let ok = priority <= MAX_PRIORITY;
            if !ok {
                problems.push(
                    table.key_path("priority"),
                    format!("{priority} is above the highest priority, {MAX_PRIORITY}"),
                );
            }
            ok
        })
    } else {
        Some(0)
    };
    let critical = if table.has("critical") {
        table.boolean("critical", problems)
    } else {
        Some(false)
    };
    let singleton = if table.has("singleton") {
        table.boolean("singleton", problems)
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
        let allowed: Vec<&str> = HEALTH
            .iter()
            .chain(PROBES)
            .chain(HTTP_OPTIONS)
            .chain(GRPC_OPTIONS)
            .copied()
            .collect();
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
    let output = section(
        table,
        "output",
        OUTPUT,
        inherited.output.as_ref(),
        output,
        problems,
    );

    let singleton_ok = !(singleton == Some(true) && matches!(command, Some(None)));
    if !singleton_ok {
        problems.push(
            table.key_path("singleton"),
            "a singleton needs a command: only a process the orchestrator starts can be run on one node and \
             fenced (an external service is only probed, an in-process one cannot be killed)",
        );
    }
    let spec = (|| {
        if !(valid && working_dir_ok && health_ok && singleton_ok) {
            return None;
        }
        Some(ServiceSpec {
            name: checked.ok()?,
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
            output: output?,
            singleton: singleton?,
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
    known: &HashSet<&str>,
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
                if !known.contains(dependency.as_str()) {
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
        if let Some(key) = HTTP_OPTIONS.iter().chain(GRPC_OPTIONS).find(|key| table.has(key)) {
            problems.push(
                table.key_path(key),
                "applies to a probe, and this service has none",
            );
            return None;
        }
        return Some(None);
    };
    for (options, owner) in [(HTTP_OPTIONS, "http"), (GRPC_OPTIONS, "grpc")] {
        if kind != owner
            && let Some(key) = options.iter().find(|key| table.has(key))
        {
            problems.push(
                table.key_path(key),
                format!("applies to {owner} probes, not to {kind}"),
            );
            return None;
        }
    }
    let path = table.key_path(kind);
    let probe = match kind {
        "http" => table
            .string("http", problems)
            .and_then(|url| http_probe(table, &path, url, problems)),
        "tcp" => table
            .string("tcp", problems)
            .and_then(|address| host_port(&path, address, problems))
            .map(Probe::Tcp),
        "grpc" => {
            let address = table
                .string("grpc", problems)
                .and_then(|address| host_port(&path, address, problems));
            let service = if table.has("grpc_service") {
                table.string("grpc_service", problems)
            } else {
                Some(String::new())
            };
            match (address, service) {
                (Some(address), Some(service)) => Some(Probe::Grpc(GrpcProbe { address, service })),
                _ => None,
            }
        }
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

fn http_probe(table: &Table<'_>, path: &str, url: String, problems: &mut Problems) -> Option<Probe> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        problems.bad_value(path, &Value::String(url), "is not an http:// or https:// URL");
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        problems.bad_value(path, &Value::String(url), "has no valid host");
        return None;
    }
    let mut probe = HttpProbe::new(url);
    let mut ok = true;
    if table.has("http_status") {
        match table
            .string("http_status", problems)
            .map(|text| status_range(&text))
        {
            Some(Some(range)) => probe.passing = range,
            Some(None) => {
                problems.push(
                    table.key_path("http_status"),
                    "is not a status or a range of statuses such as \"200-399\" (100 to 599)",
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    let tls_keys = ["ca_file", "tls_skip_verify", "client_cert", "client_key"];
    if !probe.is_tls() {
        if let Some(key) = tls_keys.iter().find(|key| table.has(key)) {
            problems.push(table.key_path(key), "applies to an https:// probe only");
            return None;
        }
        return ok.then_some(Probe::Http(probe));
    }
    let file = |key: &str, problems: &mut Problems| -> Option<Option<PathBuf>> {
        if !table.has(key) {
            return Some(None);
        }
        let path = table.string(key, problems)?;
        if path.trim().is_empty() {
            problems.push(table.key_path(key), "is empty");
            return None;
        }
        Some(Some(PathBuf::from(path)))
    };
    let ca_file = file("ca_file", problems);
    let client_cert = file("client_cert", problems);
    let client_key = file("client_key", problems);
    let skip_verify = if table.has("tls_skip_verify") {
        table.boolean("tls_skip_verify", problems)
    } else {
        Some(false)
    };
    let (Some(ca_file), Some(client_cert), Some(client_key), Some(skip_verify)) =
        (ca_file, client_cert, client_key, skip_verify)
    else {
        return None;
    };
    probe.client_identity = match (client_cert, client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            problems.push(
                table.path(),
                "client_cert and client_key go together: set both, or neither",
            );
            return None;
        }
    };
    if skip_verify && ca_file.is_some() {
        problems.push(
            table.key_path("tls_skip_verify"),
            "with ca_file: a CA to trust and no verification contradict each other",
        );
        return None;
    }
    probe.ca_file = ca_file;
    probe.skip_verify = skip_verify;
    ok.then_some(Probe::Http(probe))
}

/// `"200"` or `"200-399"`: the lowest and highest status, 100 to 599.
fn status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = match text.trim().split_once('-') {
        Some((low, high)) => (low.trim().parse().ok()?, high.trim().parse().ok()?),
        None => {
            let code = text.trim().parse().ok()?;
            (code, code)
        }
    };
    ((100..=599).contains(&low) && (100..=599).contains(&high) && low <= high).then_some((low, high))
}

/// `address` when it is a `host:port` (a `tcp` or `grpc` probe's target).
fn host_port(path: &str, address: String, problems: &mut Problems) -> Option<String> {
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
    Some(address)
}
