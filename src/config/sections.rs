//! The sections a service inherits from `[defaults.*]` and may override: `health`, `restart`, `shutdown`.
//! Shared by the top level (the defaults themselves) and each `[services.NAME]` table.

use std::time::Duration;

use super::fields::{Problems, Table};
use super::schema::{HealthSettings, OutputSettings, RestartPolicy, ShutdownSettings};

pub(super) const HEALTH: &[&str] = &[
    "check_interval",
    "timeout",
    "failure_threshold",
    "recovery_threshold",
    "auto_recovery",
    "startup_interval",
    "startup_timeout",
];
pub(super) const PROBES: &[&str] = &["http", "tcp", "grpc", "exec", "heartbeat"];
/// Settings of a `grpc` probe.
pub(super) const GRPC_OPTIONS: &[&str] = &["grpc_service"];
/// Settings of an `http` probe, next to it in a service's `[health]` table.
pub(super) const HTTP_OPTIONS: &[&str] = &[
    "http_status",
    "ca_file",
    "tls_skip_verify",
    "client_cert",
    "client_key",
];
pub(super) const RESTART: &[&str] = &[
    "max_attempts",
    "initial_delay",
    "backoff_base",
    "max_delay",
    "jitter",
    "reset_after",
];
pub(super) const SHUTDOWN: &[&str] = &["timeout"];
pub(super) const OUTPUT: &[&str] = &["rate_limit", "file", "max_size", "backups"];
/// The `[defaults.*]` sections every service inherits.
pub(super) struct Inherited {
    pub health: Option<HealthSettings>,
    pub restart: Option<RestartPolicy>,
    pub shutdown: Option<ShutdownSettings>,
    pub output: Option<OutputSettings>,
}

/// Reads `key` from `table` when it is set there, else takes the inherited value.
pub(super) fn setting<'a, T>(
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
pub(super) fn sets_any(table: Option<&Table<'_>>, inherited: bool, keys: &[&str]) -> bool {
    !inherited || table.is_some_and(|t| keys.iter().any(|k| t.has(k)))
}

/// A duration as quoted in messages: `"30s"`.
pub(super) fn quote(duration: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(duration))
}

/// The shortest value of a duration that must be positive: below it the orchestrator would spin.
fn minimum(key: &str) -> Duration {
    match key {
        "heartbeat_interval" | "heartbeat_timeout" => Duration::from_millis(100),
        "check_interval" => Duration::from_millis(10),
        _ => Duration::from_millis(1),
    }
}

/// Records a problem when a duration that must be positive is zero, or shorter than its minimum.
pub(super) fn positive(
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
    let least = minimum(key);
    if value < least {
        problems.push(
            table.key_path(key),
            format!("{} is too short: at least {}", quote(value), quote(least)),
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

/// Smallest rotation size: below it a file would rotate on every few lines.
const MIN_OUTPUT_FILE_SIZE: u32 = 4096;
/// Most rotated files kept.
const MAX_OUTPUT_BACKUPS: u32 = 100;

/// Output settings of `table` over `inherited` (`None` for `[defaults.output]` itself, where `file` makes
/// no sense: every service would write to it).
pub(super) fn output(
    table: Option<&Table<'_>>,
    inherited: Option<&OutputSettings>,
    problems: &mut Problems,
) -> Option<OutputSettings> {
    let rate_limit = setting(
        table,
        inherited.map(|o| o.rate_limit),
        "rate_limit",
        problems,
        Table::count,
    );
    let max_size = setting(
        table,
        inherited.map(|o| o.max_size as u32),
        "max_size",
        problems,
        Table::count,
    )
    .filter(|size| {
        let ok = *size >= MIN_OUTPUT_FILE_SIZE;
        if !ok && let Some(t) = table {
            problems.push(
                t.key_path("max_size"),
                format!("{size} bytes is too small (at least {MIN_OUTPUT_FILE_SIZE})"),
            );
        }
        ok
    });
    let backups = setting(
        table,
        inherited.map(|o| o.backups),
        "backups",
        problems,
        Table::count,
    )
    .filter(|backups| {
        let ok = *backups <= MAX_OUTPUT_BACKUPS;
        if !ok && let Some(t) = table {
            problems.push(
                t.key_path("backups"),
                format!("{backups} is more than {MAX_OUTPUT_BACKUPS}"),
            );
        }
        ok
    });
    let mut file_ok = true;
    let file = match table {
        Some(t) if t.has("file") && inherited.is_none() => {
            problems.push(
                t.key_path("file"),
                "is per service: set it in [services.NAME.output]",
            );
            file_ok = false;
            None
        }
        Some(t) if t.has("file") => match t.string("file", problems) {
            Some(path) if !path.trim().is_empty() => Some(std::path::PathBuf::from(path)),
            Some(_) => {
                problems.push(t.key_path("file"), "must not be empty");
                file_ok = false;
                None
            }
            None => {
                file_ok = false;
                None
            }
        },
        _ => None,
    };
    file_ok.then_some(())?;
    Some(OutputSettings {
        rate_limit: rate_limit?,
        file,
        max_size: u64::from(max_size?),
        backups: backups?,
    })
}
