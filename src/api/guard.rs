//! Browser safety (DESIGN.md section 6): no web page a developer visits can drive or read the API, with the
//! default unauthenticated loopback listener; non-browser clients (curl, Prometheus, scripts) are
//! unaffected because they send none of the headers a browser adds.
//!
//! Checked before routing, for reads and writes alike, so a refused request never changes anything:
//! - `Host` must name this machine the way no attacker's domain can: an IP literal that is loopback, the
//!   listen address (any IP literal when listening on all addresses), `localhost` or `*.localhost`, or an
//!   entry of `api.allowed_hosts` (`.example.com` also allows its subdomains). This defeats DNS rebinding,
//!   whose requests carry the attacker's host name. An HTTP/1.1 request without `Host` is malformed (400).
//! - `Origin`, when present, must be in `api.allowed_origins` or be this server's own origin (`http://` and
//!   the request's own allowed `Host`: a page this orchestrator served). Cross-site form posts and fetches
//!   always carry one, so they are refused.
//! - `Sec-Fetch-Site: cross-site` or `same-site` (another port on localhost is "same site") is refused
//!   unless its origin is allowed, except a top-level navigation GET (someone following a link: the page
//!   that linked cannot read the answer, and a GET changes nothing).

use std::net::{IpAddr, SocketAddr};

use hyper::{HeaderMap, Method, StatusCode, Version, header};

use super::ApiError;

/// Which hosts and origins browsers may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserPolicy {
    listen: Option<SocketAddr>,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
}

impl BrowserPolicy {
    /// The policy for a server listening on `listen`, with the configured extra hosts and origins.
    pub fn new(listen: SocketAddr, allowed_hosts: &[String], allowed_origins: &[String]) -> Self {
        Self {
            listen: Some(listen),
            allowed_hosts: allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The same listener with new lists of allowed hosts and origins (a configuration reload).
    pub fn with_lists(&self, allowed_hosts: &[String], allowed_origins: &[String]) -> Self {
        match self.listen {
            Some(listen) => Self::new(listen, allowed_hosts, allowed_origins),
            None => self.clone(),
        }
    }

    /// Refuses a request a browser page of another origin, or a rebinding attack, could have sent.
    pub fn check(&self, method: &Method, version: Version, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = match header_text(headers, header::HOST) {
            Some(host) => host,
            None if version == Version::HTTP_11 => {
                return Err(ApiError::bad_request("an HTTP/1.1 request needs a Host header"));
            }
            None => return self.check_origin(method, headers, None),
        };
        if !self.host_allowed(host) {
            return Err(forbidden(format!(
                "Host {:?} is not this orchestrator's (add it to api.allowed_hosts to allow it)",
                shown(host)
            )));
        }
        self.check_origin(method, headers, Some(host))
    }

    fn check_origin(&self, method: &Method, headers: &HeaderMap, host: Option<&str>) -> Result<(), ApiError> {
        let origin =
            header_text(headers, header::ORIGIN).map(|o| o.trim_end_matches('/').to_ascii_lowercase());
        let explicitly_allowed = origin.as_ref().is_some_and(|o| self.allowed_origins.contains(o));
        if let Some(origin) = &origin {
            let own = host.is_some_and(|host| *origin == format!("http://{}", host.to_ascii_lowercase()));
            if !(explicitly_allowed || own) {
                return Err(forbidden(format!(
                    "requests from web pages of origin {:?} are refused (add it to api.allowed_origins to allow it)",
                    shown(origin)
                )));
            }
        }
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let from_elsewhere = matches!(site, Some("cross-site" | "same-site"));
        let navigation = *method == Method::GET
            && headers
                .get("sec-fetch-mode")
                .is_some_and(|mode| mode.as_bytes() == b"navigate");
        if from_elsewhere && !explicitly_allowed && !navigation {
            return Err(forbidden(
                "requests from web pages of other sites are refused (Sec-Fetch-Site)".to_owned(),
            ));
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return ip.is_loopback()
                || self
                    .listen
                    .is_some_and(|listen| listen.ip().is_unspecified() || listen.ip() == ip);
        }
        name == "localhost"
            || name.ends_with(".localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| match allowed.strip_prefix('.') {
                    Some(domain) => name == domain || name.ends_with(allowed.as_str()),
                    None => name == allowed,
                })
    }
}

/// The host part of a `Host` value: without the port, brackets kept for IPv6.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let value = headers.get(name)?;
    // A value that is not visible ASCII is as good as a foreign one: it matches nothing allowed.
    Some(value.to_str().unwrap_or("\u{fffd}"))
}

/// A header value for an error message: at most 100 characters.
fn shown(value: &str) -> String {
    value.chars().take(100).collect()
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn policy() -> BrowserPolicy {
        BrowserPolicy::new(
            "127.0.0.1:8400".parse().unwrap(),
            &["orchestrator.internal".into(), ".fog.example".into()],
            &["https://grafana.example".into()],
        )
    }

    fn check(method: Method, headers: &[(&str, &str)]) -> Result<(), StatusCode> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        policy()
            .check(&method, Version::HTTP_11, &map)
            .map_err(|error| error.status)
    }

    #[test]
    fn curl_and_other_non_browser_clients_pass() {
        for host in [
            "127.0.0.1:8400",
            "localhost:8400",
            "[::1]:8400",
            "localhost",
            "api.localhost:8400",
        ] {
            assert_eq!(check(Method::POST, &[("host", host)]), Ok(()), "{host}");
        }
        assert_eq!(
            check(Method::GET, &[("host", "orchestrator.internal:8400")]),
            Ok(())
        );
        assert_eq!(check(Method::GET, &[("host", "node1.fog.example")]), Ok(()));
        assert_eq!(check(Method::GET, &[("host", "FOG.EXAMPLE.")]), Ok(()));
    }

    #[test]
    fn a_foreign_host_is_refused_for_reads_and_writes() {
        for host in [
            "evil.example:8400",
            "localhost.evil.example",
            "10.0.0.7:8400",
            "fog.example.evil",
        ] {
            assert_eq!(
                check(Method::GET, &[("host", host)]),
                Err(StatusCode::FORBIDDEN),
                "{host}"
            );
            assert_eq!(
                check(Method::POST, &[("host", host)]),
                Err(StatusCode::FORBIDDEN),
                "{host}"
            );
        }
    }

    #[test]
    fn a_missing_host_is_malformed_in_http_1_1_only() {
        assert_eq!(check(Method::GET, &[]), Err(StatusCode::BAD_REQUEST));
        let none = HeaderMap::new();
        assert!(policy().check(&Method::GET, Version::HTTP_10, &none).is_ok());
    }

    #[test]
    fn foreign_origins_are_refused_and_allowed_ones_pass() {
        let host = ("host", "127.0.0.1:8400");
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:3000",
            "http://localhost:8400",
        ] {
            assert_eq!(
                check(Method::POST, &[host, ("origin", origin)]),
                Err(StatusCode::FORBIDDEN),
                "{origin}"
            );
        }
        assert_eq!(
            check(Method::POST, &[host, ("origin", "http://127.0.0.1:8400")]),
            Ok(())
        );
        assert_eq!(
            check(
                Method::POST,
                &[
                    host,
                    ("origin", "https://grafana.example/"),
                    ("sec-fetch-site", "cross-site")
                ]
            ),
            Ok(())
        );
    }

    #[test]
    fn cross_site_fetches_are_refused_but_a_followed_link_is_not() {
        let host = ("host", "localhost:8400");
        for site in ["cross-site", "same-site"] {
            assert_eq!(
                check(Method::POST, &[host, ("sec-fetch-site", site)]),
                Err(StatusCode::FORBIDDEN)
            );
            assert_eq!(
                check(
                    Method::GET,
                    &[host, ("sec-fetch-site", site), ("sec-fetch-mode", "cors")]
                ),
                Err(StatusCode::FORBIDDEN)
            );
        }
        assert_eq!(
            check(
                Method::GET,
                &[
                    host,
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "navigate")
                ]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                Method::POST,
                &[
                    host,
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "navigate")
                ]
            ),
            Err(StatusCode::FORBIDDEN),
            "a form post is a navigation too, but not a GET"
        );
        assert_eq!(
            check(Method::POST, &[host, ("sec-fetch-site", "same-origin")]),
            Ok(())
        );
        assert_eq!(check(Method::GET, &[host, ("sec-fetch-site", "none")]), Ok(()));
    }

    #[test]
    fn listening_on_every_address_allows_any_ip_literal_but_no_foreign_name() {
        let open = BrowserPolicy::new("0.0.0.0:8400".parse().unwrap(), &[], &[]);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("10.0.0.7:8400"));
        assert!(open.check(&Method::GET, Version::HTTP_11, &headers).is_ok());
        headers.insert(header::HOST, HeaderValue::from_static("evil.example:8400"));
        assert!(open.check(&Method::GET, Version::HTTP_11, &headers).is_err());
    }
}
