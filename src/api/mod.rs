//! The REST API: the seed's endpoints under `/api/orchestration`, the registry, service discovery,
//! `/metrics`, `/healthz` and `/readyz`, on a minimal hyper server.
//!
//! [`Api::handle`] turns any request into a response without touching a socket, so every route and error
//! is tested directly; [`server`] runs it on a listener with connection limits, header-read timeouts and
//! graceful shutdown. Routes come from one table ([`routes::ROUTES`]) that the OpenAPI document is checked
//! against.

mod fleet;
mod guard;
pub mod openapi;
mod reply;
pub mod routes;
pub mod server;
mod stream;
mod views;

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Body;
use hyper::{HeaderMap, Method, Request, StatusCode, header};
use tracing::Instrument;

pub use self::guard::BrowserPolicy;
pub use self::reply::{ApiError, BODY_LIMIT, Reply, ReplyBody};
use self::routes::{Endpoint, Matched};
pub(crate) use self::views::summary as service_summary;
use crate::clock::Clock;
use crate::name::ServiceName;
use crate::reload::{Refusal, Reloaded, Reloader, Trigger};
use crate::supervisor::Supervisor;

/// Everything the handlers read. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    state: Arc<ApiState>,
}

struct ApiState {
    supervisor: Supervisor,
    /// Who may do what: a reload changes it.
    access: std::sync::RwLock<Access>,
    clock: Clock,
    bodies: views::Bodies,
    /// Set by [`Api::enable_reload`].
    reloader: std::sync::OnceLock<Reloader>,
    /// Fleet mode, set by [`Api::enable_cluster`].
    cluster: std::sync::OnceLock<crate::cluster::Cluster>,
}

/// The bearer token POST and DELETE need, the hosts and origins browsers may use, and whether the
/// built-in page is served.
struct Access {
    token: Option<String>,
    browsers: BrowserPolicy,
    ui: bool,
}

impl Api {
    /// An API over `supervisor`, with an optional bearer `token` required on every POST and DELETE, and
    /// the hosts and origins browsers may use.
    pub fn new(supervisor: Supervisor, token: Option<String>, browsers: BrowserPolicy, clock: Clock) -> Self {
        Self {
            state: Arc::new(ApiState {
                supervisor,
                access: std::sync::RwLock::new(Access {
                    token,
                    browsers,
                    ui: true,
                }),
                clock,
                bodies: views::Bodies::default(),
                reloader: std::sync::OnceLock::new(),
                cluster: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Lets `POST /api/orchestration/reload` (and [`Api::reload`]) read `source` again and apply what
    /// changed against `running`, the configuration the orchestrator runs; without a source they answer
    /// 409. Set once; later calls change nothing.
    pub fn enable_reload(&self, source: Option<crate::config::Source>, running: crate::config::Config) {
        let reloader = Reloader::new(self.state.supervisor.clone(), source, running);
        let _ = self.state.reloader.set(reloader);
    }

    /// Fleet mode: `?scope=fleet` reads and `/readyz`'s `cluster` detail come from `cluster`. Set once.
    pub fn enable_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.state.cluster.set(cluster);
    }

    /// Serves the built-in page at `/` (the default), or not (`api.ui = false`: 404).
    pub fn serve_ui(&self, on: bool) {
        self.state
            .access
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ui = on;
    }

    /// Reads the configuration again and, unless `dry_run`, applies the difference (what SIGHUP and `POST
    /// /reload` do); the API's own access rules (token, allowed hosts and origins) follow.
    pub async fn reload(&self, trigger: Trigger, dry_run: bool) -> Result<Reloaded, Refusal> {
        let reloader = self.state.reloader.get().ok_or(Refusal::NoSource)?;
        let reloaded = reloader.reload(trigger, dry_run).await?;
        if let Reloaded::Applied { plan, new, .. } = &reloaded
            && plan
                .needs_orchestrator_restart
                .iter()
                .all(|key| key != "api.listen")
        {
            let mut access = self
                .state
                .access
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let browsers = access
                .browsers
                .with_lists(&new.api.allowed_hosts, &new.api.allowed_origins);
            *access = Access {
                token: new.api.token.clone(),
                browsers,
                ui: new.api.ui,
            };
        }
        Ok(reloaded)
    }

    /// Answers one request. Never panics on any input; every error is a JSON body with its status.
    pub async fn handle<B>(&self, request: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let method = request.method().clone();
        let route = routes::label(&method, request.uri().path());
        let span = server_span(&method, route, &request);
        let reply = match self.route(request).instrument(span.clone()).await {
            Ok(reply) => reply,
            Err(error) => error.into_reply(),
        };
        let status = reply.status().as_u16();
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.record("error.type", status.to_string());
            span.record("otel.status_code", "ERROR");
        }
        let metrics = self.state.supervisor.metrics();
        metrics.api_request(route, method.as_str(), status, started.elapsed());
        reply
    }

    /// A connection was refused at the connection limit (counted in a metric).
    pub fn connection_refused(&self) {
        self.state.supervisor.metrics().api_connection_refused();
    }

    async fn route<B>(&self, request: Request<B>) -> Result<Reply, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Before anything else: a request a foreign web page could have sent is refused unseen.
        self.access()
            .browsers
            .check(request.method(), request.version(), request.headers())?;
        let (endpoint, name) = match routes::find(request.method(), request.uri().path()) {
            Matched::Found(endpoint, name) => (endpoint, name),
            Matched::WrongMethod(allowed) => return Err(ApiError::method_not_allowed(allowed)),
            Matched::NotFound => {
                return Err(ApiError::not_found(format!(
                    "no route for {}",
                    request.uri().path()
                )));
            }
        };
        if matches!(*request.method(), Method::POST | Method::DELETE) {
            self.authorize(request.headers())?;
        }
        let query = request.uri().query().map(parse_query).unwrap_or_default();
        let name = name.map(checked_name).transpose()?;
        let name = || name.clone().unwrap_or_default();
        let (parts, body) = request.into_parts();
        match endpoint {
            Endpoint::Services => match self.scope(&query)? {
                fleet::Scope::Local => Ok(self.services()),
                fleet::Scope::Fleet(cluster) => self.fleet_services(cluster).await,
            },
            Endpoint::Health => Ok(self.health()),
            Endpoint::CheckNow => self.check_now(query_value(&query, "service")).await,
            Endpoint::Restart | Endpoint::Start | Endpoint::Stop => {
                let control = reply::read_json(&parts.headers, body).await?;
                self.control(endpoint, &name(), control).await
            }
            Endpoint::Dependencies => self.dependencies(query_value(&query, "format")),
            Endpoint::Metrics => self.metrics().await,
            Endpoint::ServiceDetail => self.service_detail(&name()).await,
            Endpoint::RegistryList => {
                let page = views::Page::from_query(&query)?;
                match self.scope(&query)? {
                    fleet::Scope::Local => self.registry_list(page).await,
                    fleet::Scope::Fleet(cluster) => self.fleet_registry(cluster, page).await,
                }
            }
            Endpoint::Register => {
                let registration = reply::read_json(&parts.headers, body).await?;
                self.register(registration).await
            }
            Endpoint::RegistryEntry => self.registry_entry(&name()).await,
            Endpoint::Deregister => self.deregister(&name()).await,
            Endpoint::Heartbeat => self.heartbeat(&name()).await,
            Endpoint::ServiceDiscovery => match self.scope(&query)? {
                fleet::Scope::Local => self.service_discovery().await,
                fleet::Scope::Fleet(cluster) => self.fleet_service_discovery(cluster).await,
            },
            Endpoint::OpenApi => Ok(reply::json_reply(StatusCode::OK, &openapi::document())),
            Endpoint::Reload => self.reload_view(query_value(&query, "dry_run")).await,
            Endpoint::Prometheus => Ok(self.prometheus(&parts.headers)),
            Endpoint::Liveness => Ok(self.liveness()),
            Endpoint::Readiness => Ok(self.readiness()),
            Endpoint::Events => self.events(&query, &parts.headers),
            Endpoint::Page => self.page("index.html"),
            Endpoint::PageScript => self.page("app.js"),
            Endpoint::PageStyle => self.page("style.css"),
        }
    }

    fn access(&self) -> std::sync::RwLockReadGuard<'_, Access> {
        self.state
            .access
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// With a token configured, POST and DELETE need `Authorization: Bearer <token>`.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let access = self.access();
        let Some(token) = &access.token else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(presented) if constant_time_eq(presented.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid bearer token")),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <token>)",
            )),
        }
    }
}

/// The SERVER span of one request (OTel HTTP semantic conventions), continuing the caller's trace from
/// its `traceparent`, when traces are exported. Scrapes and probes of the orchestrator itself (`/metrics`,
/// `/healthz`, `/readyz`) are not traced: they would be most spans and tell nothing.
fn server_span<B>(method: &Method, route: &'static str, request: &Request<B>) -> tracing::Span {
    if !crate::telemetry::trace::exporting() || matches!(route, "/metrics" | "/healthz" | "/readyz") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "HTTP request",
        otel.name = if route == "unmatched" { method.to_string() } else { format!("{method} {route}") },
        otel.kind = "server",
        http.request.method = method.as_str(),
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::trace::continue_trace(&span, request.headers());
    span
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

/// A service name from the path: malformed names are a 400, before any lookup.
fn checked_name(name: String) -> Result<String, ApiError> {
    ServiceName::parse(name)
        .map(String::from)
        .map_err(|invalid| ApiError::bad_request(invalid.to_string()))
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn queries_are_split_into_pairs() {
        let query = parse_query("format=dot&service=dao&flag");
        assert_eq!(query_value(&query, "format"), Some("dot"));
        assert_eq!(query_value(&query, "service"), Some("dao"));
        assert_eq!(query_value(&query, "flag"), Some(""));
        assert_eq!(query_value(&query, "missing"), None);
    }
}
