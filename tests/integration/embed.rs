//! `Orchestrator::builder()`: in-process services next to a process, behind the real API and `/metrics`,
//! a failing in-process health check restarting its service, and an orderly stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fog_orchestrator::Orchestrator;
use fog_orchestrator::config::Config;
use fog_orchestrator::health::{FailureReason, ProbeOutcome};
use fog_orchestrator::supervisor::Service;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::binary::{LIMIT, http, http_text};

/// Counts its starts and stops; healthy unless told otherwise.
#[derive(Clone, Default)]
struct Counted {
    starts: Arc<AtomicU32>,
    stops: Arc<AtomicU32>,
    failing: Arc<AtomicBool>,
}

#[async_trait]
impl Service for Counted {
    async fn start(&self) -> Result<(), String> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.failing.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn stop(&self) -> Result<(), String> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn health(&self) -> ProbeOutcome {
        if self.failing.load(Ordering::SeqCst) {
            ProbeOutcome::fail(FailureReason::Error, "lost its quorum")
        } else {
            ProbeOutcome::pass("in quorum")
        }
    }
}

/// Polls `url` until `done` holds for its JSON, for at most [`LIMIT`].
async fn until(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, body) = http("GET", url, "").await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn in_process_services_run_behind_the_whole_product() {
    let config = Config::from_toml(
        r#"
        [services.ledger]
        health.check_interval = "100ms"
        health.timeout = "50ms"
        [services.quorum]
        depends_on = ["ledger"]
        health.check_interval = "100ms"
        health.timeout = "50ms"
        health.failure_threshold = 1
        restart.initial_delay = "10ms"
        [services.worker]
        command = ["sleep", "3600"]
        depends_on = ["ledger"]
        "#,
    )
    .unwrap();
    let (ledger, quorum) = (Counted::default(), Counted::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        Orchestrator::builder()
            .config(config)
            .service("ledger", ledger.clone())
            .service("quorum", quorum.clone())
            .listener(listener)
            .stop_on(stop.clone())
            .telemetry(false)
            .run(),
    );

    let services = format!("{api}/api/orchestration/services");
    let all_running = |body: &Value| {
        ["ledger", "quorum", "worker"]
            .iter()
            .all(|name| body["services"][name]["status"] == "running")
    };
    let body = until(&services, "every service running", all_running).await;
    assert!(body["services"]["worker"]["pid"].as_u64().is_some(), "{body}");
    assert_eq!(body["is_ready"], true);
    let (status, metrics) = http_text("GET", &format!("{api}/metrics"), "").await;
    assert_eq!(status, 200);
    for name in ["ledger", "quorum", "worker"] {
        assert!(
            metrics.contains(&format!("orchestrator_service_up{{service=\"{name}\"}} 1")),
            "{name} is not up in /metrics"
        );
    }

    // A failing in-process health check: the service is restarted (stopped, started again).
    quorum.failing.store(true, Ordering::SeqCst);
    let body = until(&services, "quorum restarted", |body| {
        body["services"]["quorum"]["restart_count"].as_u64() >= Some(1)
            && body["services"]["quorum"]["status"] == "running"
    })
    .await;
    assert_eq!(
        body["services"]["quorum"]["last_restart_reason"], "unhealthy",
        "{body}"
    );
    assert!(quorum.starts.load(Ordering::SeqCst) >= 2);
    assert!(quorum.stops.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        ledger.starts.load(Ordering::SeqCst),
        1,
        "its dependency was left alone"
    );

    stop.cancel();
    let outcome = tokio::time::timeout(LIMIT, running).await.unwrap().unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        ledger.stops.load(Ordering::SeqCst),
        1,
        "stopped in order at the end"
    );
    let (status, _) = http("GET", &services, "").await;
    assert_eq!(status, 0, "the API is closed");
}
