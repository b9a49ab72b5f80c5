use proptest::prelude::*;

use super::*;

const POLICY: Policy = Policy {
    managed: true,
    auto_recovery: true,
    max_attempts: 3,
    singleton: false,
};

const SINGLETON: Policy = Policy {
    singleton: true,
    ..POLICY
};

fn open() -> Event {
    Event::Dependencies {
        gate: Gate::Open,
        held_by: None,
    }
}

fn blocked() -> Event {
    Event::Dependencies {
        gate: Gate::Blocked("db".into()),
        held_by: None,
    }
}

fn waiting() -> Event {
    Event::Dependencies {
        gate: Gate::Waiting {
            dependency: "db".into(),
            required: true,
        },
        held_by: None,
    }
}

fn held() -> Event {
    Event::Dependencies {
        gate: Gate::Blocked("db".into()),
        held_by: Some("db".into()),
    }
}

fn request(request: Request, force: bool) -> Event {
    Event::Request { request, force }
}

/// A managed service driven into `state` through valid events only.
fn in_state(state: ServiceState) -> Lifecycle {
    let mut service = Lifecycle::new("api", POLICY);
    let steps: Vec<Event> = match state {
        ServiceState::Pending => vec![waiting()],
        ServiceState::Starting => vec![open()],
        ServiceState::Running => vec![open(), Event::Ready],
        ServiceState::Stopping => vec![open(), Event::Ready, request(Request::Stop, false)],
        ServiceState::Stopped => vec![
            open(),
            Event::Ready,
            request(Request::Stop, false),
            Event::DependentsStopped,
            Event::InstanceStopped,
        ],
        ServiceState::Backoff => vec![open(), Event::Ready, Event::Exited("crash".into())],
        ServiceState::Failed => {
            let mut steps = vec![open(), Event::Ready];
            for _ in 0..=POLICY.max_attempts {
                steps.push(Event::Exited("crash".into()));
                steps.push(Event::BackoffElapsed);
            }
            steps
        }
    };
    for step in steps {
        service.on(step);
    }
    assert_eq!(service.state(), state, "{service:?}");
    service
}

fn every_event() -> Vec<(&'static str, Event)> {
    vec![
        ("restart", request(Request::Restart, false)),
        ("restart force", request(Request::Restart, true)),
        ("start", request(Request::Start, false)),
        ("start force", request(Request::Start, true)),
        ("stop", request(Request::Stop, false)),
        ("stop force", request(Request::Stop, true)),
        ("reload", request(Request::Reload, false)),
        ("open", open()),
        ("waiting", waiting()),
        ("blocked", blocked()),
        ("held", held()),
        ("launch failed", Event::LaunchFailed("no such file".into())),
        ("ready", Event::Ready),
        (
            "startup timed out",
            Event::StartupTimedOut("not ready within 60s".into()),
        ),
        ("exited", Event::Exited("process exited with code 1".into())),
        (
            "unhealthy",
            Event::Unhealthy(RestartReason::Unhealthy, "503".into()),
        ),
        ("dependents stopped", Event::DependentsStopped),
        ("instance stopped", Event::InstanceStopped),
        ("backoff elapsed", Event::BackoffElapsed),
        ("healthy long enough", Event::HealthyLongEnough),
        ("shutdown", Event::Shutdown),
    ]
}

/// The state each (state, event) pair leads to; `None` where the event is refused or means nothing in
/// that state: then the whole lifecycle must be unchanged, and the only action a refusal's answer.
fn expected(state: ServiceState, event: &str) -> Option<ServiceState> {
    use ServiceState::*;
    let next = match (state, event) {
        // Requests: refused ones first.
        (Failed, "restart" | "start" | "stop") => return None,
        (Stopping, "restart" | "restart force" | "start" | "start force" | "stop" | "stop force") => {
            return None;
        }
        (Running | Starting, "restart" | "restart force") => Stopping,
        (Pending, "restart" | "restart force") => Pending,
        (Backoff | Stopped, "restart" | "restart force") => Starting,
        (Failed, "restart force" | "start force") => Starting,
        (Pending | Starting | Running, "start" | "start force") => state,
        (Backoff | Stopped, "start" | "start force") => Starting,
        (Pending | Starting | Running | Backoff, "stop" | "stop force") => Stopping,
        (Stopped, "stop" | "stop force") => Stopped,
        (Failed, "stop force") => Stopping,
        (Running | Starting, "reload") => Stopping,
        (Backoff | Failed, "reload") => Starting,
        (Pending | Stopping | Stopped, "reload") => state,
        // Dependencies.
        (Pending, "open") => Starting,
        (Starting | Running, "held") => Stopping,
        (_, "open" | "waiting" | "blocked" | "held") => state,
        // The instance and the timers.
        (Starting, "launch failed" | "exited") | (Running, "exited") => Backoff,
        (Starting, "ready") => Running,
        (Starting, "startup timed out") | (Running, "unhealthy") => Stopping,
        // In `stopping` after a stop request: the dependents first, then the instance.
        (Stopping, "dependents stopped") => Stopping,
        (Backoff, "backoff elapsed") => Starting,
        (_, "shutdown") => Stopping,
        _ => return None,
    };
    Some(next)
}

#[test]
fn every_state_and_event_pair_has_a_defined_outcome() {
    for state in ServiceState::ALL {
        for (name, event) in every_event() {
            let mut service = in_state(state);
            let before = service.clone();
            let actions = service.on(event.clone());
            match expected(state, name) {
                Some(next) => assert_eq!(service.state(), next, "{state} + {name}: {actions:?}"),
                None => {
                    let refused = actions.iter().all(|a| matches!(a, Action::Refuse(_)));
                    assert!(refused, "{state} + {name} asked for {actions:?}");
                    assert_eq!(service, before, "{state} + {name} changed the lifecycle");
                }
            }
        }
    }
}

#[test]
fn invalid_transitions_leave_the_lifecycle_unchanged() {
    let invalid = [
        (ServiceState::Pending, Event::Ready),
        (ServiceState::Pending, Event::Exited("x".into())),
        (ServiceState::Running, Event::Ready),
        (ServiceState::Running, Event::BackoffElapsed),
        (ServiceState::Running, Event::InstanceStopped),
        (ServiceState::Stopped, Event::Exited("x".into())),
        (
            ServiceState::Stopped,
            Event::Unhealthy(RestartReason::Unhealthy, "x".into()),
        ),
        (ServiceState::Failed, Event::BackoffElapsed),
        (ServiceState::Backoff, Event::Ready),
        (ServiceState::Stopping, Event::Ready),
        (ServiceState::Stopping, Event::InstanceStopped),
        (
            ServiceState::Stopping,
            Event::Unhealthy(RestartReason::Unhealthy, "x".into()),
        ),
    ];
    for (state, event) in invalid {
        let mut service = in_state(state);
        let before = service.clone();
        assert_eq!(service.on(event.clone()), [], "{state} + {event:?}");
        assert_eq!(service, before, "{state} + {event:?}");
    }
}

#[test]
fn a_refused_request_changes_nothing() {
    let cases = [
        (in_state(ServiceState::Failed), request(Request::Restart, false)),
        (in_state(ServiceState::Failed), request(Request::Start, false)),
        (in_state(ServiceState::Stopping), request(Request::Start, false)),
    ];
    for (mut service, event) in cases {
        let before = service.clone();
        let actions = service.on(event.clone());
        assert!(
            matches!(actions[..], [Action::Refuse(_)]),
            "{event:?}: {actions:?}"
        );
        assert_eq!(service, before);
    }
}

#[test]
fn a_restart_while_a_required_dependency_is_down_is_refused_before_anything_stops() {
    let mut service = in_state(ServiceState::Running);
    service.on(Event::Dependencies {
        gate: Gate::Blocked("db".into()),
        held_by: None,
    });
    let before = service.clone();
    let actions = service.on(request(Request::Restart, false));
    assert_eq!(
        actions,
        [Action::Refuse(ControlError::Blocked {
            service: "api".into(),
            dependency: "db".into()
        })]
    );
    assert_eq!(service, before, "still running, nothing queued, nothing counted");
}

#[test]
fn a_crash_backs_off_three_times_then_fails() {
    let mut service = in_state(ServiceState::Running);
    for attempt in 1..=3 {
        let actions = service.on(Event::Exited("crash".into()));
        assert_eq!(
            actions.last(),
            Some(&Action::Backoff {
                attempt,
                reason: RestartReason::Crashed
            })
        );
        assert_eq!(
            service.on(Event::BackoffElapsed),
            [Action::Launch(Some(RestartReason::Crashed))]
        );
        service.on(Event::Ready);
    }
    let actions = service.on(Event::Exited("crash".into()));
    assert_eq!(actions.last(), Some(&Action::GiveUp));
    assert_eq!(service.state(), ServiceState::Failed);
    assert_eq!(service.attempts(), 3);
    assert_eq!(service.restart_count(), 3);
}

#[test]
fn a_down_dependency_makes_a_crash_wait_without_spending_attempts() {
    let mut service = in_state(ServiceState::Running);
    service.on(blocked());
    assert_eq!(service.waiting_on(), Some("db"));
    assert_eq!(service.blocked_by(), Some("db"));
    assert_eq!(
        service.on(Event::Unhealthy(RestartReason::Unhealthy, "x".into())),
        []
    );
    service.on(Event::Exited("crash".into()));
    assert_eq!(service.state(), ServiceState::Pending);
    assert_eq!(service.attempts(), 0);
    assert_eq!(service.on(open()), [Action::Launch(Some(RestartReason::Crashed))]);
}

#[test]
fn a_stop_waits_for_required_dependents_then_stops_the_instance() {
    let mut service = in_state(ServiceState::Running);
    assert_eq!(
        service.on(request(Request::Stop, false)),
        [
            Action::FailWaiters(ControlError::Stopped("api".into())),
            Action::AwaitDependents(Dependents::Required)
        ]
    );
    assert!(service.stop_requested());
    assert_eq!(service.on(Event::DependentsStopped), [Action::StopInstance]);
    assert_eq!(service.on(Event::InstanceStopped), [Action::Answer]);
    assert_eq!(service.state(), ServiceState::Stopped);
    assert!(
        service.stop_requested(),
        "dependents stay down while it is stopped"
    );
    service.on(request(Request::Start, false));
    assert!(!service.stop_requested());
}

#[test]
fn a_dependent_held_by_a_stopping_dependency_stops_and_starts_again_by_itself() {
    let mut service = in_state(ServiceState::Running);
    service.on(held());
    assert_eq!(service.state(), ServiceState::Stopping);
    service.on(Event::DependentsStopped);
    service.on(Event::InstanceStopped);
    assert_eq!(service.state(), ServiceState::Pending);
    assert_eq!(service.waiting_on(), Some("db"));
    assert_eq!(
        service.on(open()),
        [Action::Launch(None)],
        "not counted as a restart"
    );
    assert_eq!(service.restart_count(), 0);
}

#[test]
fn concurrent_restarts_join_the_one_under_way() {
    let mut service = in_state(ServiceState::Running);
    service.on(request(Request::Restart, false));
    service.on(Event::InstanceStopped);
    assert_eq!(service.state(), ServiceState::Starting);
    assert_eq!(
        service.on(request(Request::Restart, false)),
        [Action::AnswerWhenRunning]
    );
    assert_eq!(service.restart_count(), 1);
}

#[test]
fn an_external_service_is_never_restarted_and_settles_on_a_startup_timeout() {
    let mut service = Lifecycle::new(
        "db",
        Policy {
            managed: false,
            ..POLICY
        },
    );
    service.on(open());
    assert_eq!(service.on(Event::StartupTimedOut("x".into())), []);
    assert!(service.settled());
    assert_eq!(service.state(), ServiceState::Starting);
    service.on(Event::Ready);
    assert_eq!(
        service.on(Event::Unhealthy(RestartReason::Unhealthy, "x".into())),
        []
    );
    assert!(matches!(
        service.on(request(Request::Restart, true))[..],
        [Action::Refuse(ControlError::NotManaged(_))]
    ));
}

#[test]
fn a_reload_replaces_a_running_instance_and_counts_a_restart_with_reason_reload() {
    let mut service = in_state(ServiceState::Running);
    assert_eq!(
        service.on(request(Request::Reload, false)),
        [
            Action::BeginRestart(RestartReason::Reload),
            Action::StopInstance,
            Action::Answer
        ]
    );
    assert_eq!(
        service.on(Event::InstanceStopped),
        [Action::Launch(Some(RestartReason::Reload))]
    );
    assert_eq!(service.restart_count(), 1);
}

#[test]
fn a_reload_gives_a_failed_service_a_fresh_start_and_leaves_a_stopped_one_stopped() {
    let mut failed = in_state(ServiceState::Failed);
    let actions = failed.on(request(Request::Reload, false));
    assert!(
        actions.contains(&Action::Launch(Some(RestartReason::Reload))),
        "{actions:?}"
    );
    assert_eq!(failed.attempts(), 0);

    let mut stopped = in_state(ServiceState::Stopped);
    assert_eq!(stopped.on(request(Request::Reload, false)), [Action::Answer]);
    assert_eq!(stopped.state(), ServiceState::Stopped);
    assert!(stopped.stop_requested(), "still kept down on request");
}

#[test]
fn a_reload_of_a_held_dependent_counts_its_next_launch_but_not_a_first_one() {
    let mut held_service = in_state(ServiceState::Running);
    held_service.on(held());
    held_service.on(Event::DependentsStopped);
    held_service.on(Event::InstanceStopped);
    assert_eq!(held_service.on(request(Request::Reload, false)), [Action::Answer]);
    assert_eq!(
        held_service.on(open()),
        [Action::Launch(Some(RestartReason::Reload))]
    );

    let mut never_ran = in_state(ServiceState::Pending);
    never_ran.on(request(Request::Reload, false));
    assert_eq!(never_ran.on(open()), [Action::Launch(None)]);
    assert_eq!(never_ran.restart_count(), 0);
}

#[test]
fn a_reload_answers_an_external_service_without_acting_and_is_refused_at_shutdown() {
    let mut external = Lifecycle::new(
        "db",
        Policy {
            managed: false,
            ..POLICY
        },
    );
    external.on(open());
    assert_eq!(external.on(request(Request::Reload, false)), [Action::Answer]);
    let mut service = in_state(ServiceState::Running);
    service.on(Event::Shutdown);
    assert_eq!(
        service.on(request(Request::Reload, false)),
        [Action::Refuse(ControlError::ShuttingDown)]
    );
}

// ---- properties over random event sequences ----------------------------------------------------------------

#[test]
fn a_singleton_runs_only_while_this_node_leads_it() {
    let mut service = Lifecycle::new("scheduler", SINGLETON);
    assert!(!service.leader());
    assert_eq!(
        service.on(open()),
        [Action::FailWaiters(ControlError::Standby("scheduler".into()))]
    );
    assert_eq!(service.state(), ServiceState::Pending);
    assert!(
        service.settled(),
        "a standby must not hold up the startup sequence"
    );
    assert_eq!(
        service.on(request(Request::Restart, false)),
        [Action::Refuse(ControlError::Standby("scheduler".into()))]
    );
    assert_eq!(service.on(request(Request::Start, false)), [Action::Answer]);
    assert_eq!(service.on(Event::Leadership(true)), [Action::Launch(None)]);
    service.on(Event::Ready);
    assert_eq!(
        service.on(Event::Leadership(false)),
        [
            Action::FailWaiters(ControlError::Standby("scheduler".into())),
            Action::StopInstance
        ],
        "losing the lease stops the instance at once, without waiting for dependents"
    );
    assert!(service.stop_requested(), "its required dependents stop with it");
    let after_stop = service.on(Event::InstanceStopped);
    assert!(!after_stop.iter().any(|a| matches!(a, Action::Launch(_))));
    assert_eq!(service.state(), ServiceState::Pending);
    assert!(!service.stop_requested());
    assert_eq!(service.on(Event::Leadership(true)), [Action::Launch(None)]);
}

#[test]
fn a_stopped_singleton_stands_for_election_again_when_started() {
    let mut service = Lifecycle::new("scheduler", SINGLETON);
    service.on(open());
    service.on(request(Request::Stop, false));
    service.on(Event::DependentsStopped);
    service.on(Event::InstanceStopped);
    assert_eq!(service.state(), ServiceState::Stopped);
    // Not leading: the start is answered at once, pending (standing by) rather than a promise to run.
    let actions = service.on(request(Request::Start, false));
    assert_eq!(actions.last(), Some(&Action::Answer));
    assert_eq!(service.state(), ServiceState::Pending);
    assert!(!service.stop_requested());
}

#[test]
fn leadership_means_nothing_to_a_service_that_is_not_a_singleton() {
    let mut service = Lifecycle::new("api", POLICY);
    service.on(open());
    service.on(Event::Ready);
    let before = service.clone();
    assert_eq!(service.on(Event::Leadership(false)), []);
    assert_eq!(service, before);
}

fn any_event() -> impl Strategy<Value = Event> {
    let requests = (
        prop_oneof![
            Just(Request::Restart),
            Just(Request::Start),
            Just(Request::Stop),
            Just(Request::Reload)
        ],
        any::<bool>(),
    )
        .prop_map(|(request, force)| Event::Request { request, force });
    prop_oneof![
        requests,
        Just(open()),
        Just(waiting()),
        Just(blocked()),
        Just(held()),
        Just(Event::LaunchFailed("x".into())),
        Just(Event::Ready),
        Just(Event::StartupTimedOut("x".into())),
        Just(Event::Exited("x".into())),
        Just(Event::Unhealthy(RestartReason::Unhealthy, "x".into())),
        Just(Event::DependentsStopped),
        Just(Event::InstanceStopped),
        Just(Event::BackoffElapsed),
        Just(Event::HealthyLongEnough),
    ]
}

proptest! {
    #[test]
    fn a_singleton_never_runs_without_leading(
        events in prop::collection::vec(prop_oneof![any_event(), any::<bool>().prop_map(Event::Leadership)], 0..200)
    ) {
        let mut service = Lifecycle::new("scheduler", SINGLETON);
        let mut live = false;
        for event in events {
            let before = service.state();
            let exited = matches!(event, Event::Exited(_) | Event::LaunchFailed(_));
            let actions = service.on(event.clone());
            if exited && before != service.state() {
                live = false;
            }
            for action in &actions {
                match action {
                    Action::Launch(_) => {
                        prop_assert!(service.leader(), "launched without leading after {:?}", event);
                        live = true;
                    }
                    Action::StopInstance => live = false,
                    _ => {}
                }
            }
            prop_assert!(service.leader() || !live, "runs without leading after {:?}", event);
        }
    }

    #[test]
    fn random_event_sequences_keep_every_invariant(events in prop::collection::vec(any_event(), 0..200)) {
        let mut service = Lifecycle::new("api", POLICY);
        let mut live = false;
        for event in events {
            let before = service.clone();
            let exited = matches!(event, Event::Exited(_) | Event::LaunchFailed(_));
            let actions = service.on(event.clone());
            if exited && before.state() != service.state() {
                live = false;
            }
            if matches!(actions[..], [Action::Refuse(_)]) {
                prop_assert_eq!(&service, &before, "a refusal changed {:?}", event);
            }
            for action in &actions {
                match action {
                    Action::Launch(_) => {
                        prop_assert!(!live, "two live instances after {:?}", event);
                        live = true;
                    }
                    Action::StopInstance => live = false,
                    Action::GiveUp => prop_assert_eq!(service.attempts(), POLICY.max_attempts),
                    _ => {}
                }
            }
            prop_assert!(service.attempts() <= POLICY.max_attempts);
            if service.state() == ServiceState::Failed {
                prop_assert_eq!(service.attempts(), POLICY.max_attempts);
            }
            prop_assert_eq!(
                service.blocked_by().is_some(),
                matches!(service.gate(), Gate::Blocked(_) | Gate::Waiting { required: true, .. })
            );
        }
        service.on(Event::Shutdown);
        service.on(Event::DependentsStopped);
        service.on(Event::InstanceStopped);
        prop_assert_eq!(service.state(), ServiceState::Stopped);
    }
}
