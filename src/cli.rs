//! The command line: `run` (supervise the services), `check` (validate a config), `graph` (print the
//! dependency graph as text, Graphviz DOT or the `/dependencies` JSON), `reload` (ask the running
//! orchestrator for its reload plan).

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
    /// Ask the running orchestrator to read its configuration again and apply only what changed: services
    /// added, removed, restarted (reason reload) and updated live; every other one keeps running untouched.
    /// Prints the plan and what happened to each service. Exits 78 when the file has problems (each is
    /// printed; nothing changed), 1 when a service did not come up or on other errors.
    Reload {
        /// Base URL of the running orchestrator (default: http:// and api.listen of the configuration).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// Only print the plan; nothing changes.
        #[arg(long)]
        dry_run: bool,
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
        Command::Reload { api, dry_run } => reload(Source::new(file), api, dry_run),
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
    let (signals, hangups) = runtime.block_on(async {
        std::io::Result::Ok((
            crate::signal::ShutdownSignals::install()?,
            crate::signal::Hangups::install()?,
        ))
    })?;
    let mut options = crate::app::Options::signals(signals, hangups);
    options.source = Some(source);
    let outcome = runtime.block_on(crate::app::run(config, options));
    // Flush spans from this thread, outside the runtime: the SDK's shutdown blocks.
    telemetry.shutdown();
    outcome?;
    Ok(ExitCode::SUCCESS)
}

fn reload(source: Source, api: Option<String>, dry_run: bool) -> anyhow::Result<ExitCode> {
    // The configuration says where the API listens and its token; with --api, a file with problems
    // (which the orchestrator will list) does not stop the question from being asked.
    let local = match (Config::load(&source), &api) {
        (Ok(config), _) => Some(config),
        (Err(_), Some(_)) => None,
        (Err(error), None) => return Err(error.into()),
    };
    let base = match (api, &local) {
        (Some(api), _) => api,
        (None, Some(config)) => format!("http://{}", reachable(config.api.listen)),
        (None, None) => unreachable!("an unreadable configuration without --api returned above"),
    };
    let token = local.as_ref().and_then(|config| config.api.token.clone());
    let path = format!("/api/orchestration/reload?dry_run={dry_run}");
    let (status, body) = post(&base, &path, token.as_deref())?;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| anyhow::anyhow!("{base} answered {status} with a body that is not JSON: {error}"))?;
    if (200..300).contains(&status) {
        emit(&describe_plan(&answer))?;
        let success = answer["success"].as_bool() == Some(true);
        Ok(if success {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    } else {
        let mut stderr = io::stderr().lock();
        let error = answer["error"].as_str().unwrap_or("no error message");
        let _ = writeln!(stderr, "error: {base} answered {status}: {error}");
        for problem in answer["problems"].as_array().into_iter().flatten() {
            let _ = writeln!(stderr, "  - {}", problem.as_str().unwrap_or_default());
        }
        let config_problems = status == 400 && answer.get("problems").is_some();
        Ok(ExitCode::from(if config_problems { EXIT_CONFIG } else { 1 }))
    }
}

/// One `POST` without a body to `base` (`http://host:port`) + `path`, over a plain connection the server
/// closes after answering: the status code and the body. The API answers with a Content-Length body.
fn post(base: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::Read as _;
    use std::net::ToSocketAddrs as _;
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{base:?} is not an http:// URL"))?
        .trim_end_matches('/');
    let address = authority
        .to_socket_addrs()
        .map_err(|error| anyhow::anyhow!("cannot resolve {authority}: {error}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{authority} resolves to no address"))?;
    // A reload answers once what it started has settled: at most the longest stop and start its services
    // are configured to take.
    let timeout = std::time::Duration::from_secs(30 * 60);
    let mut stream = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))
        .map_err(|error| anyhow::anyhow!("cannot reach the orchestrator at {base}: {error}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{base} sent no complete HTTP response"))?;
    let status = std::str::from_utf8(&response[..head_end])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("{base} sent no HTTP status line"))?;
    Ok((status, response[head_end + 4..].to_vec()))
}

/// Where a client reaches an API bound to `listen` (an unspecified address means this host).
fn reachable(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    match listen.ip() {
        ip if !ip.is_unspecified() => listen,
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::LOCALHOST, listen.port()).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, listen.port()).into(),
    }
}

/// The plan of `POST /reload`, for people.
fn describe_plan(answer: &serde_json::Value) -> String {
    let plan = &answer["plan"];
    let names = |key: &str| -> String {
        let list: Vec<&str> = plan[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.join(", ")
        }
    };
    let changes = |key: &str| -> String {
        let list: Vec<String> = plan[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|change| {
                let keys: Vec<&str> = change["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str())
                    .collect();
                format!(
                    "{} ({})",
                    change["service"].as_str().unwrap_or_default(),
                    keys.join(", ")
                )
            })
            .collect();
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.join(", ")
        }
    };
    let dry_run = answer["dry_run"].as_bool() != Some(false);
    let mut text = format!(
        "reload plan for {} ({}):\n",
        answer["config"].as_str().unwrap_or("the configuration"),
        match (answer["changed"].as_bool() == Some(false), dry_run) {
            (true, true) => "nothing would change",
            (true, false) => "nothing changed",
            (false, true) => "dry run: nothing changed",
            (false, false) => "applied",
        }
    );
    for (label, value) in [
        ("add", names("add")),
        ("remove", names("remove")),
        ("restart", changes("restart")),
        ("update live", changes("update")),
        ("untouched", names("untouched")),
        ("settings", names("settings")),
        (
            "needs an orchestrator restart",
            names("needs_orchestrator_restart"),
        ),
    ] {
        text.push_str(&format!("  {label}: {value}\n"));
    }
    for warning in answer["warnings"].as_array().into_iter().flatten() {
        text.push_str(&format!("  warning: {}\n", warning.as_str().unwrap_or_default()));
    }
    let applied = answer["applied"]
        .as_array()
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    if !applied.is_empty() {
        text.push_str("result:\n");
    }
    for service in applied {
        let pid = service["pid"]
            .as_u64()
            .map_or_else(String::new, |pid| format!(", pid {pid}"));
        let outcome = match service["error"].as_str() {
            Some(error) if service["ok"].as_bool() != Some(true) => format!("FAILED: {error}"),
            _ => "ok".to_owned(),
        };
        text.push_str(&format!(
            "  {} {}: {}{pid}: {outcome}\n",
            service["action"].as_str().unwrap_or_default(),
            service["service"].as_str().unwrap_or_default(),
            service["state"].as_str().unwrap_or_default(),
        ));
    }
    text
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
