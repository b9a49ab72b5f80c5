//! Configuration reload (DESIGN.md section 8) against the built binary and real processes: SIGHUP,
//! `POST /api/orchestration/reload` and `fog-orchestrator reload` read the file again and apply only the
//! difference; a bad file changes nothing; a second reload meanwhile is refused.

use serde_json::Value;

use crate::binary::{Orchestrator, http, http_text, message, signal};

/// `keep` is untouched by AFTER, `change` gets a new command, `gone` is removed, `tuned` changes a setting
/// that applies live, and `new` is added (depending on `keep`).
const BEFORE: &str = r#"
[services.keep]
command = ["sleep", "3600"]
health.exec = ["true"]
health.check_interval = "1s"
health.timeout = "500ms"
[services.change]
command = ["sleep", "3601"]
[services.gone]
command = ["sleep", "3602"]
[services.tuned]
command = ["sleep", "3603"]
"#;

const AFTER: &str = r#"
[services.keep]
command = ["sleep", "3600"]
health.exec = ["true"]
health.check_interval = "1s"
health.timeout = "500ms"
[services.change]
command = ["sleep", "3700"]
[services.tuned]
command = ["sleep", "3603"]
shutdown.timeout = "3s"
[services.new]
command = ["sleep", "3604"]
depends_on = ["keep"]
"#;

/// A cycle and an unknown key: two problems, both reported.
const BROKEN: &str = r#"
[services.keep]
command = ["sleep", "3600"]
depends_on = ["change"]
[services.change]
command = ["sleep", "3601"]
depends_on = ["keep"]
colour = "blue"
"#;

fn names(plan: &Value, key: &str) -> Vec<String> {
    plan[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {plan}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn detail(api: &str, name: &str) -> Value {
    let (status, detail) = http("GET", &format!("{api}/api/orchestration/service/{name}"), "").await;
    assert_eq!(status, 200, "{detail}");
    detail
}

async fn pid_of(api: &str, name: &str) -> u64 {
    let detail = detail(api, name).await;
    detail["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {detail}"))
}

async fn metrics(api: &str) -> String {
    let (status, text) = http_text("GET", &format!("{api}/metrics"), "").await;
    assert_eq!(status, 200);
    text
}

/// The value of the series `series` (name and labels exactly as exported), if exported.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// The CLI against the live orchestrator: exit code, stdout, stderr.
async fn cli_reload(api: &str, extra: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"))
        .args(["reload", "--api", api])
        .args(extra)
        .env_remove("ORCHESTRATOR_CONFIG")
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What the services looked like before a reload, for the comparison after it.
struct Before {
    keep: Value,
    change_pid: u64,
    tuned_pid: u64,
    keep_series: Vec<String>,
    hash: String,
}

async fn before(api: &str) -> Before {
    // One check now, to have a history to see survive.
    let url = format!("{api}/api/orchestration/health/check-now?service=keep");
    let (status, checked) = http("POST", &url, "").await;
    assert_eq!(status, 200, "{checked}");
    let keep = detail(api, "keep").await;
    // At least one steady-state check in the history, to see it survive.
    assert!(!keep["health_history"].as_array().unwrap().is_empty(), "{keep}");
    let text = metrics(api).await;
    let keep_series = text
        .lines()
        .filter(|line| line.contains("service=\"keep\"") && line.contains("_total{"))
        .map(str::to_owned)
        .collect();
    Before {
        keep,
        change_pid: pid_of(api, "change").await,
        tuned_pid: pid_of(api, "tuned").await,
        keep_series,
        hash: config_hash(&text),
    }
}

fn config_hash(metrics: &str) -> String {
    let line = metrics
        .lines()
        .find(|line| line.starts_with("orchestrator_config_info{"))
        .unwrap_or_else(|| panic!("no config_info in:\n{metrics}"));
    line.split('"').nth(1).unwrap().to_owned()
}

/// Everything a reload from BEFORE to AFTER must have done, and left alone.
async fn assert_applied(api: &str, before: &Before) {
    // Untouched: same process, counters, history (it only grew) and uptime.
    let keep = detail(api, "keep").await;
    assert_eq!(keep["pid"], before.keep["pid"], "keep was restarted");
    assert_eq!(keep["restart_count"], 0);
    assert_eq!(keep["ready_since"], before.keep["ready_since"]);
    let history = |d: &Value| d["health_history"].as_array().unwrap().clone();
    let (old, new) = (history(&before.keep), history(&keep));
    assert!(new.len() >= old.len(), "history lost");
    assert_eq!(new[..old.len()], old[..], "history rewritten");
    assert_eq!(
        keep["registry_metadata"]["registered_at"], before.keep["registry_metadata"]["registered_at"],
        "registry entry replaced"
    );

    // Changed: a new process, one restart with reason reload.
    let change = detail(api, "change").await;
    assert_eq!(change["status"], "running", "{change}");
    assert_ne!(change["pid"].as_u64(), Some(before.change_pid));
    assert_eq!(change["restart_count"], 1);
    assert_eq!(change["last_restart_reason"], "reload");

    // Updated live: same process.
    assert_eq!(pid_of(api, "tuned").await, before.tuned_pid);

    // Removed and added.
    let (_, services) = http("GET", &format!("{api}/api/orchestration/services"), "").await;
    assert!(services["services"]["gone"].is_null(), "{services}");
    assert_eq!(services["services"]["new"]["status"], "running", "{services}");
    assert_eq!(services["total_services"], 4);
    let (status, _) = http("GET", &format!("{api}/api/orchestration/service/gone"), "").await;
    assert_eq!(status, 404);
    let (_, registry) = http("GET", &format!("{api}/api/orchestration/registry"), "").await;
    assert!(registry["services"]["gone"].is_null(), "{registry}");
    assert_eq!(registry["services"]["new"]["managed"], true, "{registry}");

    // The graph endpoints answer the new graph.
    let (_, graph) = http("GET", &format!("{api}/api/orchestration/dependencies"), "").await;
    assert_eq!(
        graph["dependencies"]["new"]["dependencies"],
        serde_json::json!(["keep"])
    );
    assert!(graph["dependencies"]["gone"].is_null(), "{graph}");
    assert_eq!(
        graph["dependencies"]["keep"]["dependents"],
        serde_json::json!(["new"])
    );

    // Series: the untouched one's counters are the same series (a counter can only have grown), the
    // removed one's are gone, the added one's are there; the reload is counted and fingerprinted.
    let text = metrics(api).await;
    for series in &before.keep_series {
        let (name, value) = series.rsplit_once(' ').unwrap();
        let now = sample(&text, name).unwrap_or_else(|| panic!("{name} disappeared"));
        assert!(now >= value.parse::<f64>().unwrap(), "{name} went back");
    }
    assert!(
        !text.contains("service=\"gone\""),
        "series of a removed service remain"
    );
    assert!(text.contains("orchestrator_service_up{service=\"new\"} 1"));
    assert_eq!(
        sample(
            &text,
            "orchestrator_service_restarts_total{service=\"change\",reason=\"reload\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "orchestrator_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "orchestrator_config_last_reload_successful"),
        Some(1.0)
    );
    assert_ne!(config_hash(&text), before.hash, "the fingerprint did not move");
}

#[tokio::test]
async fn the_cli_applies_only_the_difference_and_the_untouched_service_keeps_running() {
    let mut orchestrator = Orchestrator::start(BEFORE);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let before = before(&api).await;
    std::fs::write(orchestrator.config_path(), AFTER).unwrap();

    // The dry run first: the plan, and nothing changes.
    let url = format!("{api}/api/orchestration/reload?dry_run=true");
    let (status, answer) = http("POST", &url, "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["dry_run"], &answer["changed"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert!(answer["applied"].is_null());
    let plan = &answer["plan"];
    assert_eq!(names(plan, "add"), ["new"]);
    assert_eq!(names(plan, "remove"), ["gone"]);
    assert_eq!(names(plan, "untouched"), ["keep"]);
    assert_eq!(
        plan["restart"],
        serde_json::json!([{"service": "change", "keys": ["command"]}])
    );
    assert_eq!(
        plan["update"],
        serde_json::json!([{"service": "tuned", "keys": ["shutdown.timeout"]}])
    );
    let (code, stdout, stderr) = cli_reload(&api, &["--dry-run"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("dry run: nothing changed"), "{stdout}");
    assert_eq!(pid_of(&api, "change").await, before.change_pid);

    // Applied by the CLI: the plan and what happened to each service.
    let (code, stdout, stderr) = cli_reload(&api, &[]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "(applied):\n",
        "  add: new\n",
        "  remove: gone\n",
        "  restart: change (command)\n",
        "  update live: tuned (shutdown.timeout)\n",
        "  untouched: keep\n",
        "  removed gone: stopped: ok\n",
        "  updated tuned: running, pid ",
        "  added new: running, pid ",
        "  restarted change: running, pid ",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert_applied(&api, &before).await;

    // The same file again: nothing to do.
    let (status, answer) = http("POST", &format!("{api}/api/orchestration/reload"), "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], false, "{answer}");
    assert_eq!(answer["applied"], serde_json::json!([]));
    assert!(orchestrator.stop().await.success());
}

#[tokio::test]
async fn sighup_applies_the_same_difference_as_the_api() {
    let mut orchestrator = Orchestrator::start(BEFORE);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let before = before(&api).await;
    std::fs::write(orchestrator.config_path(), AFTER).unwrap();

    signal(orchestrator.pid(), libc::SIGHUP);
    let done = orchestrator
        .wait_for("the reload", |f| message(f) == "configuration reloaded")
        .await;
    assert_eq!(done["trigger"], "signal");
    assert_eq!(
        (
            &done["added"],
            &done["removed"],
            &done["restarted"],
            &done["updated"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(1), &Value::from(1))
    );
    assert_applied(&api, &before).await;
    assert!(orchestrator.stop().await.success());
}

#[tokio::test]
async fn a_broken_file_reports_every_problem_and_changes_nothing() {
    let mut orchestrator = Orchestrator::start(BEFORE);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let pids = [pid_of(&api, "keep").await, pid_of(&api, "gone").await];
    std::fs::write(orchestrator.config_path(), BROKEN).unwrap();

    for url in ["reload?dry_run=true", "reload"] {
        let (status, answer) = http("POST", &format!("{api}/api/orchestration/{url}"), "").await;
        assert_eq!(status, 400, "{answer}");
        let problems: Vec<&str> = answer["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(problems.iter().any(|p| p.contains("colour")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("cycle")), "{problems:?}");
    }
    let (code, _, stderr) = cli_reload(&api, &[]).await;
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("colour") && stderr.contains("cycle"), "{stderr}");

    signal(orchestrator.pid(), libc::SIGHUP);
    let refused = orchestrator
        .wait_for("the SIGHUP refusal", |f| {
            message(f).starts_with("configuration reload refused") && f["trigger"] == "signal"
        })
        .await;
    assert!(refused["error"].as_str().unwrap().contains("colour"), "{refused}");

    // Nothing changed; the failures are counted and the last one shows.
    assert_eq!([pid_of(&api, "keep").await, pid_of(&api, "gone").await], pids);
    let text = metrics(&api).await;
    // Two applying attempts by the API and the CLI, one by SIGHUP (the dry run is not counted).
    assert_eq!(
        sample(&text, "orchestrator_config_reloads_total{result=\"failure\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "orchestrator_config_last_reload_successful"),
        Some(0.0)
    );
    assert!(orchestrator.stop().await.success());
}

/// `api` requires `db`; the new file removes `db` and the edge. The dependent is the one that changes: its
/// old instance stops before `db` does (dependents first), and it runs again without `db`.
#[tokio::test]
async fn removing_a_dependency_of_a_running_service_stops_the_dependent_first() {
    let before = r#"
[services.db]
command = ["sleep", "3610"]
[services.api]
command = ["sleep", "3611"]
depends_on = ["db"]
"#;
    let after = r#"
[services.api]
command = ["sleep", "3611"]
"#;
    let mut orchestrator = Orchestrator::start(before);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let api_pid = pid_of(&api, "api").await;
    std::fs::write(orchestrator.config_path(), after).unwrap();

    let (status, answer) = http("POST", &format!("{api}/api/orchestration/reload"), "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(names(&answer["plan"], "remove"), ["db"]);
    assert_eq!(
        answer["plan"]["restart"],
        serde_json::json!([{"service": "api", "keys": ["depends_on"]}])
    );
    let applied = answer["applied"].as_array().unwrap();
    let action = |service: &str| {
        applied
            .iter()
            .find(|a| a["service"] == service)
            .unwrap_or_else(|| panic!("{service} missing from {answer}"))
    };
    assert_eq!(action("db")["action"], "removed");
    assert_eq!(action("db")["state"], "stopped");
    assert_eq!(action("api")["action"], "restarted");
    assert_eq!(action("api")["state"], "running");

    // In this order, or the second wait finds no line (the first consumed every line up to its own).
    for service in ["api", "db"] {
        orchestrator
            .wait_for(&format!("{service} stopped (dependents first)"), |f| {
                message(f) == "service stopped" && f["service"] == service
            })
            .await;
    }
    let now = detail(&api, "api").await;
    assert_ne!(now["pid"].as_u64(), Some(api_pid));
    assert_eq!(now["last_restart_reason"], "reload");
    assert_eq!(now["dependencies"]["required"], serde_json::json!([]));
    assert!(orchestrator.stop().await.success());
}

/// While a reload is being applied (a removed service that ignores SIGTERM holds it up for its shutdown
/// timeout), another one is refused with 409, and the first one still completes.
#[tokio::test]
async fn a_reload_while_another_is_applied_is_refused_with_409() {
    let before = r#"
[services.stubborn]
command = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
shutdown.timeout = "2s"
[services.other]
command = ["sleep", "3620"]
"#;
    let after = "[services.other]\ncommand = [\"sleep\", \"3620\"]\n";
    let mut orchestrator = Orchestrator::start(before);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    std::fs::write(orchestrator.config_path(), after).unwrap();

    let url = format!("{api}/api/orchestration/reload");
    let first = tokio::spawn({
        let url = url.clone();
        async move { http("POST", &url, "").await }
    });
    orchestrator
        .wait_for("the first reload", |f| {
            message(f) == "reading the configuration again"
        })
        .await;
    let (status, answer) = http("POST", &url, "").await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("in progress"),
        "{answer}"
    );

    let (status, answer) = first.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["applied"][0]["service"], "stubborn");
    assert_eq!(answer["applied"][0]["state"], "stopped");
    assert!(orchestrator.stop().await.success());
}

/// One reload, one trace: asked with a caller's `traceparent`, `reload configuration` continues the
/// caller's trace (inside the API's SERVER span), and the stop of the removed service, the replacement
/// (`restart service`, reason reload, with its stop and start) and the added service's first start are
/// all inside it.
#[tokio::test]
async fn a_reload_is_one_trace_holding_the_stops_restarts_and_starts_it_caused() {
    use crate::otlp::{find, grpc_receiver, text};

    let (endpoint, received) = grpc_receiver().await;
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ];
    let mut orchestrator = Orchestrator::start_with(BEFORE, &otlp);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    std::fs::write(orchestrator.config_path(), AFTER).unwrap();
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let (status, body) = crate::binary::http_with(
        "POST",
        &format!("{api}/api/orchestration/reload"),
        "",
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(orchestrator.stop().await.code(), Some(0));

    let spans = received.spans();
    let reloads = find(&spans, "reload configuration");
    assert_eq!(reloads.len(), 1);
    let reload = reloads[0];
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&reload.trace_id),
        caller_trace,
        "the caller's trace continues"
    );
    let server = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.span_id == reload.parent_span_id)
        .expect("the API's SERVER span is the parent");
    assert_eq!(server.name, "POST /api/orchestration/reload");
    for (key, value) in [
        ("orchestrator.reload.trigger", "api"),
        ("orchestrator.reload.added", "1"),
        ("orchestrator.reload.removed", "1"),
        ("orchestrator.reload.restarted", "1"),
        ("orchestrator.reload.updated", "1"),
    ] {
        assert_eq!(text(&reload.attributes, key).as_deref(), Some(value), "{key}");
    }

    let service_of = |span: &&opentelemetry_proto::tonic::trace::v1::Span| {
        text(&span.attributes, "orchestrator.service.name").unwrap_or_default()
    };
    let child_of_reload = |name: &str, service: &str| {
        find(&spans, name)
            .into_iter()
            .filter(|s| service_of(s) == service && s.parent_span_id == reload.span_id)
            .count()
    };
    assert_eq!(
        child_of_reload("stop service", "gone"),
        1,
        "the removed service's stop"
    );
    assert_eq!(
        child_of_reload("start service", "new"),
        1,
        "the added service's first start"
    );
    assert_eq!(child_of_reload("restart service", "change"), 1, "the replacement");
    let restart = find(&spans, "restart service")
        .into_iter()
        .find(|s| service_of(s) == "change")
        .unwrap();
    assert_eq!(
        text(&restart.attributes, "orchestrator.restart.reason").as_deref(),
        Some("reload")
    );
    for step in ["stop service", "start service"] {
        let inside = find(&spans, step)
            .into_iter()
            .filter(|s| service_of(s) == "change" && s.parent_span_id == restart.span_id)
            .count();
        assert_eq!(inside, 1, "{step} of the replacement is inside it");
    }
    // Nothing about the untouched service is in the reload's trace.
    assert!(
        spans
            .iter()
            .filter(|(_, s)| s.trace_id == reload.trace_id)
            .all(|(_, s)| service_of(&s) != "keep"),
        "keep was touched"
    );
}

// ---- the engine's side, in a fake world with paused time ---------------------------------------------------

mod engine {
    use std::time::Duration;

    use fog_orchestrator::config::Plan;
    use fog_orchestrator::supervisor::{RestartReason, ServiceState, Supervisor};
    use tokio::time::Instant;

    use crate::harness::{World, config, reach, service, supervise, within};

    async fn reload(supervisor: &Supervisor, from: &str, to: &str) {
        let (running, new) = (config(from), config(to));
        let plan = Plan::between(&running, &new);
        let applied = within(Duration::from_secs(600), supervisor.reload(new, &plan))
            .await
            .expect("applied");
        assert!(applied.iter().all(|a| a.ok), "{applied:?}");
    }

    /// Thresholds and cadence apply to the running instance: with the new failure threshold of 1 and
    /// checks every 2 s, a failure restarts it within one new interval (the old settings needed 30 s).
    #[tokio::test(start_paused = true)]
    async fn thresholds_and_cadence_apply_live_to_the_running_instance() {
        let before = "[services.web]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/health\"\n\
                      health.check_interval = \"10s\"\nhealth.failure_threshold = 3\n\
                      restart.initial_delay = \"0s\"\n";
        let after = "[services.web]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/health\"\n\
                     health.check_interval = \"2s\"\nhealth.timeout = \"1s\"\nhealth.failure_threshold = 1\n\
                     restart.initial_delay = \"0s\"\n";
        let world = World::default();
        let supervisor = supervise(&world, before);
        reach(&supervisor, "web", ServiceState::Running).await;
        reload(&supervisor, before, after).await;
        assert_eq!(world.launches("web").len(), 1, "a live update launched it again");

        let broken = Instant::now();
        world.set("web", |b| b.healthy = false);
        let web = service(&supervisor, "web");
        let restarted = within(
            Duration::from_secs(60),
            web.wait_for(|s| s.last_restart_reason.is_some()),
        )
        .await;
        assert_eq!(restarted.last_restart_reason, Some(RestartReason::Unhealthy));
        assert!(
            broken.elapsed() <= Duration::from_secs(3),
            "restarted {:?} after the failure: the old cadence or threshold still applies",
            broken.elapsed()
        );
    }

    /// A replacement waits for the dependency the reload gave it: `api` now requires `db`, which the
    /// reload adds and which takes 30 s to become ready; the new `api` starts only after that.
    #[tokio::test(start_paused = true)]
    async fn a_replacement_waits_for_the_dependency_the_reload_added() {
        let before = "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/health\"\n";
        let after = "[services.db]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/health\"\n\
                     health.startup_timeout = \"2m\"\n\
                     [services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/health\"\n\
                     depends_on = [\"db\"]\n";
        let world = World::default();
        world.set("db", |b| b.ready_after = Duration::from_secs(30));
        let supervisor = supervise(&world, before);
        reach(&supervisor, "api", ServiceState::Running).await;
        let reloading = Instant::now();
        reload(&supervisor, before, after).await;

        let db_ready = service(&supervisor, "db")
            .snapshot()
            .ready_since
            .expect("db ready");
        let api = service(&supervisor, "api").snapshot();
        assert!(api.ready, "{api:?}");
        assert_eq!(api.last_restart_reason, Some(RestartReason::Reload));
        let launches = world.launches("api");
        assert_eq!(launches.len(), 2);
        assert!(
            launches[1] >= reloading + Duration::from_secs(30),
            "the new api started before db was ready"
        );
        assert!(api.ready_since.unwrap() >= db_ready);
        assert!(world.overlapping_launches().is_empty());
    }

    /// One reload at a time: a second one while the first is applied is refused and changes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_second_reload_meanwhile_is_refused() {
        let before = "[services.slow]\ncommand = [\"fake\"]\nshutdown.timeout = \"20s\"\n";
        let after = "[services.slow]\ncommand = [\"fake\", \"--new\"]\nshutdown.timeout = \"20s\"\n";
        let world = World::default();
        world.set("slow", |b| b.ignore_sigterm = true);
        let supervisor = supervise(&world, before);
        reach(&supervisor, "slow", ServiceState::Running).await;
        let plan = Plan::between(&config(before), &config(after));
        let first = tokio::spawn({
            let (supervisor, plan) = (supervisor.clone(), plan.clone());
            async move { supervisor.reload(config(after), &plan).await }
        });
        // The first one is stopping the old instance (20 s of SIGTERM ignored).
        within(
            Duration::from_secs(5),
            service(&supervisor, "slow").wait_for(|s| s.state == ServiceState::Stopping),
        )
        .await;
        assert_eq!(
            supervisor.reload(config(after), &plan).await,
            Err(fog_orchestrator::supervisor::ControlError::ReloadInProgress)
        );
        let applied = first.await.unwrap().unwrap();
        assert!(applied[0].ok, "{applied:?}");
        assert_eq!(world.launches("slow").len(), 2);
    }
}
