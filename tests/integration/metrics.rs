//! Exact metric values after scripted scenarios in the fake world: a crash and its restart, an unhealthy
//! restart, restarts exhausted, a manual restart, heartbeats and a heartbeat timeout.

use std::time::Duration;

use fog_orchestrator::supervisor::{ServiceState, Supervisor};

use crate::harness::{World, reach, service, supervise, within};

const SECOND: Duration = Duration::from_secs(1);

/// The value of `name{labels}` in a real rendering of `/metrics` (a histogram's `_count` for a histogram
/// name), or `None` without such a series.
pub fn value(supervisor: &Supervisor, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = supervisor
        .metrics()
        .render(fog_orchestrator::telemetry::metrics::Format::Text);
    let count = format!("{name}_count");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name && metric != count {
                return None;
            }
            let present: Vec<(&str, &str)> = label_text
                .trim_end_matches('}')
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
                .collect();
            labels
                .iter()
                .all(|wanted| present.contains(wanted))
                .then(|| value.parse().ok())?
        })
}

pub fn get(supervisor: &Supervisor, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(supervisor, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

/// The state-set gauge of `service`: exactly one state is 1.
fn state(supervisor: &Supervisor, service: &str) -> String {
    let current: Vec<&str> = ServiceState::ALL
        .iter()
        .map(|s| s.as_str())
        .filter(|s| {
            get(
                supervisor,
                "orchestrator_service_state",
                &[("service", service), ("state", s)],
            ) == 1.0
        })
        .collect();
    assert_eq!(current.len(), 1, "{service}: {current:?}");
    current[0].to_owned()
}

fn restarts(supervisor: &Supervisor, service: &str, reason: &str) -> f64 {
    get(
        supervisor,
        "orchestrator_service_restarts_total",
        &[("service", service), ("reason", reason)],
    )
}

#[tokio::test(start_paused = true)]
async fn series_exist_at_zero_from_the_start() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    for reason in ["crashed", "unhealthy", "heartbeat_timeout", "manual"] {
        assert_eq!(restarts(&supervisor, "api", reason), 0.0);
    }
    for reason in [
        "timeout",
        "connect",
        "http_status",
        "exit",
        "heartbeat",
        "process_down",
        "error",
    ] {
        let labels = [("service", "api"), ("reason", reason)];
        assert_eq!(
            get(&supervisor, "orchestrator_health_check_failures_total", &labels),
            0.0
        );
    }
    assert_eq!(state(&supervisor, "api"), "running");
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_service_health",
            &[("service", "api"), ("status", "healthy")]
        ),
        1.0
    );
    assert_eq!(
        get(&supervisor, "orchestrator_service_up", &[("service", "api")]),
        1.0
    );
    let info = [
        ("service", "api"),
        ("type", "api"),
        ("critical", "false"),
        ("external", "false"),
        ("layer", "0"),
    ];
    assert_eq!(get(&supervisor, "orchestrator_service_info", &info), 1.0);
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_and_its_restart() {
    let world = World::default();
    let supervisor = supervise(&world, "[services.api]\ncommand = [\"fake\"]\n");
    reach(&supervisor, "api", ServiceState::Running).await;
    world.crash("api", 1);
    reach(&supervisor, "api", ServiceState::Backoff).await;
    assert_eq!(state(&supervisor, "api"), "backoff");
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_service_restart_backoff_seconds",
            &[("service", "api")]
        ),
        2.0
    );
    assert_eq!(
        get(&supervisor, "orchestrator_service_up", &[("service", "api")]),
        0.0
    );
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_service_health",
            &[("service", "api"), ("status", "unhealthy")]
        ),
        1.0
    );

    reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(restarts(&supervisor, "api", "crashed"), 1.0);
    assert_eq!(restarts(&supervisor, "api", "unhealthy"), 0.0);
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_service_restart_backoff_seconds",
            &[("service", "api")]
        ),
        0.0
    );
    assert!(
        get(
            &supervisor,
            "orchestrator_service_last_restart_timestamp_seconds",
            &[("service", "api")]
        ) > 0.0
    );
    assert_eq!(
        get(&supervisor, "orchestrator_service_up", &[("service", "api")]),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_restart_counts_checks_and_failures() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\n[services.api.health]\nhttp = \"http://fake/\"\n\
         check_interval = \"10s\"\ntimeout = \"1s\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let before = get(
        &supervisor,
        "orchestrator_health_checks_total",
        &[("service", "api")],
    );
    world.set("api", |b| b.healthy = false);
    let api = service(&supervisor, "api");
    within(60 * SECOND, api.wait_for(|s| s.state == ServiceState::Backoff)).await;
    let failures = [("service", "api"), ("reason", "http_status")];
    assert_eq!(
        get(&supervisor, "orchestrator_health_check_failures_total", &failures),
        3.0
    );
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_health_checks_total",
            &[("service", "api")]
        ),
        before + 3.0
    );
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_health_check_duration_seconds",
            &[("service", "api")]
        ),
        before + 3.0
    );
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_health_check_consecutive_failures",
            &[("service", "api")]
        ),
        3.0
    );
    world.set("api", |b| b.healthy = true);
    reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(restarts(&supervisor, "api", "unhealthy"), 1.0);
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_health_check_consecutive_failures",
            &[("service", "api")]
        ),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_leave_the_service_failed() {
    let world = World::default();
    world.set("api", |b| b.fail_launch = true);
    let supervisor = supervise(&world, "[services.api]\ncommand = [\"fake\"]\n");
    reach(&supervisor, "api", ServiceState::Failed).await;
    assert_eq!(state(&supervisor, "api"), "failed");
    assert_eq!(restarts(&supervisor, "api", "crashed"), 3.0);
    assert_eq!(
        get(&supervisor, "orchestrator_service_up", &[("service", "api")]),
        0.0
    );
    assert_eq!(
        get(&supervisor, "orchestrator_ready", &[]),
        1.0,
        "api is not critical"
    );
}

#[tokio::test(start_paused = true)]
async fn a_manual_restart() {
    let world = World::default();
    let supervisor = supervise(&world, "[services.api]\ncommand = [\"fake\"]\n");
    reach(&supervisor, "api", ServiceState::Running).await;
    service(&supervisor, "api").restart(false).await.unwrap();
    assert_eq!(restarts(&supervisor, "api", "manual"), 1.0);
    assert_eq!(restarts(&supervisor, "api", "crashed"), 0.0);
    assert_eq!(state(&supervisor, "api"), "running");
}

#[tokio::test(start_paused = true)]
async fn heartbeats_and_a_heartbeat_timeout() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[registry]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"3s\"\n\
         [services.agent]\ncommand = [\"fake\"]\n[services.agent.health]\nheartbeat = true\n\
         check_interval = \"1s\"\ntimeout = \"500ms\"\nfailure_threshold = 2\n[services.agent.restart]\nmax_attempts = 0\n",
    );
    let agent = service(&supervisor, "agent");
    agent.heartbeat().await.unwrap();
    reach(&supervisor, "agent", ServiceState::Running).await;
    for _ in 0..4 {
        tokio::time::sleep(SECOND).await;
        agent.heartbeat().await.unwrap();
    }
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_heartbeats_received_total",
            &[("service", "agent")]
        ),
        5.0
    );
    assert!(
        get(
            &supervisor,
            "orchestrator_heartbeat_last_received_timestamp_seconds",
            &[("service", "agent")]
        ) > 0.0
    );
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_heartbeat_timeouts_total",
            &[("service", "agent")]
        ),
        0.0
    );
    assert_eq!(
        get(&supervisor, "orchestrator_heartbeat_timeout_seconds", &[]),
        3.0
    );

    within(20 * SECOND, agent.wait_for(|s| s.state == ServiceState::Failed)).await;
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_heartbeat_timeouts_total",
            &[("service", "agent")]
        ),
        1.0
    );
    let failures = [("service", "agent"), ("reason", "heartbeat")];
    assert_eq!(
        get(&supervisor, "orchestrator_health_check_failures_total", &failures),
        2.0
    );
    assert_eq!(
        restarts(&supervisor, "agent", "heartbeat_timeout"),
        0.0,
        "max_attempts = 0: no restart"
    );
}

#[tokio::test(start_paused = true)]
async fn dependency_edges_and_blocked_dependents() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.db]\ncommand = [\"fake\"]\n[services.cache]\ncommand = [\"fake\"]\n\
         [services.api]\ndepends_on = [\"db\"]\noptional_depends_on = [\"cache\"]\ncommand = [\"fake\"]\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let edge = |dependency: &str, kind: &str| {
        value(
            &supervisor,
            "orchestrator_dependency_info",
            &[("service", "api"), ("dependency", dependency), ("kind", kind)],
        )
    };
    assert_eq!(edge("db", "required"), Some(1.0));
    assert_eq!(edge("cache", "optional"), Some(1.0));
    assert_eq!(edge("db", "optional"), None);
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_service_dependency_blocked",
            &[("service", "api")]
        ),
        0.0
    );

    world.set("db", |b| b.fail_launch = true);
    world.crash("db", 1);
    reach(&supervisor, "db", ServiceState::Backoff).await;
    // The gauge follows the change event; give the tracking task its turn (bounded, no time passes).
    within(SECOND, async {
        while get(
            &supervisor,
            "orchestrator_service_dependency_blocked",
            &[("service", "api")],
        ) != 1.0
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        get(
            &supervisor,
            "orchestrator_service_dependency_blocked",
            &[("service", "db")]
        ),
        0.0
    );
}
