//! The supervision engine in a fake world with paused time: start order, health thresholds, restarts with
//! backoff, dependency-aware recovery, manual control and ordered shutdown, asserted on exact schedules.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fog_orchestrator::health::{HealthStatus, ProbeOutcome};
use fog_orchestrator::supervisor::{ControlError, RestartReason, Service, ServiceState, Supervisor};
use tokio::time::Instant;

use crate::harness::{Event, FOG, World, config, reach, service, supervise, within};

const SECOND: Duration = Duration::from_secs(1);

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

#[tokio::test(start_paused = true)]
async fn fog_services_start_in_dependency_order_along_the_critical_path() {
    let world = World::default();
    let names = [
        "dao",
        "scheduler",
        "edge",
        "fog_coordinator",
        "harvest",
        "onion",
        "p2p",
        "vpn_coordinator",
        "betanet",
        "bitchat",
    ];
    for name in names {
        world.set(name, |b| b.ready_after = Duration::from_millis(200));
    }
    let start = Instant::now();
    let supervisor = supervise(&world, FOG);
    within(10 * SECOND, supervisor.initialized()).await;
    assert!(supervisor.is_ready());
    assert_eq!(supervisor.composite_health(), HealthStatus::Healthy);

    let launched = |name: &str| ms(world.launches(name)[0] - start);
    // Each layer waits for the one below: 200 ms to ready each, probed every 10 ms.
    assert_eq!(launched("dao"), 0);
    for name in ["scheduler", "edge"] {
        assert!(
            (200..=210).contains(&launched(name)),
            "{name} at {}",
            launched(name)
        );
    }
    for name in ["fog_coordinator", "harvest"] {
        assert!(
            (400..=420).contains(&launched(name)),
            "{name} at {}",
            launched(name)
        );
    }
    for name in ["onion", "p2p"] {
        assert!(
            (600..=630).contains(&launched(name)),
            "{name} at {}",
            launched(name)
        );
    }
    assert!((800..=840).contains(&launched("vpn_coordinator")));
    for name in ["betanet", "bitchat"] {
        assert!(
            (1000..=1050).contains(&launched(name)),
            "{name} at {}",
            launched(name)
        );
    }
    // Never before a dependency was ready.
    let graph = config(FOG).graph;
    for name in names {
        for dependency in graph
            .dependencies(name)
            .into_iter()
            .chain(graph.optional_dependencies(name))
        {
            let ready_at = world.launches(dependency)[0] + Duration::from_millis(200);
            assert!(
                world.launches(name)[0] >= ready_at,
                "{name} launched before {dependency} was ready"
            );
        }
    }
    let all_ready = names.iter().map(|n| launched(n) + 200).max().unwrap();
    assert!(all_ready <= 1260, "all ready at {all_ready} ms");
}

#[tokio::test(start_paused = true)]
async fn restarts_with_doubling_backoff_then_fails() {
    let world = World::default();
    world.set("api", |b| b.exit_after = Some(Duration::from_millis(100)));
    let supervisor = supervise(&world, "[services.api]\ncommand = [\"fake\"]\n");
    let failed = reach(&supervisor, "api", ServiceState::Failed).await;

    let launches = world.launches("api");
    assert_eq!(launches.len(), 4, "the first start and three restarts");
    let gaps: Vec<u128> = launches.windows(2).map(|w| ms(w[1] - w[0])).collect();
    // Each gap: 100 ms running, then 2 s, 4 s, 8 s of backoff.
    assert_eq!(gaps, [2100, 4100, 8100]);
    assert_eq!(failed.restart_count, 3);
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.last_restart_reason, Some(RestartReason::Crashed));
    assert_eq!(failed.last_error.as_deref(), Some("process exited with code 1"));
    assert_eq!(failed.health, HealthStatus::Unhealthy);

    // Failed means left alone.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(world.launches("api").len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_failed_service_needs_force_and_force_resets_the_counter() {
    let world = World::default();
    world.set("api", |b| b.fail_launch = true);
    let supervisor = supervise(&world, "[services.api]\ncommand = [\"fake\"]\n");
    reach(&supervisor, "api", ServiceState::Failed).await;
    let api = service(&supervisor, "api");

    let refused = api.restart(false).await;
    assert!(
        matches!(refused, Err(ControlError::Refused { attempts: 3, .. })),
        "{refused:?}"
    );
    assert!(matches!(
        api.start(false).await,
        Err(ControlError::Refused { .. })
    ));

    world.set("api", |b| b.fail_launch = false);
    let restarted = api
        .restart(true)
        .await
        .expect("a forced restart runs the service again");
    assert_eq!(restarted.state, ServiceState::Running);
    assert_eq!(restarted.attempts, 0);
    assert_eq!(
        restarted.restart_count, 4,
        "three automatic restarts and one manual"
    );
    assert_eq!(restarted.last_restart_reason, Some(RestartReason::Manual));
}

#[tokio::test(start_paused = true)]
async fn a_crash_is_noticed_at_once_not_at_the_next_check() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\nhealth.check_interval = \"1h\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let crashed_at = Instant::now();
    world.crash("api", 137);
    let backoff = reach(&supervisor, "api", ServiceState::Backoff).await;
    assert_eq!(
        Instant::now(),
        crashed_at,
        "no time passed between the exit and the reaction"
    );
    assert_eq!(backoff.backoff, Some(Duration::from_secs(2)));
    assert_eq!(
        backoff.last_error.as_deref(),
        Some("process exited with code 137")
    );
    assert_eq!(backoff.health, HealthStatus::Unhealthy);
}

#[tokio::test(start_paused = true)]
async fn failing_checks_degrade_then_restart_at_the_threshold() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\nhealth.check_interval = \"10s\"\n",
    );
    let api = service(&supervisor, "api");
    reach(&supervisor, "api", ServiceState::Running).await;
    world.set("api", |b| b.healthy = false);

    let degraded = within(11 * SECOND, api.wait_for(|s| s.health == HealthStatus::Degraded)).await;
    assert_eq!(degraded.consecutive_failures, 1);
    assert_eq!(degraded.state, ServiceState::Running);
    let degraded = within(11 * SECOND, api.wait_for(|s| s.consecutive_failures == 2)).await;
    assert_eq!(degraded.health, HealthStatus::Degraded);

    let backoff = within(11 * SECOND, api.wait_for(|s| s.state == ServiceState::Backoff)).await;
    assert_eq!(backoff.last_error.as_deref(), Some("503 Service Unavailable"));
    assert!(
        world
            .events()
            .iter()
            .any(|(_, e)| *e == Event::Terminate("api".into())),
        "stopped gracefully"
    );

    world.set("api", |b| b.healthy = true);
    let running = reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(running.restart_count, 1);
    assert_eq!(running.last_restart_reason, Some(RestartReason::Unhealthy));
    assert_eq!(running.health, HealthStatus::Healthy);
}

/// The steady checks of a healthy service are recorded by its checker, outside the actor: each pass reaches
/// the snapshot, the counts and the history at its interval; a failure among them is the actor's again
/// (degraded at once), the passes after it too until the service is healthy again; and once the service is
/// stopped, nothing more is recorded.
#[tokio::test(start_paused = true)]
async fn steady_passes_are_recorded_at_each_interval_and_end_with_the_service() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\nhealth.check_interval = \"10s\"\n",
    );
    let api = service(&supervisor, "api");
    let ready = reach(&supervisor, "api", ServiceState::Running).await;
    let first = ready.consecutive_successes;
    let at = |snapshot: &fog_orchestrator::supervisor::Snapshot| {
        snapshot.last_check.as_ref().expect("a last check").timestamp
    };
    let mut last = at(&ready);
    for passes in 1..=5 {
        let passed = within(
            11 * SECOND,
            api.wait_for(|s| s.consecutive_successes == first + passes),
        )
        .await;
        assert_eq!(passed.health, HealthStatus::Healthy);
        assert!(passed.last_check.as_ref().unwrap().passed);
        assert!(at(&passed) > last, "each pass is the new last check");
        last = at(&passed);
    }
    let report = api.report().await.unwrap();
    assert_eq!(report.consecutive_successes, first + 5);
    let history = &report.history;
    assert_eq!(
        history.len(),
        usize::try_from(first).unwrap() + 5,
        "every pass is in the history"
    );
    assert_eq!(history.last().unwrap().timestamp, last);

    world.set("api", |b| b.healthy = false);
    let degraded = within(11 * SECOND, api.wait_for(|s| s.health == HealthStatus::Degraded)).await;
    assert_eq!(degraded.consecutive_failures, 1);
    world.set("api", |b| b.healthy = true);
    let healthy = within(31 * SECOND, api.wait_for(|s| s.health == HealthStatus::Healthy)).await;
    assert_eq!(healthy.state, ServiceState::Running);
    let again = healthy.consecutive_successes;
    within(
        21 * SECOND,
        api.wait_for(|s| s.consecutive_successes == again + 2),
    )
    .await;

    api.stop(false).await.unwrap();
    let stopped = api.report().await.unwrap();
    tokio::time::sleep(60 * SECOND).await;
    let later = api.report().await.unwrap();
    assert_eq!(
        later.history.len(),
        stopped.history.len(),
        "no check of a stopped service"
    );
    assert_eq!(later.snapshot.last_check, stopped.snapshot.last_check);
}

#[tokio::test(start_paused = true)]
async fn without_auto_recovery_an_unhealthy_service_is_left_running() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\n[services.api.health]\nhttp = \"http://fake/\"\n\
         check_interval = \"1s\"\ntimeout = \"100ms\"\nauto_recovery = false\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    world.set("api", |b| b.healthy = false);
    let api = service(&supervisor, "api");
    within(10 * SECOND, api.wait_for(|s| s.health == HealthStatus::Unhealthy)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let snapshot = api.snapshot();
    assert_eq!(snapshot.state, ServiceState::Running);
    assert_eq!(snapshot.restart_count, 0);
    assert_eq!(world.launches("api").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_check_is_a_timeout_failure() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\n[services.api.health]\nhttp = \"http://fake/\"\n\
         check_interval = \"10s\"\ntimeout = \"2s\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    world.set("api", |b| b.hang = true);
    let api = service(&supervisor, "api");
    let degraded = within(13 * SECOND, api.wait_for(|s| s.health == HealthStatus::Degraded)).await;
    let check = degraded.last_check.expect("a check was recorded");
    assert_eq!(check.message, "no answer within 2s");
    assert_eq!(check.response_time_ms, 2000.0);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_never_passes_fails_after_startup_timeout_and_is_retried() {
    let world = World::default();
    world.set("api", |b| b.healthy = false);
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\n[services.api.health]\nhttp = \"http://fake/\"\nstartup_timeout = \"3s\"\n",
    );
    let start = Instant::now();
    let backoff = reach(&supervisor, "api", ServiceState::Backoff).await;
    assert_eq!(ms(Instant::now() - start), 3000);
    assert!(
        backoff
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("not ready within 3s"),
        "{backoff:?}"
    );
    assert!(backoff.settled, "dependents stop waiting after the first attempt");
    assert_eq!(world.launches("api").len(), 1);
    assert!(!world.is_running("api"), "the unready instance was stopped");
    world.set("api", |b| b.healthy = true);
    let running = reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(running.restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn dependents_wait_for_required_dependencies_and_name_them() {
    let world = World::default();
    world.set("db", |b| b.fail_launch = true);
    let supervisor = supervise(
        &world,
        "[services.db]\ncommand = [\"fake\"]\n[services.api]\ndepends_on = [\"db\"]\ncommand = [\"fake\"]\n\
         [services.web]\noptional_depends_on = [\"db\"]\ncommand = [\"fake\"]\n",
    );
    within(SECOND, supervisor.initialized()).await;
    let api = service(&supervisor, "api").snapshot();
    assert_eq!(api.state, ServiceState::Pending);
    assert_eq!(api.waiting_on.as_deref(), Some("db"));
    assert!(world.launches("api").is_empty());
    // An optional dependency that failed its first attempt does not hold anything up.
    assert_eq!(
        service(&supervisor, "web").snapshot().state,
        ServiceState::Running
    );

    reach(&supervisor, "db", ServiceState::Failed).await;
    assert!(
        world.launches("api").is_empty(),
        "never started without its required dependency"
    );

    world.set("db", |b| b.fail_launch = false);
    service(&supervisor, "db").restart(true).await.unwrap();
    let api = reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(api.waiting_on, None);
}

#[tokio::test(start_paused = true)]
async fn dependents_of_a_down_dependency_spend_no_restart_budget() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.db]\ncommand = [\"fake\"]\n\
         [services.api]\ndepends_on = [\"db\"]\ncommand = [\"fake\"]\n\
         [services.api.health]\nhttp = \"http://fake/\"\ncheck_interval = \"1s\"\ntimeout = \"100ms\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let api = service(&supervisor, "api");

    // db crashes and keeps failing; api fails its checks because of it.
    world.set("db", |b| b.fail_launch = true);
    world.crash("db", 1);
    world.set("api", |b| b.healthy = false);
    let unhealthy = within(10 * SECOND, api.wait_for(|s| s.health == HealthStatus::Unhealthy)).await;
    assert_eq!(unhealthy.state, ServiceState::Running);
    reach(&supervisor, "db", ServiceState::Failed).await;
    let waiting = api.snapshot();
    assert_eq!(
        waiting.state,
        ServiceState::Running,
        "not restarted for its own failing checks"
    );
    assert_eq!(waiting.attempts, 0, "no budget spent");
    assert_eq!(waiting.waiting_on.as_deref(), Some("db"));
    assert_eq!(world.launches("api").len(), 1);

    // db recovers: api resumes the normal rules and is restarted for its own failures.
    world.set("db", |b| b.fail_launch = false);
    service(&supervisor, "db").restart(true).await.unwrap();
    let restarting = within(10 * SECOND, api.wait_for(|s| s.state == ServiceState::Backoff)).await;
    assert_eq!(restarting.attempts, 1);
    world.set("api", |b| b.healthy = true);
    let running = reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(running.last_restart_reason, Some(RestartReason::Unhealthy));
}

#[tokio::test(start_paused = true)]
async fn continuous_health_resets_the_attempt_counter() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\nrestart.reset_after = \"1m\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    world.crash("api", 1);
    reach(&supervisor, "api", ServiceState::Backoff).await;
    let running = reach(&supervisor, "api", ServiceState::Running).await;
    assert_eq!(running.attempts, 1);
    let api = service(&supervisor, "api");
    let ran_at = Instant::now();
    let reset = within(2 * 60 * SECOND, api.wait_for(|s| s.attempts == 0)).await;
    assert_eq!(ms(Instant::now() - ran_at), 60_000);
    assert_eq!(reset.restart_count, 1, "the restart count is history, not budget");
}

#[tokio::test(start_paused = true)]
async fn manual_restart_answers_once_running_again() {
    let world = World::default();
    world.set("api", |b| b.ready_after = Duration::from_millis(500));
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let asked = Instant::now();
    let snapshot = service(&supervisor, "api").restart(false).await.unwrap();
    assert!(
        ms(Instant::now() - asked) >= 500,
        "answered only after the new instance was ready"
    );
    assert_eq!(snapshot.state, ServiceState::Running);
    assert_eq!(snapshot.restart_count, 1);
    assert_eq!(snapshot.last_restart_reason, Some(RestartReason::Manual));
    assert_eq!(world.launches("api").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_restarts_coalesce_into_one() {
    let world = World::default();
    world.set("api", |b| b.ready_after = Duration::from_millis(300));
    let supervisor = supervise(
        &world,
        "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n",
    );
    reach(&supervisor, "api", ServiceState::Running).await;
    let api = service(&supervisor, "api").clone();
    let restarts: Vec<_> = (0..5)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.restart(false).await })
        })
        .collect();
    for restart in restarts {
        let snapshot = restart.await.unwrap().unwrap();
        assert_eq!(snapshot.restart_count, 1);
    }
    assert_eq!(world.launches("api").len(), 2, "one restart happened");
}

#[tokio::test(start_paused = true)]
async fn manual_stop_and_start() {
    let world = World::default();
    let supervisor = supervise(&world, "[services.api]\ncommand = [\"fake\"]\n");
    reach(&supervisor, "api", ServiceState::Running).await;
    let api = service(&supervisor, "api");
    let stopped = api.stop(false).await.unwrap();
    assert_eq!(stopped.state, ServiceState::Stopped);
    assert!(!world.is_running("api"));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(world.launches("api").len(), 1, "a stopped service stays stopped");
    let started = api.start(false).await.unwrap();
    assert_eq!(started.state, ServiceState::Running);
    assert_eq!(started.restart_count, 0, "a start is not a restart");
}

#[tokio::test(start_paused = true)]
async fn external_services_are_probed_and_gate_but_are_never_restarted() {
    let world = World::default();
    world.set("db", |b| b.healthy = false);
    let supervisor = supervise(
        &world,
        "[services.db]\nhealth.tcp = \"127.0.0.1:5432\"\n\
         [services.api]\ndepends_on = [\"db\"]\ncommand = [\"fake\"]\n",
    );
    // The fake answers "connection refused" for a service without a process: db never passes.
    within(SECOND * 120, supervisor.initialized()).await;
    let db = service(&supervisor, "db");
    assert_eq!(db.snapshot().state, ServiceState::Starting);
    assert!(world.launches("db").is_empty());
    assert_eq!(
        service(&supervisor, "api").snapshot().waiting_on.as_deref(),
        Some("db")
    );
    assert!(matches!(db.restart(true).await, Err(ControlError::NotManaged(_))));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_probe_restarts_with_heartbeat_timeout() {
    let world = World::default();
    let supervisor = supervise(
        &world,
        "[registry]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"3s\"\n\
         [services.agent]\ncommand = [\"fake\"]\n[services.agent.health]\nheartbeat = true\n\
         check_interval = \"1s\"\ntimeout = \"500ms\"\nfailure_threshold = 2\n",
    );
    let agent = service(&supervisor, "agent");
    agent.heartbeat().await.unwrap();
    reach(&supervisor, "agent", ServiceState::Running).await;
    for _ in 0..5 {
        tokio::time::sleep(SECOND).await;
        agent.heartbeat().await.unwrap();
    }
    assert_eq!(agent.snapshot().health, HealthStatus::Healthy);
    let backoff = within(10 * SECOND, agent.wait_for(|s| s.state == ServiceState::Backoff)).await;
    assert!(
        backoff
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("no heartbeat for"),
        "{backoff:?}"
    );
    agent.heartbeat().await.unwrap();
    let running = reach(&supervisor, "agent", ServiceState::Running).await;
    assert_eq!(running.last_restart_reason, Some(RestartReason::HeartbeatTimeout));
}

#[tokio::test(start_paused = true)]
async fn check_now_returns_fresh_results_with_response_times() {
    let world = World::default();
    let supervisor = supervise(&world, FOG);
    within(10 * SECOND, supervisor.initialized()).await;
    world.set("onion", |b| b.healthy = false);
    let results = supervisor.check_now().await;
    assert_eq!(results.len(), 10);
    let onion = results.iter().find(|r| r.service_name == "onion").unwrap();
    assert_eq!(onion.status, HealthStatus::Degraded);
    assert!(!onion.passed);
    assert_eq!(supervisor.composite_health(), HealthStatus::Degraded);
    let report = service(&supervisor, "onion").report().await.unwrap();
    assert_eq!(report.history.last().unwrap().message, "503 Service Unavailable");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_dependents_before_their_dependencies() {
    let world = World::default();
    let supervisor = supervise(&world, FOG);
    within(10 * SECOND, supervisor.initialized()).await;
    within(10 * SECOND, supervisor.shutdown(SECOND)).await;

    let stopped = world.terminations();
    assert_eq!(stopped.len(), 10);
    let position = |name: &str| stopped.iter().position(|n| n == name).unwrap();
    let graph = config(FOG).graph;
    for name in graph.names() {
        for dependent in graph.dependents(name) {
            assert!(
                position(dependent) < position(name),
                "{dependent} must stop before {name}: {stopped:?}"
            );
        }
    }
    assert_eq!(stopped.last().map(String::as_str), Some("dao"));
    for handle in supervisor.services().iter() {
        assert_eq!(handle.snapshot().state, ServiceState::Stopped);
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_ignoring_sigterm_is_killed_after_its_timeout_while_others_stop() {
    let world = World::default();
    world.set("stubborn", |b| b.ignore_sigterm = true);
    let supervisor = supervise(
        &world,
        "[services.stubborn]\ncommand = [\"fake\"]\nshutdown.timeout = \"30s\"\n\
         [services.polite]\ncommand = [\"fake\"]\n",
    );
    within(SECOND, supervisor.initialized()).await;
    let start = Instant::now();
    let shutdown = tokio::spawn({
        let supervisor = supervisor.clone();
        async move { supervisor.shutdown(Duration::from_secs(5)).await }
    });
    reach(&supervisor, "polite", ServiceState::Stopped).await;
    assert_eq!(
        ms(Instant::now() - start),
        0,
        "the independent service stopped in parallel, at once"
    );
    within(60 * SECOND, shutdown).await.unwrap();
    assert_eq!(ms(Instant::now() - start), 30_000);
    let kills: Vec<_> = world
        .events()
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::Kill(_)))
        .collect();
    assert_eq!(kills.len(), 1);
    assert_eq!(kills[0].1, Event::Kill("stubborn".into()));
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_kills_at_once() {
    let world = World::default();
    world.set("stubborn", |b| b.ignore_sigterm = true);
    let supervisor = supervise(
        &world,
        "[services.stubborn]\ncommand = [\"fake\"]\nshutdown.timeout = \"30s\"\n",
    );
    within(SECOND, supervisor.initialized()).await;
    let start = Instant::now();
    supervisor.begin_shutdown();
    tokio::time::sleep(Duration::from_secs(2)).await;
    supervisor.force_shutdown();
    within(SECOND, supervisor.shutdown(SECOND)).await;
    assert_eq!(ms(Instant::now() - start), 2000);
    assert!(
        world
            .events()
            .iter()
            .any(|(_, e)| *e == Event::Kill("stubborn".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_stuck_dependent_holds_its_dependency_until_killed() {
    let world = World::default();
    world.set("web", |b| b.ignore_sigterm = true);
    let supervisor = supervise(
        &world,
        "[services.db]\ncommand = [\"fake\"]\n[services.web]\ndepends_on = [\"db\"]\ncommand = [\"fake\"]\n\
         shutdown.timeout = \"10s\"\n",
    );
    within(SECOND, supervisor.initialized()).await;
    let start = Instant::now();
    within(60 * SECOND, supervisor.shutdown(SECOND)).await;
    let events = world.events();
    let at = |wanted: Event| {
        events
            .iter()
            .find(|(_, e)| *e == wanted)
            .map(|(t, _)| ms(*t - start))
            .unwrap()
    };
    assert_eq!(at(Event::Terminate("web".into())), 0);
    assert_eq!(at(Event::Kill("web".into())), 10_000);
    assert_eq!(
        at(Event::Terminate("db".into())),
        10_000,
        "db stops only after web is gone"
    );
}

struct Counter {
    healthy: AtomicBool,
    starts: AtomicU32,
    stops: AtomicU32,
}

#[async_trait]
impl Service for Counter {
    async fn start(&self) -> Result<(), String> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn stop(&self) -> Result<(), String> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn health(&self) -> ProbeOutcome {
        if self.healthy.load(Ordering::SeqCst) {
            ProbeOutcome::pass("counting")
        } else {
            ProbeOutcome::fail(fog_orchestrator::health::FailureReason::Error, "counter is stuck")
        }
    }
}

#[tokio::test(start_paused = true)]
async fn in_process_services_use_the_service_trait() {
    let counter = Arc::new(Counter {
        healthy: AtomicBool::new(true),
        starts: AtomicU32::new(0),
        stops: AtomicU32::new(0),
    });
    let supervisor = Supervisor::builder(config(
        "[services.counter]\nhealth.check_interval = \"1s\"\nhealth.timeout = \"100ms\"\n",
    ))
    .in_process("counter", counter.clone())
    .start()
    .unwrap();
    reach(&supervisor, "counter", ServiceState::Running).await;
    assert_eq!(counter.starts.load(Ordering::SeqCst), 1);

    counter.healthy.store(false, Ordering::SeqCst);
    let handle = service(&supervisor, "counter");
    within(10 * SECOND, handle.wait_for(|s| s.state == ServiceState::Backoff)).await;
    assert_eq!(
        counter.stops.load(Ordering::SeqCst),
        1,
        "stopped gracefully before the restart"
    );
    counter.healthy.store(true, Ordering::SeqCst);
    let running = reach(&supervisor, "counter", ServiceState::Running).await;
    assert_eq!(running.last_restart_reason, Some(RestartReason::Unhealthy));
    assert_eq!(counter.starts.load(Ordering::SeqCst), 2);

    within(SECOND, supervisor.shutdown(SECOND)).await;
    assert_eq!(counter.stops.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn in_process_services_must_be_declared_without_a_command() {
    let counter = Arc::new(Counter {
        healthy: AtomicBool::new(true),
        starts: AtomicU32::new(0),
        stops: AtomicU32::new(0),
    });
    let result = Supervisor::builder(config("[services.counter]\ncommand = [\"x\"]\n"))
        .in_process("counter", counter.clone())
        .start();
    assert!(result.is_err());
    let result = Supervisor::builder(config("[services.other]\n"))
        .in_process("counter", counter)
        .start();
    assert!(result.is_err());
}

#[tokio::test(start_paused = true)]
async fn priority_waits_for_lower_layers_and_a_required_dependency_counts_once() {
    let world = World::default();
    world.set("db", |b| b.ready_after = Duration::from_millis(300));
    world.set("cache", |b| b.ready_after = Duration::from_millis(500));
    let supervisor = supervise(
        &world,
        "[services.db]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n\
         [services.cache]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n\
         [services.api]\npriority = 1\ndepends_on = [\"db\"]\ncommand = [\"fake\"]\n",
    );
    let start = Instant::now();
    within(10 * SECOND, supervisor.initialized()).await;
    // api depends on db only, but priority 1 also makes it wait (optionally) for cache in layer 0.
    let api_launched = ms(world.launches("api")[0] - start);
    assert!(
        (500..=520).contains(&api_launched),
        "api launched at {api_launched} ms"
    );
}

/// A restart without delay whose replacement is kept ready starts that replacement as soon as the exit is
/// seen, before the exit is even recorded (the service still shows running, with no restart and no
/// error), and the launch that follows takes it. Not when the restart waits out a delay, and not when
/// the attempts are spent.
#[tokio::test(start_paused = true)]
async fn a_replacement_kept_ready_starts_before_the_exit_is_recorded_and_only_for_a_restart_at_once() {
    let world = World::default();
    world.set("worker", |b| b.standby = true);
    world.set("patient", |b| b.standby = true);
    let supervisor = supervise(
        &world,
        "[services.worker]\ncommand = [\"fake\"]\nrestart.initial_delay = \"0s\"\nrestart.max_attempts = 2\n\
         [services.patient]\ncommand = [\"fake\"]\nrestart.initial_delay = \"1s\"\n",
    );
    let worker = service(&supervisor, "worker");
    world.watch(worker.clone());
    world.watch(service(&supervisor, "patient"));
    reach(&supervisor, "worker", ServiceState::Running).await;
    reach(&supervisor, "patient", ServiceState::Running).await;
    let of = |name: &str| {
        let name = name.to_owned();
        move |event: &Event| match event {
            Event::Launch(n) | Event::Exit(n) | Event::StartAhead(n) | Event::Forget(n) => *n == name,
            _ => false,
        }
    };
    let events = |name: &str| -> Vec<Event> {
        let of = of(name);
        world
            .events()
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| of(e))
            .collect()
    };
    let worker_name = || "worker".to_string();

    for restarts in 1..=2 {
        world.crash("worker", 1);
        let again = within(
            SECOND,
            worker.wait_for(|s| s.restart_count == restarts && s.state == ServiceState::Running),
        )
        .await;
        assert_eq!(again.restart_count, restarts);
    }
    assert_eq!(
        events("worker"),
        [
            Event::Launch(worker_name()),
            Event::Exit(worker_name()),
            Event::StartAhead(worker_name()),
            Event::Launch(worker_name()),
            Event::Exit(worker_name()),
            Event::StartAhead(worker_name()),
            Event::Launch(worker_name()),
        ],
        "started ahead, then taken by the launch: nothing forgotten"
    );
    let seen = world.seen_ahead();
    assert_eq!(seen.len(), 2);
    for (before, snapshot) in seen.iter().enumerate() {
        assert_eq!(snapshot.state, ServiceState::Running, "{snapshot:?}");
        assert_eq!(snapshot.restart_count, before as u32, "{snapshot:?}");
        assert!(snapshot.pid.is_some(), "the exit not yet recorded: {snapshot:?}");
    }
    assert!(seen[0].last_error.is_none(), "{:?}", seen[0]);

    // The attempts are spent: the service fails, and nothing is started ahead.
    world.crash("worker", 1);
    within(SECOND, worker.wait_for(|s| s.state == ServiceState::Failed)).await;
    let after = events("worker");
    assert_eq!(
        after[7..],
        [Event::Exit(worker_name()), Event::Forget(worker_name())]
    );

    // A restart after a delay starts nothing ahead: its launch comes a second later.
    world.crash("patient", 1);
    reach(&supervisor, "patient", ServiceState::Backoff).await;
    reach(&supervisor, "patient", ServiceState::Running).await;
    assert!(!events("patient").contains(&Event::StartAhead("patient".into())));
    assert_eq!(world.seen_ahead().len(), 2);
}
