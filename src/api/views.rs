//! The endpoints' bodies, in the seed's JSON shapes (fields are only ever added).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Api;
use super::reply::{ApiError, Reply, ReplyBody, body_reply, bytes_reply, json_reply};
use super::routes::Endpoint;
use crate::clock::rfc3339;
use crate::health::{CheckResult, HealthStatus};
use crate::registry::{EntryFilter, Registration, RegistryEntry};
use crate::reload::{Reloaded, Trigger};
use crate::supervisor::containment::Containment;
use crate::supervisor::{HealthReport, Roster, ServiceHandle, ServiceState, Snapshot};
use crate::telemetry::metrics::{Exposition, Format};

/// The body of start, stop and restart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlBody {
    /// Also for a failed service (and reset its attempt counter).
    #[serde(default)]
    force: bool,
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn time(snapshot_time: Option<std::time::SystemTime>) -> Value {
    snapshot_time.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// The per-service summary of `/services` (the seed's five fields first).
pub(crate) fn summary(handle: &ServiceHandle, snapshot: &Snapshot) -> Value {
    let spec = handle.spec();
    json!({
        "status": snapshot.state,
        "restart_count": snapshot.restart_count,
        "last_restart": time(snapshot.last_restart),
        "last_error": snapshot.last_error,
        "last_error_at": time(snapshot.last_error_at),
        "is_critical": spec.critical,
        "type": spec.service_type,
        "health": snapshot.health,
        "layer": handle.layer(),
        "external": spec.is_external(),
        "pid": snapshot.pid,
        "attempts": snapshot.attempts,
        "max_attempts": spec.restart.max_attempts,
        "last_restart_reason": snapshot.last_restart_reason,
        "waiting_on": snapshot.waiting_on,
        "backoff_seconds": snapshot.backoff.map(|d| d.as_secs_f64()),
        "ready_since": time(snapshot.ready_since),
        "singleton": spec.singleton,
        "leader": snapshot.leader,
    })
}

fn uptimes(report: &HealthReport) -> (f64, f64, f64) {
    (
        round2(report.uptime_1h),
        round2(report.uptime_24h),
        round2(report.uptime_7d),
    )
}

impl Api {
    /// The services running now: one version for the whole request, even while a reload applies.
    fn handles(&self) -> Arc<Roster> {
        self.state.supervisor.services()
    }

    fn handle_of(&self, name: &str) -> Result<ServiceHandle, ApiError> {
        self.state
            .supervisor
            .service(name)
            .ok_or_else(|| ApiError::not_found(format!("unknown service {name:?}")))
    }

    /// Every service's summary (no history), in declaration order, from the published snapshots.
    fn reports(handles: &[ServiceHandle]) -> Vec<HealthReport> {
        handles.iter().map(ServiceHandle::summary).collect()
    }

    /// `POST /reload[?dry_run=true]`: the configuration read again and what changed applied (or, in a
    /// dry run, only planned); 400 with every problem of a bad file (nothing changed); 409 while another
    /// reload runs, during shutdown, or without a file to read.
    pub(super) async fn reload_view(&self, dry_run: Option<&str>) -> Result<Reply, ApiError> {
        let dry_run = match dry_run {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "dry_run must be true or false, not {other:?}"
                )));
            }
        };
        let reloaded = self
            .reload(Trigger::Api, dry_run)
            .await
            .map_err(|refusal| ApiError::new(StatusCode::CONFLICT, refusal.to_string()))?;
        let (plan, new, hash, applied) = match reloaded {
            Reloaded::Invalid(error) => {
                let problems: Vec<String> = match &error {
                    crate::config::ConfigError::Invalid { problems, .. } => {
                        problems.iter().map(ToString::to_string).collect()
                    }
                    other => vec![other.to_string()],
                };
                return Ok(json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({
                        "success": false,
                        "error": error.to_string(),
                        "problems": problems,
                    }),
                ));
            }
            Reloaded::Planned { plan, new, hash } => (plan, new, hash, None),
            Reloaded::Applied {
                plan,
                new,
                hash,
                applied,
            } => (plan, new, hash, Some(applied)),
        };
        let mut body = json!({
            "success": applied.as_ref().is_none_or(|applied| applied.iter().all(|a| a.ok)),
            "dry_run": dry_run,
            "changed": !plan.is_empty(),
            "config": new.origin,
            "config_hash": hash,
            "warnings": new.warnings,
            "plan": plan,
        });
        if let Some(applied) = applied {
            body["applied"] = json!(applied);
        }
        Ok(json_reply(StatusCode::OK, &body))
    }

    /// `/services`: made again only after a snapshot changed.
    pub(super) fn services(&self) -> Reply {
        let supervisor = &self.state.supervisor;
        let body = self.state.bodies.services.get(supervisor.generation(), || {
            let services: Map<String, Value> = self
                .handles()
                .iter()
                .map(|handle| (handle.name().to_owned(), summary(handle, &handle.snapshot())))
                .collect();
            to_bytes(&json!({
                "success": true,
                "total_services": services.len(),
                "services": services,
                "is_ready": supervisor.is_ready(),
                "initialized": supervisor.is_initialized(),
            }))
        });
        bytes_reply(StatusCode::OK, "application/json", body)
    }

    /// `/health`: made again only after a snapshot changed or in a new second (its timestamp has whole
    /// seconds, so the body is exact; the uptimes it quotes are at most a second old).
    pub(super) fn health(&self) -> Reply {
        let now = self.state.clock.now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let key = (self.state.supervisor.generation(), second);
        let body = self.state.bodies.health.get(key, || {
            let mut body = self.health_body();
            body["timestamp"] = Value::String(rfc3339(now));
            to_bytes(&body)
        });
        bytes_reply(StatusCode::OK, "application/json", body)
    }

    /// `/health`'s body but its timestamp (the last field).
    fn health_body(&self) -> Value {
        let handles = self.handles();
        let reports = Self::reports(&handles);
        let mut services = Map::new();
        let (mut unhealthy, mut degraded) = (Vec::new(), Vec::new());
        for (handle, report) in handles.iter().zip(&reports) {
            let snapshot = &report.snapshot;
            match snapshot.health {
                HealthStatus::Unhealthy => unhealthy.push(handle.name()),
                HealthStatus::Degraded => degraded.push(handle.name()),
                _ => {}
            }
            let (hour, day, week) = uptimes(report);
            services.insert(
                handle.name().to_owned(),
                json!({
                    "status": snapshot.health,
                    "last_check": snapshot.last_check,
                    "consecutive_failures": snapshot.consecutive_failures,
                    "uptime_1h": hour,
                    "uptime_24h": day,
                    "uptime_7d": week,
                    "consecutive_successes": report.consecutive_successes,
                    "state": snapshot.state,
                    "probe": handle.spec().probe.as_ref().map(|p| p.kind()),
                }),
            );
        }
        let composite = crate::health::composite(reports.iter().map(|r| r.snapshot.health));
        json!({
            "status": "ok",
            "composite_health": composite,
            "services": services,
            "unhealthy_services": unhealthy,
            "degraded_services": degraded,
        })
    }

    pub(super) async fn check_now(&self, only: Option<&str>) -> Result<Reply, ApiError> {
        let results: Vec<CheckResult> = match only {
            Some(name) => {
                let name = super::checked_name(name.to_owned())?;
                vec![self.handle_of(&name)?.check_now().await?]
            }
            None => self.state.supervisor.check_now().await,
        };
        let results: Map<String, Value> = results
            .into_iter()
            .map(|result| (result.service_name.clone(), json!(result)))
            .collect();
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "success": true,
                "timestamp": rfc3339(self.state.clock.now()),
                "composite_health": self.state.supervisor.composite_health(),
                "results": results,
            }),
        ))
    }

    pub(super) async fn control(
        &self,
        endpoint: Endpoint,
        name: &str,
        body: ControlBody,
    ) -> Result<Reply, ApiError> {
        let handle = self.handle_of(name)?;
        let (snapshot, verb) = match endpoint {
            Endpoint::Start => (handle.start(body.force).await?, "started"),
            Endpoint::Stop => (handle.stop(body.force).await?, "stopped"),
            _ => (handle.restart(body.force).await?, "restarted"),
        };
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "success": true,
                "service": name,
                "status": snapshot.state,
                "restart_count": snapshot.restart_count,
                "last_restart": time(snapshot.last_restart),
                "message": format!("Service '{name}' {verb} successfully"),
                "health": snapshot.health,
                "pid": snapshot.pid,
                "attempts": snapshot.attempts,
            }),
        ))
    }

    pub(super) fn dependencies(&self, format: Option<&str>) -> Result<Reply, ApiError> {
        let roster = self.handles();
        match format {
            None | Some("json") => {
                // The graph changes only with a reload: its JSON is made once per version.
                let body = self.state.bodies.dependencies.get(roster.version(), || {
                    Bytes::from(roster.graph().to_json().to_string())
                });
                Ok(bytes_reply(StatusCode::OK, "application/json", body))
            }
            Some("dot") => Ok(bytes_reply(
                StatusCode::OK,
                "text/vnd.graphviz",
                Bytes::from(roster.graph().to_dot()),
            )),
            Some(other) => Err(ApiError::bad_request(format!(
                "unknown format {other:?}: use json or dot"
            ))),
        }
    }

    pub(super) async fn metrics(&self) -> Result<Reply, ApiError> {
        let supervisor = &self.state.supervisor;
        let handles = self.handles();
        let reports = Self::reports(&handles);
        let registry_stats = supervisor.registry().stats().await?;
        let count_state = |state: ServiceState| reports.iter().filter(|r| r.snapshot.state == state).count();
        let count_health =
            |health: HealthStatus| reports.iter().filter(|r| r.snapshot.health == health).count();
        let mut by_state = BTreeMap::new();
        for report in &reports {
            *by_state.entry(report.snapshot.state.as_str()).or_insert(0) += 1;
        }
        let details: Map<String, Value> = handles
            .iter()
            .zip(&reports)
            .map(|(handle, report)| {
                let mut detail = summary(handle, &report.snapshot);
                let (hour, day, week) = uptimes(report);
                if let Value::Object(fields) = &mut detail {
                    fields.insert(
                        "consecutive_failures".into(),
                        json!(report.snapshot.consecutive_failures),
                    );
                    fields.insert("uptime_1h".into(), json!(hour));
                    fields.insert("uptime_24h".into(), json!(day));
                    fields.insert("uptime_7d".into(), json!(week));
                }
                (handle.name().to_owned(), detail)
            })
            .collect();
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "success": true,
                "metrics": {
                    "total_services": reports.len(),
                    "running_services": count_state(ServiceState::Running),
                    "failed_services": count_state(ServiceState::Failed),
                    "stopped_services": count_state(ServiceState::Stopped),
                    "total_restarts": reports.iter().map(|r| u64::from(r.snapshot.restart_count)).sum::<u64>(),
                    "healthy_services": count_health(HealthStatus::Healthy),
                    "unhealthy_services": count_health(HealthStatus::Unhealthy),
                    "degraded_services": count_health(HealthStatus::Degraded),
                    "is_ready": supervisor.is_ready(),
                    "initialized": supervisor.is_initialized(),
                    "composite_health": crate::health::composite(reports.iter().map(|r| r.snapshot.health)),
                    "services_by_state": by_state,
                },
                "registry_stats": registry_stats,
                "service_details": details,
            }),
        ))
    }

    pub(super) async fn service_detail(&self, name: &str) -> Result<Reply, ApiError> {
        let roster = self.handles();
        let handle = roster
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("unknown service {name:?}")))?;
        let report = handle.report().await?;
        let entry = self.state.supervisor.registry().entry(name).await?;
        let graph = roster.graph();
        let snapshot = &report.snapshot;
        let mut body = json!({
            "success": true,
            "service": name,
            "status": snapshot.state,
            "restart_count": snapshot.restart_count,
            "last_restart": time(snapshot.last_restart),
            "last_error": snapshot.last_error,
            "last_error_at": time(snapshot.last_error_at),
            "is_critical": handle.spec().critical,
            "dependencies": {
                "required": graph.dependencies(name),
                "optional": graph.optional_dependencies(name),
                "dependents": graph.dependents(name),
                "layer": handle.layer(),
            },
            "health_history": report.history,
            "registry_metadata": entry,
        });
        if let (Value::Object(fields), Value::Object(extra)) = (&mut body, summary(handle, snapshot)) {
            for (key, value) in extra {
                fields.entry(key).or_insert(value);
            }
            let (hour, day, week) = uptimes(&report);
            fields.insert("uptime_1h".into(), json!(hour));
            fields.insert("uptime_24h".into(), json!(day));
            fields.insert("uptime_7d".into(), json!(week));
            fields.insert(
                "probe".into(),
                json!(handle.spec().probe.as_ref().map(ToString::to_string)),
            );
        }
        Ok(json_reply(StatusCode::OK, &body))
    }

    pub(super) async fn registry_list(&self, page: Page) -> Result<Reply, ApiError> {
        let registry = self.state.supervisor.registry();
        let (total, entries) = registry
            .page(page.filter.clone(), page.offset, page.limit)
            .await?;
        let stats = registry.stats().await?;
        let services: Map<String, Value> = entries.into_iter().map(|e| (e.name.clone(), json!(e))).collect();
        let next_offset = (page.offset + services.len() < total).then_some(page.offset + services.len());
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "success": true,
                "total_services": total,
                "offset": page.offset,
                "limit": page.limit,
                "next_offset": next_offset,
                "services": services,
                "stats": stats,
            }),
        ))
    }

    pub(super) async fn register(&self, registration: Option<Registration>) -> Result<Reply, ApiError> {
        let registration =
            registration.ok_or_else(|| ApiError::bad_request("a registration body is required"))?;
        let entry = self.state.supervisor.registry().register(registration).await?;
        Ok(json_reply(
            StatusCode::CREATED,
            &json!({"success": true, "service": entry}),
        ))
    }

    pub(super) async fn registry_entry(&self, name: &str) -> Result<Reply, ApiError> {
        let entry = self.state.supervisor.registry().entry(name).await?;
        let entry = entry.ok_or_else(|| ApiError::not_found(format!("unknown service {name:?}")))?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({"success": true, "service": entry}),
        ))
    }

    pub(super) async fn deregister(&self, name: &str) -> Result<Reply, ApiError> {
        let entry = self.state.supervisor.registry().deregister(name).await?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({"success": true, "service": entry}),
        ))
    }

    pub(super) async fn heartbeat(&self, name: &str) -> Result<Reply, ApiError> {
        let entry = self.state.supervisor.registry().heartbeat(name).await?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({"success": true, "service": entry}),
        ))
    }

    /// Prometheus HTTP service discovery: every entry whose metadata names a `metrics` address.
    pub(super) async fn service_discovery(&self) -> Result<Reply, ApiError> {
        let entries = self.state.supervisor.registry().entries().await?;
        let groups: Vec<Value> = entries.iter().filter_map(target_group).collect();
        Ok(json_reply(StatusCode::OK, &groups))
    }

    /// `/metrics`: every metric in the Prometheus text format.
    /// `/metrics`: OpenMetrics (with exemplars) when the `Accept` header prefers it, else text 0.0.4;
    /// gzip-compressed when `Accept-Encoding` allows it.
    pub(super) fn prometheus(&self, headers: &hyper::HeaderMap) -> Reply {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
        };
        let format = Format::negotiate(header(hyper::header::ACCEPT));
        let exposition = self.state.supervisor.metrics().exposition(format);
        let gzip = header(hyper::header::ACCEPT_ENCODING).is_some_and(accepts_gzip);
        let compressed = if gzip {
            let parts: Vec<&[u8]> = (exposition.kept.iter().map(|part| part.as_bytes()))
                .chain([exposition.fresh.as_bytes()])
                .collect();
            gzip_parts(&parts)
        } else {
            None
        };
        let gzipped = compressed.is_some();
        let body = match compressed {
            Some(compressed) => ReplyBody::whole(Bytes::from(compressed)),
            None => ReplyBody::parts(coalesced(exposition)),
        };
        let mut reply = body_reply(StatusCode::OK, format.content_type(), body);
        let reply_headers = reply.headers_mut();
        reply_headers.insert(
            hyper::header::VARY,
            hyper::header::HeaderValue::from_static("Accept, Accept-Encoding"),
        );
        if gzipped {
            reply_headers.insert(
                hyper::header::CONTENT_ENCODING,
                hyper::header::HeaderValue::from_static("gzip"),
            );
        }
        reply
    }

    pub(super) fn liveness(&self) -> Reply {
        json_reply(StatusCode::OK, &json!({"status": "ok"}))
    }

    pub(super) fn readiness(&self) -> Reply {
        let supervisor = &self.state.supervisor;
        let ready = supervisor.is_ready();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_reply(
            status,
            &json!({
                "ready": ready,
                "initialized": supervisor.is_initialized(),
                "containment": Containment::detect().as_str(),
                "cluster": self.state.cluster.get().map(|cluster| {
                    let status = cluster.status();
                    json!({
                        "fleet": cluster.fleet(),
                        "node": cluster.node(),
                        "up": status.up,
                        "lease": status.lease.map(|lease| format!("{lease:x}")),
                        "since": rfc3339(status.since),
                        "last_error": status.last_error,
                        "nodes": status.nodes,
                        "singletons": status.leaders,
                    })
                }),
            }),
        )
    }
}

/// Which registry entries `GET /registry` lists: `?type=`, `?alive=`, `?offset=`, `?limit=` (1 to
/// [`Page::MAX_LIMIT`], the default).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Page {
    pub(super) filter: EntryFilter,
    pub(super) offset: usize,
    pub(super) limit: usize,
}

impl Page {
    /// The most entries one page holds.
    pub(super) const MAX_LIMIT: usize = 1000;
    /// The largest offset: the largest integer JSON carries exactly (2^53 - 1).
    pub(super) const MAX_OFFSET: usize = 9_007_199_254_740_991;

    pub(super) fn from_query(query: &[(String, String)]) -> Result<Self, ApiError> {
        let mut page = Self {
            filter: EntryFilter::default(),
            offset: 0,
            limit: Self::MAX_LIMIT,
        };
        for (key, value) in query {
            match key.as_str() {
                "type" if !value.is_empty() => page.filter.service_type = Some(value.clone()),
                "alive" => {
                    page.filter.alive = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!("alive must be true or false, not {value:?}"))
                    })?);
                }
                "offset" => {
                    page.offset = value
                        .parse()
                        .ok()
                        .filter(|offset| *offset <= Self::MAX_OFFSET)
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "offset must be a whole number from 0 to {}, not {value:?}",
                                Self::MAX_OFFSET
                            ))
                        })?;
                }
                "limit" => {
                    page.limit = value
                        .parse()
                        .ok()
                        .filter(|limit| (1..=Self::MAX_LIMIT).contains(limit))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be from 1 to {}, not {value:?}",
                                Self::MAX_LIMIT
                            ))
                        })?;
                }
                _ => {}
            }
        }
        Ok(page)
    }
}

/// One `http_sd_config` target group for an entry with `metadata.metrics` (`host:port` or a URL).
fn target_group(entry: &RegistryEntry) -> Option<Value> {
    target_group_of(&json!(entry), None)
}

/// The target group of a registry entry as JSON (as this node serves it, or as a node of the fleet
/// published it), labelled with its `node` in the fleet's view.
pub(super) fn target_group_of(entry: &Value, node: Option<&str>) -> Option<Value> {
    let metrics = entry["metadata"].get("metrics")?.as_str()?;
    let mut labels = Map::new();
    labels.insert("service".into(), entry["name"].clone());
    labels.insert("service_type".into(), entry["type"].clone());
    labels.insert(
        "managed".into(),
        json!(entry["managed"].as_bool().unwrap_or(false).to_string()),
    );
    if let Some(node) = node {
        labels.insert("node".into(), json!(node));
    }
    let target = match metrics.split_once("://") {
        Some((scheme, rest)) => {
            labels.insert("__scheme__".into(), json!(scheme));
            let (host, path) = rest.split_once('/').map_or((rest, None), |(h, p)| (h, Some(p)));
            if let Some(path) = path.filter(|p| !p.is_empty()) {
                labels.insert("__metrics_path__".into(), json!(format!("/{path}")));
            }
            host
        }
        None => metrics,
    };
    if target.is_empty() {
        return None;
    }
    Some(json!({"targets": [target], "labels": labels}))
}

/// Whether an `Accept-Encoding` header allows gzip (named, or `*`, with a non-zero quality).
/// Bodies made from every service's snapshot, kept while their key holds.
#[derive(Debug, Default)]
pub(super) struct Bodies {
    services: Cached<u64>,
    /// Keyed by the roster's version.
    dependencies: Cached<u64>,
    health: Cached<(u64, u64)>,
}

/// One body and the key it was made under.
#[derive(Debug)]
struct Cached<K>(std::sync::Mutex<Option<(K, Bytes)>>);

impl<K> Default for Cached<K> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

impl<K: PartialEq + Copy> Cached<K> {
    /// The body kept under `key`, or the one `make` makes (kept from now on). Two requests that miss at
    /// once both make it; neither waits for the other.
    fn get(&self, key: K, make: impl FnOnce() -> Bytes) -> Bytes {
        {
            let kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((kept_key, body)) = kept.as_ref()
                && *kept_key == key
            {
                return body.clone();
            }
        }
        let body = make();
        let mut kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *kept = Some((key, body.clone()));
        body
    }
}

/// `value` as JSON bytes (a `Value` always serializes).
fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn accepts_gzip(accept: &str) -> bool {
    accept.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f64>().ok()) == Some(0.0));
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

/// The exposition's parts as a body's chunks: the large ones shared as they are, each run of small ones
/// copied into one (one chunk per family would be two dozen writes for a few kilobytes).
fn coalesced(exposition: Exposition) -> Vec<Bytes> {
    /// Parts this small are copied together.
    const SMALL: usize = 16 * 1024;
    let mut chunks = Vec::with_capacity(exposition.kept.len() + 1);
    let mut small = Vec::new();
    for part in exposition.kept {
        if part.len() < SMALL {
            small.extend_from_slice(part.as_bytes());
            continue;
        }
        if !small.is_empty() {
            chunks.push(Bytes::from(std::mem::take(&mut small)));
        }
        chunks.push(Bytes::from_owner(Shared(part)));
    }
    small.extend_from_slice(exposition.fresh.as_bytes());
    chunks.push(Bytes::from(small));
    chunks
}

/// `parts`, one after the other, gzip-compressed (fast level: a scrape is latency-bound), or `None` if
/// compression failed.
fn gzip_parts(parts: &[&[u8]]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let length: usize = parts.iter().map(|part| part.len()).sum();
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(length / 4), flate2::Compression::fast());
    for part in parts {
        encoder.write_all(part).ok()?;
    }
    encoder.finish().ok()
}

/// A text shared with other responses, as the bytes of a body.
struct Shared(Arc<String>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_used_when_accepted() {
        for yes in ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.8", "*", "GZIP"] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in ["identity", "deflate", "gzip;q=0", "br, gzip;q=0"] {
            assert!(!accepts_gzip(no), "{no}");
        }
        let compressed = gzip_parts(&[b"orchestrator_", b"up 1\n"]).unwrap();
        let mut decoder = flate2::read::GzDecoder::new(&compressed[..]);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut decoder, &mut text).unwrap();
        assert_eq!(text, "orchestrator_up 1\n");
    }

    /// The body reads as the exposition; runs of small parts go as one chunk, a large part as itself
    /// (not copied).
    #[test]
    fn an_exposition_goes_out_with_its_small_parts_together_and_its_large_ones_shared() {
        let large = Arc::new("x".repeat(20 * 1024));
        let parts = ["a\n", "b\n"].map(|part| Arc::new(part.to_owned()));
        let exposition = Exposition {
            kept: vec![
                parts[0].clone(),
                parts[1].clone(),
                large.clone(),
                parts[0].clone(),
            ],
            fresh: "fresh\n".to_owned(),
        };
        let chunks = coalesced(exposition);
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert_eq!(chunks[0], "a\nb\n");
        assert_eq!(chunks[1].as_ptr(), large.as_ptr(), "the large part is shared");
        assert_eq!(chunks[2], "a\nfresh\n");
    }
}
