use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// The problems of an invalid configuration, as displayed.
fn problems(toml: &str) -> Vec<String> {
    match Config::from_toml(toml) {
        Ok(_) => panic!("configuration unexpectedly valid:\n{toml}"),
        Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("expected validation problems, got: {other}"),
    }
}

/// Asserts that exactly one problem is reported and that it contains every fragment.
fn assert_single_problem(toml: &str, fragments: &[&str]) {
    let found = problems(toml);
    assert_eq!(found.len(), 1, "expected one problem, got {found:#?}");
    for fragment in fragments {
        assert!(
            found[0].contains(fragment),
            "{:?} does not contain {fragment:?}",
            found[0]
        );
    }
}

fn valid(toml: &str) -> Config {
    Config::from_toml(toml).unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn embedded_defaults_follow_the_seed() {
    let config = valid("[services.a]\n");
    let a = config.service("a").unwrap();
    assert_eq!(a.service_type, "a");
    assert!(!a.critical);
    assert!(a.is_external());
    assert_eq!(a.probe, None);
    assert_eq!(
        a.health,
        HealthSettings {
            check_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            failure_threshold: 3,
            recovery_threshold: 2,
            auto_recovery: true,
            startup_interval: Duration::from_millis(10),
            startup_timeout: Duration::from_secs(60),
        }
    );
    assert_eq!(a.restart.max_attempts, 3);
    assert_eq!(a.restart.initial_delay, Duration::from_secs(2));
    assert_eq!(a.restart.backoff_base, 2.0);
    assert_eq!(a.restart.max_delay, Duration::from_secs(300));
    assert_eq!(a.restart.jitter, 0.0);
    assert_eq!(a.restart.reset_after, Duration::from_secs(600));
    assert_eq!(a.shutdown.timeout, Duration::from_secs(30));
    assert_eq!(config.api.listen.to_string(), "127.0.0.1:8400");
    assert_eq!(config.api.token, None);
    assert_eq!(config.telemetry.log_format, LogFormat::Pretty);
    assert_eq!(config.telemetry.otlp_protocol, OtlpProtocol::Grpc);
    assert_eq!(config.telemetry.otlp_endpoint, None);
    assert_eq!(config.registry.heartbeat_interval, Duration::from_secs(60));
    assert_eq!(config.registry.heartbeat_timeout, Duration::from_secs(180));
}

#[test]
fn service_sections_override_defaults_key_by_key() {
    let config = valid(
        r#"
        [defaults.health]
        check_interval = "10s"
        [defaults.restart]
        max_attempts = 5
        [services.web]
        type = "frontend"
        critical = true
        priority = 4
        command = ["/bin/web", "--port", "80"]
        env = { RUST_LOG = "debug", PORT = 8080, VERBOSE = true }
        working_dir = "/srv"
        metadata = { version = "1.4.2", replicas = 3 }
        [services.web.health]
        tcp = "127.0.0.1:80"
        failure_threshold = 5
        [services.web.restart]
        initial_delay = "0s"
        jitter = 0.5
        [services.web.shutdown]
        timeout = "1s"
        "#,
    );
    let web = config.service("web").unwrap();
    assert_eq!(web.service_type, "frontend");
    assert!(web.critical);
    assert_eq!(web.priority, 4);
    assert_eq!(
        web.command.as_deref(),
        Some(&["/bin/web".to_owned(), "--port".into(), "80".into()][..])
    );
    assert_eq!(
        web.env,
        vec![
            ("RUST_LOG".to_owned(), "debug".to_owned()),
            ("PORT".into(), "8080".into()),
            ("VERBOSE".into(), "true".into())
        ]
    );
    assert_eq!(web.working_dir.as_deref(), Some(std::path::Path::new("/srv")));
    assert_eq!(web.metadata["version"], "1.4.2");
    assert_eq!(web.metadata["replicas"], 3);
    assert_eq!(web.probe, Some(Probe::Tcp("127.0.0.1:80".into())));
    assert_eq!(
        web.health.check_interval,
        Duration::from_secs(10),
        "inherited from [defaults.health]"
    );
    assert_eq!(web.health.failure_threshold, 5);
    assert_eq!(web.health.recovery_threshold, 2);
    assert_eq!(web.restart.max_attempts, 5, "inherited from [defaults.restart]");
    assert_eq!(web.restart.initial_delay, Duration::ZERO);
    assert_eq!(web.restart.jitter, 0.5);
    assert_eq!(web.shutdown.timeout, Duration::from_secs(1));
}

#[test]
fn every_probe_kind_is_read() {
    let config = valid(
        r#"
        [services.a.health]
        http = "http://127.0.0.1:7100/health"
        [services.b.health]
        exec = ["/usr/bin/check", "-q"]
        [services.c.health]
        heartbeat = true
        [services.d.health]
        heartbeat = false
        "#,
    );
    let probe = |name: &str| config.service(name).unwrap().probe.clone();
    assert_eq!(probe("a"), Some(Probe::http("http://127.0.0.1:7100/health")));
    assert_eq!(
        probe("b"),
        Some(Probe::Exec(vec!["/usr/bin/check".into(), "-q".into()]))
    );
    assert_eq!(probe("c"), Some(Probe::Heartbeat));
    assert_eq!(probe("d"), None);
}

#[test]
fn services_keep_declaration_order() {
    let config = valid("[services.zeta]\n[services.alpha]\n[services.mid]\n");
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    assert_eq!(config.graph.startup_order(), ["zeta", "alpha", "mid"]);
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let file = ConfigFile::Text {
        name: "test".into(),
        text: "[api]\nlisten = \"127.0.0.1:1000\"\n[services.db.health]\nfailure_threshold = 4\n".into(),
    };
    let env = HashMap::from([
        (
            "ORCHESTRATOR__API__LISTEN".to_owned(),
            "127.0.0.1:2000".to_owned(),
        ),
        (
            "ORCHESTRATOR__SERVICES__DB__HEALTH__FAILURE_THRESHOLD".to_owned(),
            "7".to_owned(),
        ),
        (
            "ORCHESTRATOR__SERVICES__DB__CRITICAL".to_owned(),
            "true".to_owned(),
        ),
        ("ORCHESTRATOR_CONFIG".to_owned(), "ignored.toml".to_owned()),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ]);
    let from_env = Config::load(&Source::new(file.clone()).with_env(env.clone())).unwrap();
    assert_eq!(from_env.api.listen.to_string(), "127.0.0.1:2000");
    let db = from_env.service("db").unwrap();
    assert_eq!(db.health.failure_threshold, 7);
    assert!(db.critical);

    let flagged = Config::load(
        &Source::new(file)
            .with_env(env)
            .with_override("api.listen", "127.0.0.1:3000"),
    );
    assert_eq!(flagged.unwrap().api.listen.to_string(), "127.0.0.1:3000");
}

#[test]
fn allowed_hosts_and_origins_come_from_the_environment_as_comma_separated_lists() {
    let env = HashMap::from([
        (
            "ORCHESTRATOR__API__ALLOWED_HOSTS".to_owned(),
            "orchestrator,.fog.example".to_owned(),
        ),
        (
            "ORCHESTRATOR__API__ALLOWED_ORIGINS".to_owned(),
            "https://grafana.example".to_owned(),
        ),
    ]);
    let file = ConfigFile::Text {
        name: "test".into(),
        text: String::new(),
    };
    let api = Config::load(&Source::new(file).with_env(env)).unwrap().api;
    assert_eq!(api.allowed_hosts, ["orchestrator", ".fog.example"]);
    assert_eq!(api.allowed_origins, ["https://grafana.example"]);
}

#[test]
fn bad_environment_values_are_reported_with_their_key_path() {
    let env = HashMap::from([(
        "ORCHESTRATOR__DEFAULTS__HEALTH__FAILURE_THRESHOLD".to_owned(),
        "many".to_owned(),
    )]);
    let file = ConfigFile::Text {
        name: "test".into(),
        text: String::new(),
    };
    let Err(ConfigError::Invalid { problems, .. }) = Config::load(&Source::new(file).with_env(env)) else {
        panic!("expected a validation error");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "defaults.health.failure_threshold");
    assert!(problems[0].message.contains("\"many\""));
}

#[test]
fn missing_file_and_broken_toml_are_load_errors() {
    let missing = Config::load(&Source::new(ConfigFile::Path(
        "/nonexistent/orchestrator.toml".into(),
    )));
    assert!(matches!(missing, Err(ConfigError::Load { .. })));
    let broken = Config::from_toml("[services.a\n");
    let Err(ConfigError::Load { message, .. }) = broken else {
        panic!("expected a load error")
    };
    assert!(message.contains("TOML"), "{message}");
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    let found = problems(
        r#"
        colour = "blue"
        [api]
        port = 1
        [defaults.health]
        intervall = "1s"
        [defaults.restart]
        attempts = 2
        [services.a]
        dependson = ["b"]
        [services.a.health]
        htp = "x"
        "#,
    );
    for path in [
        "colour",
        "api.port",
        "defaults.health.intervall",
        "defaults.restart.attempts",
        "services.a.dependson",
        "services.a.health.htp",
    ] {
        assert!(
            found
                .iter()
                .any(|p| p.starts_with(&format!("{path}: unknown key"))),
            "no unknown-key problem for {path} in {found:#?}"
        );
    }
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn bad_durations_name_path_and_value() {
    assert_single_problem(
        "[defaults.health]\ncheck_interval = \"often\"\n",
        &["defaults.health.check_interval", "\"often\"", "is not a duration"],
    );
    assert_single_problem(
        "[services.a.restart]\ninitial_delay = 2\n",
        &["services.a.restart.initial_delay", "2 is not a duration"],
    );
}

#[test]
fn zero_thresholds_and_zero_intervals_are_rejected() {
    assert_single_problem(
        "[services.a.health]\nfailure_threshold = 0\n",
        &["services.a.health.failure_threshold", "0 is not allowed"],
    );
    assert_single_problem(
        "[defaults.health]\nrecovery_threshold = 0\n",
        &["defaults.health.recovery_threshold", "0 is not allowed"],
    );
    assert_single_problem(
        "[services.a.health]\nstartup_interval = \"0s\"\n",
        &["services.a.health.startup_interval", "must be longer than zero"],
    );
}

#[test]
fn timeout_must_be_shorter_than_check_interval() {
    assert_single_problem(
        "[services.a.health]\ncheck_interval = \"5s\"\ntimeout = \"5s\"\n",
        &[
            "services.a.health.timeout",
            "\"5s\" must be shorter than check_interval \"5s\"",
        ],
    );
    // A bad default is reported once, not again for every service that inherits it.
    assert_single_problem(
        "[defaults.health]\ntimeout = \"1m\"\n[services.a]\n[services.b]\n",
        &[
            "defaults.health.timeout",
            "\"1m\" must be shorter than check_interval \"30s\"",
        ],
    );
}

#[test]
fn jitter_outside_unit_range_is_rejected() {
    assert_single_problem(
        "[defaults.restart]\njitter = 1.5\n",
        &["defaults.restart.jitter", "1.5 is outside 0.0..=1.0"],
    );
    assert_single_problem(
        "[services.a.restart]\njitter = -0.1\n",
        &["services.a.restart.jitter", "-0.1"],
    );
    valid("[defaults.restart]\njitter = 1.0\n");
}

#[test]
fn backoff_base_below_one_is_rejected() {
    assert_single_problem(
        "[services.a.restart]\nbackoff_base = 0.5\n",
        &["services.a.restart.backoff_base", "0.5 must be at least 1.0"],
    );
    valid("[defaults.restart]\nbackoff_base = 1\n");
}

#[test]
fn invalid_service_names_are_rejected() {
    for name in [
        "\"Web\"",
        "\"web.api\"",
        "\"\"",
        "\"a b\"",
        &format!("\"{}\"", "x".repeat(64)),
    ] {
        let found = problems(&format!("[services.{name}]\n"));
        assert_eq!(found.len(), 1, "{name}: {found:#?}");
        assert!(found[0].contains("invalid service name"), "{name}: {found:#?}");
    }
    valid(&format!("[services.{}]\n[services.a-b_9]\n", "x".repeat(63)));
}

#[test]
fn empty_commands_are_rejected() {
    assert_single_problem(
        "[services.a]\ncommand = []\n",
        &["services.a.command", "names no program"],
    );
    assert_single_problem(
        "[services.a]\ncommand = [\"\", \"x\"]\n",
        &["services.a.command", "empty string"],
    );
    assert_single_problem(
        "[services.a]\ncommand = \"/bin/a\"\n",
        &["services.a.command", "is not a list of strings"],
    );
}

#[test]
fn more_than_one_probe_is_rejected() {
    assert_single_problem(
        "[services.a.health]\nhttp = \"http://127.0.0.1/\"\ntcp = \"127.0.0.1:1\"\n",
        &["services.a.health", "more than one probe (http, tcp)"],
    );
}

#[test]
fn malformed_probes_are_rejected() {
    assert_single_problem(
        "[services.a.health]\nhttp = \"ftp://x/\"\n",
        &["services.a.health.http", "not an http:// or https:// URL"],
    );
    for (table, complaint) in [
        (
            "http = \"http://x/\"\nca_file = \"/ca.pem\"\n",
            "applies to an https:// probe only",
        ),
        (
            "http = \"http://x/\"\nhttp_status = \"600\"\n",
            "range of statuses",
        ),
        (
            "http = \"http://x/\"\nhttp_status = \"399-200\"\n",
            "range of statuses",
        ),
        (
            "tcp = \"x:1\"\nhttp_status = \"200\"\n",
            "applies to http probes, not to tcp",
        ),
        ("http_status = \"200\"\n", "this service has none"),
        (
            "http = \"https://x/\"\nclient_cert = \"/c.pem\"\n",
            "client_cert and client_key go together",
        ),
        (
            "http = \"https://x/\"\nca_file = \"/ca.pem\"\ntls_skip_verify = true\n",
            "contradict",
        ),
    ] {
        assert_single_problem(&format!("[services.a.health]\n{table}"), &[complaint]);
    }
    assert_single_problem(
        "[services.a.health]\nhttp = \"http:///health\"\n",
        &["has no valid host"],
    );
    assert_single_problem(
        "[services.a.health]\ntcp = \"localhost\"\n",
        &["services.a.health.tcp", "host:port"],
    );
    assert_single_problem("[services.a.health]\ntcp = \"localhost:99999\"\n", &["host:port"]);
    assert_single_problem(
        "[services.a.health]\nexec = []\n",
        &["services.a.health.exec", "names no program"],
    );
}

#[test]
fn self_dependency_is_rejected() {
    assert_single_problem(
        "[services.a]\ndepends_on = [\"a\"]\n",
        &["services.a.depends_on", "service \"a\" depends on itself"],
    );
    assert_single_problem(
        "[services.a]\noptional_depends_on = [\"a\"]\n",
        &["services.a.optional_depends_on", "depends on itself"],
    );
}

#[test]
fn unknown_required_dependency_is_an_error() {
    assert_single_problem(
        "[services.web]\ndepends_on = [\"db\"]\n",
        &[
            "services.web.depends_on",
            "service \"web\" depends on unknown service \"db\"",
        ],
    );
}

#[test]
fn unknown_optional_dependency_is_a_warning_and_ignored() {
    let config = valid("[services.web]\noptional_depends_on = [\"cache\"]\n");
    assert_eq!(config.warnings.len(), 1);
    assert!(config.warnings[0].contains("optionally depends on unknown service \"cache\""));
    assert!(config.service("web").unwrap().optional_depends_on.is_empty());
    assert!(config.graph.optional_dependencies("web").is_empty());
}

#[test]
fn a_dependency_cannot_be_both_required_and_optional() {
    assert_single_problem(
        "[services.db]\n[services.web]\ndepends_on = [\"db\"]\noptional_depends_on = [\"db\"]\n",
        &["services.web.optional_depends_on", "\"db\" is also in depends_on"],
    );
}

#[test]
fn duplicate_entries_in_a_dependency_list_are_rejected() {
    assert_single_problem(
        "[services.db]\n[services.web]\ndepends_on = [\"db\", \"db\"]\n",
        &["services.web.depends_on", "\"db\" is listed more than once"],
    );
}

#[test]
fn cycles_are_reported_with_their_whole_path() {
    assert_single_problem(
        r#"
        [services.a]
        depends_on = ["b"]
        [services.b]
        depends_on = ["c"]
        [services.c]
        optional_depends_on = ["a"]
        "#,
        &["services: dependency cycle: a -> b -> c -> a"],
    );
}

#[test]
fn every_cycle_is_reported() {
    let found = problems(
        r#"
        [services.onion]
        depends_on = ["vpn_coordinator"]
        [services.vpn_coordinator]
        depends_on = ["onion"]
        [services.x]
        depends_on = ["y"]
        [services.y]
        depends_on = ["x"]
        "#,
    );
    assert_eq!(
        found,
        [
            "services: dependency cycle: onion -> vpn_coordinator -> onion",
            "services: dependency cycle: x -> y -> x"
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(
        r#"
        [api]
        listen = "not an address"
        [telemetry]
        log_format = "xml"
        otlp_protocol = "udp"
        check_sample_ratio = 1.5
        [registry]
        heartbeat_timeout = "30s"
        [services.Bad]
        [services.web]
        depends_on = ["web", "db"]
        command = []
        [services.web.health]
        timeout = "forever"
        failure_threshold = 0
        [services.web.restart]
        jitter = 2.0
        backoff_base = 0.1
        "#,
    );
    let expected = [
        "api.listen",
        "telemetry.log_format",
        "telemetry.otlp_protocol",
        "telemetry.check_sample_ratio",
        "registry.heartbeat_timeout",
        "services.Bad: invalid service name",
        "services.web.command",
        "services.web.health.timeout",
        "services.web.health.failure_threshold",
        "services.web.restart.backoff_base",
        "services.web.restart.jitter",
        "services.web.depends_on: service \"web\" depends on itself",
        "services.web.depends_on: service \"web\" depends on unknown service \"db\"",
    ];
    for fragment in expected {
        assert!(
            found.iter().any(|p| p.contains(fragment)),
            "missing {fragment:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn wrong_types_are_reported_not_coerced() {
    let found = problems(
        r#"
        [services.a]
        critical = "yes"
        priority = -1
        depends_on = "b"
        env = ["A=1"]
        "#,
    );
    assert_eq!(found.len(), 4, "{found:#?}");
    for fragment in [
        "services.a.critical: \"yes\" is not a boolean",
        "services.a.priority: -1 is not a whole number",
        "services.a.depends_on: \"b\" is not a list of strings",
        "services.a.env: [\"A=1\"] is not a table",
    ] {
        assert!(
            found.iter().any(|p| p.contains(fragment)),
            "missing {fragment:?} in {found:#?}"
        );
    }
}

#[test]
fn non_loopback_listen_needs_a_token_or_an_explicit_opt_out() {
    assert_single_problem(
        "[api]\nlisten = \"0.0.0.0:8400\"\n",
        &["api.listen", "not a loopback address"],
    );
    assert_eq!(
        valid("[api]\nlisten = \"0.0.0.0:8400\"\ntoken = \"s3cret\"\n")
            .api
            .token
            .as_deref(),
        Some("s3cret")
    );
    assert!(
        valid("[api]\nlisten = \"0.0.0.0:8400\"\nallow_unauthenticated = true\n")
            .api
            .allow_unauthenticated
    );
    assert_single_problem("[api]\ntoken = \"\"\n", &["api.token", "must not be empty"]);
}

#[test]
fn browser_hosts_and_origins_are_checked() {
    let api = valid(
        "[api]\nallowed_hosts = [\"orchestrator.internal\", \".fog.example\"]\n\
         allowed_origins = [\"https://grafana.example:3000\", \"http://[::1]:8080\"]\n",
    )
    .api;
    assert_eq!(api.allowed_hosts, ["orchestrator.internal", ".fog.example"]);
    assert_eq!(api.allowed_origins.len(), 2);
    assert!(valid("").api.allowed_origins.is_empty(), "none by default");
    assert_single_problem(
        "[api]\nallowed_hosts = [\"bad host/\"]\n",
        &["api.allowed_hosts", "\"bad host/\" is not a host name"],
    );
    for origin in [
        "grafana.example",
        "ftp://x.example",
        "https://x.example/path",
        "https://x.example:99999",
        "*",
    ] {
        assert_single_problem(
            &format!("[api]\nallowed_origins = [\"{origin}\"]\n"),
            &["api.allowed_origins", "is not an origin"],
        );
    }
}

#[test]
fn output_settings_inherit_and_the_file_is_per_service() {
    let config = valid(
        "[defaults.output]\nrate_limit = 50\n\
         [services.a]\ncommand = [\"x\"]\n\
         [services.b]\ncommand = [\"x\"]\noutput.file = \"/var/log/b.log\"\noutput.backups = 0\n",
    );
    let a = &config.service("a").unwrap().output;
    assert_eq!(
        (a.rate_limit, a.file.as_ref(), a.max_size, a.backups),
        (50, None, 10_485_760, 3)
    );
    let b = &config.service("b").unwrap().output;
    assert_eq!(b.file.as_deref(), Some(std::path::Path::new("/var/log/b.log")));
    assert_eq!((b.rate_limit, b.backups), (50, 0));
    assert_single_problem(
        "[defaults.output]\nfile = \"/tmp/all.log\"\n",
        &["defaults.output.file", "per service"],
    );
    assert_single_problem(
        "[services.a]\ncommand = [\"x\"]\noutput.max_size = 100\n",
        &["services.a.output.max_size", "too small"],
    );
    assert_single_problem(
        "[services.a]\ncommand = [\"x\"]\noutput.colour = true\n",
        &["services.a.output.colour", "unknown key"],
    );
}

#[test]
fn values_that_make_no_sense_are_refused_with_their_bounds() {
    assert_single_problem(
        "[registry]\nheartbeat_interval = \"1ns\"\n",
        &["registry.heartbeat_interval", "too short: at least \"100ms\""],
    );
    assert_single_problem(
        "[defaults.health]\ncheck_interval = \"1ms\"\n",
        &["defaults.health.check_interval", "at least \"10ms\""],
    );
    assert_single_problem(
        "[defaults.shutdown]\ntimeout = \"1000years\"\n",
        &["defaults.shutdown.timeout", "365 days"],
    );
    assert_single_problem(
        "[services.a]\ncommand = [\"x\"]\npriority = 4294967295\n",
        &["services.a.priority", "above the highest priority, 10000"],
    );
    assert_eq!(
        valid("[services.a]\ncommand = [\"x\"]\npriority = 10000\n")
            .service("a")
            .unwrap()
            .priority,
        10_000
    );
}

#[test]
fn heartbeat_timeout_must_exceed_the_interval() {
    assert_single_problem(
        "[registry]\nheartbeat_interval = \"60s\"\nheartbeat_timeout = \"60s\"\n",
        &[
            "registry.heartbeat_timeout",
            "must be longer than heartbeat_interval",
        ],
    );
}

#[test]
fn otlp_endpoint_must_be_a_url() {
    assert_single_problem(
        "[telemetry]\notlp_endpoint = \"collector:4317\"\n",
        &["telemetry.otlp_endpoint"],
    );
    let config = valid("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\notlp_protocol = \"http\"\n");
    assert_eq!(config.telemetry.otlp_protocol, OtlpProtocol::Http);
}

#[test]
fn the_embedded_fog_topology_is_valid() {
    let config = Config::load(&Source::new(ConfigFile::EmbeddedFog).with_env(HashMap::new())).unwrap();
    assert_eq!(config.services.len(), 10);
    assert!(config.warnings.is_empty());
    assert!(config.service("dao").unwrap().critical);
    assert_eq!(config.services.iter().filter(|s| s.critical).count(), 1);
    assert!(
        config
            .services
            .iter()
            .all(|s| !s.is_external() && matches!(s.probe, Some(Probe::Http(_))))
    );
}

#[test]
fn https_probes_carry_their_trust_and_passing_statuses() {
    let config = Config::from_toml(
        "[services.a.health]\nhttp = \"https://a.internal:8443/ready\"\nhttp_status = \"200-399\"\n\
         ca_file = \"/etc/fog/ca.pem\"\nclient_cert = \"/etc/fog/c.pem\"\nclient_key = \"/etc/fog/k.pem\"\n\
         [services.b.health]\nhttp = \"https://b.internal/\"\ntls_skip_verify = true\n\
         [services.c.health]\nhttp = \"http://c.internal/\"\nhttp_status = \"204\"\n",
    )
    .unwrap();
    let http = |name: &str| match &config.service(name).unwrap().probe {
        Some(Probe::Http(http)) => http.clone(),
        other => panic!("{other:?}"),
    };
    let a = http("a");
    assert!(a.is_tls());
    assert_eq!(a.passing, (200, 399));
    assert_eq!(
        a.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/fog/ca.pem"))
    );
    assert!(a.client_identity.is_some() && !a.skip_verify);
    assert!(http("b").skip_verify);
    assert_eq!(http("c").passing, (204, 204));
    assert_eq!(
        config
            .warnings
            .iter()
            .filter(|w| w.contains("tls_skip_verify"))
            .count(),
        1,
        "{:?}",
        config.warnings
    );
}

#[test]
fn grpc_probes_name_an_address_and_optionally_a_service() {
    let config = Config::from_toml(
        "[services.a.health]\ngrpc = \"127.0.0.1:50051\"\ngrpc_service = \"fog.Ledger\"\n\
         [services.b.health]\ngrpc = \"ledger.internal:443\"\n",
    )
    .unwrap();
    let grpc = |name: &str| match &config.service(name).unwrap().probe {
        Some(Probe::Grpc(grpc)) => grpc.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(grpc("a").service, "fog.Ledger");
    assert_eq!(grpc("b").address, "ledger.internal:443");
    assert_eq!(grpc("b").service, "");
    assert_eq!(
        config.service("a").unwrap().probe.as_ref().unwrap().kind(),
        "grpc"
    );
    assert_single_problem("[services.a.health]\ngrpc = \"nowhere\"\n", &["host:port"]);
    assert_single_problem(
        "[services.a.health]\nhttp = \"http://x/\"\ngrpc_service = \"s\"\n",
        &["applies to grpc probes, not to http"],
    );
}

#[test]
fn fleet_mode_is_off_without_etcd_endpoints() {
    let config = valid("[services.a]\ncommand = [\"true\"]\nsingleton = true\n");
    assert!(config.cluster.is_none());
    assert!(config.service("a").unwrap().singleton);
    let config = valid("[cluster]\nname = \"edge\"\n[services.a]\ncommand = [\"true\"]\n");
    assert!(
        config.cluster.is_none(),
        "a fleet name alone does not turn fleet mode on"
    );
}

#[test]
fn cluster_settings_have_defaults_and_read_lists_or_comma_separated_text() {
    let config = valid(
        "[cluster]\netcd_endpoints = \"http://10.0.0.1:2379, https://etcd.example:2379\"\nnode = \"edge-7\"\n",
    );
    let cluster = config.cluster.unwrap();
    assert_eq!(
        cluster.etcd_endpoints,
        ["http://10.0.0.1:2379", "https://etcd.example:2379"]
    );
    assert_eq!(cluster.name, "fog");
    assert_eq!(cluster.node, "edge-7");
    assert_eq!(cluster.lease_ttl, Duration::from_secs(10));
    assert_eq!((cluster.advertise_url, cluster.credentials), (None, None));
    let config = valid("[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n");
    assert!(
        !config.cluster.unwrap().node.is_empty(),
        "the host name by default"
    );
}

#[test]
fn a_lease_too_short_to_ride_out_an_etcd_election_is_warned_about() {
    let fleet = |ttl: &str| {
        valid(&format!(
            "[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"{ttl}\"\n"
        ))
        .warnings
    };
    let warned = fleet("6s");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].starts_with("cluster.lease_ttl: \"6s\" is shorter than \"8s\"")
            && warned[0].contains("--election-timeout"),
        "{warned:?}"
    );
    assert!(fleet("8s").is_empty());
    assert!(fleet("10s").is_empty());
}

#[test]
fn bad_cluster_settings_are_each_reported() {
    let found = problems(
        "[cluster]\netcd_endpoints = [\"127.0.0.1:2379\", \"http://a/b\"]\nname = \"Fog Fleet\"\nnode = \"a b\"\n\
         lease_ttl = \"1500ms\"\nusername = \"fog\"\nclient_cert = \"c.pem\"\ncolour = \"blue\"\n",
    );
    let expected = [
        "cluster.etcd_endpoints: \"127.0.0.1:2379\" is not an etcd client URL",
        "cluster.etcd_endpoints: \"http://a/b\" is not an etcd client URL",
        "cluster.name: \"Fog Fleet\" is not a fleet name",
        "cluster.node: \"a b\" is not a node name",
        "cluster.lease_ttl: \"1s 500ms\" must be whole seconds, at least \"2s\"",
        "client_cert and client_key go together",
        "username and password go together",
        "cluster.colour",
    ];
    for fragment in expected {
        assert!(
            found.iter().any(|problem| problem.contains(fragment)),
            "{fragment:?} not in {found:#?}"
        );
    }
    assert_single_problem(
        "[services.a]\ncommand = [\"true\"]\nsingleton = \"yes\"\n",
        &["services.a.singleton"],
    );
    assert_single_problem(
        "[services.a]\nhealth.tcp = \"127.0.0.1:1\"\nsingleton = true\n",
        &["services.a.singleton", "a singleton needs a command"],
    );
}

#[test]
fn cluster_and_singleton_changes_need_an_orchestrator_restart() {
    let before = valid("[services.a]\ncommand = [\"true\"]\n");
    let after = valid(
        "[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n[services.a]\ncommand = [\"true\"]\nsingleton = true\n",
    );
    let plan = Plan::between(&before, &after);
    assert_eq!(
        plan.needs_orchestrator_restart,
        ["services.a.singleton", "cluster"]
    );
    assert_eq!(plan.untouched, ["a"], "the service itself is left as it runs");
}

#[test]
fn the_etcd_password_never_shows_in_debug_output() {
    let config = valid(
        "[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nusername = \"fog\"\npassword = \"s3cret-pass\"\n",
    );
    let shown = format!("{config:?}");
    assert!(shown.contains("\"fog\""), "{shown}");
    assert!(!shown.contains("s3cret-pass"), "{shown}");
}
