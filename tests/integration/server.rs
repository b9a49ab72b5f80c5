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

use crate::harness::{World, reach, supervise};

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

/// One GET of /healthz on a fresh connection; whether it was answered 200.
async fn healthz(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return false;
    };
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    read_to_close(&mut stream).await.starts_with("HTTP/1.1 200 OK")
}

fn refused(supervisor: &Supervisor) -> f64 {
    supervisor
        .metrics()
        .render(fog_orchestrator::telemetry::metrics::Format::Text)
        .lines()
        .find_map(|line| line.strip_prefix("orchestrator_api_connections_refused_total "))
        .map(|value| value.parse::<f64>().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_at_the_limit_do_not_lock_others_out() {
    let limits = Limits {
        max_connections: 40,
        header_read_timeout: Duration::from_secs(30),
        pressured_header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let Running {
        address,
        stop,
        server,
        supervisor,
    } = start(limits).await;
    // 120 slow clients (three times the limit) dribble header bytes and reconnect a second after being cut.
    let attack = CancellationToken::new();
    let mut slow = Vec::new();
    for _ in 0..120 {
        let (address, attack) = (address.clone(), attack.clone());
        slow.push(tokio::spawn(async move {
            while !attack.is_cancelled() {
                let Ok(mut stream) = TcpStream::connect(&address).await else {
                    continue;
                };
                let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\n").await;
                while !attack.is_cancelled() && stream.write_all(b"X-Slow: 1\r\n").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let mut byte = [0; 1];
                    if let Ok(Ok(0)) = timeout(Duration::from_millis(1), stream.read(&mut byte)).await {
                        break; // closed by the server: reconnect
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    // Once they fill the limit, ordinary clients, each allowed a few quick retries, get their answers.
    timeout(LIMIT, async {
        while refused(&supervisor) == 0.0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the slow clients fill the limit");

    let mut answered = 0;
    for _ in 0..30 {
        let mut ok = false;
        for _ in 0..5 {
            if healthz(&address).await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered += usize::from(ok);
    }
    attack.cancel();
    for task in slow {
        let _ = task.await;
    }
    assert!(
        answered >= 27,
        "only {answered} of 30 ordinary clients were served"
    );
    assert!(refused(&supervisor) > 0.0, "the flood went past the limit");
    stop.cancel();
    timeout(LIMIT, server).await.unwrap().unwrap();
}
