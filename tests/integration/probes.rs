//! The real probes against real sockets and processes on 127.0.0.1 (ports picked by the kernel).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use fog_orchestrator::config::Probe;
use fog_orchestrator::health::probe::{NetworkProber, Prober};
use fog_orchestrator::health::{FailureReason, HealthStatus};
use fog_orchestrator::supervisor::{RestartReason, ServiceState, Supervisor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{World, config, exited, service, within};

/// A one-route HTTP server answering every request with `status`, counting connections.
async fn http_server(status: u16) -> (String, tokio::sync::watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let (connections, counted) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            connections.send_modify(|n| *n += 1);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                // Answer each request on this connection (keep-alive) until the client closes it.
                while let Ok(read) = stream.read(&mut buffer).await {
                    if read == 0 {
                        return;
                    }
                    let body = "{\"status\":\"ok\"}";
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, counted)
}

#[tokio::test]
async fn http_passes_on_2xx_and_reuses_its_connection() {
    let (url, connections) = http_server(200).await;
    let prober = NetworkProber::default();
    for _ in 0..5 {
        let outcome = prober.probe("web", &Probe::http(url.clone())).await;
        assert!(outcome.passed, "{outcome:?}");
        assert_eq!(outcome.details["http_status"], 200);
    }
    assert_eq!(
        *connections.borrow(),
        1,
        "five checks over one kept-alive connection"
    );
}

#[tokio::test]
async fn http_fails_on_other_statuses_and_on_refused_connections() {
    let (url, _) = http_server(503).await;
    let prober = NetworkProber::default();
    let outcome = prober.probe("web", &Probe::http(url)).await;
    assert!(!outcome.passed);
    assert_eq!(outcome.reason, Some(FailureReason::HttpStatus));
    assert!(outcome.message.contains("503"), "{}", outcome.message);

    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let outcome = prober
        .probe("web", &Probe::http(format!("http://{closed}/health")))
        .await;
    assert_eq!(outcome.reason, Some(FailureReason::Connect));
}

/// A server answering each request (read up to its blank line) with `response`, byte for byte, and
/// closing the connection after it when `close`; counts connections and keeps the last request.
async fn scripted_server(
    response: Vec<u8>,
    close: bool,
) -> (String, tokio::sync::watch::Receiver<(usize, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ready?full=1", listener.local_addr().unwrap());
    let (seen, watched) = tokio::sync::watch::channel((0usize, String::new()));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            seen.send_modify(|(connections, _)| *connections += 1);
            let (response, seen) = (response.clone(), seen.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                    if !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    seen.send_modify(|(_, last)| *last = text);
                    request.clear();
                    if stream.write_all(&response).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (url, watched)
}

#[tokio::test]
async fn http_sends_one_plain_request_with_host_and_path() {
    let (url, seen) = scripted_server(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false).await;
    let prober = NetworkProber::default();
    let outcome = prober.probe("web", &Probe::http(url.clone())).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(outcome.details["http_status"], 204);
    let request = seen.borrow().1.clone();
    let authority = url.trim_start_matches("http://").split('/').next().unwrap();
    assert!(request.starts_with("GET /ready?full=1 HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains(&format!("\r\nHost: {authority}\r\n")),
        "{request}"
    );
    assert!(request.contains("\r\nUser-Agent: fog-orchestrator/"), "{request}");
}

#[tokio::test]
async fn http_reads_chunked_bodies_and_keeps_their_connection() {
    let response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3;x=y\r\n!!!\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (url, seen) = scripted_server(response.to_vec(), false).await;
    let prober = NetworkProber::default();
    for _ in 0..3 {
        let outcome = prober.probe("web", &Probe::http(url.clone())).await;
        assert!(outcome.passed, "{outcome:?}");
    }
    assert_eq!(seen.borrow().0, 1, "three checks over one connection");

    let failing = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndb is dow\r\n1\r\nn\r\n0\r\n\r\n";
    let (url, _) = scripted_server(failing.to_vec(), false).await;
    let outcome = prober.probe("web", &Probe::http(url)).await;
    assert_eq!(outcome.reason, Some(FailureReason::HttpStatus));
    assert!(
        outcome
            .message
            .ends_with("answered 503 Service Unavailable: db is down"),
        "{}",
        outcome.message
    );
}

#[tokio::test]
async fn http_opens_a_new_connection_when_the_target_closes_each() {
    let response = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
    let (url, seen) = scripted_server(response.to_vec(), true).await;
    let prober = NetworkProber::default();
    for _ in 0..3 {
        assert!(prober.probe("web", &Probe::http(url.clone())).await.passed);
    }
    assert_eq!(seen.borrow().0, 3);

    // HTTP/1.0 without a length: the body ends where the connection does, and is quoted.
    let response = b"HTTP/1.0 500 Internal Server Error\r\n\r\nout of\n  memory";
    let (url, _) = scripted_server(response.to_vec(), true).await;
    let outcome = prober.probe("web", &Probe::http(url)).await;
    assert!(
        outcome.message.ends_with(": out of memory"),
        "{}",
        outcome.message
    );
}

#[tokio::test]
async fn http_resets_a_connection_the_server_is_closing_instead_of_closing_it_in_turn() {
    // A server that says `connection: close` is closing its side: the probe drops the connection with a
    // reset, so the server's socket does not wait in TIME_WAIT. A FIN would read here as an end (Ok(0)).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0u8; 4096];
        assert!(stream.read(&mut buffer).await.unwrap() > 0, "a request");
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
        stream.write_all(response).await.unwrap();
        stream.read(&mut buffer).await.map_err(|error| error.kind())
    });
    let outcome = NetworkProber::default().probe("web", &Probe::http(url)).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(server.await.unwrap(), Err(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn http_retries_once_when_a_kept_connection_was_closed_meanwhile() {
    // Keeps the connection open (no `connection: close`) but closes it after the response: the next
    // check finds its kept connection closed and must not fail for that.
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (url, seen) = scripted_server(response.to_vec(), true).await;
    let prober = NetworkProber::default();
    for _ in 0..3 {
        let outcome = prober.probe("web", &Probe::http(url.clone())).await;
        assert!(outcome.passed, "{outcome:?}");
    }
    assert_eq!(seen.borrow().0, 3);
}

#[tokio::test]
async fn http_skips_interim_responses() {
    let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (url, _) = scripted_server(response.to_vec(), false).await;
    let outcome = NetworkProber::default().probe("web", &Probe::http(url)).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(outcome.details["http_status"], 200);
}

#[tokio::test]
async fn http_fails_clearly_on_what_is_not_http_and_quotes_long_bodies_in_part() {
    let (url, _) = scripted_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), true).await;
    let outcome = NetworkProber::default()
        .probe("web", &Probe::http(url.clone()))
        .await;
    assert_eq!(outcome.reason, Some(FailureReason::Error));
    assert!(
        outcome.message.starts_with(&format!("GET {url}: bad response:")),
        "{}",
        outcome.message
    );

    let body = "x".repeat(200_000);
    let response = format!(
        "HTTP/1.1 500 Oops\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (url, _) = scripted_server(response.into_bytes(), false).await;
    let outcome = NetworkProber::default().probe("web", &Probe::http(url)).await;
    assert_eq!(outcome.reason, Some(FailureReason::HttpStatus));
    assert!(outcome.message.ends_with("…"), "a long body is quoted in part");
    assert!(outcome.message.len() < 400, "{}", outcome.message.len());
}

#[tokio::test]
async fn tcp_passes_when_a_connection_is_accepted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let prober = NetworkProber::default();
    assert!(prober.probe("db", &Probe::Tcp(address.clone())).await.passed);
    drop(listener);
    let outcome = prober.probe("db", &Probe::Tcp(address)).await;
    assert_eq!(outcome.reason, Some(FailureReason::Connect));
}

#[tokio::test]
async fn exec_passes_on_exit_zero_and_quotes_the_failure() {
    let prober = NetworkProber::default();
    assert!(
        prober
            .probe("job", &Probe::Exec(vec!["true".into()]))
            .await
            .passed
    );
    let outcome = prober
        .probe(
            "job",
            &Probe::Exec(vec![
                "sh".into(),
                "-c".into(),
                "echo disk full >&2; exit 3".into(),
            ]),
        )
        .await;
    assert!(!outcome.passed);
    assert_eq!(outcome.reason, Some(FailureReason::Exit));
    assert_eq!(outcome.details["exit_code"], 3);
    assert!(outcome.message.contains("disk full"), "{}", outcome.message);
    let missing = prober
        .probe("job", &Probe::Exec(vec!["/nonexistent/check".into()]))
        .await;
    assert_eq!(missing.reason, Some(FailureReason::Exit));
}

#[tokio::test]
async fn an_exec_probe_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let prober = NetworkProber::default();
    let probe = Probe::Exec(vec!["sh".into(), "-c".into(), script]);
    // The supervisor bounds every probe like this; dropping the probe must kill its process.
    let timed_out = tokio::time::timeout(Duration::from_millis(300), prober.probe("job", &probe)).await;
    assert!(timed_out.is_err());
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), exited(pid)).await;
    assert!(gone.is_ok(), "the timed-out probe process {pid} is still alive");
}

/// A CA, and a certificate it signed for 127.0.0.1; PEM files in `dir`.
struct Pki {
    ca: std::path::PathBuf,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

fn pki(dir: &std::path::Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["fog-orchestrator".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_chain: vec![server.der().clone()],
        server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        ca_der: ca.der().clone(),
    }
}

/// An HTTPS server on 127.0.0.1 answering every request with `response`; with `client_ca`, it requires a
/// client certificate signed by it.
async fn https_server(pki: &Pki, response: &'static [u8], client_ca: bool) -> String {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

fn https(url: &str, configure: impl FnOnce(&mut fog_orchestrator::config::HttpProbe)) -> Probe {
    let mut probe = fog_orchestrator::config::HttpProbe::new(url);
    configure(&mut probe);
    Probe::Http(probe)
}

#[tokio::test]
async fn https_trusts_the_configured_ca_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let url = https_server(&pki, OK, false).await;
    let prober = NetworkProber::default();

    let trusted = https(&url, |p| p.ca_file = Some(pki.ca.clone()));
    let outcome = prober.probe("secure", &trusted).await;
    assert!(outcome.passed, "{outcome:?}");

    // The system's CAs do not know this test CA: the handshake fails, and says why.
    let outcome = prober.probe("other", &Probe::http(url.clone())).await;
    assert_eq!(outcome.reason, Some(FailureReason::Connect), "{outcome:?}");
    assert!(
        outcome.message.contains("TLS: invalid peer certificate"),
        "{}",
        outcome.message
    );

    let skipping = https(&url, |p| p.skip_verify = true);
    assert!(prober.probe("lax", &skipping).await.passed);

    let missing = https(&url, |p| p.ca_file = Some(dir.path().join("nope.pem")));
    let outcome = prober.probe("broken", &missing).await;
    assert!(
        outcome.message.contains("cannot read certificates from"),
        "{}",
        outcome.message
    );
}

#[tokio::test]
async fn https_presents_a_client_certificate_when_the_server_asks() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let url = https_server(&pki, OK, true).await;
    let prober = NetworkProber::default();
    let with_identity = https(&url, |p| {
        p.ca_file = Some(pki.ca.clone());
        p.client_identity = Some((pki.client_cert.clone(), pki.client_key.clone()));
    });
    let outcome = prober.probe("mtls", &with_identity).await;
    assert!(outcome.passed, "{outcome:?}");

    let without = https(&url, |p| p.ca_file = Some(pki.ca.clone()));
    let outcome = prober.probe("anonymous", &without).await;
    assert!(
        !outcome.passed,
        "a server requiring a client certificate let an anonymous probe pass"
    );
}

#[tokio::test]
async fn the_passing_status_range_is_the_probes() {
    let (url, _) = scripted_server(
        b"HTTP/1.1 302 Found\r\nlocation: /login\r\ncontent-length: 0\r\n\r\n".to_vec(),
        false,
    )
    .await;
    let prober = NetworkProber::default();
    let outcome = prober.probe("web", &Probe::http(url.clone())).await;
    assert_eq!(outcome.reason, Some(FailureReason::HttpStatus), "2xx by default");
    let lenient = https(&url, |p| p.passing = (200, 399));
    let outcome = prober.probe("web", &lenient).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(outcome.details["http_status"], 302);
}

#[tokio::test]
async fn grpc_passes_while_serving_and_says_why_otherwise() {
    use tonic_health::ServingStatus;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("fog.Ledger", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let prober = NetworkProber::default();
    let grpc = |service: &str| {
        Probe::Grpc(fog_orchestrator::config::GrpcProbe {
            address: address.clone(),
            service: service.to_owned(),
        })
    };

    let outcome = prober.probe("ledger", &grpc("fog.Ledger")).await;
    assert!(outcome.passed, "{outcome:?}");
    assert_eq!(outcome.details["grpc_status"], "SERVING");
    assert!(
        prober.probe("ledger", &grpc("")).await.passed,
        "the server as a whole"
    );

    reporter
        .set_service_status("fog.Ledger", ServingStatus::NotServing)
        .await;
    let outcome = prober.probe("ledger", &grpc("fog.Ledger")).await;
    assert_eq!(outcome.reason, Some(FailureReason::Error));
    assert_eq!(
        outcome.message,
        format!("gRPC health of fog.Ledger at {address}: NOT_SERVING")
    );
    assert_eq!(outcome.details["grpc_status"], "NOT_SERVING");

    let outcome = prober.probe("ledger", &grpc("fog.Unknown")).await;
    assert!(!outcome.passed);
    assert!(outcome.message.contains("NotFound"), "{}", outcome.message);

    let _ = stop.send(());
    let _ = server.await;
    let outcome = prober.probe("ledger", &grpc("fog.Ledger")).await;
    assert_eq!(outcome.reason, Some(FailureReason::Connect), "{outcome:?}");
}

/// A target answering every request with the status in `status` (and a body saying so), then closing the
/// connection, as most do; counts the requests.
async fn switchable_target() -> (String, Arc<AtomicU16>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let status = Arc::new(AtomicU16::new(200));
    let requests = Arc::new(AtomicUsize::new(0));
    let (answer, count) = (status.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (answer, count) = (answer.clone(), count.clone());
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(more) => read += more,
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let (code, body) = match answer.load(Ordering::SeqCst) {
                    200 => ("200 OK", "ok"),
                    _ => ("503 Service Unavailable", "down"),
                };
                let response = format!(
                    "HTTP/1.1 {code}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, status, requests)
}

/// The steady checks of a running service with a plain HTTP probe to an IP address run in the prober's
/// engine: this drives it through the supervisor, in real time, as the product runs it.
#[tokio::test]
async fn steady_http_checks_are_recorded_and_a_failing_target_is_restarted_and_recovers() {
    const WAIT: Duration = Duration::from_secs(20);
    let world = World::default();
    let (url, status, requests) = switchable_target().await;
    let toml = format!(
        "[services.api]\ncommand = [\"fake\"]\n[services.api.health]\nhttp = \"{url}\"\n\
         check_interval = \"100ms\"\ntimeout = \"90ms\"\nfailure_threshold = 2\n\
         [services.api.restart]\ninitial_delay = \"10ms\"\n"
    );
    let supervisor = Supervisor::builder(config(&toml))
        .launcher(Arc::new(world.clone()))
        .prober(Arc::new(NetworkProber::default()))
        .start()
        .expect("the supervisor starts");
    let api = service(&supervisor, "api");
    let ready = within(WAIT, api.wait_for(|s| s.health == HealthStatus::Healthy)).await;

    // Passes: each the new last check, all in the history, with the probe's details.
    let first = ready.consecutive_successes;
    let passed = within(WAIT, api.wait_for(|s| s.consecutive_successes >= first + 5)).await;
    assert_eq!(passed.state, ServiceState::Running);
    let report = api.report().await.unwrap();
    let last = report.history.last().unwrap();
    assert!(last.passed);
    assert_eq!(last.details["http_status"], 200);
    assert!(last.response_time_ms > 0.0);
    assert!(
        report.history.len() >= usize::try_from(first).unwrap() + 5,
        "every pass is in the history"
    );

    // The target fails: the failures reach the actor, which restarts the service at the threshold.
    status.store(503, Ordering::SeqCst);
    let failing = within(WAIT, api.wait_for(|s| s.consecutive_failures >= 1)).await;
    let check = failing.last_check.as_ref().unwrap();
    assert_eq!(check.reason, Some(FailureReason::HttpStatus));
    assert_eq!(
        check.message,
        format!("GET {url} answered 503 Service Unavailable: down")
    );
    let restarted = within(WAIT, api.wait_for(|s| s.restart_count == 1)).await;
    assert_eq!(restarted.last_restart_reason, Some(RestartReason::Unhealthy));

    // It recovers: the new instance is ready at its first pass, and its steady passes are recorded again.
    status.store(200, Ordering::SeqCst);
    let healthy = within(
        WAIT,
        api.wait_for(|s| s.state == ServiceState::Running && s.health == HealthStatus::Healthy),
    )
    .await;
    let again = healthy.consecutive_successes;
    within(WAIT, api.wait_for(|s| s.consecutive_successes >= again + 3)).await;
    assert_eq!(world.launches("api").len(), 2);

    // Stopped, it is checked no more.
    api.stop(false).await.unwrap();
    let stopped = api.report().await.unwrap();
    let asked = requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        requests.load(Ordering::SeqCst),
        asked,
        "no check of a stopped service"
    );
    assert_eq!(api.report().await.unwrap().history.len(), stopped.history.len());
}
