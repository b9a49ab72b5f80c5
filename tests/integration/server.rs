//! The hyper server's protections on a real socket: the connection limit, the header-read timeout, and
//! graceful shutdown that lets an in-flight request finish.

use std::time::Duration;

use fog_orchestrator::api::server::{Limits, serve};
use fog_orchestrator::api::{Api, BrowserPolicy};
use fog_orchestrator::clock::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use fog_orchestrator::supervisor::{ServiceState, Supervisor};

use crate::harness::{World, config, reach, supervise};

const LIMIT: Duration = Duration::from_secs(10);
const TOML: &str = "[services.api]\ncommand = [\"fake\"]\nhealth.http = \"http://fake/\"\n";

struct Running {
    address: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    supervisor: Supervisor,
}

async fn start(limits: Limits) -> Running {
    let world = World::default();
    world.set("api", |b| b.ready_after = Duration::from_millis(300));
    let supervisor = supervise(&world, TOML);
    let api = Api::new(
        supervisor.clone(),
        config(TOML).graph,
        None,
        BrowserPolicy::default(),
        Clock::system(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, api, limits, stop.clone().cancelled_owned()));
    Running {
        address,
        stop,
        server,
        supervisor,
    }
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut text))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let limits = Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let Running {
        address,
        stop,
        server,
        ..
    } = start(limits).await;
    let _first = TcpStream::connect(&address).await.unwrap();
    let _second = TcpStream::connect(&address).await.unwrap();
    let mut third = TcpStream::connect(&address).await.unwrap();
    assert_eq!(read_to_close(&mut third).await, "", "closed without an answer");
    stop.cancel();
    drop((_first, _second));
    timeout(LIMIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_never_sends_its_headers_is_cut_off() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let Running {
        address,
        stop,
        server,
        ..
    } = start(limits).await;
    let mut slow = TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut slow).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // Well-behaved clients are still served.
    let mut fine = TcpStream::connect(&address).await.unwrap();
    fine.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut fine).await.starts_with("HTTP/1.1 200 OK"));
    stop.cancel();
    timeout(LIMIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_in_flight_requests() {
    let Running {
        address,
        stop,
        server,
        supervisor,
    } = start(Limits::default()).await;
    reach(&supervisor, "api", ServiceState::Running).await;
    let mut in_flight = TcpStream::connect(&address).await.unwrap();
    // A restart answers only once the service runs again: an in-flight request during shutdown.
    in_flight
        .write_all(b"POST /api/orchestration/restart/api HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // The restart has begun (the new instance needs 300 ms to be ready): the request is in flight.
    let api = supervisor.service("api").unwrap();
    timeout(LIMIT, api.wait_for(|s| s.restart_count == 1))
        .await
        .unwrap();
    stop.cancel();
    let answer = read_to_close(&mut in_flight).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    timeout(LIMIT, server).await.unwrap().unwrap();
    assert!(TcpStream::connect(&address).await.is_err(), "no longer accepting");
}
