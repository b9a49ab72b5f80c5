//! fog-orchestrator: an observability-first service orchestrator.
//!
//! It starts services in dependency order, health-checks them, restarts them with exponential backoff,
//! stops them in reverse order, and publishes every check, restart and heartbeat as Prometheus metrics and
//! OTLP traces. The crate is the engine; `src/main.rs` is a thin binary around [`cli`].
//!
//! # Map of the crate
//!
//! - [`config`]: the TOML file's shape, layering (embedded defaults < file < `ORCHESTRATOR__*` env < CLI
//!   flags) and validation into types that cannot be invalid, reporting every problem at once.
//! - [`name`] and [`status`]: leaf vocabulary every subsystem shares: [`ServiceName`](name::ServiceName)
//!   (the one naming rule), [`ServiceState`](status::ServiceState), [`RestartReason`](status::RestartReason).
//! - [`graph`]: the [`DependencyGraph`](graph::DependencyGraph) on petgraph: layers, startup and shutdown
//!   orders, cycle detection, and its renderings (the seed's text, Graphviz DOT, the `/dependencies` JSON).
//! - [`supervisor`]: the engine. Every lifecycle decision is one pure function,
//!   [`Lifecycle::on`](supervisor::lifecycle::Lifecycle::on); one actor per service executes what it decides
//!   (launch, stop, wait, answer) and publishes a [`Snapshot`](supervisor::Snapshot). Services start as soon
//!   as their dependencies allow ([`supervisor::gate`]), are restarted with backoff, and stop in reverse
//!   dependency order. [`supervisor::launcher`] spawns real processes (own process group, parent-death
//!   signal) or runs in-process [`Service`](supervisor::Service)s.
//! - [`health`]: probes (`http`, `tcp`, `exec`; `heartbeat` and in-process health are answered by the
//!   actor) and the pure threshold, history and uptime logic.
//! - [`registry`]: services' metadata and heartbeats (configured ones and those registered at run time),
//!   one actor with expiring deadlines.
//! - [`api`]: the REST API on a minimal hyper server: routing testable without sockets, JSON views, errors.
//! - [`telemetry`]: metrics (per-service atomics and a prometheus registry), OTLP tracing, log output.
//! - [`app`] and [`signal`]: `run` wiring: signals, ordered shutdown, a second signal kills at once.
//! - [`events`]: the event stream (`GET /api/orchestration/events`): typed events with increasing ids, a
//!   resume ring, consumers that can never slow the engine.
//! - [`reload`]: configuration reload (SIGHUP, `POST /reload`): validate in full, apply only the difference.
//! - [`demo`]: `demo-service`, the tiny HTTP service the FOG demo runs, with fault injection.
//! - [`clock`]: wall-clock timestamps derived from tokio time (deterministic under paused time).
//! - [`cli`]: the command line: `run`, `check`, `graph`, `reload`, `demo-service`.
//! - [`embed`]: [`Orchestrator::builder`], everything `run` is inside another program, with in-process
//!   services.
//!
//! # Example
//!
//! ```
//! use fog_orchestrator::config::Config;
//!
//! let config = Config::from_toml(r#"
//!     [services.db]
//!     command = ["postgres", "-D", "/var/lib/postgres"]
//!     health.tcp = "127.0.0.1:5432"
//!
//!     [services.api]
//!     depends_on = ["db"]
//!     command = ["/usr/local/bin/api"]
//!     health.http = "http://127.0.0.1:8080/health"
//! "#)?;
//! assert_eq!(config.graph.startup_order(), ["db", "api"]);
//! assert_eq!(config.graph.layer("api"), Some(1));
//! # Ok::<(), fog_orchestrator::config::ConfigError>(())
//! ```
//!
//! The contracts these modules implement (config keys, graph rules, API shapes, metric names) are written
//! down in the project's DESIGN.md.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod embed;
pub mod events;
pub mod graph;
pub mod health;
pub mod name;
pub mod registry;
pub mod reload;
pub mod signal;
pub mod status;
pub mod supervisor;
pub mod telemetry;

pub use embed::Orchestrator;

/// glibc's malloc gives large blocks back to the kernel as soon as they are freed (a `/metrics` body of
/// 4 MB is mmapped and unmapped on every scrape, page by page faulted in again; heaps are trimmed with
/// `madvise` after each response). Keep blocks up to 32 MiB in the heap and trim only past 64 MiB free:
/// the resident size stays at the working set's high-water mark instead of rising and falling on every
/// request (BENCHMARKS.md, "REST API"). Call first in `main`, before any thread starts; the binary does,
/// and so does a program that embeds the orchestrator and serves `/metrics` of many services.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
