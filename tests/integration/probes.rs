//! The real probes against real sockets and processes on 127.0.0.1 (ports picked by the kernel).

use std::time::Duration;

use fog_orchestrator::config::Probe;
use fog_orchestrator::health::FailureReason;
use fog_orchestrator::health::probe::{NetworkProber, Prober};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::exited;

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
        let outcome = prober.probe("web", &Probe::Http(url.clone())).await;
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
    let outcome = prober.probe("web", &Probe::Http(url)).await;
    assert!(!outcome.passed);
    assert_eq!(outcome.reason, Some(FailureReason::HttpStatus));
    assert!(outcome.message.contains("503"), "{}", outcome.message);

    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let outcome = prober
        .probe("web", &Probe::Http(format!("http://{closed}/health")))
        .await;
    assert_eq!(outcome.reason, Some(FailureReason::Connect));
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
