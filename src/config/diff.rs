//! What a new configuration changes against the running one: the reload plan of DESIGN.md section 8.
//!
//! The plan is computed from two validated [`Config`]s, so `[defaults.*]` changes show up in every service
//! that inherits them (specs carry effective settings). Per service, a changed key either needs the service
//! restarted (what its process was started with, and its dependency edges: an edge change is a change of
//! the dependent only) or applies live (cadence, thresholds, policies, metadata). Orchestrator-wide keys
//! either apply live or need the orchestrator itself restarted (the listen address, the log format).

use serde::Serialize;

use super::{Config, ServiceSpec};

/// One service's changed keys, as TOML paths relative to `[services.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The service.
    pub service: String,
    /// The keys that changed (`command`, `health.check_interval`, ...).
    pub keys: Vec<String>,
}

/// What a reload would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Services to add, in the new configuration's startup order.
    pub add: Vec<String>,
    /// Services to remove, dependents first (the running configuration's stop order).
    pub remove: Vec<String>,
    /// Services to restart (reason `reload`), in the new startup order, with the keys that need it.
    pub restart: Vec<Change>,
    /// Services whose changed keys all apply without a restart.
    pub update: Vec<Change>,
    /// Services nothing changed for, in the new startup order.
    pub untouched: Vec<String>,
    /// Orchestrator-wide keys (`registry.heartbeat_timeout`, ...) that apply without a restart.
    pub settings: Vec<String>,
    /// Orchestrator-wide keys that only a restart of the orchestrator applies (`api.listen`, ...).
    pub needs_orchestrator_restart: Vec<String>,
}

impl Plan {
    /// The plan that takes `running` to `new`.
    pub fn between(running: &Config, new: &Config) -> Self {
        let mut plan = Plan::default();
        for name in new.graph.startup_order() {
            let Some(spec) = new.services.iter().find(|s| s.name.as_str() == name) else {
                continue;
            };
            match running.services.iter().find(|s| s.name == spec.name) {
                None => plan.add.push(name.to_owned()),
                Some(old) => {
                    if old.singleton != spec.singleton {
                        // Whether it stands for election is fixed when the orchestrator starts.
                        plan.needs_orchestrator_restart
                            .push(format!("services.{name}.singleton"));
                    }
                    let Changed { mut restart, live } = changed_keys(old, spec);
                    let same_but_singleton = ServiceSpec {
                        singleton: old.singleton,
                        ..spec.clone()
                    } == *old;
                    if restart.is_empty() && live.is_empty() && !same_but_singleton {
                        // A setting this list does not know yet: replacing the process applies it for sure.
                        restart.push("settings".to_owned());
                    }
                    let service = name.to_owned();
                    if !restart.is_empty() {
                        let mut keys = restart;
                        keys.extend(live);
                        plan.restart.push(Change { service, keys });
                    } else if !live.is_empty() {
                        plan.update.push(Change { service, keys: live });
                    } else {
                        plan.untouched.push(service);
                    }
                }
            }
        }
        for name in running.graph.shutdown_order() {
            if !new.services.iter().any(|s| s.name.as_str() == name) {
                plan.remove.push(name.to_owned());
            }
        }
        let settings = changed_settings(running, new);
        plan.settings = settings.live;
        plan.needs_orchestrator_restart.extend(settings.restart);
        plan
    }

    /// Nothing would change.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.restart.is_empty()
            && self.update.is_empty()
            && self.settings.is_empty()
            && self.needs_orchestrator_restart.is_empty()
    }
}

/// Changed keys, sorted by what applying them takes.
#[derive(Debug, Default)]
struct Changed {
    /// Applied by a restart (of the service, or of the orchestrator for orchestrator-wide keys).
    restart: Vec<String>,
    /// Applied without one.
    live: Vec<String>,
}

impl Changed {
    fn note(&mut self, differs: bool, key: &str, needs_restart: bool) {
        if differs {
            let list = if needs_restart {
                &mut self.restart
            } else {
                &mut self.live
            };
            list.push(key.to_owned());
        }
    }
}

/// The keys of one service that changed: those that need a restart, and those that apply live.
fn changed_keys(old: &ServiceSpec, new: &ServiceSpec) -> Changed {
    let mut changed = Changed::default();
    let mut differs = |differ: bool, key: &str, needs_restart: bool| changed.note(differ, key, needs_restart);
    // What the process was started with, and the edges its start was gated on.
    differs(old.command != new.command, "command", true);
    differs(old.env != new.env, "env", true);
    differs(old.working_dir != new.working_dir, "working_dir", true);
    differs(old.depends_on != new.depends_on, "depends_on", true);
    differs(
        old.optional_depends_on != new.optional_depends_on,
        "optional_depends_on",
        true,
    );
    differs(old.output.file != new.output.file, "output.file", true);
    // What the engine reads as it goes.
    differs(old.service_type != new.service_type, "type", false);
    differs(old.critical != new.critical, "critical", false);
    differs(old.priority != new.priority, "priority", false);
    differs(old.metadata != new.metadata, "metadata", false);
    differs(old.probe != new.probe, "health.probe", false);
    let (h, n) = (&old.health, &new.health);
    differs(
        h.check_interval != n.check_interval,
        "health.check_interval",
        false,
    );
    differs(h.timeout != n.timeout, "health.timeout", false);
    differs(
        h.failure_threshold != n.failure_threshold,
        "health.failure_threshold",
        false,
    );
    differs(
        h.recovery_threshold != n.recovery_threshold,
        "health.recovery_threshold",
        false,
    );
    differs(h.auto_recovery != n.auto_recovery, "health.auto_recovery", false);
    differs(
        h.startup_interval != n.startup_interval,
        "health.startup_interval",
        false,
    );
    differs(
        h.startup_timeout != n.startup_timeout,
        "health.startup_timeout",
        false,
    );
    let (r, m) = (&old.restart, &new.restart);
    differs(r.max_attempts != m.max_attempts, "restart.max_attempts", false);
    differs(r.initial_delay != m.initial_delay, "restart.initial_delay", false);
    differs(r.backoff_base != m.backoff_base, "restart.backoff_base", false);
    differs(r.max_delay != m.max_delay, "restart.max_delay", false);
    differs(r.jitter != m.jitter, "restart.jitter", false);
    differs(r.reset_after != m.reset_after, "restart.reset_after", false);
    differs(
        old.shutdown.timeout != new.shutdown.timeout,
        "shutdown.timeout",
        false,
    );
    // The output forwarding is set up when the process starts (a rate limiter, a rotating file): a new
    // one takes a new process.
    let (o, p) = (&old.output, &new.output);
    differs(o.rate_limit != p.rate_limit, "output.rate_limit", true);
    differs(o.max_size != p.max_size, "output.max_size", true);
    differs(o.backups != p.backups, "output.backups", true);
    changed
}

/// Orchestrator-wide keys that changed: those that apply live, and those that need the orchestrator
/// restarted.
fn changed_settings(old: &Config, new: &Config) -> Changed {
    let mut changed = Changed::default();
    let mut differs = |differ: bool, key: &str, needs_restart: bool| changed.note(differ, key, needs_restart);
    let (a, b) = (&old.api, &new.api);
    // The API's access rules apply live, but were validated against the new address: while the old one
    // is still served, they wait for the restart that moves it (a token must not go from a public listener).
    let moved = a.listen != b.listen;
    differs(moved, "api.listen", true);
    differs(a.token != b.token, "api.token", moved);
    differs(
        a.allow_unauthenticated != b.allow_unauthenticated,
        "api.allow_unauthenticated",
        moved,
    );
    differs(a.allowed_hosts != b.allowed_hosts, "api.allowed_hosts", moved);
    differs(
        a.allowed_origins != b.allowed_origins,
        "api.allowed_origins",
        moved,
    );
    differs(a.ui != b.ui, "api.ui", moved);
    let (t, u) = (&old.telemetry, &new.telemetry);
    differs(t.log_format != u.log_format, "telemetry.log_format", true);
    differs(
        t.otlp_endpoint != u.otlp_endpoint,
        "telemetry.otlp_endpoint",
        true,
    );
    differs(
        t.otlp_protocol != u.otlp_protocol,
        "telemetry.otlp_protocol",
        true,
    );
    differs(
        t.check_sample_ratio != u.check_sample_ratio,
        "telemetry.check_sample_ratio",
        false,
    );
    let (r, s) = (&old.registry, &new.registry);
    differs(
        r.heartbeat_interval != s.heartbeat_interval,
        "registry.heartbeat_interval",
        false,
    );
    differs(
        r.heartbeat_timeout != s.heartbeat_timeout,
        "registry.heartbeat_timeout",
        false,
    );
    differs(
        r.max_registered != s.max_registered,
        "registry.max_registered",
        false,
    );
    // The etcd session, the node's name and its lease are made once, at start.
    differs(old.cluster != new.cluster, "cluster", true);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn change(service: &str, keys: &[&str]) -> Change {
        Change {
            service: service.to_owned(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let text = "[services.a]\ncommand = [\"true\"]\n[services.b]\ndepends_on = [\"a\"]\n";
        let plan = Plan::between(&config(text), &config(text));
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.untouched, ["a", "b"]);
    }

    #[test]
    fn a_new_edge_is_a_change_of_the_dependent_only() {
        let before = config("[services.db]\ncommand = [\"db\"]\n[services.web]\ncommand = [\"web\"]\n");
        let after = config(
            "[services.db]\ncommand = [\"db\"]\n[services.web]\ncommand = [\"web\"]\ndepends_on = [\"db\"]\n",
        );
        let plan = Plan::between(&before, &after);
        assert_eq!(plan.restart, [change("web", &["depends_on"])]);
        assert_eq!(plan.untouched, ["db"]);
    }

    #[test]
    fn defaults_reach_the_services_that_inherit_them() {
        let before = config(
            "[services.a]\ncommand = [\"a\"]\n[services.b]\ncommand = [\"b\"]\nhealth.check_interval = \"10s\"\n",
        );
        let after = config(
            "[defaults.health]\ncheck_interval = \"20s\"\n[services.a]\ncommand = [\"a\"]\n\
             [services.b]\ncommand = [\"b\"]\nhealth.check_interval = \"10s\"\n",
        );
        let plan = Plan::between(&before, &after);
        // Cadence applies live; b sets its own and does not inherit.
        assert_eq!(plan.update, [change("a", &["health.check_interval"])]);
        assert!(plan.restart.is_empty());
        assert_eq!(plan.untouched, ["b"]);
    }

    #[test]
    fn a_restart_lists_every_changed_key_and_removals_go_dependents_first() {
        let before = config(
            "[services.base]\ncommand = [\"base\"]\n[services.mid]\ncommand = [\"mid\"]\ndepends_on = [\"base\"]\n\
             [services.top]\ncommand = [\"top\"]\ndepends_on = [\"mid\"]\n[services.x]\ncommand = [\"x\"]\n",
        );
        let after = config(
            "[services.x]\ncommand = [\"x\", \"--fast\"]\nenv = { MODE = \"fast\" }\nrestart.max_attempts = 9\n",
        );
        let plan = Plan::between(&before, &after);
        assert_eq!(plan.remove, ["top", "mid", "base"]);
        assert_eq!(
            plan.restart,
            [change("x", &["command", "env", "restart.max_attempts"])]
        );
        assert!(plan.add.is_empty() && plan.update.is_empty() && plan.untouched.is_empty());
    }

    #[test]
    fn orchestrator_settings_say_whether_a_restart_of_the_orchestrator_is_needed() {
        let before = config("[services.a]\ncommand = [\"a\"]\n");
        let after = config(
            "[api]\nlisten = \"127.0.0.1:9999\"\n[telemetry]\nlog_format = \"json\"\n\
             [registry]\nheartbeat_timeout = \"600s\"\n[services.a]\ncommand = [\"a\"]\n",
        );
        let plan = Plan::between(&before, &after);
        assert_eq!(plan.settings, ["registry.heartbeat_timeout"]);
        assert_eq!(
            plan.needs_orchestrator_restart,
            ["api.listen", "telemetry.log_format"]
        );
        assert_eq!(plan.untouched, ["a"]);
        assert!(!plan.is_empty());
    }
}
