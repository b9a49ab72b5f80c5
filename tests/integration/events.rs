//! The event stream (`GET /api/orchestration/events`) against the built binary: ordered ids, resuming
//! with `Last-Event-ID`, filters, live events after the `caught_up` marker, `fog-orchestrator events`, and a
//! consumer that stops reading: dropped (counted) while the engine goes on publishing.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binary::{LIMIT, Orchestrator, http, http_text, http_with};

const CONFIG: &str = r#"
[services.db]
command = ["sleep", "3600"]
[services.api]
command = ["sleep", "3601"]
depends_on = ["db"]
"#;

/// The events of a finished (`follow=false`) stream body, in order; markers without an id are skipped.
fn parse(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

async fn kept(api: &str, query: &str, headers: &[(&str, &str)]) -> Vec<Value> {
    let url = format!("{api}/api/orchestration/events?follow=false{query}");
    let (status, body) = http_with("GET", &url, "", headers).await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["id"].as_u64()).collect()
}

#[tokio::test]
async fn events_are_ordered_resumable_and_filtered() {
    let mut orchestrator = Orchestrator::start(CONFIG);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;

    let all = kept(&api, "", &[]).await;
    let numbers = ids(&all);
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "ids from 1, in order, none missing"
    );
    // Each service's states follow each other: every `from` is the previous `to`.
    for service in ["db", "api"] {
        let states: Vec<(&str, &str)> = all
            .iter()
            .filter(|e| e["type"] == "state" && e["service"] == service)
            .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
            .collect();
        assert_eq!(
            states.first().map(|s| s.0),
            Some("pending"),
            "{service}: {states:?}"
        );
        assert_eq!(
            states.last().map(|s| s.1),
            Some("running"),
            "{service}: {states:?}"
        );
        assert!(
            states.windows(2).all(|w| w[0].1 == w[1].0),
            "{service}: {states:?}"
        );
    }
    // db runs before api starts (api requires it): the stream tells it in that order.
    let position = |service: &str, to: &str| {
        all.iter()
            .position(|e| e["type"] == "state" && e["service"] == service && e["to"] == to)
            .unwrap()
    };
    assert!(position("db", "running") < position("api", "starting"));

    // Resuming sends what came after.
    let middle = numbers[numbers.len() / 2];
    let resumed = kept(&api, "", &[("last-event-id", &middle.to_string())]).await;
    assert_eq!(ids(&resumed), numbers[numbers.len() / 2 + 1..]);
    // An id this orchestrator never gave out (a client of an earlier run): a reset first, then all.
    let reset = kept(&api, "", &[("last-event-id", "999999")]).await;
    assert_eq!(reset[0]["type"], "reset", "{reset:?}");
    assert_eq!(ids(&reset), numbers);

    // Filters.
    let filtered = kept(&api, "&service=api&type=state,health", &[]).await;
    assert!(!filtered.is_empty());
    assert!(
        filtered
            .iter()
            .all(|e| e["service"] == "api" && (e["type"] == "state" || e["type"] == "health"))
    );
    for (query, error) in [
        ("&type=explosion", "unknown event type"),
        ("&service=no%20spaces", ""),
        ("&follow=maybe", "follow"),
    ] {
        let (status, body) = http_text("GET", &format!("{api}/api/orchestration/events?{query}"), "").await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(error), "{body}");
    }
    let (status, _) = http_with(
        "GET",
        &format!("{api}/api/orchestration/events"),
        "",
        &[("last-event-id", "x")],
    )
    .await;
    assert_eq!(status, 400);
    assert!(orchestrator.stop().await.success());
}

/// Reads from `stream` into `seen` until it contains `wanted`.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, wanted: &str) {
    let mut buffer = [0u8; 8192];
    tokio::time::timeout(LIMIT, async {
        while !seen.contains(wanted) {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {wanted} in:\n{seen}"));
}

#[tokio::test]
async fn a_follower_gets_the_backlog_then_caught_up_then_live_events() {
    let mut orchestrator = Orchestrator::start(CONFIG);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let latest = *ids(&kept(&api, "", &[]).await).last().unwrap();

    let authority = api.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let request = format!(
        "GET /api/orchestration/events?service=db HTTP/1.0\r\nHost: {authority}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\"caught_up\"").await;
    assert!(
        seen.starts_with("HTTP/1.0 200") || seen.starts_with("HTTP/1.1 200"),
        "{seen}"
    );
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    assert!(seen.contains(&format!("\"latest_id\":{latest}")), "{seen}");

    // A restart of db is seen live: stopping, then the restart, then running again.
    assert_eq!(
        http("POST", &format!("{api}/api/orchestration/restart/db"), "")
            .await
            .0,
        200
    );
    read_until(&mut stream, &mut seen, "\"reason\":\"manual\"").await;
    let (_, live) = seen.split_once("\"caught_up\"").unwrap();
    let live = parse(live.split_once("\n\n").unwrap().1);
    assert!(live.iter().all(|e| e["service"] == "db"), "{live:?}");
    assert!(ids(&live).iter().all(|id| *id > latest));
    assert_eq!(live[0]["type"], "state");
    assert_eq!(live[0]["to"], "stopping");

    // The same from the command line.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"))
        .args(["events", "--api", &api, "--type", "restart"])
        .env_remove("ORCHESTRATOR_CONFIG")
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed
            .lines()
            .any(|l| l.contains(" restart ") && l.contains("db") && l.contains("reason=manual")),
        "{printed}"
    );
    assert!(orchestrator.stop().await.success());
}

/// A consumer that stops reading is dropped once it is more than the buffer behind; meanwhile every event
/// is still published (the engine never waits on it) and other requests are answered.
#[tokio::test]
async fn a_consumer_that_stops_reading_is_dropped_and_slows_nothing() {
    let mut orchestrator = Orchestrator::start(CONFIG);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let authority: std::net::SocketAddr = api.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(authority).await.unwrap();
    let request = format!("GET /api/orchestration/events HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();

    // Events about services registered at run time: each registration publishes one, of about 270 bytes.
    // More than the kernel's socket buffers hold (up to 4 MiB here) plus the stream's own buffer.
    let url = format!("{api}/api/orchestration/registry");
    let before = *ids(&kept(&api, "", &[]).await).last().unwrap();
    let (clients, rounds) = (8, 2_500);
    let kind = "k".repeat(128);
    let started = std::time::Instant::now();
    let senders: Vec<_> = (0..clients)
        .map(|client| {
            let (url, body) = (
                url.clone(),
                format!(r#"{{"name": "chatty-{client}", "type": "{kind}"}}"#),
            );
            tokio::spawn(async move {
                for _ in 0..rounds {
                    assert_eq!(http("POST", &url, &body).await.0, 201);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let published = clients * rounds;
    eprintln!("{published} registrations in {:?}", started.elapsed());
    let after = *ids(&kept(&api, "&type=registered", &[]).await).last().unwrap();
    assert_eq!(
        after,
        before + published,
        "every event was published while the consumer read nothing"
    );

    // The drop is noticed within a lag check (half a second) of the stream falling behind.
    let metrics = crate::deploy::eventually(
        "the stalled consumer dropped",
        Duration::from_secs(10),
        async || {
            let (_, metrics) = http_text("GET", &format!("{api}/metrics"), "").await;
            metrics
                .contains("orchestrator_event_consumers_dropped_total 1\n")
                .then_some(metrics)
        },
    )
    .await;
    assert!(
        metrics.contains("orchestrator_event_consumers_dropped_total 1\n"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("event"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("orchestrator_event_consumers 0\n"));
    // Its stream ended (the consumer is gone from the gauge). Reading what the kernel still buffers is left
    // out: through a 4 KiB receive window, megabytes drain at the pace of TCP's zero-window probes.
    drop(stalled);
    assert!(orchestrator.stop().await.success());
}
