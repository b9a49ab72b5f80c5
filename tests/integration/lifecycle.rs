//! The lifecycle tells the truth: each scenario is one point of DESIGN.md sections 5 and 6 that the engine
//! once got wrong, in the fake world with paused time.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use std::time::Duration;

use fog_orchestrator::health::HealthStatus;
use fog_orchestrator::supervisor::{
    ControlError, RestartReason, ServiceHandle, ServiceState, Snapshot, Supervisor,
};

use crate::harness::{Event, World, reach, service, supervise, within};
use crate::metrics::get;

const SECOND: Duration = Duration::from_secs(1);

/// db, and api requiring it, both probed every second.
const DB_API: &str = "[defaults.health]\ncheck_interval = \"1s\"\ntimeout = \"100ms\"\n\
    [services.db]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n\
    [services.api]\ndepends_on = [\"db\"]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n";

fn blocked_metric(supervisor: &Supervisor, name: &str) -> bool {
    get(
        supervisor,
        "orchestrator_service_dependency_blocked",
        &[("service", name)],
    ) == 1.0
}

/// Watches every published snapshot of `name` and records each moment `waiting_on` and the blocked metric
/// disagree (a required dependency named in one and not the other).
fn watch_agreement(supervisor: &Supervisor, name: &str) -> Arc<Mutex<Vec<String>>> {
    let disagreements = Arc::new(Mutex::new(Vec::new()));
    let (supervisor, name, seen) = (supervisor.clone(), name.to_owned(), disagreements.clone());
    tokio::spawn(async move {
        let handle = service(&supervisor, &name).clone();
        let mut last = None;
        loop {
            let snapshot = handle.wait_for(|s| Some(s.clone()) != last).await;
            let blocked = blocked_metric(&supervisor, &name);
            let required_down = snapshot
                .waiting_on
                .as_deref()
                .is_some_and(|dependency| !service(&supervisor, dependency).snapshot().ready);
            if blocked != required_down {
                seen.lock().unwrap().push(format!(
                    "{} waiting_on={:?} blocked={blocked}",
                    snapshot.state, snapshot.waiting_on
                ));
            }
            last = Some(snapshot);
        }
    });
    disagreements
}

#[tokio::test(start_paused = true)]
async fn a_refused_restart_changes_nothing() {
    let world = World::default();
    let supervisor = supervise(&world, DB_API);
    let running = reach(&supervisor, "api", ServiceState::Running).await;

    // db fails for good; api keeps running (its own checks pass).
    world.set("db", |b| b.fail_launch = true);
    world.crash("db", 1);
    reach(&supervisor, "db", ServiceState::Failed).await;
    let api = service(&supervisor, "api");
    let before = api.snapshot();
    assert_eq!(before.state, ServiceState::Running);

    let refused = api.restart(false).await;
    assert_eq!(
        refused,
        Err(ControlError::Blocked {
            service: "api".into(),
            dependency: "db".into()
        })
    );
    let after = api.snapshot();
    assert_eq!(after.pid, running.pid, "the same instance runs");
    assert_eq!(after.state, ServiceState::Running);
    assert_eq!(after.restart_count, 0);
    assert_eq!(after.attempts, 0);
    // Nothing was queued either: no restart happens later.
    tokio::time::sleep(600 * SECOND).await;
    assert_eq!(world.launches("api").len(), 1);
    assert_eq!(api.snapshot().restart_count, 0);
    assert!(
        !world
            .events()
            .iter()
            .any(|(_, event)| *event == Event::Terminate("api".into())),
        "never stopped"
    );
}

#[tokio::test(start_paused = true)]
async fn startup_probes_are_not_errors_and_never_hide_a_crash() {
    let world = World::default();
    world.set("api", |b| b.ready_after = Duration::from_millis(500));
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n",
    );
    let running = reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(
        running.last_error, None,
        "refused connections while starting are not errors"
    );
    assert_eq!(running.last_error_at, None);

    // A crash loop: each instance refuses connections while it starts, runs briefly, then exits.
    world.set("api", |b| {
        b.ready_after = Duration::from_millis(50);
        b.exit_after = Some(Duration::from_millis(200));
    });
    world.crash("api", 3);
    let api = service(&supervisor, "api");
    let crashed = api.wait_for(|s| s.state == ServiceState::Backoff).await;
    assert_eq!(crashed.last_error.as_deref(), Some("process exited with code 3"));
    let crashed_at = crashed.last_error_at.expect("the error has its time");
    // The next instance's startup probes fail ("connection refused"); the crash stays the last error.
    let starting = api.wait_for(|s| s.state == ServiceState::Starting).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let probing = api.snapshot();
    assert_eq!(probing.state, ServiceState::Starting);
    assert_eq!(probing.last_error, starting.last_error);
    assert_eq!(probing.last_error.as_deref(), Some("process exited with code 3"));
    assert_eq!(probing.last_error_at, Some(crashed_at));
    // The next crash is the new last error, with a later time.
    let again = api
        .wait_for(|s| s.state == ServiceState::Backoff && s.attempts == 2)
        .await;
    assert_eq!(again.last_error.as_deref(), Some("process exited with code 1"));
    assert!(again.last_error_at.unwrap() > crashed_at);
}

#[tokio::test(start_paused = true)]
async fn waiting_on_and_the_blocked_metric_agree_at_every_moment() {
    let world = World::default();
    let supervisor = supervise(&world, DB_API);
    let disagreements = watch_agreement(&supervisor, "api");
    reach(&supervisor, "api", ServiceState::Running).await;
    assert!(!blocked_metric(&supervisor, "api"));

    world.set("db", |b| b.fail_launch = true);
    world.crash("db", 1);
    reach(&supervisor, "db", ServiceState::Failed).await;
    let api = service(&supervisor, "api").snapshot();
    assert_eq!(api.state, ServiceState::Running, "its own checks pass");
    assert_eq!(api.waiting_on.as_deref(), Some("db"));
    assert!(blocked_metric(&supervisor, "api"));

    world.set("db", |b| b.fail_launch = false);
    service(&supervisor, "db").restart(true).await.unwrap();
    let api = service(&supervisor, "api")
        .wait_for(|s| s.waiting_on.is_none())
        .await;
    assert_eq!(api.state, ServiceState::Running);
    assert!(!blocked_metric(&supervisor, "api"));
    tokio::task::yield_now().await;
    assert_eq!(*disagreements.lock().unwrap(), Vec::<String>::new());
}

/// Waits for the next recorded check of `service`.
async fn next_check(service: &ServiceHandle) -> Snapshot {
    let last = service.snapshot().last_check.map(|check| check.timestamp);
    within(
        2 * SECOND,
        service.wait_for(|s| s.last_check.as_ref().map(|check| check.timestamp) != last),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_flapping_service_stays_degraded_until_recovery_threshold_passes() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\n\
         [services.api.health]\nhttp = \"http://fake/\"\ncheck_interval = \"1s\"\ntimeout = \"100ms\"\n\
         failure_threshold = 3\nrecovery_threshold = 2\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let api = service(&supervisor, "api");
    // Fail, pass, fail, pass, ... for a minute: degraded all along, never restarted.
    for round in 0..=30 {
        world.set("api", |b| b.healthy = round % 2 == 1);
        let after = next_check(&api).await;
        assert_eq!(after.health, HealthStatus::Degraded, "check {round}");
    }
    assert_eq!(world.launches("api").len(), 1);
    // Two passes in a row: healthy again.
    world.set("api", |b| b.healthy = true);
    assert_eq!(
        next_check(&api).await.health,
        HealthStatus::Degraded,
        "one pass is not enough"
    );
    assert_eq!(next_check(&api).await.health, HealthStatus::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_service_without_a_probe_is_healthy_while_it_runs() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.worker]\ncommand = [\"fake\"]\n\
         [services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n",
    );
    within(10 * SECOND, supervisor.initialized()).await;
    let worker = service(&supervisor, "worker");
    assert_eq!(worker.snapshot().health, HealthStatus::Healthy);
    assert_eq!(supervisor.composite_health(), HealthStatus::Healthy);
    tokio::time::sleep(60 * SECOND).await;
    let report = worker.summary();
    assert_eq!(report.uptime_1h, 100.0);

    worker.stop(false).await.unwrap();
    assert_eq!(
        worker.snapshot().health,
        HealthStatus::Unknown,
        "not running: no data"
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_a_service_stops_its_required_dependents_first_and_they_come_back_by_themselves() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.db]\ncommand = [\"fake\"]\n\
         [services.api]\ndepends_on = [\"db\"]\ncommand = [\"fake\"]\n\
         [services.web]\ndepends_on = [\"api\"]\ncommand = [\"fake\"]\n\
         [services.reports]\noptional_depends_on = [\"db\"]\ncommand = [\"fake\"]\n",
    );
    within(10 * SECOND, supervisor.initialized()).await;
    let stopped = service(&supervisor, "db").stop(false).await.unwrap();
    assert_eq!(stopped.state, ServiceState::Stopped);

    let terminations = world.terminations();
    assert_eq!(terminations, ["web", "api", "db"], "reverse dependency order");
    for name in ["api", "web"] {
        let snapshot = service(&supervisor, name).snapshot();
        assert_eq!(snapshot.state, ServiceState::Pending, "{name}");
        assert!(snapshot.waiting_on.is_some(), "{name}");
        assert_eq!(snapshot.ready_since, None, "{name}");
    }
    assert_eq!(
        service(&supervisor, "reports").snapshot().state,
        ServiceState::Running,
        "an optional dependent keeps running"
    );
    // Starting db back needs no other call.
    service(&supervisor, "db").start(false).await.unwrap();
    for name in ["api", "web"] {
        let back = reach(&supervisor, name, ServiceState::Running).await;
        assert_eq!(back.restart_count, 0, "{name}: coming back is not a restart");
        assert_eq!(back.waiting_on, None);
    }
    assert_eq!(world.launches("web").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn ready_since_is_null_while_not_running() {
    let world = World::default();
    let supervisor = supervise(&world, "[services.api]\ncommand = [\"fake\"]\n");
    let running = reach(&supervisor, "api", ServiceState::Running).await;
    assert!(running.ready_since.is_some());
    world.crash("api", 1);
    let backoff = reach(&supervisor, "api", ServiceState::Backoff).await;
    assert_eq!(backoff.ready_since, None);
    let again = reach(&supervisor, "api", ServiceState::Running).await;
    assert!(again.ready_since > running.ready_since);
    let stopped = service(&supervisor, "api").stop(false).await.unwrap();
    assert_eq!(stopped.ready_since, None);
}

#[tokio::test(start_paused = true)]
async fn a_crash_counts_as_a_process_down_check_failure() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let failures = |supervisor: &Supervisor| {
        get(
            supervisor,
            "orchestrator_health_check_failures_total",
            &[("service", "api"), ("reason", "process_down")],
        )
    };
    assert_eq!(failures(&supervisor), 0.0);
    world.crash("api", 1);
    let backoff = reach(&supervisor, "api", ServiceState::Backoff).await;
    assert_eq!(failures(&supervisor), 1.0);
    assert_eq!(backoff.last_restart_reason, None);
    let running = reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(running.last_restart_reason, Some(RestartReason::Crashed));
}

// ---- random faults against random graphs ------------------------------------------------------------------

/// Something done to one service (by index) of a random graph.
#[derive(Debug, Clone)]
enum Fault {
    Crash(usize),
    Health(usize, bool),
    LaunchesFail(usize, bool),
    Restart(usize, bool),
    Stop(usize),
    Start(usize, bool),
    Wait(u64),
}

fn fault(services: usize) -> impl Strategy<Value = Fault> {
    let one = 0..services;
    prop_oneof![
        one.clone().prop_map(Fault::Crash),
        (one.clone(), any::<bool>()).prop_map(|(i, healthy)| Fault::Health(i, healthy)),
        (one.clone(), any::<bool>()).prop_map(|(i, fail)| Fault::LaunchesFail(i, fail)),
        (one.clone(), any::<bool>()).prop_map(|(i, force)| Fault::Restart(i, force)),
        one.clone().prop_map(Fault::Stop),
        (one, any::<bool>()).prop_map(|(i, force)| Fault::Start(i, force)),
        (0u64..20_000).prop_map(Fault::Wait),
    ]
}

/// Each service's required and optional dependencies, by index.
type Edges = Vec<(Vec<usize>, Vec<usize>)>;

/// A random DAG of 2..6 services (each may require or optionally depend on earlier ones) and faults on it.
fn graph_and_faults() -> impl Strategy<Value = (Edges, Vec<Fault>)> {
    (2usize..6)
        .prop_flat_map(|services| {
            let edges = (0..services)
                .map(|i| {
                    (
                        prop::collection::vec(0..i.max(1), 0..=i.min(2)),
                        prop::collection::vec(0..i.max(1), 0..=i.min(1)),
                    )
                })
                .collect::<Vec<_>>();
            (edges, prop::collection::vec(fault(services), 1..30))
        })
        .prop_map(|(edges, faults)| {
            let edges = edges
                .into_iter()
                .enumerate()
                .map(|(i, (mut required, mut optional))| {
                    required.retain(|&d| d < i);
                    required.sort_unstable();
                    required.dedup();
                    optional.retain(|&d| d < i && !required.contains(&d));
                    optional.sort_unstable();
                    optional.dedup();
                    (required, optional)
                })
                .collect();
            (edges, faults)
        })
}

fn random_config(edges: &Edges) -> String {
    let name = |i: &usize| format!("\"s{i}\"");
    let mut toml = String::from(
        "[defaults.health]\ncheck_interval = \"1s\"\ntimeout = \"100ms\"\nfailure_threshold = 2\n\
         [defaults.restart]\nmax_attempts = 2\ninitial_delay = \"1s\"\n\
         [defaults.shutdown]\ntimeout = \"1s\"\n",
    );
    for (i, (required, optional)) in edges.iter().enumerate() {
        let required: Vec<String> = required.iter().map(name).collect();
        let optional: Vec<String> = optional.iter().map(name).collect();
        toml += &format!(
            "[services.s{i}]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n\
             depends_on = [{}]\noptional_depends_on = [{}]\n",
            required.join(", "),
            optional.join(", ")
        );
    }
    toml
}

/// Every invariant that must hold whenever the engine is at rest.
fn check_invariants(
    supervisor: &Supervisor,
    world: &World,
    edges: &[(Vec<usize>, Vec<usize>)],
) -> Result<(), String> {
    if !world.overlapping_launches().is_empty() {
        return Err(format!("two live instances: {:?}", world.overlapping_launches()));
    }
    for (i, (required, _)) in edges.iter().enumerate() {
        let name = format!("s{i}");
        let snapshot = service(supervisor, &name).snapshot();
        if snapshot.attempts > 2 {
            return Err(format!("{name}: {} attempts", snapshot.attempts));
        }
        if snapshot.state == ServiceState::Failed && snapshot.attempts != 2 {
            return Err(format!("{name}: failed after {} attempts", snapshot.attempts));
        }
        let down = required
            .iter()
            .any(|d| !service(supervisor, &format!("s{d}")).snapshot().ready);
        let blocked = blocked_metric(supervisor, &name);
        if blocked != down {
            return Err(format!(
                "{name}: blocked={blocked} but a required dependency down={down}"
            ));
        }
        let names_a_required = snapshot
            .waiting_on
            .as_deref()
            .is_some_and(|w| required.iter().any(|d| format!("s{d}") == w));
        if names_a_required != blocked {
            return Err(format!(
                "{name}: waiting_on={:?} blocked={blocked}",
                snapshot.waiting_on
            ));
        }
    }
    Ok(())
}

async fn run_faults(edges: Edges, faults: Vec<Fault>) -> Result<(), String> {
    let world = World::default();
    let supervisor = supervise(&world, &random_config(&edges));
    within(60 * SECOND, supervisor.initialized()).await;
    for fault in faults {
        let handle = |i: usize| service(&supervisor, &format!("s{i}")).clone();
        match fault {
            Fault::Crash(i) => world.crash(&format!("s{i}"), 1),
            Fault::Health(i, healthy) => world.set(&format!("s{i}"), |b| b.healthy = healthy),
            Fault::LaunchesFail(i, fail) => world.set(&format!("s{i}"), |b| b.fail_launch = fail),
            // Requests run beside the engine, as API calls do; their answers are not awaited here.
            Fault::Restart(i, force) => {
                let handle = handle(i);
                drop(tokio::spawn(async move { handle.restart(force).await }));
            }
            Fault::Stop(i) => {
                let handle = handle(i);
                drop(tokio::spawn(async move { handle.stop(false).await }));
            }
            Fault::Start(i, force) => {
                let handle = handle(i);
                drop(tokio::spawn(async move { handle.start(force).await }));
            }
            Fault::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        // At rest (paused time only moves when every task is idle), the invariants hold; a few
        // milliseconds let the actors woken at the same instant as this task catch up.
        let mut verdict = Err(String::new());
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            verdict = check_invariants(&supervisor, &world, &edges);
            if verdict.is_ok() {
                break;
            }
        }
        verdict?;
    }
    within(600 * SECOND, supervisor.shutdown(60 * SECOND)).await;
    for i in 0..edges.len() {
        let snapshot = service(&supervisor, &format!("s{i}")).snapshot();
        if snapshot.state != ServiceState::Stopped {
            return Err(format!("s{i} is {} after shutdown", snapshot.state));
        }
        if world.is_running(&format!("s{i}")) {
            return Err(format!("s{i} still runs after shutdown"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_faults_on_random_graphs_keep_every_invariant((edges, faults) in graph_and_faults()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let verdict = runtime.block_on(run_faults(edges, faults));
        prop_assert!(verdict.is_ok(), "{}", verdict.unwrap_err());
    }
}
