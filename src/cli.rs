//! The command line: `run` (supervise the services), `check` (validate a config), `graph` (print the
//! dependency graph as text, Graphviz DOT or the `/dependencies` JSON), `reload` (ask the running
//! orchestrator to reload its configuration), `events` (print its event stream).

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
    /// Print the running orchestrator's event stream: the events it keeps, and with --follow every event
    /// as it happens (state, health, restart, backoff, failed, heartbeat_timeout, registered, deregistered,
    /// reload), one line each.
    Events {
        /// Base URL of the running orchestrator (default: http:// and api.listen of the configuration).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// Keep printing events as they happen, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Only events about this service (repeatable).
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<String>,
        /// Only events of this type (repeatable).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Print each event's JSON, one per line.
        #[arg(long)]
        json: bool,
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
        Command::Events {
            api,
            follow,
            services,
            types,
            json,
        } => {
            let (base, _) = api_base(&Source::new(file), api)?;
            events(&base, follow, &services, &types, json)
        }
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

/// The running orchestrator's base URL (`--api`, else from the configuration's `api.listen`) and its
/// token. With --api, a file with problems (which the orchestrator will list) does not stop the question.
fn api_base(source: &Source, api: Option<String>) -> anyhow::Result<(String, Option<String>)> {
    let local = match (Config::load(source), &api) {
        (Ok(config), _) => Some(config),
        (Err(_), Some(_)) => None,
        (Err(error), None) => return Err(error.into()),
    };
    let token = local.as_ref().and_then(|config| config.api.token.clone());
    let base = match (api, local) {
        (Some(api), _) => api,
        (None, Some(config)) => format!("http://{}", reachable(config.api.listen)),
        (None, None) => anyhow::bail!("no --api and no readable configuration"),
    };
    Ok((base, token))
}

/// `events`: the stream read over a plain HTTP/1.0 connection (the body ends when the server closes it),
/// one line per event.
fn events(
    base: &str,
    follow: bool,
    services: &[String],
    types: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::BufRead as _;
    let mut path = format!("/api/orchestration/events?follow={follow}");
    if !services.is_empty() {
        path.push_str(&format!("&service={}", services.join(",")));
    }
    if !types.is_empty() {
        path.push_str(&format!("&type={}", types.join(",")));
    }
    let (mut stream, authority) = connect(base)?;
    // While following, the server sends a keepalive comment every 15 s: a minute of silence means it is gone.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reader = io::BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("{base} sent no HTTP status line"))?;
    // The rest of the head.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    if status != 200 {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut body);
        let error: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let message = error["error"].as_str().unwrap_or(body.trim());
        anyhow::bail!("{base} answered {status}: {message}");
    }
    let mut stdout = io::stdout().lock();
    for line in reader.lines() {
        let line = match line {
            Ok(line) => line,
            // The server closed the stream (shutdown, or this reader was too slow and dropped).
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error.into()),
        };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if event["type"] == "caught_up" {
            continue;
        }
        let text = if json {
            data.to_owned()
        } else {
            describe_event(&event)
        };
        if let Err(error) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            if error.kind() == io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(error.into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One event as a line: time, type, service, then its details as key=value.
fn describe_event(event: &serde_json::Value) -> String {
    let field = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
    let mut line = format!(
        "{} {:<17} {:<16}",
        field("time"),
        field("type"),
        event["service"].as_str().unwrap_or("")
    );
    if let Some(object) = event.as_object() {
        for (key, value) in object {
            if matches!(key.as_str(), "id" | "time" | "type" | "service" | "trace_id") || value.is_null() {
                continue;
            }
            let value = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            line.push_str(&format!(" {key}={value}"));
        }
    }
    if let Some(trace) = event["trace_id"].as_str() {
        line.push_str(&format!(" trace={trace}"));
    }
    line.trim_end().to_owned()
}

fn reload(source: Source, api: Option<String>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let (base, token) = api_base(&source, api)?;
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
    let (mut stream, authority) = connect(base)?;
    // A reload answers once what it started has settled: at most the longest stop and start its services
    // are configured to take.
    let timeout = std::time::Duration::from_secs(30 * 60);
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

/// A connection to `base` (`http://host:port`), and the authority for its `Host` header.
fn connect(base: &str) -> anyhow::Result<(std::net::TcpStream, String)> {
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
    let stream = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))
        .map_err(|error| anyhow::anyhow!("cannot reach the orchestrator at {base}: {error}"))?;
    Ok((stream, authority.to_owned()))
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
