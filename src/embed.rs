//! Everything `fog-orchestrator run` is, inside another program: in-process services next to process and
//! external ones, behind the same REST API, `/metrics`, traces, logs and signals.
//!
//! ```no_run
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use fog_orchestrator::Orchestrator;
//! use fog_orchestrator::config::Config;
//! use fog_orchestrator::health::ProbeOutcome;
//! use fog_orchestrator::supervisor::Service;
//!
//! struct Ledger;
//!
//! #[async_trait]
//! impl Service for Ledger {
//!     async fn start(&self) -> Result<(), String> { Ok(()) }
//!     async fn stop(&self) -> Result<(), String> { Ok(()) }
//!     async fn health(&self) -> ProbeOutcome { ProbeOutcome::pass("balanced") }
//! }
//!
//! # async fn example() -> anyhow::Result<()> {
//! let config = Config::from_toml("[services.ledger]\n[services.worker]\ncommand = [\"sleep\", \"3600\"]\n")?;
//! Orchestrator::builder().config(config).service("ledger", Ledger).run().await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError, Options, Stop};
use crate::config::{Config, ConfigError, ConfigFile, Source};
use crate::signal::{Hangups, ShutdownSignals};
use crate::supervisor::Service;

/// The orchestrator, embedded: see [`Orchestrator::builder`].
#[derive(Debug)]
pub struct Orchestrator;

impl Orchestrator {
    /// A builder: configuration, in-process services, and what stops it.
    pub fn builder() -> OrchestratorBuilder {
        OrchestratorBuilder {
            config: None,
            services: Vec::new(),
            listener: None,
            stop: None,
            telemetry: true,
        }
    }
}

/// Why an embedded orchestrator did not run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The configuration (given, or found as `fog-orchestrator run` finds it) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API could not listen, a service could not be supervised, or the supervision thread did not start.
    #[error(transparent)]
    Run(#[from] AppError),
    /// The signal handlers could not be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A given listener could not be used.
    #[error("cannot use the given listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// Builds an embedded orchestrator (see the module documentation).
pub struct OrchestratorBuilder {
    config: Option<Config>,
    services: Vec<(String, Arc<dyn Service>)>,
    listener: Option<std::net::TcpListener>,
    stop: Option<CancellationToken>,
    telemetry: bool,
}

impl OrchestratorBuilder {
    /// The configuration; without one, it is found as `fog-orchestrator run` finds it
    /// (`ORCHESTRATOR_CONFIG`, `./orchestrator.toml`, else the FOG demo).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Runs `name` in process through `service`; the configuration declares `name` without a `command`
    /// (its dependencies, restart policy and health settings apply as to any service; without a probe,
    /// `service.health()` is its check).
    pub fn service(mut self, name: impl Into<String>, service: impl Service) -> Self {
        self.services.push((name.into(), Arc::new(service)));
        self
    }

    /// Serves the API on `listener` (bound already, for example to port 0) instead of `api.listen`.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Stops (in order) when `token` is cancelled, instead of on SIGTERM and SIGINT; no signal handler
    /// is installed then.
    pub fn stop_on(mut self, token: CancellationToken) -> Self {
        self.stop = Some(token);
        self
    }

    /// Whether to install the orchestrator's logging and trace export (`[telemetry]`; default yes). A
    /// program with its own `tracing` subscriber keeps it either way: the orchestrator's is installed only
    /// when none is.
    pub fn telemetry(mut self, install: bool) -> Self {
        self.telemetry = install;
        self
    }

    /// Runs until stopped, then stops every service in reverse dependency order.
    pub async fn run(self) -> Result<(), EmbedError> {
        let (config, source) = match self.config {
            Some(config) => (config, None),
            None => {
                let source = Source::new(ConfigFile::discover(None));
                (Config::load(&source)?, Some(source))
            }
        };
        // Built outside any runtime (the OTLP/HTTP exporter's blocking client must be), on a thread of
        // its own, and shut down the same way.
        let telemetry = if self.telemetry {
            let settings = config.telemetry.clone();
            std::thread::spawn(move || crate::telemetry::init(&settings))
                .join()
                .ok()
        } else {
            None
        };
        let stop = match self.stop {
            Some(token) => Stop::Token(token),
            None => Stop::Signals(
                ShutdownSignals::install().map_err(EmbedError::Signals)?,
                Hangups::install().map_err(EmbedError::Signals)?,
            ),
        };
        let listener = match self.listener {
            Some(listener) => {
                listener.set_nonblocking(true).map_err(EmbedError::Listener)?;
                Some(tokio::net::TcpListener::from_std(listener).map_err(EmbedError::Listener)?)
            }
            None => None,
        };
        let options = Options {
            source,
            in_process: self.services,
            listener,
            stop,
        };
        let outcome = app::run(config, options).await;
        if let Some(telemetry) = telemetry {
            let _ =
                tokio::task::spawn_blocking(move || std::thread::spawn(move || telemetry.shutdown()).join())
                    .await;
        }
        Ok(outcome?)
    }
}
