//! Every endpoint and error of the REST API, called through `Api::handle` without sockets, over the FOG
//! topology in the fake world with paused time.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use fog_orchestrator::api::routes::ROUTES;
use fog_orchestrator::api::{Api, BrowserPolicy, openapi};
use fog_orchestrator::clock::Clock;
use fog_orchestrator::supervisor::{ServiceState, Supervisor};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use crate::harness::{FOG, World, reach, service, supervise, within};

struct Response {
    status: StatusCode,
    headers: hyper::HeaderMap,
    text: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

fn api_for(supervisor: &Supervisor, token: Option<&str>) -> Api {
    Api::new(
        supervisor.clone(),
        token.map(str::to_owned),
        BrowserPolicy::default(),
        Clock::system(),
    )
}

async fn call(
    api: &Api,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    token: Option<&str>,
) -> Response {
    call_as(api, method, path, body, token, &[("host", "127.0.0.1:8400")]).await
}

/// A request with exactly these extra `headers` (a browser's, or none at all).
async fn call_as(
    api: &Api,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Response {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some((content_type, _)) = &body {
        request = request.header(header::CONTENT_TYPE, *content_type);
    }
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let bytes = body.map(|(_, bytes)| bytes).unwrap_or_default();
    let request = request.body(Full::new(Bytes::from(bytes))).unwrap();
    let reply = api.handle(request).await;
    let status = reply.status();
    let headers = reply.headers().clone();
    let text = String::from_utf8(reply.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Response {
        status,
        headers,
        text,
    }
}

async fn get(api: &Api, path: &str) -> Response {
    call(api, Method::GET, path, None, None).await
}

async fn delete(api: &Api, path: &str) -> Response {
    call(api, Method::DELETE, path, None, None).await
}

async fn post(api: &Api, path: &str, body: Value) -> Response {
    call(
        api,
        Method::POST,
        path,
        Some(("application/json", body.to_string().into_bytes())),
        None,
    )
    .await
}

/// `toml`'s services started in the fake world, and the API over them.
async fn started(toml: &str) -> (World, Supervisor, Api) {
    let world = World::default();
    let supervisor = supervise(&world, toml);
    within(Duration::from_secs(10), supervisor.initialized()).await;
    let api = Api::new(
        supervisor.clone(),
        None,
        BrowserPolicy::default(),
        Clock::system(),
    );
    (world, supervisor, api)
}

async fn fog() -> (World, Supervisor, Api) {
    started(FOG).await
}

fn assert_keys(value: &Value, keys: &[&str]) {
    for key in keys {
        assert!(value.get(key).is_some(), "missing {key:?} in {value}");
    }
}

#[tokio::test(start_paused = true)]
async fn services_has_the_seed_shape() {
    let (_, _, api) = fog().await;
    let response = get(&api, "/api/orchestration/services").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.headers[header::CONTENT_TYPE], "application/json");
    let body = response.json();
    assert_keys(
        &body,
        &["success", "total_services", "services", "is_ready", "initialized"],
    );
    assert_eq!(body["total_services"], 10);
    assert_eq!(
        (body["is_ready"].clone(), body["initialized"].clone()),
        (json!(true), json!(true))
    );
    let dao = &body["services"]["dao"];
    assert_keys(
        dao,
        &[
            "status",
            "restart_count",
            "last_restart",
            "last_error",
            "is_critical",
        ],
    );
    assert_eq!(dao["status"], "running");
    assert_eq!(dao["is_critical"], true);
    assert_eq!(dao["last_restart"], Value::Null);
    assert_eq!(body["services"]["betanet"]["is_critical"], false);
}

#[tokio::test(start_paused = true)]
async fn health_has_the_seed_shape() {
    let (world, supervisor, api) = fog().await;
    world.set("p2p", |b| b.healthy = false);
    supervisor.check_now().await;
    let body = get(&api, "/api/orchestration/health").await.json();
    assert_keys(
        &body,
        &[
            "status",
            "composite_health",
            "services",
            "unhealthy_services",
            "degraded_services",
        ],
    );
    assert_eq!(body["status"], "ok");
    assert_eq!(body["composite_health"], "degraded");
    assert_eq!(body["degraded_services"], json!(["p2p"]));
    assert_eq!(body["unhealthy_services"], json!([]));
    let dao = &body["services"]["dao"];
    assert_keys(
        dao,
        &[
            "status",
            "last_check",
            "consecutive_failures",
            "uptime_1h",
            "uptime_24h",
            "uptime_7d",
        ],
    );
    assert_eq!(dao["status"], "healthy");
    assert_eq!(dao["last_check"]["service_name"], "dao");
    assert_eq!(body["services"]["p2p"]["consecutive_failures"], 1);
}

#[tokio::test(start_paused = true)]
async fn restart_answers_with_the_seed_shape_once_running() {
    let (world, _, api) = fog().await;
    let response = post(
        &api,
        "/api/orchestration/restart/betanet",
        json!({"force": false}),
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let body = response.json();
    assert_keys(
        &body,
        &[
            "success",
            "service",
            "status",
            "restart_count",
            "last_restart",
            "message",
        ],
    );
    assert_eq!(body["service"], "betanet");
    assert_eq!(body["status"], "running");
    assert_eq!(body["restart_count"], 1);
    assert!(body["last_restart"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["message"], "Service 'betanet' restarted successfully");
    assert_eq!(world.launches("betanet").len(), 2);

    // An empty body means force = false.
    let response = call(&api, Method::POST, "/api/orchestration/restart/dao", None, None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
}

#[tokio::test(start_paused = true)]
async fn start_and_stop_one_service() {
    let (world, _, api) = fog().await;
    let stopped = post(&api, "/api/orchestration/stop/bitchat", json!({})).await;
    assert_eq!(stopped.status, StatusCode::OK);
    assert_eq!(stopped.json()["status"], "stopped");
    assert!(!world.is_running("bitchat"));
    let started = post(&api, "/api/orchestration/start/bitchat", json!({})).await;
    assert_eq!(started.json()["status"], "running");
    assert_eq!(
        started.json()["message"],
        "Service 'bitchat' started successfully"
    );
}

#[tokio::test(start_paused = true)]
async fn overview_bodies_are_kept_only_while_nothing_changed() {
    let (_, _, api) = fog().await;
    let before = get(&api, "/api/orchestration/services").await.json();
    assert_eq!(before["services"]["bitchat"]["status"], "running");
    let health = get(&api, "/api/orchestration/health").await.json();
    assert_eq!(health["services"]["bitchat"]["state"], "running");

    post(&api, "/api/orchestration/stop/bitchat", json!({})).await;
    let after = get(&api, "/api/orchestration/services").await.json();
    assert_eq!(
        after["services"]["bitchat"]["status"], "stopped",
        "a kept body outlived a change"
    );
    let health_after = get(&api, "/api/orchestration/health").await;
    assert_eq!(health_after.json()["services"]["bitchat"]["state"], "stopped");
    assert_eq!(
        health_after
            .json()
            .as_object()
            .unwrap()
            .keys()
            .next_back()
            .map(String::as_str),
        Some("timestamp"),
        "the timestamp stays the last field: {}",
        health_after.text
    );

    // The timestamp (whole seconds) is each request's own, even when nothing else changed.
    let first = get(&api, "/api/orchestration/health").await.json();
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = get(&api, "/api/orchestration/health").await.json();
    assert_ne!(first["timestamp"], second["timestamp"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_service_is_refused_without_force() {
    let world = World::default();
    world.set("betanet", |b| b.fail_launch = true);
    let supervisor = supervise(&world, FOG);
    reach(&supervisor, "betanet", ServiceState::Failed).await;
    let api = api_for(&supervisor, None);
    let refused = post(
        &api,
        "/api/orchestration/restart/betanet",
        json!({"force": false}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.json()["success"], false);
    assert!(refused.json()["error"].as_str().unwrap().contains("force=true"));

    let still_failing = post(&api, "/api/orchestration/restart/betanet", json!({"force": true})).await;
    assert_eq!(still_failing.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        still_failing.json()["error"]
            .as_str()
            .unwrap()
            .contains("did not start"),
        "{}",
        still_failing.text
    );

    world.set("betanet", |b| b.fail_launch = false);
    let forced = post(&api, "/api/orchestration/restart/betanet", json!({"force": true})).await;
    assert_eq!(forced.status, StatusCode::OK, "{}", forced.text);
}

#[tokio::test(start_paused = true)]
async fn dependencies_as_json_and_dot() {
    let (_, _, api) = fog().await;
    let body = get(&api, "/api/orchestration/dependencies").await.json();
    assert_keys(
        &body,
        &[
            "success",
            "startup_order",
            "shutdown_order",
            "dependencies",
            "visualization",
        ],
    );
    assert_eq!(body["startup_order"][0], "dao");
    assert_eq!(body["dependencies"]["harvest"]["dependencies"], json!(["edge"]));
    let dot = get(&api, "/api/orchestration/dependencies?format=dot").await;
    assert_eq!(dot.headers[header::CONTENT_TYPE], "text/vnd.graphviz");
    assert!(dot.text.starts_with("digraph"));
    assert_eq!(
        get(&api, "/api/orchestration/dependencies?format=xml")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_json_has_the_seed_shape() {
    let (_, _, api) = fog().await;
    let body = get(&api, "/api/orchestration/metrics").await.json();
    assert_keys(
        &body,
        &["success", "metrics", "registry_stats", "service_details"],
    );
    assert_keys(
        &body["metrics"],
        &[
            "total_services",
            "running_services",
            "failed_services",
            "stopped_services",
            "total_restarts",
            "healthy_services",
            "unhealthy_services",
            "is_ready",
            "initialized",
        ],
    );
    assert_eq!(body["metrics"]["running_services"], 10);
    assert_eq!(body["metrics"]["total_restarts"], 0);
    assert_eq!(body["registry_stats"]["total_services"], 10);
    assert_eq!(body["registry_stats"]["alive_services"], 10);
    assert_eq!(body["service_details"]["onion"]["status"], "running");
}

#[tokio::test(start_paused = true)]
async fn service_detail_has_the_seed_shape() {
    let (_, _, api) = fog().await;
    let body = get(&api, "/api/orchestration/service/betanet").await.json();
    assert_keys(
        &body,
        &[
            "success",
            "service",
            "status",
            "restart_count",
            "last_restart",
            "last_error",
            "is_critical",
            "dependencies",
            "health_history",
            "registry_metadata",
        ],
    );
    assert_eq!(
        body["dependencies"],
        json!({"required": [], "optional": ["p2p", "onion"], "dependents": [], "layer": 5})
    );
    assert_eq!(body["health_history"][0]["status"], "healthy");
    // History entries carry milliseconds: 2025-10-22T04:00:00.123Z.
    let timestamp = body["health_history"][0]["timestamp"].as_str().unwrap();
    let (_, fraction) = timestamp.split_once('.').expect(timestamp);
    assert!(fraction.len() == 4 && fraction.ends_with('Z'), "{timestamp}");
    assert_eq!(body["last_error"], Value::Null);
    assert_eq!(body["last_error_at"], Value::Null);
    assert_eq!(body["registry_metadata"]["alive"], true);
}

#[tokio::test(start_paused = true)]
async fn a_restart_refused_for_a_down_dependency_changes_nothing() {
    let (world, supervisor, api) = fog().await;
    // edge fails for good; harvest, which requires it, keeps running.
    world.set("edge", |b| b.fail_launch = true);
    world.crash("edge", 1);
    reach(&supervisor, "edge", ServiceState::Failed).await;
    let before = service(&supervisor, "harvest").snapshot();
    assert_eq!(before.state, ServiceState::Running);

    let refused = post(
        &api,
        "/api/orchestration/restart/harvest",
        json!({"force": false}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(refused.json()["error"].as_str().unwrap().contains("\"edge\""));
    let forced = post(&api, "/api/orchestration/restart/harvest", json!({"force": true})).await;
    assert_eq!(
        forced.status,
        StatusCode::CONFLICT,
        "force does not start it without edge"
    );

    tokio::time::sleep(Duration::from_secs(600)).await;
    let after = service(&supervisor, "harvest").snapshot();
    assert_eq!(after.state, ServiceState::Running);
    assert_eq!(after.pid, before.pid);
    assert_eq!(after.restart_count, 0);
    assert_eq!(world.launches("harvest").len(), 1);
    let listed = get(&api, "/api/orchestration/services").await.json();
    assert_eq!(listed["services"]["harvest"]["waiting_on"], "edge");
}

#[tokio::test(start_paused = true)]
async fn check_now_runs_fresh_checks() {
    let (world, _, api) = fog().await;
    world.set("onion", |b| b.healthy = false);
    let body = post(&api, "/api/orchestration/health/check-now", json!({}))
        .await
        .json();
    assert_keys(&body, &["success", "timestamp", "composite_health", "results"]);
    assert_eq!(body["results"].as_object().unwrap().len(), 10);
    let onion = &body["results"]["onion"];
    assert_keys(
        onion,
        &[
            "service_name",
            "status",
            "timestamp",
            "message",
            "details",
            "response_time_ms",
        ],
    );
    assert_eq!(onion["status"], "degraded");
    assert_eq!(body["composite_health"], "degraded");

    let one = post(&api, "/api/orchestration/health/check-now?service=dao", json!({}))
        .await
        .json();
    assert_eq!(one["results"].as_object().unwrap().len(), 1);
    let missing = post(
        &api,
        "/api/orchestration/health/check-now?service=nope",
        json!({}),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn the_registry_over_http() {
    let (_, _, api) = fog().await;
    let registration = json!({"name": "cache", "type": "redis", "address": "127.0.0.1", "port": 6379,
                              "tags": ["edge"], "metadata": {"metrics": "127.0.0.1:9121"}});
    let created = post(&api, "/api/orchestration/registry", registration).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json()["service"]["alive"], true);

    let list = get(&api, "/api/orchestration/registry").await.json();
    assert_eq!(list["total_services"], 11);
    assert_eq!(list["services"]["cache"]["port"], 6379);
    assert_eq!(list["stats"]["registered_services"], 1);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let beat = post(&api, "/api/orchestration/registry/cache/heartbeat", json!({})).await;
    assert_eq!(beat.json()["service"]["heartbeats_received"], 2);
    assert_eq!(
        get(&api, "/api/orchestration/registry/cache").await.json()["service"]["type"],
        "redis"
    );

    let sd = get(&api, "/api/orchestration/sd").await.json();
    assert_eq!(
        sd,
        json!([{"targets": ["127.0.0.1:9121"], "labels": {"service": "cache", "service_type": "redis", "managed": "false"}}])
    );

    let configured = post(&api, "/api/orchestration/registry", json!({"name": "dao"})).await;
    assert_eq!(configured.status, StatusCode::CONFLICT);
    let deconfigured = delete(&api, "/api/orchestration/registry/dao").await;
    assert_eq!(deconfigured.status, StatusCode::CONFLICT);

    let removed = delete(&api, "/api/orchestration/registry/cache").await;
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(
        get(&api, "/api/orchestration/registry/cache").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&api, "/api/orchestration/registry/cache/heartbeat", json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(start_paused = true)]
async fn probes_and_metrics_endpoints() {
    let world = World::default();
    world.set("dao", |b| b.ready_after = Duration::from_secs(1));
    let supervisor = supervise(&world, FOG);
    let api = api_for(&supervisor, None);
    assert_eq!(get(&api, "/healthz").await.status, StatusCode::OK);
    let not_ready = get(&api, "/readyz").await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["ready"], false);
    within(Duration::from_secs(10), supervisor.initialized()).await;
    assert_eq!(get(&api, "/readyz").await.status, StatusCode::OK);

    let metrics = get(&api, "/metrics").await;
    assert!(
        metrics.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        metrics
            .text
            .contains("orchestrator_service_up{service=\"dao\"} 1"),
        "{}",
        metrics.text
    );
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (world, supervisor, api) = fog().await;
    let cases: Vec<(Response, StatusCode, &str)> = vec![
        (
            get(&api, "/api/orchestration/nope").await,
            StatusCode::NOT_FOUND,
            "no route",
        ),
        (
            get(&api, "/api/orchestration/service/ghost").await,
            StatusCode::NOT_FOUND,
            "unknown service",
        ),
        (
            post(&api, "/api/orchestration/restart/ghost", json!({})).await,
            StatusCode::NOT_FOUND,
            "unknown service",
        ),
        (
            get(&api, "/api/orchestration/service/Bad.Name").await,
            StatusCode::BAD_REQUEST,
            "invalid service name",
        ),
        (
            post(
                &api,
                &format!("/api/orchestration/restart/{}", "x".repeat(200)),
                json!({}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid service name",
        ),
        (
            get(&api, "/api/orchestration/restart/dao").await,
            StatusCode::METHOD_NOT_ALLOWED,
            "allowed: POST",
        ),
        (
            call(
                &api,
                Method::POST,
                "/api/orchestration/restart/dao",
                Some(("application/json", b"{force".to_vec())),
                None,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            post(&api, "/api/orchestration/restart/dao", json!({"force": "yes"})).await,
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            post(&api, "/api/orchestration/restart/dao", json!({"forse": true})).await,
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            post(&api, "/api/orchestration/restart/dao", json!([1, 2])).await,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            call(
                &api,
                Method::POST,
                "/api/orchestration/restart/dao",
                Some(("text/plain", b"force".to_vec())),
                None,
            )
            .await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "must be JSON",
        ),
        (
            call(
                &api,
                Method::POST,
                "/api/orchestration/restart/dao",
                Some(("application/json", vec![b' '; 70_000])),
                None,
            )
            .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 65536",
        ),
        (
            post(
                &api,
                "/api/orchestration/registry",
                json!({"name": "ok", "port": 70000}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            post(&api, "/api/orchestration/registry", json!({"name": "Not Valid"})).await,
            StatusCode::BAD_REQUEST,
            "invalid service name",
        ),
        (
            call(&api, Method::POST, "/api/orchestration/registry", None, None).await,
            StatusCode::BAD_REQUEST,
            "required",
        ),
    ];
    for (response, status, fragment) in &cases {
        assert_eq!(response.status, *status, "{}", response.text);
        let body = response.json();
        assert_eq!(body["success"], false);
        assert!(
            body["error"].as_str().unwrap().contains(fragment),
            "{fragment:?} not in {}",
            response.text
        );
    }
    let wrong_method = get(&api, "/api/orchestration/registry/cache/heartbeat").await;
    assert_eq!(wrong_method.headers[header::ALLOW], "POST");

    // Nothing changed: no restart happened, nothing was registered.
    for handle in supervisor.services().iter() {
        assert_eq!(handle.snapshot().restart_count, 0, "{}", handle.name());
    }
    assert_eq!(world.launches("dao").len(), 1);
    assert_eq!(supervisor.registry().entries().await.unwrap().len(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_token_guards_every_post_and_delete() {
    let world = World::default();
    let supervisor = supervise(&world, FOG);
    within(Duration::from_secs(10), supervisor.initialized()).await;
    let api = api_for(&supervisor, Some("s3cret"));
    let body = Some(("application/json", b"{}".to_vec()));

    let missing = call(
        &api,
        Method::POST,
        "/api/orchestration/restart/dao",
        body.clone(),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");
    let wrong = call(
        &api,
        Method::POST,
        "/api/orchestration/restart/dao",
        body.clone(),
        Some("guess"),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let delete = delete(&api, "/api/orchestration/registry/dao").await;
    assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
    assert_eq!(service(&supervisor, "dao").snapshot().restart_count, 0);

    let right = call(
        &api,
        Method::POST,
        "/api/orchestration/restart/dao",
        body,
        Some("s3cret"),
    )
    .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.text);
    assert_eq!(
        get(&api, "/api/orchestration/services").await.status,
        StatusCode::OK,
        "reads need no token"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_restarts_over_http_coalesce_into_one() {
    let world = World::default();
    world.set("betanet", |b| b.ready_after = Duration::from_millis(300));
    let supervisor = supervise(&world, FOG);
    within(Duration::from_secs(10), supervisor.initialized()).await;
    let api = api_for(&supervisor, None);
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { post(&api, "/api/orchestration/restart/betanet", json!({})).await })
        })
        .collect();
    for request in requests {
        let response = request.await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        assert_eq!(response.json()["restart_count"], 1);
    }
    assert_eq!(world.launches("betanet").len(), 2);
}

#[test]
fn the_openapi_document_describes_exactly_the_routes() {
    let document = openapi::document();
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.template.to_owned()))
        .collect();
    assert_eq!(documented, routed);
    assert_eq!(document["openapi"], "3.0.3");
}

#[tokio::test(start_paused = true)]
async fn the_openapi_document_is_served() {
    let (_, _, api) = fog().await;
    let body = get(&api, "/api/orchestration/openapi.json").await.json();
    assert_eq!(body["info"]["title"], "fog-orchestrator");
}

#[tokio::test(start_paused = true)]
async fn secrets_in_env_and_commands_are_never_echoed() {
    let toml = "[services.db]\ncommand = [\"fake\", \"--password=hunter2\"]\nenv = { DB_PASSWORD = \"hunter2\" }\n\
                metadata = { team = \"core\" }\n";
    let (_world, _supervisor, api) = started(toml).await;
    for path in [
        "/api/orchestration/services",
        "/api/orchestration/health",
        "/api/orchestration/metrics",
        "/api/orchestration/service/db",
        "/api/orchestration/registry",
        "/api/orchestration/registry/db",
        "/api/orchestration/dependencies",
        "/metrics",
    ] {
        let response = get(&api, path).await;
        assert_eq!(response.status, StatusCode::OK, "{path}");
        assert!(
            !response.text.contains("hunter2"),
            "{path} echoes a secret: {}",
            response.text
        );
    }
    assert!(
        get(&api, "/api/orchestration/service/db")
            .await
            .text
            .contains("core"),
        "metadata is shown"
    );
}

#[tokio::test(start_paused = true)]
async fn no_web_page_can_drive_or_read_the_api() {
    let (world, supervisor, api) = fog().await;
    let before = service(&supervisor, "onion").snapshot();
    let checks_before = crate::metrics::get(
        &supervisor,
        "orchestrator_health_checks_total",
        &[("service", "onion")],
    );
    let local = ("host", "127.0.0.1:8400");
    // Cross-site form posts (no preflight): urlencoded and text/plain, empty bodies.
    for (content_type, path) in [
        (
            "application/x-www-form-urlencoded",
            "/api/orchestration/restart/onion",
        ),
        ("text/plain", "/api/orchestration/stop/onion"),
        (
            "multipart/form-data; boundary=x",
            "/api/orchestration/health/check-now",
        ),
    ] {
        let headers = [
            local,
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
            ("content-type", content_type),
        ];
        let refused = call_as(
            &api,
            Method::POST,
            path,
            Some((content_type, Vec::new())),
            None,
            &headers,
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}: {}", refused.text);
        assert_eq!(refused.json()["success"], false);
    }
    // DNS rebinding: the attacker's name resolves to 127.0.0.1; reads and writes alike.
    let rebinding = [
        ("host", "evil.example:8400"),
        ("origin", "http://evil.example:8400"),
    ];
    let start = call_as(
        &api,
        Method::POST,
        "/api/orchestration/start/onion",
        None,
        None,
        &rebinding,
    )
    .await;
    assert_eq!(start.status, StatusCode::FORBIDDEN);
    for path in [
        "/api/orchestration/services",
        "/api/orchestration/dependencies",
        "/metrics",
    ] {
        let read = call_as(
            &api,
            Method::GET,
            path,
            None,
            None,
            &[("host", "evil.example:8400")],
        )
        .await;
        assert_eq!(read.status, StatusCode::FORBIDDEN, "{path}");
        assert!(!read.text.contains("onion"), "nothing leaks: {}", read.text);
    }
    // HTTP/1.1 without Host is malformed.
    let hostless = call_as(&api, Method::GET, "/api/orchestration/services", None, None, &[]).await;
    assert_eq!(hostless.status, StatusCode::BAD_REQUEST);

    tokio::time::sleep(Duration::from_millis(1)).await;
    let after = service(&supervisor, "onion").snapshot();
    assert_eq!(
        (after.state, after.pid, after.restart_count),
        (before.state, before.pid, before.restart_count)
    );
    assert_eq!(world.launches("onion").len(), 1);
    assert_eq!(
        crate::metrics::get(
            &supervisor,
            "orchestrator_health_checks_total",
            &[("service", "onion")]
        ),
        checks_before,
        "no check ran"
    );
    // curl (no browser headers) is unaffected.
    let curl = post(&api, "/api/orchestration/restart/onion", json!({})).await;
    assert_eq!(curl.status, StatusCode::OK, "{}", curl.text);
}

#[tokio::test(start_paused = true)]
async fn the_registry_is_bounded_and_paged() {
    let (_world, _supervisor, api) =
        started("[registry]\nmax_registered = 3\n[services.db]\ncommand = [\"fake\"]\n").await;
    let register = |body: Value| {
        let api = api.clone();
        async move { post(&api, "/api/orchestration/registry", body).await }
    };
    // Oversized fields are refused, and nothing is registered.
    for (body, complaint) in [
        (json!({"name": "a", "address": "x".repeat(60_000)}), "address"),
        (json!({"name": "a", "tags": vec!["t"; 33]}), "tags"),
        (json!({"name": "a", "type": "t".repeat(129)}), "type"),
        (
            json!({"name": "a", "metadata": {"blob": "x".repeat(9000)}}),
            "metadata",
        ),
    ] {
        let refused = register(body).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{complaint}: {}",
            refused.text
        );
        assert!(refused.text.contains(complaint), "{}", refused.text);
    }
    for (name, service_type) in [("a", "cache"), ("b", "queue"), ("c", "cache")] {
        let created = register(json!({"name": name, "type": service_type})).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    }
    let full = register(json!({"name": "d"})).await;
    assert_eq!(full.status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(full.text.contains("max_registered"), "{}", full.text);
    let update = register(json!({"name": "a", "type": "cache", "port": 1})).await;
    assert_eq!(
        update.status,
        StatusCode::CREATED,
        "updating an entry needs no room"
    );

    let first = get(&api, "/api/orchestration/registry?limit=2").await.json();
    assert_eq!(first["total_services"], 4);
    assert_eq!(first["services"].as_object().unwrap().len(), 2);
    assert_eq!(first["next_offset"], 2);
    let last = get(&api, "/api/orchestration/registry?limit=2&offset=2")
        .await
        .json();
    assert_eq!(last["services"].as_object().unwrap().len(), 2);
    assert_eq!(last["next_offset"], Value::Null);
    let caches = get(&api, "/api/orchestration/registry?type=cache").await.json();
    let names: Vec<&String> = caches["services"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["a", "c"]);
    let alive = get(&api, "/api/orchestration/registry?alive=false").await.json();
    assert_eq!(alive["total_services"], 0, "{alive}");
    for bad in ["limit=0", "limit=1001", "offset=-1", "alive=maybe"] {
        let refused = get(&api, &format!("/api/orchestration/registry?{bad}")).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test(start_paused = true)]
async fn fleet_reads_without_fleet_mode_are_refused_and_a_local_scope_is_the_default() {
    let (_, _, api) = fog().await;
    for path in [
        "/api/orchestration/services",
        "/api/orchestration/registry",
        "/api/orchestration/sd",
    ] {
        let local = get(&api, &format!("{path}?scope=local")).await;
        assert_eq!(local.status, StatusCode::OK, "{path}");
        assert_eq!(
            local.text,
            get(&api, path).await.text,
            "{path}: local is the default"
        );
        let fleet = get(&api, &format!("{path}?scope=fleet")).await;
        assert_eq!(fleet.status, StatusCode::CONFLICT, "{path}");
        assert!(
            fleet.json()["error"]
                .as_str()
                .unwrap()
                .contains("fleet mode is off")
        );
        let bogus = get(&api, &format!("{path}?scope=world")).await;
        assert_eq!(bogus.status, StatusCode::BAD_REQUEST, "{path}");
    }
    // Without fleet mode a service is no singleton, and /readyz has no cluster.
    let services = get(&api, "/api/orchestration/services").await.json();
    assert_eq!(services["services"]["dao"]["singleton"], false);
    assert_eq!(services["services"]["dao"]["leader"], Value::Null);
    assert_eq!(get(&api, "/readyz").await.json()["cluster"], Value::Null);
}
