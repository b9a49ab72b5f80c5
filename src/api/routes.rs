//! The route table: every endpoint the API serves, matched without a framework. The OpenAPI document is
//! checked against this table, so the two cannot drift apart.

use hyper::Method;

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /api/orchestration/services`
    Services,
    /// `GET /api/orchestration/health`
    Health,
    /// `POST /api/orchestration/health/check-now`
    CheckNow,
    /// `POST /api/orchestration/restart/{name}`
    Restart,
    /// `POST /api/orchestration/start/{name}`
    Start,
    /// `POST /api/orchestration/stop/{name}`
    Stop,
    /// `GET /api/orchestration/dependencies`
    Dependencies,
    /// `GET /api/orchestration/metrics`
    Metrics,
    /// `GET /api/orchestration/service/{name}`
    ServiceDetail,
    /// `GET /api/orchestration/registry`
    RegistryList,
    /// `POST /api/orchestration/registry`
    Register,
    /// `GET /api/orchestration/registry/{name}`
    RegistryEntry,
    /// `DELETE /api/orchestration/registry/{name}`
    Deregister,
    /// `POST /api/orchestration/registry/{name}/heartbeat`
    Heartbeat,
    /// `GET /api/orchestration/sd`
    ServiceDiscovery,
    /// `POST /api/orchestration/reload`
    Reload,
    /// `GET /api/orchestration/openapi.json`
    OpenApi,
    /// `GET /metrics`
    Prometheus,
    /// `GET /healthz`
    Liveness,
    /// `GET /readyz`
    Readiness,
    /// `GET /api/orchestration/events` (Server-Sent Events)
    Events,
    /// `GET /`: the built-in page
    Page,
    /// `GET /ui/app.js`
    PageScript,
    /// `GET /ui/style.css`
    PageStyle,
}

/// One route: method, path template (`{name}` captures a segment) and what it serves.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path template.
    pub template: &'static str,
    /// The endpoint.
    pub endpoint: Endpoint,
}

const fn route(method: Method, template: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method,
        template,
        endpoint,
    }
}

/// Every route.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/api/orchestration/services", Endpoint::Services),
    route(Method::GET, "/api/orchestration/health", Endpoint::Health),
    route(
        Method::POST,
        "/api/orchestration/health/check-now",
        Endpoint::CheckNow,
    ),
    route(
        Method::POST,
        "/api/orchestration/restart/{name}",
        Endpoint::Restart,
    ),
    route(Method::POST, "/api/orchestration/start/{name}", Endpoint::Start),
    route(Method::POST, "/api/orchestration/reload", Endpoint::Reload),
    route(Method::POST, "/api/orchestration/stop/{name}", Endpoint::Stop),
    route(
        Method::GET,
        "/api/orchestration/dependencies",
        Endpoint::Dependencies,
    ),
    route(Method::GET, "/api/orchestration/metrics", Endpoint::Metrics),
    route(
        Method::GET,
        "/api/orchestration/service/{name}",
        Endpoint::ServiceDetail,
    ),
    route(Method::GET, "/api/orchestration/registry", Endpoint::RegistryList),
    route(Method::POST, "/api/orchestration/registry", Endpoint::Register),
    route(
        Method::GET,
        "/api/orchestration/registry/{name}",
        Endpoint::RegistryEntry,
    ),
    route(
        Method::DELETE,
        "/api/orchestration/registry/{name}",
        Endpoint::Deregister,
    ),
    route(
        Method::POST,
        "/api/orchestration/registry/{name}/heartbeat",
        Endpoint::Heartbeat,
    ),
    route(Method::GET, "/api/orchestration/sd", Endpoint::ServiceDiscovery),
    route(Method::GET, "/api/orchestration/openapi.json", Endpoint::OpenApi),
    route(Method::GET, "/metrics", Endpoint::Prometheus),
    route(Method::GET, "/healthz", Endpoint::Liveness),
    route(Method::GET, "/readyz", Endpoint::Readiness),
    route(Method::GET, "/api/orchestration/events", Endpoint::Events),
    route(Method::GET, "/", Endpoint::Page),
    route(Method::GET, "/ui/app.js", Endpoint::PageScript),
    route(Method::GET, "/ui/style.css", Endpoint::PageStyle),
];

/// The outcome of matching a request against the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched {
    /// The endpoint, with the `{name}` segment if the template has one.
    Found(Endpoint, Option<String>),
    /// The path exists, but not for this method; these methods are allowed.
    WrongMethod(Vec<Method>),
    /// No such path.
    NotFound,
}

/// Matches `method` and `path` (without query) against [`ROUTES`]. A trailing slash is ignored.
pub fn find(method: &Method, path: &str) -> Matched {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(name) = capture(route.template, path) else {
            continue;
        };
        if route.method == *method {
            return Matched::Found(route.endpoint, name);
        }
        allowed.push(route.method.clone());
    }
    if allowed.is_empty() {
        Matched::NotFound
    } else {
        Matched::WrongMethod(allowed)
    }
}

/// The route template a request matched, for metric labels (bounded: templates, not paths).
pub fn label(method: &Method, path: &str) -> &'static str {
    match find(method, path) {
        Matched::Found(endpoint, _) => ROUTES
            .iter()
            .find(|r| r.endpoint == endpoint)
            .map_or("unmatched", |r| r.template),
        Matched::WrongMethod(_) | Matched::NotFound => "unmatched",
    }
}

/// `Some(capture)` when `path` fits `template`; the capture is the `{name}` segment, if any.
fn capture(template: &str, path: &str) -> Option<Option<String>> {
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    let mut name = None;
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(name),
            (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => name = Some(g.to_owned()),
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_routes_and_captures_names() {
        assert_eq!(
            find(&Method::GET, "/api/orchestration/services"),
            Matched::Found(Endpoint::Services, None)
        );
        assert_eq!(
            find(&Method::POST, "/api/orchestration/restart/betanet"),
            Matched::Found(Endpoint::Restart, Some("betanet".into()))
        );
        assert_eq!(
            find(&Method::POST, "/api/orchestration/registry/cache/heartbeat"),
            Matched::Found(Endpoint::Heartbeat, Some("cache".into()))
        );
        assert_eq!(
            find(&Method::GET, "/healthz/"),
            Matched::Found(Endpoint::Liveness, None)
        );
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones() {
        assert_eq!(
            find(&Method::GET, "/api/orchestration/restart/dao"),
            Matched::WrongMethod(vec![Method::POST])
        );
        assert_eq!(
            find(&Method::PUT, "/api/orchestration/registry/cache"),
            Matched::WrongMethod(vec![Method::GET, Method::DELETE])
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(find(&Method::GET, "/api/orchestration"), Matched::NotFound);
        assert_eq!(
            find(&Method::GET, "/api/orchestration/restart/"),
            Matched::NotFound
        );
        assert_eq!(
            find(&Method::GET, "/api/orchestration/service/a/b"),
            Matched::NotFound
        );
        assert_eq!(find(&Method::GET, ""), Matched::NotFound);
    }
}
