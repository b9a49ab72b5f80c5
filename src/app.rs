//! Wiring for `fog-orchestrator run`: bind the API, start the supervisor, serve until a signal, then stop
//! the API (in-flight requests finish) and the services (reverse dependency order). A second signal kills
//! what is left at once.
//!
//! Supervision (every service's actor, its checks and processes, the registry) runs on a thread of its own
//! with a single-threaded runtime; the API is served by the caller's runtime. Checks then cost no wakeups of
//! a second thread (BENCHMARKS.md, "Where the time went in the first two rounds"), and no load on the API
//! can delay a check or a restart.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::server::{self, Limits};
use crate::api::{Api, BrowserPolicy};
use crate::clock::Clock;
use crate::cluster::{Cluster, Fence};
use crate::config::{Config, Source};
use crate::reload::Trigger;
use crate::signal::{Hangups, ShutdownSignals};
use crate::supervisor::containment::{self, Containment};
use crate::supervisor::{ControlError, Supervisor};
use crate::telemetry::metrics::Metrics;

/// How often a slow shutdown says which services hold it up.
const SHUTDOWN_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Why `run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The API address is taken or not ours.
    #[error("cannot listen on {address}")]
    Listen {
        /// The configured address.
        address: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// The supervisor refused its configuration.
    #[error(transparent)]
    Supervisor(#[from] ControlError),
    /// The supervision thread could not be started.
    #[error("cannot start the supervision thread")]
    Supervision(#[source] io::Error),
    /// Fleet mode's etcd client could not be set up (its TLS files, say).
    #[error("cannot set up fleet mode: {0}")]
    Cluster(String),
}

/// What asks a running orchestrator to stop.
pub enum Stop {
    /// SIGTERM or SIGINT (a second one kills every service at once); SIGHUP reloads the configuration.
    Signals(ShutdownSignals, Hangups),
    /// The embedding program cancels this token.
    Token(CancellationToken),
}

impl Stop {
    /// The first request to stop, named; SIGHUPs before it reload the configuration.
    async fn first(&mut self, api: &Api) -> &'static str {
        match self {
            Stop::Signals(signals, hangups) => loop {
                tokio::select! {
                    signal = signals.recv() => break signal,
                    () = hangups.recv() => reload_on_hangup(api).await,
                }
            },
            Stop::Token(token) => {
                token.cancelled().await;
                "stop requested"
            }
        }
    }

    /// A second request (signals only: a token is cancelled once).
    async fn second(&mut self) -> &'static str {
        match self {
            Stop::Signals(signals, _) => signals.recv().await,
            Stop::Token(_) => std::future::pending().await,
        }
    }
}

/// How `run` starts, besides its configuration.
pub struct Options {
    /// Where the configuration was read from: `POST /reload` and SIGHUP read it again (none: 409).
    pub source: Option<Source>,
    /// In-process services, each declared in the configuration without a `command`.
    pub in_process: Vec<(String, std::sync::Arc<dyn crate::supervisor::Service>)>,
    /// A listener bound already, instead of binding `api.listen`.
    pub listener: Option<TcpListener>,
    /// What stops it.
    pub stop: Stop,
}

impl Options {
    /// Stopped by SIGTERM and SIGINT, reloaded by SIGHUP (once a source is set); nothing else.
    pub fn signals(signals: ShutdownSignals, hangups: Hangups) -> Self {
        Self {
            source: None,
            in_process: Vec::new(),
            listener: None,
            stop: Stop::Signals(signals, hangups),
        }
    }
}

/// Runs every service of `config` and the API until the first request to stop, then shuts down in order.
pub async fn run(config: Config, options: Options) -> Result<(), AppError> {
    let Options {
        source,
        in_process,
        listener,
        mut stop,
    } = options;
    // Bind first: a taken port fails the start before any service is spawned.
    let address = config.api.listen;
    let listener = match listener {
        Some(listener) => listener,
        None => TcpListener::bind(address)
            .await
            .map_err(|source| AppError::Listen { address, source })?,
    };
    let bound = listener.local_addr().unwrap_or(address);
    // Said first: the socket accepts connections from now on (they are served once the services are under
    // way), and whoever waits for the address need not race the services' own log lines.
    tracing::info!(address = %bound, "API listening on http://{bound}");

    let clock = Clock::system();
    let (token, config_ui) = (config.api.token.clone(), config.api.ui);
    let browsers = BrowserPolicy::new(bound, &config.api.allowed_hosts, &config.api.allowed_origins);
    let services = config.services.len();
    let origin = config.origin.clone();
    let startup_span = tracing::info_span!(
        "start orchestrator",
        orchestrator.services = i64::try_from(services).unwrap_or(i64::MAX),
        orchestrator.config = %origin,
    );
    // The running configuration, which a reload compares a new one with.
    let running = config.clone();
    // Fleet mode is set up before any service starts: a problem with it (unreadable TLS files) stops the
    // start with nothing spawned.
    let metrics = Metrics::new();
    let fence = config.cluster.as_ref().map(|_| Fence::new());
    let cluster = match (&config.cluster, &fence) {
        (Some(settings), Some(fence)) => Some(
            Cluster::new(
                settings.clone(),
                format!("http://{bound}"),
                fence.clone(),
                metrics.for_cluster(),
            )
            .map_err(AppError::Cluster)?,
        ),
        _ => None,
    };
    let supervision = Supervision::start().map_err(AppError::Supervision)?;
    let supervisor = {
        // Everything the supervisor spawns, now and later from its own tasks, runs on that thread.
        let _on_supervision = supervision.runtime.enter();
        let mut builder = Supervisor::builder(config)
            .clock(clock)
            .metrics(metrics)
            .startup_span(startup_span);
        if let Some(fence) = fence {
            builder = builder.fence(fence);
        }
        for (name, service) in in_process {
            builder = builder.in_process(name, service);
        }
        builder.start()?
    };
    let api = Api::new(supervisor.clone(), token, browsers, clock);
    api.serve_ui(config_ui);
    api.enable_reload(source, running);
    if let Some(cluster) = &cluster {
        api.enable_cluster(cluster.clone());
        tracing::info!(
            fleet = cluster.fleet(),
            node = cluster.node(),
            "fleet mode: coordinating through etcd"
        );
    }
    let stop_cluster = CancellationToken::new();
    let in_fleet = cluster
        .clone()
        .map(|cluster| tokio::spawn(cluster.run(supervisor.clone(), stop_cluster.clone())));
    let reloads = api.clone();
    let stop_api = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        api,
        Limits::default(),
        stop_api.clone().cancelled_owned(),
    ));
    tracing::info!(services, config = %origin, pid = std::process::id(), "orchestrator started");
    match Containment::detect() {
        Containment::PidNamespace => tracing::info!(
            containment = %Containment::PidNamespace,
            "each service runs in a PID namespace of its own: nothing it starts outlives it or the orchestrator"
        ),
        Containment::ProcessGroup => tracing::warn!(
            containment = %Containment::ProcessGroup,
            "PID namespaces are not allowed here: services are contained by their process group only \
             (a setsid daemon can escape, and grandchildren survive a SIGKILL of the orchestrator)"
        ),
    }
    log_open_file_limit(services);

    let signal = stop.first(&reloads).await;
    tracing::info!(%signal, "shutting down: API first, then services in reverse dependency order (signal again to kill them at once)");
    // Open event streams end first: they would hold the API's drain up until its timeout.
    supervisor.events().close();
    stop_api.cancel();
    let orderly = async {
        let _ = server.await;
        supervisor.shutdown(SHUTDOWN_REPORT_EVERY).await;
    };
    tokio::pin!(orderly);
    tokio::select! {
        () = &mut orderly => {}
        signal = stop.second() => {
            tracing::warn!(%signal, "second signal: killing every service now");
            supervisor.force_shutdown();
            supervisor.shutdown(SHUTDOWN_REPORT_EVERY).await;
        }
    }
    // The services are down: leave the fleet, so other nodes take over its singletons at once.
    stop_cluster.cancel();
    if let Some(task) = in_fleet {
        let _ = task.await;
    }
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    supervision.stop().await;
    tracing::info!("orchestrator stopped");
    Ok(())
}

/// Descriptors a service may hold: its two output pipes and pidfd, and a probe's socket.
const DESCRIPTORS_PER_SERVICE: u64 = 4;
/// Descriptors kept for the rest: the API's clients, event streams, the spawn server, telemetry.
const DESCRIPTORS_SPARE: u64 = 256;

/// Says at start what the open-file limit is (raised in `main`), and warns when it is too low for this
/// many services: past it, starts fail with "Too many open files" and the API refuses clients.
fn log_open_file_limit(services: usize) {
    let (limit, original) = containment::open_file_limit();
    if let Some(original) = original {
        tracing::info!(
            limit,
            services_start_with = original,
            "open-file limit raised to the hard limit; services start with the one the orchestrator was given"
        );
    }
    let needed = (services as u64)
        .saturating_mul(DESCRIPTORS_PER_SERVICE)
        .saturating_add(DESCRIPTORS_SPARE);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            services,
            "the open-file limit is low for this many services: raise the hard limit (ulimit -Hn, or \
             LimitNOFILE= in a systemd unit), or starts will fail with \"Too many open files\""
        );
    }
}

/// SIGHUP: the configuration read again and what changed applied, as `POST /reload` does. A SIGHUP is
/// never waited for: the signal loop goes on (a SIGTERM during a long reload still stops the orchestrator),
/// and a SIGHUP while a reload runs is refused like a second API call (logged).
async fn reload_on_hangup(api: &Api) {
    let api = api.clone();
    tokio::spawn(async move {
        match api.reload(Trigger::Signal, false).await {
            // The reloader logs what it did, and every problem of a bad file.
            Ok(_) => {}
            Err(refusal) => tracing::warn!(%refusal, "SIGHUP: configuration not reloaded"),
        }
    });
}

/// The supervision thread: a single-threaded runtime, driven until [`Supervision::stop`].
struct Supervision {
    runtime: tokio::runtime::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Supervision {
    fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fog-supervision".to_owned())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
                // Dropping the runtime drops whatever tasks are left (the services are stopped by now).
            })?;
        Ok(Self {
            runtime: handle,
            stop,
            thread,
        })
    }

    /// Ends the thread once the supervisor has shut down, and waits for it.
    async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
