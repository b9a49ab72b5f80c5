//! One incident, one trace (DESIGN.md section 7), proven with the built binary, a real OTLP receiver and
//! real child processes: a service turns unhealthy, ignores SIGTERM, crash-loops, and recovers; a test
//! rebuilds the incident from trace ids, parents and links alone, in order. Then a caller's `traceparent`
//! on a restart request yields the restart inside the caller's trace (and in the child's `TRACEPARENT`),
//! the shutdown is one `stop orchestrator` trace, JSON log lines inside spans carry trace ids the receiver
//! has seen, and the OpenMetrics exposition carries exemplars pointing at exported traces.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use crate::binary::{Orchestrator, http_text, http_with, message};
use crate::otlp::{find, grpc_receiver, text};

/// The span event names the orchestrator may use.
const VOCABULARY: &[&str] = &[
    "service.exited",
    "service.killed",
    "service.spawned",
    "service.failed",
    "state.changed",
    "health.changed",
    "heartbeat.timeout",
    "service.registered",
    "service.deregistered",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            AnyValue::IntValue(i) => Some(*i),
            _ => None,
        })
}

fn service_of(span: &Span) -> String {
    text(&span.attributes, "orchestrator.service.name").unwrap_or_default()
}

fn is_error(span: &Span) -> bool {
    span.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32)
}

fn children<'a>(spans: &'a [&'a Span], parent: &Span) -> Vec<&'a Span> {
    let mut found: Vec<&Span> = spans
        .iter()
        .copied()
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .collect();
    found.sort_by_key(|s| s.start_time_unix_nano);
    found
}

fn linked(span: &Span, kind: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    span.links
        .iter()
        .filter(|l| text(&l.attributes, "orchestrator.link").as_deref() == Some(kind))
        .map(|l| (l.trace_id.clone(), l.span_id.clone()))
        .collect()
}

fn config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"[telemetry]
check_sample_ratio = 0.0
[services.app]
command = ["sh", "-c", "echo \"$TRACEPARENT\" >> {dir}/traceparents; trap '' TERM; if [ -e {dir}/broken ]; then exit 3; fi; touch {dir}/started; while :; do sleep 0.05; done"]
[services.app.health]
# Ready once this instance is past its `broken` check (the probe alone could pass before the shell ran it).
exec = ["sh", "-c", "test -e {dir}/healthy && test -e {dir}/started"]
failure_threshold = 2
check_interval = "100ms"
timeout = "90ms"
startup_timeout = "5s"
[services.app.restart]
initial_delay = "100ms"
max_attempts = 10
reset_after = "1s"
[services.app.shutdown]
timeout = "300ms"
"#
    )
}

#[tokio::test]
async fn a_crash_loop_is_one_trace_that_tells_the_incident_in_order() {
    let (endpoint, received) = grpc_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (healthy, broken) = (dir.path().join("healthy"), dir.path().join("broken"));
    std::fs::write(&healthy, "").unwrap();
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ];
    let mut orchestrator = Orchestrator::start_with(&config(dir.path()), &otlp);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;

    // Unhealthy, and every new instance crashes at once: a crash loop of at least three attempts (a slow
    // machine may see one more before the files are put back), then recovery.
    std::fs::write(&broken, "").unwrap();
    std::fs::remove_file(&healthy).unwrap();
    orchestrator
        .wait_for("the third attempt", |f| {
            message(f) == "restart scheduled" && f["attempt"] == 3
        })
        .await;
    std::fs::remove_file(&broken).unwrap();
    std::fs::write(&healthy, "").unwrap();
    orchestrator
        .wait_for("attempts forgiven", |f| {
            message(f).contains("restart attempts reset")
        })
        .await;

    // The exposition in OpenMetrics: the restart counter's exemplar is the incident's trace.
    let (status, exposition) = http_with(
        "GET",
        &format!("{api}/metrics"),
        "",
        &[(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    )
    .await;
    assert_eq!(status, 200);
    assert!(exposition.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let (_, text_format) = http_text("GET", &format!("{api}/metrics"), "").await;

    // A caller's trace: the restart it asks for happens inside it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let (status, body) = http_with(
        "POST",
        &format!("{api}/api/orchestration/restart/app"),
        "",
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The new instance writes what it was given as it starts, which may be just after the restart was
    // answered (its probe can pass first).
    let wanted = format!("00-{caller_trace}-");
    // Found within the limit, or the test fails: the child's TRACEPARENT is the caller's trace.
    crate::deploy::eventually(
        "the new instance's TRACEPARENT",
        std::time::Duration::from_secs(10),
        async || {
            let traceparents = std::fs::read_to_string(dir.path().join("traceparents")).unwrap();
            traceparents
                .lines()
                .rev()
                .find(|line| line.starts_with(&wanted))
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(orchestrator.stop().await.code(), Some(0));

    let spans = received.spans();
    let all: Vec<&Span> = spans.iter().map(|(_, s)| s).collect();
    let exported: HashSet<String> = all.iter().map(|s| hex(&s.trace_id)).collect();

    // ---- the incident ---------------------------------------------------------------------------------
    let mut attempts: Vec<&Span> = find(&spans, "restart service")
        .into_iter()
        .filter(|s| {
            service_of(s) == "app"
                && text(&s.attributes, "orchestrator.restart.reason").as_deref() != Some("manual")
        })
        .collect();
    attempts.sort_by_key(|s| int(&s.attributes, "orchestrator.restart.attempt"));
    let numbers: Vec<Option<i64>> = attempts
        .iter()
        .map(|s| int(&s.attributes, "orchestrator.restart.attempt"))
        .collect();
    let expected: Vec<Option<i64>> = (1..=attempts.len() as i64).map(Some).collect();
    assert!(
        attempts.len() >= 3,
        "a crash loop of at least three attempts: {numbers:?}"
    );
    assert_eq!(numbers, expected, "attempts are integers, from 1, none missing");
    let incident = attempts[0];
    assert!(
        attempts.iter().all(|s| s.trace_id == incident.trace_id),
        "one incident, one trace"
    );
    assert!(
        incident.parent_span_id.is_empty(),
        "the first attempt is the incident's root"
    );
    assert_eq!(
        text(&incident.attributes, "orchestrator.restart.reason").as_deref(),
        Some("unhealthy")
    );

    // Failing checks (linked) → the decision.
    let failed_checks = linked(incident, "failed_check");
    assert!(
        failed_checks.len() >= 2,
        "linked to the failing checks: {failed_checks:?}"
    );
    for (trace, span) in &failed_checks {
        let check = all
            .iter()
            .find(|s| &s.trace_id == trace && &s.span_id == span)
            .expect("a linked check was exported");
        assert_eq!(check.name, "check health");
        assert!(is_error(check));
        assert_eq!(text(&check.attributes, "error.type").as_deref(), Some("exit"));
        assert!(check.end_time_unix_nano <= incident.start_time_unix_nano + 1_000_000);
    }

    // The decision → SIGTERM → SIGKILL escalation → backoff → spawn, in that order.
    let steps: Vec<&Span> = children(&all, incident)
        .into_iter()
        .filter(|s| s.name != "restart service")
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["stop service", "wait backoff", "start service"],
        "{names:?}"
    );
    let stop = steps[0];
    assert_eq!(
        text(&stop.attributes, "orchestrator.stop.killed").as_deref(),
        Some("true")
    );
    assert!(
        stop.events.iter().any(|e| e.name == "service.killed"),
        "SIGKILL is an event"
    );
    assert!(
        int(&stop.attributes, "process.pid").is_some(),
        "process.pid is an integer"
    );
    assert!(int(&steps[2].attributes, "process.pid").is_some());

    // Every attempt but the last launched an instance that exited with code 3 before being ready.
    let (last, crashed) = attempts.split_last().unwrap();
    for attempt in crashed {
        assert!(is_error(attempt), "an attempt whose instance crashed is an error");
        let exited = attempt
            .events
            .iter()
            .find(|e| e.name == "service.exited")
            .expect("the crash is an event of the attempt");
        assert_eq!(int(&exited.attributes, "process.exit.code"), Some(3));
    }
    // Later attempts are in the incident's trace, linked each to the one before.
    for pair in attempts.windows(2) {
        assert_eq!(pair[1].parent_span_id, incident.span_id);
        assert_eq!(
            linked(pair[1], "previous_attempt"),
            [(pair[0].trace_id.clone(), pair[0].span_id.clone())]
        );
        assert_eq!(
            text(&pair[1].attributes, "orchestrator.restart.reason").as_deref(),
            Some("crashed")
        );
        assert!(pair[0].start_time_unix_nano < pair[1].start_time_unix_nano);
    }
    // The last attempt ends with the first passing check, inside its start.
    assert!(!is_error(last));
    let start = children(&all, last)
        .into_iter()
        .find(|s| s.name == "start service")
        .expect("the last attempt's start");
    let first_pass = children(&all, start)
        .into_iter()
        .find(|s| s.name == "check health")
        .expect("the first passing check inside the start");
    assert_eq!(
        text(&first_pass.attributes, "orchestrator.check.passed").as_deref(),
        Some("true")
    );
    assert!(first_pass.start_time_unix_nano < first_pass.end_time_unix_nano);

    // Passing steady-state checks are not exported at check_sample_ratio 0; failing ones always are.
    let roots: Vec<&Span> = find(&spans, "check health")
        .into_iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert!(
        !roots.is_empty() && roots.iter().all(|s| is_error(s)),
        "only failed checks are roots"
    );

    // ---- the caller's restart -------------------------------------------------------------------------
    let server = all
        .iter()
        .find(|s| hex(&s.trace_id) == caller_trace && s.kind == SpanKind::Server as i32)
        .expect("the API request is a SERVER span in the caller's trace");
    assert_eq!(hex(&server.parent_span_id), caller_span);
    assert_eq!(server.name, "POST /api/orchestration/restart/{name}");
    assert_eq!(int(&server.attributes, "http.response.status_code"), Some(200));
    let manual = children(&all, server)
        .into_iter()
        .find(|s| s.name == "restart service")
        .expect("the restart inside the request");
    assert_eq!(
        text(&manual.attributes, "orchestrator.restart.reason").as_deref(),
        Some("manual")
    );
    let manual_steps: Vec<&str> = children(&all, manual).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(manual_steps, ["stop service", "start service"]);

    // ---- the shutdown ---------------------------------------------------------------------------------
    let shutdown = find(&spans, "stop orchestrator");
    assert_eq!(shutdown.len(), 1, "the shutdown is one trace");
    assert!(shutdown[0].parent_span_id.is_empty());
    assert!(
        children(&all, shutdown[0])
            .iter()
            .any(|s| s.name == "stop service" && service_of(s) == "app"),
        "each service's stop is inside it"
    );

    // ---- vocabulary and types -------------------------------------------------------------------------
    let events: BTreeSet<&str> = all
        .iter()
        .flat_map(|s| s.events.iter().map(|e| e.name.as_str()))
        .collect();
    for event in &events {
        assert!(
            VOCABULARY.contains(event),
            "span event {event:?} is not in the vocabulary"
        );
    }
    for span in &all {
        for key in [
            "process.pid",
            "orchestrator.restart.attempt",
            "orchestrator.service.layer",
        ] {
            if let Some(attribute) = span.attributes.iter().find(|a| a.key == key) {
                let value = attribute.value.as_ref().and_then(|v| v.value.as_ref());
                assert!(
                    matches!(value, Some(AnyValue::IntValue(_))),
                    "{key} of {} is {value:?}",
                    span.name
                );
            }
        }
    }

    // ---- logs -----------------------------------------------------------------------------------------
    let traced: Vec<&serde_json::Value> = orchestrator
        .seen
        .iter()
        .filter(|l| l.get("trace_id").is_some())
        .collect();
    assert!(
        traced.iter().any(|l| message(&l["fields"]) == "service stopped"),
        "a log line inside a stop carries its trace id"
    );
    for line in &traced {
        let trace = line["trace_id"].as_str().unwrap();
        assert!(
            exported.contains(trace),
            "log line with unknown trace {trace}: {line}"
        );
        assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
    }

    // ---- exemplars ------------------------------------------------------------------------------------
    let incident_trace = hex(&incident.trace_id);
    let restarts = exposition
        .lines()
        .find(|l| l.starts_with("orchestrator_service_restarts_total{service=\"app\",reason=\"crashed\"}"))
        .expect("the crashed restarts series");
    assert!(
        restarts.contains(&format!("# {{trace_id=\"{incident_trace}\"}}")),
        "the restart counter's exemplar is the incident: {restarts}"
    );
    let bucket_traces: Vec<&str> = exposition
        .lines()
        .filter(|l| l.starts_with("orchestrator_health_check_duration_seconds_bucket{service=\"app\""))
        .filter_map(|l| l.split("trace_id=\"").nth(1)?.split('"').next())
        .collect();
    assert!(!bucket_traces.is_empty(), "check durations carry exemplars");
    assert!(bucket_traces.iter().all(|t| exported.contains(*t)));
    assert!(!text_format.contains("# {"), "text 0.0.4 has no exemplars");
}
