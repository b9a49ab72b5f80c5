//! `fog-orchestrator demo-service`: a tiny HTTP service for the FOG demo and the real-process tests.
//!
//! `GET /health` answers by the current mode: `healthy` (200), `unhealthy` (503), `hang` (never answers),
//! `slow` (200 after `--slow-delay`). `POST /fault` with `{"mode": "..."}` changes the mode; `crash` exits
//! with code 1 right after answering. `GET /fault` shows the mode. SIGTERM and SIGINT end it with code 0.
//!
//! A fault sent with `"sticky": true` is also written to `STATE_DIR/NAME.fault` and read back at start, so
//! it survives restarts: a sticky `crash` makes every new instance crash, which shows the whole backoff
//! schedule ending in `failed`. A sticky `healthy` (or deleting the file) clears it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;

/// How the demo service answers health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// 200 OK.
    Healthy,
    /// 503 Service Unavailable.
    Unhealthy,
    /// Never answers.
    Hang,
    /// Exits with code 1 (only as a fault to inject).
    Crash,
    /// 200 OK after the slow delay.
    Slow,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Unhealthy => "unhealthy",
            Mode::Hang => "hang",
            Mode::Crash => "crash",
            Mode::Slow => "slow",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Mode::Healthy,
            Mode::Unhealthy,
            Mode::Hang,
            Mode::Crash,
            Mode::Slow,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == text)
    }
}

/// Flags of `demo-service`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Name reported in responses and logs.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Address to listen on (port 0 picks a free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Wait this long before listening, to simulate a slow start (e.g. "200ms").
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub startup_delay: Duration,
    /// How long /health takes in the slow mode.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub slow_delay: Duration,
    /// Mode at start (a sticky fault in the state directory takes precedence).
    #[arg(long, value_enum, default_value_t = Mode::Healthy)]
    pub mode: Mode,
    /// Where sticky faults are kept (default: the system temp dir's fog-orchestrator-demo).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl DemoArgs {
    fn fault_file(&self) -> PathBuf {
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("fog-orchestrator-demo"));
        dir.join(format!("{}.fault", self.name))
    }
}

struct DemoState {
    name: String,
    slow_delay: Duration,
    mode: Mutex<Mode>,
    fault_file: PathBuf,
}

impl DemoState {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = mode;
    }
}

/// Runs the demo service until SIGTERM or SIGINT.
pub async fn run(args: DemoArgs) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let fault_file = args.fault_file();
    let sticky = std::fs::read_to_string(&fault_file)
        .ok()
        .and_then(|text| Mode::parse(text.trim()));
    if let Some(mode) = sticky {
        eprintln!(
            "demo-service {}: sticky fault {} from {}",
            args.name,
            mode.as_str(),
            fault_file.display()
        );
        if mode == Mode::Crash {
            std::process::exit(1);
        }
    }
    tokio::time::sleep(args.startup_delay).await;
    let listener = TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    eprintln!(
        "demo-service {} listening on http://{address} (pid {})",
        args.name,
        std::process::id()
    );
    let state = Arc::new(DemoState {
        name: args.name,
        slow_delay: args.slow_delay,
        mode: Mutex::new(sticky.unwrap_or(args.mode)),
        fault_file,
    });
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        }
    }
    eprintln!("demo-service {} stopping", state.name);
    Ok(())
}

async fn handle(
    state: Arc<DemoState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => health(&state).await,
        (&Method::GET, "/fault") => reply(
            StatusCode::OK,
            json!({"service": state.name, "mode": state.mode().as_str()}),
        ),
        (&Method::POST, "/fault") => fault(&state, request).await,
        (_, "/health" | "/fault") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method not allowed"}),
        ),
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    };
    Ok(response)
}

async fn health(state: &DemoState) -> Response<Full<Bytes>> {
    let body = |status: &str| json!({"service": state.name, "status": status, "pid": std::process::id()});
    match state.mode() {
        Mode::Healthy | Mode::Crash => reply(StatusCode::OK, body("healthy")),
        Mode::Unhealthy => reply(StatusCode::SERVICE_UNAVAILABLE, body("unhealthy")),
        Mode::Hang => std::future::pending().await,
        Mode::Slow => {
            tokio::time::sleep(state.slow_delay).await;
            reply(StatusCode::OK, body("healthy"))
        }
    }
}

async fn fault(state: &DemoState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), BODY_LIMIT).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "body too large"})),
    };
    let request = serde_json::from_slice::<Value>(&body).ok();
    let mode = request
        .as_ref()
        .and_then(|value| value.get("mode"))
        .and_then(Value::as_str)
        .and_then(Mode::parse);
    let sticky = request
        .as_ref()
        .and_then(|value| value.get("sticky"))
        .and_then(Value::as_bool);
    let Some(mode) = mode else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "expected {\"mode\": \"healthy\"|\"unhealthy\"|\"hang\"|\"crash\"|\"slow\"}"}),
        );
    };
    eprintln!("demo-service {}: fault injected: {}", state.name, mode.as_str());
    state.set_mode(mode);
    if sticky == Some(true)
        && let Err(error) = persist(&state.fault_file, mode)
    {
        let message = format!("cannot keep the fault: {error}");
        return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": message }));
    }
    if mode == Mode::Crash {
        tokio::spawn(async {
            // Let the response reach the caller first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::process::exit(1);
        });
    }
    reply(
        StatusCode::OK,
        json!({"success": true, "service": state.name, "mode": mode.as_str()}),
    )
}

/// Keeps a sticky fault for the next instances; a sticky `healthy` clears it.
fn persist(file: &std::path::Path, mode: Mode) -> std::io::Result<()> {
    if mode == Mode::Healthy {
        return match std::fs::remove_file(file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(file, mode.as_str())
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
