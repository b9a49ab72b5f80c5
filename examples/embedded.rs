//! The orchestrator inside your own program: two in-process services and one process, with everything
//! `fog-orchestrator run` has (REST API, `/metrics`, traces, logs, SIGTERM/SIGINT, SIGHUP).
//!
//!     cargo run --example embedded
//!     curl -s http://127.0.0.1:8400/api/orchestration/services
//!     curl -s http://127.0.0.1:8400/metrics | grep 'service_up'
//!     curl -s -X POST http://127.0.0.1:8400/api/orchestration/restart/ledger
//!
//! `ledger` keeps a balance and is healthy while it balances; `gateway` depends on it and fails its health
//! check every 40th time (watch it being restarted); `ticker` is an ordinary process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use fog_orchestrator::Orchestrator;
use fog_orchestrator::config::Config;
use fog_orchestrator::health::{FailureReason, ProbeOutcome};
use fog_orchestrator::supervisor::Service;

const CONFIG: &str = r#"
[api]
listen = "127.0.0.1:8400"

[services.ledger]
critical = true
health.check_interval = "2s"
health.timeout = "1s"

[services.gateway]
depends_on = ["ledger"]
health.check_interval = "1s"
health.timeout = "500ms"
health.failure_threshold = 1
restart.initial_delay = "500ms"

[services.ticker]
command = ["sh", "-c", "while :; do echo tick; sleep 5; done"]
"#;

/// An in-process service with state of its own.
#[derive(Default)]
struct Ledger {
    running: AtomicBool,
    balance: Arc<AtomicU64>,
}

#[async_trait]
impl Service for Ledger {
    async fn start(&self) -> Result<(), String> {
        self.running.store(true, Ordering::SeqCst);
        self.balance.store(100, Ordering::SeqCst);
        Ok(())
    }

    async fn stop(&self) -> Result<(), String> {
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn health(&self) -> ProbeOutcome {
        if self.running.load(Ordering::SeqCst) {
            ProbeOutcome::pass(format!("balanced at {}", self.balance.load(Ordering::SeqCst)))
        } else {
            ProbeOutcome::fail(FailureReason::Error, "not running")
        }
    }
}

/// An in-process service that fails one check in forty.
#[derive(Default)]
struct Gateway {
    checks: AtomicU64,
}

#[async_trait]
impl Service for Gateway {
    async fn start(&self) -> Result<(), String> {
        Ok(())
    }

    async fn stop(&self) -> Result<(), String> {
        Ok(())
    }

    async fn health(&self) -> ProbeOutcome {
        if self.checks.fetch_add(1, Ordering::SeqCst) % 40 == 39 {
            ProbeOutcome::fail(FailureReason::Error, "upstream timed out")
        } else {
            ProbeOutcome::pass("routing")
        }
    }
}

fn main() -> anyhow::Result<()> {
    // First, before any thread exists: this binary then starts its process services through itself with
    // posix_spawn (and, started as that helper, becomes the service).
    fog_orchestrator::supervisor::containment::helper_entry();
    // Room for hundreds of services' descriptors; the services still start with the limit this got.
    fog_orchestrator::supervisor::containment::raise_open_file_limit();
    tokio::runtime::Runtime::new()?.block_on(async {
        let config = Config::from_toml(CONFIG)?;
        Orchestrator::builder()
            .config(config)
            .service("ledger", Ledger::default())
            .service("gateway", Gateway::default())
            .run()
            .await?;
        Ok(())
    })
}
