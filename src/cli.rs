//! The command line: `run` (supervise the services), `check` (validate a config), `graph` (print the
//! dependency graph as text, Graphviz DOT or the `/dependencies` JSON).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError, ConfigFile, EXIT_CONFIG, Source};

/// An observability-first service orchestrator: starts services in dependency order, health-checks them,
/// restarts them with exponential backoff and stops them in reverse order.
///
/// Without a subcommand it runs. Without a config file (no --config, no ORCHESTRATOR_CONFIG, no
/// ./orchestrator.toml) it uses the built-in FOG demo topology.
#[derive(Debug, Parser)]
#[command(name = "fog-orchestrator", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML). Defaults to ./orchestrator.toml when present, else the built-in FOG demo.
    #[arg(long, short, global = true, value_name = "FILE", env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start every service in dependency order and keep it running (the default).
    Run(RunArgs),
    /// Validate the configuration and print a summary; exits 78 when it is invalid.
    Check,
    /// Print the dependency graph: layers as text, Graphviz DOT, or the /dependencies JSON.
    Graph {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// A tiny HTTP service with fault injection (GET /health, POST /fault), used by the FOG demo.
    DemoService(crate::demo::DemoArgs),
}

/// Flags of `run`; each overrides the config file and environment.
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Address of the REST API and /metrics (overrides api.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Log format: pretty or json (overrides telemetry.log_format).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// Output formats of `graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// The seed's "Service Dependency Graph" text.
    Text,
    /// Graphviz DOT (`| dot -Tsvg > graph.svg`).
    Dot,
    /// The body of GET /api/orchestration/dependencies.
    Json,
}

/// Runs the parsed command line and returns the process exit code. Errors are printed to stderr.
pub fn execute(cli: Cli) -> ExitCode {
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            let _ = writeln!(io::stderr(), "error: {error:#}");
            match error.downcast_ref::<ConfigError>() {
                Some(_) => ExitCode::from(EXIT_CONFIG),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = ConfigFile::discover(cli.config);
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Check => check(Source::new(file)),
        Command::Graph { format } => graph(Source::new(file), format),
        Command::Run(args) => run(run_source(file, args)),
        Command::DemoService(args) => {
            runtime()?.block_on(crate::demo::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_source(file: ConfigFile, args: RunArgs) -> Source {
    let mut source = Source::new(file);
    if let Some(listen) = args.listen {
        source = source.with_override("api.listen", listen);
    }
    if let Some(format) = args.log_format {
        source = source.with_override("telemetry.log_format", format);
    }
    source
}

fn check(source: Source) -> anyhow::Result<ExitCode> {
    let config = Config::load(&source)?;
    print_warnings(&config);
    let critical = config.services.iter().filter(|s| s.critical).count();
    let external = config.services.iter().filter(|s| s.is_external()).count();
    let layers = config.graph.layers().len();
    let summary = format!(
        "configuration ok: {origin}\n  {services} services ({critical} critical, {external} external) in \
         {layers} layers\n  startup order: {order}\n  {warnings} warning(s)\n",
        origin = config.origin,
        services = config.services.len(),
        order = config.graph.startup_order().join(", "),
        warnings = config.warnings.len(),
    );
    emit(&summary)
}

fn graph(source: Source, format: GraphFormat) -> anyhow::Result<ExitCode> {
    let config = Config::load(&source)?;
    print_warnings(&config);
    let text = match format {
        GraphFormat::Text => config.graph.visualization() + "\n",
        GraphFormat::Dot => config.graph.to_dot(),
        GraphFormat::Json => serde_json::to_string_pretty(&config.graph.to_json())? + "\n",
    };
    emit(&text)
}

fn run(source: Source) -> anyhow::Result<ExitCode> {
    let config = Config::load(&source)?;
    // Before the runtime: the OTLP/HTTP exporter's blocking client must not be built inside one.
    let telemetry = crate::telemetry::init(&config.telemetry);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = runtime()?;
    // Signal handlers go in before any service starts, so no signal is lost.
    let signals = runtime.block_on(async { crate::signal::ShutdownSignals::install() })?;
    let outcome = runtime.block_on(crate::app::run(config, signals));
    // Flush spans from this thread, outside the runtime: the SDK's shutdown blocks.
    telemetry.shutdown();
    outcome?;
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn print_warnings(config: &Config) {
    let mut stderr = io::stderr().lock();
    for warning in &config.warnings {
        let _ = writeln!(stderr, "warning: {warning}");
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the command quietly instead of panicking.
fn emit(text: &str) -> anyhow::Result<ExitCode> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(error) => Err(error.into()),
    }
}
