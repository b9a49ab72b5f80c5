use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::*;

fn settings(failure_threshold: u32, recovery_threshold: u32) -> HealthSettings {
    HealthSettings {
        check_interval: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
        failure_threshold,
        recovery_threshold,
        auto_recovery: true,
        startup_interval: Duration::from_millis(10),
        startup_timeout: Duration::from_secs(60),
    }
}

struct Harness {
    tracker: HealthTracker,
    now: Instant,
}

impl Harness {
    fn new(failure_threshold: u32, recovery_threshold: u32) -> Self {
        let now = Instant::now();
        Self {
            tracker: HealthTracker::new(&settings(failure_threshold, recovery_threshold), now),
            now,
        }
    }

    fn check(&mut self, passed: bool) -> HealthStatus {
        self.now += Duration::from_secs(30);
        let outcome = if passed {
            ProbeOutcome::pass("ok")
        } else {
            ProbeOutcome::fail(FailureReason::HttpStatus, "503")
        };
        let (result, _) = self.tracker.record(
            "svc",
            outcome,
            Duration::from_millis(12),
            SystemTime::UNIX_EPOCH,
            self.now,
        );
        assert_eq!(result.status, self.tracker.status());
        result.status
    }
}

#[test]
fn starts_unknown() {
    let harness = Harness::new(3, 2);
    assert_eq!(harness.tracker.status(), HealthStatus::Unknown);
    assert!(harness.tracker.last_check().is_none());
}

#[test]
fn degraded_below_the_failure_threshold_unhealthy_at_it() {
    let mut harness = Harness::new(3, 2);
    assert_eq!(harness.check(true), HealthStatus::Healthy);
    assert_eq!(harness.check(false), HealthStatus::Degraded);
    assert_eq!(harness.check(false), HealthStatus::Degraded);
    assert_eq!(harness.tracker.consecutive_failures(), 2);
    assert_eq!(harness.check(false), HealthStatus::Unhealthy);
    assert_eq!(harness.check(false), HealthStatus::Unhealthy);
    assert_eq!(harness.tracker.consecutive_failures(), 4);
}

#[test]
fn a_degraded_service_needs_recovery_threshold_passes_too() {
    let mut harness = Harness::new(3, 2);
    harness.check(true);
    harness.check(false);
    assert_eq!(harness.check(true), HealthStatus::Degraded);
    assert_eq!(harness.tracker.consecutive_failures(), 0);
    assert_eq!(harness.check(true), HealthStatus::Healthy);
}

#[test]
fn a_flapping_service_stays_degraded() {
    let mut harness = Harness::new(3, 2);
    harness.check(true);
    for _ in 0..20 {
        assert_eq!(harness.check(false), HealthStatus::Degraded);
        assert_eq!(harness.check(true), HealthStatus::Degraded);
    }
}

#[test]
fn the_first_pass_of_a_new_instance_is_readiness_not_recovery() {
    let mut harness = Harness::new(3, 5);
    assert_eq!(harness.check(true), HealthStatus::Healthy);
    harness.check(false);
    harness.tracker.reset(harness.now);
    assert_eq!(harness.check(true), HealthStatus::Healthy);
}

#[test]
fn a_service_without_a_probe_is_healthy_while_its_process_runs() {
    let mut harness = Harness::new(3, 2);
    harness.now += Duration::from_secs(60);
    let transition = harness.tracker.process_running(harness.now);
    assert_eq!(
        transition,
        Some(Transition {
            from: HealthStatus::Unknown,
            to: HealthStatus::Healthy
        })
    );
    harness.now += Duration::from_secs(60);
    let uptime = harness
        .tracker
        .uptime_percent(Duration::from_secs(3600), harness.now);
    assert!(uptime > 0.0, "uptime counts the time it ran: {uptime}");
}

#[test]
fn response_times_are_rounded_to_the_microsecond() {
    assert_eq!(milliseconds(Duration::from_nanos(1_396_232_123)), 1396.232);
    assert_eq!(
        serde_json::to_string(&milliseconds(Duration::from_nanos(1_396_232_000))).unwrap(),
        "1396.232"
    );
}

#[test]
fn an_unhealthy_service_needs_recovery_threshold_passes() {
    let mut harness = Harness::new(2, 3);
    harness.check(false);
    harness.check(false);
    assert_eq!(harness.check(true), HealthStatus::Unhealthy);
    assert_eq!(harness.check(true), HealthStatus::Unhealthy);
    assert_eq!(harness.tracker.consecutive_failures(), 0);
    assert_eq!(harness.check(true), HealthStatus::Healthy);
}

#[test]
fn a_failure_during_recovery_starts_recovery_over() {
    let mut harness = Harness::new(2, 2);
    harness.check(false);
    harness.check(false);
    harness.check(true);
    assert_eq!(harness.check(false), HealthStatus::Unhealthy);
    assert_eq!(harness.check(true), HealthStatus::Unhealthy);
    assert_eq!(harness.check(true), HealthStatus::Healthy);
}

#[test]
fn threshold_one_goes_straight_to_unhealthy() {
    let mut harness = Harness::new(1, 1);
    assert_eq!(harness.check(false), HealthStatus::Unhealthy);
    assert_eq!(harness.check(true), HealthStatus::Healthy);
}

#[test]
fn a_service_going_down_is_unhealthy_at_once() {
    let mut harness = Harness::new(3, 2);
    harness.check(true);
    let (result, transition) = harness.tracker.record_down(
        "svc",
        FailureReason::ProcessDown,
        "process exited with code 1".into(),
        SystemTime::UNIX_EPOCH,
        harness.now,
    );
    assert_eq!(result.status, HealthStatus::Unhealthy);
    assert_eq!(
        transition,
        Some(Transition {
            from: HealthStatus::Healthy,
            to: HealthStatus::Unhealthy
        })
    );
    assert_eq!(harness.tracker.consecutive_failures(), 3);
}

#[test]
fn history_keeps_the_last_hundred_results() {
    let mut harness = Harness::new(3, 2);
    for i in 0..150 {
        harness.check(i % 2 == 0);
    }
    assert_eq!(harness.tracker.history().len(), HISTORY_LEN);
    assert_eq!(harness.tracker.history().filter(|r| r.passed).count(), 50);
    assert!(harness.tracker.last_check().is_some_and(|r| !r.passed));
}

#[test]
fn results_carry_the_seed_fields() {
    let mut harness = Harness::new(3, 2);
    harness.check(true);
    let json = serde_json::to_value(harness.tracker.last_check().unwrap()).unwrap();
    assert_eq!(json["service_name"], "svc");
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["timestamp"], "1970-01-01T00:00:00.000Z");
    assert_eq!(json["message"], "ok");
    assert_eq!(json["response_time_ms"], 12.0);
    assert!(json["details"].is_object());
}

#[test]
fn uptime_is_the_healthy_share_of_known_time() {
    let start = Instant::now();
    let mut log = UptimeLog::new(start);
    let minute = Duration::from_secs(60);
    log.observe(HealthStatus::Healthy, start + minute);
    log.observe(HealthStatus::Unhealthy, start + 31 * minute);
    log.observe(HealthStatus::Healthy, start + 41 * minute);
    // Known time: 60 minutes since the first check; healthy 30 + 20 of them.
    let now = start + 61 * minute;
    let hour = Duration::from_secs(3600);
    assert!((log.percent_healthy(hour, now) - 50.0 / 60.0 * 100.0).abs() < 1e-9);
    // Over the last 20 minutes: all healthy.
    assert_eq!(log.percent_healthy(20 * minute, now), 100.0);
    // Over the last 25 minutes: 20 healthy of 25.
    assert!((log.percent_healthy(25 * minute, now) - 80.0).abs() < 1e-9);
}

#[test]
fn uptime_without_known_time_follows_the_current_status() {
    let start = Instant::now();
    let mut log = UptimeLog::new(start);
    assert_eq!(log.percent_healthy(Duration::from_secs(3600), start), 0.0);
    log.observe(HealthStatus::Healthy, start);
    assert_eq!(log.percent_healthy(Duration::from_secs(3600), start), 100.0);
}

#[test]
fn composite_follows_the_worst_service() {
    use HealthStatus::*;
    assert_eq!(composite([]), Unknown);
    assert_eq!(composite([Unknown, Unknown]), Unknown);
    assert_eq!(composite([Healthy, Healthy]), Healthy);
    assert_eq!(composite([Healthy, Degraded]), Degraded);
    assert_eq!(composite([Healthy, Unknown]), Degraded);
    assert_eq!(composite([Degraded, Unknown]), Degraded);
    assert_eq!(composite([Healthy, Degraded, Unhealthy]), Unhealthy);
    assert_eq!(composite([Unknown, Unhealthy]), Unhealthy);
}
