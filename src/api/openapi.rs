//! The OpenAPI 3 document served at `/api/orchestration/openapi.json`. A test checks that its paths and
//! methods are exactly those of the route table.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn name_parameter() -> Value {
    json!({
        "name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,63}$"},
        "description": "Service name."
    })
}

fn control(verb: &str, description: &str) -> Value {
    json!({
        "summary": format!("{verb} one service"),
        "description": description,
        "security": [{"bearer": []}, {}],
        "parameters": [name_parameter()],
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Control"}}}},
        "responses": {
            "200": ok("The service's state afterwards.", json!({"$ref": "#/components/schemas/ControlResult"})),
            "400": error_response("Malformed name or body."),
            "401": error_response("Missing or wrong bearer token (when api.token is set)."),
            "404": error_response("Unknown service."),
            "409": error_response("Refused, nothing changed: the service has failed (use force), is external, waits on a down required dependency, is being stopped, was stopped meanwhile, or is a fleet singleton another node runs."),
            "413": error_response("Body larger than 64 KiB."),
            "415": error_response("Body is not JSON."),
            "500": error_response("The service did not start: the error that stopped it."),
            "503": error_response("The orchestrator is shutting down.")
        }
    })
}

fn get(summary: &str, schema: Value) -> Value {
    json!({"summary": summary, "responses": {"200": ok(summary, schema)}})
}

/// `?scope=fleet` (fleet mode, DESIGN.md section 9) on a read: the parameter and its errors.
fn fleet_scoped(mut operation: Value) -> Value {
    operation["parameters"]
        .as_array_mut()
        .map(|parameters| parameters.push(scope_parameter()))
        .unwrap_or_else(|| operation["parameters"] = json!([scope_parameter()]));
    let responses = &mut operation["responses"];
    if responses.get("400").is_none() {
        responses["400"] = error_response("scope is not local or fleet.");
    }
    responses["409"] =
        error_response("scope=fleet while fleet mode is off ([cluster] etcd_endpoints is not set).");
    responses["503"] = error_response("scope=fleet while etcd cannot be read.");
    operation
}

fn scope_parameter() -> Value {
    json!({
        "name": "scope", "in": "query", "required": false,
        "schema": {"type": "string", "enum": ["local", "fleet"], "default": "local"},
        "description": "local: this node; fleet: every node of the fleet, from etcd (entries keyed <node>/<name>, each with its node, and nodes listing the members)."
    })
}

fn object() -> Value {
    json!({"type": "object"})
}

/// The whole document.
pub fn document() -> Value {
    let mut document = paths();
    // Every route refuses browser pages of other origins and foreign Host names, and a Host-less HTTP/1.1
    // request, before anything else.
    if let Some(paths) = document["paths"].as_object_mut() {
        for operation in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|p| p.values_mut())
        {
            if let Some(responses) = operation["responses"].as_object_mut() {
                responses.insert(
                    "403".into(),
                    error_response(
                        "Refused: a browser page of another origin (api.allowed_origins), or a Host that is not \
                         this orchestrator's (api.allowed_hosts).",
                    ),
                );
                responses.entry("400").or_insert_with(|| {
                    error_response("Malformed request (an HTTP/1.1 request without Host).")
                });
            }
        }
    }
    document
}

fn paths() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "fog-orchestrator",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Service orchestration API: services, health, restarts, dependencies, registry."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["success", "error"], "properties": {
                    "success": {"type": "boolean", "enum": [false]}, "error": {"type": "string"},
                    "problems": {"type": "array", "items": {"type": "string"},
                                 "description": "Every problem of a configuration that was refused."}}},
                "Change": {"type": "object", "required": ["service", "keys"], "properties": {
                    "service": {"type": "string"}, "keys": {"type": "array", "items": {"type": "string"}}}},
                "Applied": {"type": "object", "required": ["service", "action", "state", "ok"], "properties": {
                    "service": {"type": "string"},
                    "action": {"type": "string", "enum": ["removed", "added", "restarted", "updated"]},
                    "state": {"$ref": "#/components/schemas/State"},
                    "pid": {"type": "integer", "nullable": true},
                    "ok": {"type": "boolean", "description": "It reached what the reload meant for it (stopped, ready, updated)."},
                    "error": {"type": "string", "nullable": true}}},
                "ReloadPlan": {"type": "object", "required": ["success", "dry_run", "changed", "plan"], "properties": {
                    "success": {"type": "boolean", "description": "False when a service the reload started or restarted did not come up (see `applied`)."},
                    "dry_run": {"type": "boolean"}, "changed": {"type": "boolean"},
                    "config": {"type": "string"}, "config_hash": {"type": "string"},
                    "warnings": {"type": "array", "items": {"type": "string"}},
                    "applied": {"type": "array", "items": {"$ref": "#/components/schemas/Applied"},
                                "description": "What happened to each service added, removed, restarted or updated (absent in a dry run)."},
                    "plan": {"type": "object", "properties": {
                        "add": {"type": "array", "items": {"type": "string"}},
                        "remove": {"type": "array", "items": {"type": "string"}},
                        "restart": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
                        "update": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
                        "untouched": {"type": "array", "items": {"type": "string"}},
                        "settings": {"type": "array", "items": {"type": "string"}},
                        "needs_orchestrator_restart": {"type": "array", "items": {"type": "string"}}}}}},
                "Control": {"type": "object", "additionalProperties": false, "properties": {
                    "force": {"type": "boolean", "default": false,
                              "description": "Also for a failed service; resets its restart attempt counter."}}},
                "ControlResult": {"type": "object", "properties": {
                    "success": {"type": "boolean"}, "service": {"type": "string"},
                    "status": {"$ref": "#/components/schemas/State"},
                    "restart_count": {"type": "integer"},
                    "last_restart": {"type": "string", "format": "date-time", "nullable": true},
                    "message": {"type": "string"}}},
                "State": {"type": "string", "enum": ["pending", "starting", "running", "stopping", "stopped", "backoff", "failed"]},
                "Health": {"type": "string", "enum": ["healthy", "degraded", "unhealthy", "unknown"]},
                "CheckResult": {"type": "object", "properties": {
                    "service_name": {"type": "string"}, "status": {"$ref": "#/components/schemas/Health"},
                    "passed": {"type": "boolean"}, "reason": {"type": "string", "nullable": true},
                    "timestamp": {"type": "string", "format": "date-time"}, "message": {"type": "string"},
                    "details": {"type": "object"}, "response_time_ms": {"type": "number"}}},
                "Registration": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,63}$"},
                    "type": {"type": "string", "nullable": true, "maxLength": 128, "pattern": "\\S", "description": "Defaults to the name; not blank."},
                    "address": {"type": "string", "nullable": true, "maxLength": 253},
                    "port": {"type": "integer", "nullable": true, "minimum": 0, "maximum": 65535},
                    "tags": {"type": "array", "maxItems": 32, "items": {"type": "string", "maxLength": 128}},
                    "metadata": {"type": "object", "description": "Free-form, at most 8 KiB as JSON; metrics = \"host:port\" or a URL lists the service in /sd."}}},
                "RegistryEntry": {"type": "object", "properties": {
                    "name": {"type": "string"}, "type": {"type": "string"}, "address": {"type": "string", "nullable": true},
                    "port": {"type": "integer", "nullable": true}, "tags": {"type": "array", "items": {"type": "string"}},
                    "metadata": {"type": "object"}, "managed": {"type": "boolean"}, "status": {"type": "string"},
                    "registered_at": {"type": "string", "format": "date-time"},
                    "last_heartbeat": {"type": "string", "format": "date-time", "nullable": true},
                    "heartbeat_age_seconds": {"type": "number", "nullable": true}, "alive": {"type": "boolean"},
                    "heartbeats_received": {"type": "integer"}, "heartbeat_timeouts": {"type": "integer"}}}
            }
        },
        "paths": {
            "/api/orchestration/services": {"get": fleet_scoped(get(
                "All services with status, restart_count, last_restart, last_error, is_critical (+ singleton, leader, ...); is_ready, initialized.",
                object()))},
            "/api/orchestration/health": {"get": get(
                "Composite health; per service status, last_check, consecutive_failures, uptime_1h/24h/7d.",
                object())},
            "/api/orchestration/health/check-now": {"post": {
                "summary": "Run health checks now (every service, or ?service=NAME)",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "service", "in": "query", "required": false, "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,63}$"}}],
                "responses": {
                    "200": ok("Fresh results by service.", json!({"type": "object", "properties": {
                        "results": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/CheckResult"}}}})),
                    "400": error_response("Malformed service name."),
                    "401": error_response("Missing or wrong bearer token."),
                    "404": error_response("Unknown service.")}}},
            "/api/orchestration/reload": {"post": {
                "summary": "Reload the configuration: apply only what changed",
                "description": "Reads the configuration file the orchestrator was started with again, through the same layering and validation as at start, and applies only the difference: removed services stop (dependents first), services whose process settings changed restart (reason reload), added services start in dependency order, live settings apply at once; every other service keeps running untouched. Answers with the plan and what happened to each service, once what was started has settled. With dry_run=true, only the plan; nothing changes.",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "dry_run", "in": "query", "required": false, "schema": {"type": "boolean", "default": false},
                    "description": "Only show the plan; nothing changes."}],
                "responses": {
                    "200": ok("The plan, and (unless a dry run) what was applied.", json!({"$ref": "#/components/schemas/ReloadPlan"})),
                    "400": error_response("The file has problems (every one listed in `problems`), or dry_run is not true or false; nothing changed."),
                    "401": error_response("Missing or wrong bearer token."),
                    "409": error_response("Another reload is in progress, the orchestrator is shutting down, or it has no configuration file to read again.")}}},
            "/api/orchestration/restart/{name}": {"post": control("Restart",
                "Stops the service gracefully and starts it again; answers once it runs again. Concurrent restarts of one service are coalesced: one restart happens and every caller gets its result.")},
            "/api/orchestration/start/{name}": {"post": control("Start", "Starts a stopped (or, with force, failed) service; answers once it runs.")},
            "/api/orchestration/stop/{name}": {"post": control("Stop", "Stops the service and keeps it stopped.")},
            "/api/orchestration/dependencies": {"get": {
                "summary": "The dependency graph: startup_order, shutdown_order, dependencies, visualization",
                "parameters": [{"name": "format", "in": "query", "required": false,
                                "schema": {"type": "string", "enum": ["json", "dot"]}}],
                "responses": {
                    "200": {"description": "JSON, or Graphviz DOT with format=dot.", "content": {
                        "application/json": {"schema": object()}, "text/vnd.graphviz": {"schema": {"type": "string"}}}},
                    "400": error_response("Unknown format.")}}},
            "/api/orchestration/metrics": {"get": get("Counters, registry_stats and service_details.", object())},
            "/api/orchestration/service/{name}": {"get": {
                "summary": "One service in detail: dependencies, health_history, registry_metadata",
                "parameters": [name_parameter()],
                "responses": {"200": ok("The service.", object()), "400": error_response("Malformed name."),
                              "404": error_response("Unknown service.")}}},
            "/api/orchestration/registry": {
                "get": fleet_scoped(json!({"summary": "Registry entries (a page, optionally filtered) and the registry statistics",
                    "parameters": [
                        {"name": "type", "in": "query", "required": false, "schema": {"type": "string"}},
                        {"name": "alive", "in": "query", "required": false, "schema": {"type": "boolean"}},
                        {"name": "offset", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": super::views::Page::MAX_OFFSET, "default": 0}},
                        {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000}}],
                    "responses": {"200": ok("A page of entries: services, total_services (matching), offset, limit, next_offset (null on the last page), stats.", object()),
                        "400": error_response("Malformed alive, offset, limit or scope.")}})),
                "post": {
                    "summary": "Register (or update) a service that is not in the configuration",
                    "security": [{"bearer": []}, {}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registration"}}}},
                    "responses": {
                        "201": ok("The entry.", json!({"type": "object", "properties": {"service": {"$ref": "#/components/schemas/RegistryEntry"}}})),
                        "400": error_response("Malformed body or name."),
                        "401": error_response("Missing or wrong bearer token."),
                        "409": error_response("The name is a configured service."),
                        "507": error_response("The registry is full (registry.max_registered services registered at run time); nothing changed. Deregister one, or raise the cap."),
                        "413": error_response("Body larger than 64 KiB."),
                        "415": error_response("Body is not JSON.")}}},
            "/api/orchestration/registry/{name}": {
                "get": {"summary": "One registry entry", "parameters": [name_parameter()], "responses": {
                    "200": ok("The entry.", json!({"type": "object", "properties": {"service": {"$ref": "#/components/schemas/RegistryEntry"}}})),
                    "400": error_response("Malformed name."), "404": error_response("Unknown service.")}},
                "delete": {"summary": "Deregister a service registered at run time", "security": [{"bearer": []}, {}],
                    "parameters": [name_parameter()], "responses": {
                    "200": ok("The removed entry.", object()), "400": error_response("Malformed name."),
                    "401": error_response("Missing or wrong bearer token."), "404": error_response("Unknown service."),
                    "409": error_response("Configured services cannot be deregistered.")}}},
            "/api/orchestration/registry/{name}/heartbeat": {"post": {
                "summary": "Record a heartbeat from the service", "security": [{"bearer": []}, {}],
                "parameters": [name_parameter()], "responses": {
                    "200": ok("The entry, alive.", object()), "400": error_response("Malformed name."),
                    "401": error_response("Missing or wrong bearer token."), "404": error_response("Unknown service.")}}},
            "/api/orchestration/sd": {"get": fleet_scoped(get(
                "Prometheus HTTP service discovery (http_sd_config): entries whose metadata names a metrics address (with scope=fleet, every node's, labelled node).",
                json!({"type": "array", "items": {"type": "object", "properties": {
                    "targets": {"type": "array", "items": {"type": "string"}}, "labels": {"type": "object"}}}})))},
            "/api/orchestration/openapi.json": {"get": get("This document.", object())},
            "/metrics": {"get": {
                "summary": "Prometheus metrics: text format 0.0.4, or OpenMetrics 1.0 (with trace-id exemplars) when Accept prefers application/openmetrics-text; gzip when Accept-Encoding allows it",
                "responses": {"200": {"description": "Metrics.", "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}}}}}}},
            "/api/orchestration/events": {"get": {
                "summary": "The event stream (Server-Sent Events): state, health, restart, backoff, failed, heartbeat_timeout, registered, deregistered and reload events",
                "description": "Each event is one SSE frame: `id: N` (increasing from 1) and `data:` with the event's JSON object: `id`, `type`, `service` (null for a reload), `time`, `trace_id` (the trace of the incident it belongs to, when traces are exported) and the type's details (state and health: `from`, `to`; restart: `reason`, `attempt`, `restart_count`; backoff: `reason`, `attempt`, `delay_seconds`; failed: `attempts`, `error`; reload: `result`, and what changed). The stream starts with the events kept (the last 4096), or those after `Last-Event-ID`; a `reset` object (no id) comes first when that id is no longer kept. Then a `caught_up` object (no id), then live events, with a comment every 15 s. A consumer more than 1024 events behind is dropped: its stream ends, and it may resume with Last-Event-ID.",
                "parameters": [
                    {"name": "service", "in": "query", "required": false, "schema": {"type": "string"},
                     "description": "Only events about these services (comma-separated)."},
                    {"name": "type", "in": "query", "required": false, "schema": {"type": "string"},
                     "description": "Only events of these types (comma-separated): state, health, restart, backoff, failed, heartbeat_timeout, registered, deregistered, reload."},
                    {"name": "follow", "in": "query", "required": false, "schema": {"type": "boolean", "default": true},
                     "description": "false: only the events kept, then the stream ends."},
                    {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer", "minimum": 0},
                     "description": "Resume after this event id (also `last_event_id` in the query)."}],
                "responses": {
                    "200": {"description": "The stream.", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "400": error_response("An unknown type, a malformed service name, follow not true or false, or a Last-Event-ID that is not a number.")}}},
            "/": {"get": {"summary": "The built-in page: the dependency graph, the services and the recent events, live (404 with api.ui = false)",
                "responses": {"200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                              "404": error_response("The page is off (api.ui = false).")}}},
            "/ui/app.js": {"get": {"summary": "The built-in page's script",
                "responses": {"200": {"description": "JavaScript.", "content": {"text/javascript": {"schema": {"type": "string"}}}},
                              "404": error_response("The page is off (api.ui = false).")}}},
            "/ui/style.css": {"get": {"summary": "The built-in page's style sheet",
                "responses": {"200": {"description": "CSS.", "content": {"text/css": {"schema": {"type": "string"}}}},
                              "404": error_response("The page is off (api.ui = false).")}}},
            "/healthz": {"get": get("The orchestrator itself is up.", object())},
            "/readyz": {"get": {"summary": "Readiness: the startup sequence finished and every critical service runs (in fleet mode, cluster: fleet, node, up, lease, since, last_error, nodes, singletons)",
                "responses": {"200": ok("Ready.", object()), "503": ok("Not ready.", object())}}}
        }
    })
}
