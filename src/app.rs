//! Wiring for `fog-orchestrator run`: start the supervisor, wait for a signal, shut down in order.

use std::time::Duration;

use crate::config::Config;
use crate::signal::ShutdownSignals;
use crate::supervisor::{ControlError, Supervisor};

/// How often a slow shutdown says which services hold it up.
const SHUTDOWN_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Runs every service of `config` until the first signal, then stops them in reverse dependency order; a
/// second signal kills what is left at once.
pub async fn run(config: Config, mut signals: ShutdownSignals) -> Result<(), ControlError> {
    let services = config.services.len();
    let origin = config.origin.clone();
    let supervisor = Supervisor::builder(config).start()?;
    tracing::info!(services, config = %origin, pid = std::process::id(), "orchestrator started");

    let signal = signals.recv().await;
    tracing::info!(%signal, "shutting down: stopping services in reverse dependency order (signal again to kill them at once)");
    let shutdown = supervisor.shutdown(SHUTDOWN_REPORT_EVERY);
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        signal = signals.recv() => {
            tracing::warn!(%signal, "second signal: killing every service now");
            supervisor.force_shutdown();
            shutdown.await;
        }
    }
    tracing::info!("orchestrator stopped");
    Ok(())
}
