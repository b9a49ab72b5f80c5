//! The engine against real targets on loopback (threads answering on a port of their own), in real time:
//! each test waits on what the engine reports, never on a clock.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use super::*;
use crate::config::Probe;
use crate::health::FailureReason;
use crate::health::probe::{NetworkProber, Prober};

const INTERVAL: Duration = Duration::from_millis(5);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Settles the first `settle` outcomes and gives back the next; traces the check at tick `trace_at`.
struct Recorder {
    outcomes: std_mpsc::Sender<(ProbeOutcome, Duration)>,
    settle: usize,
    ticks: usize,
    trace_at: Option<usize>,
}

impl Steady for Recorder {
    fn traced(&mut self) -> bool {
        self.ticks += 1;
        self.trace_at == Some(self.ticks)
    }

    fn settle(&mut self, outcome: ProbeOutcome, elapsed: Duration) -> Result<(), ProbeOutcome> {
        let _ = self.outcomes.send((outcome.clone(), elapsed));
        if self.settle == 0 {
            return Err(outcome);
        }
        self.settle -= 1;
        Ok(())
    }
}

fn recorder(settle: usize) -> (Box<Recorder>, std_mpsc::Receiver<(ProbeOutcome, Duration)>) {
    let (outcomes, received) = std_mpsc::channel();
    let recorder = Recorder {
        outcomes,
        settle,
        ticks: 0,
        trace_at: None,
    };
    (Box::new(recorder), received)
}

/// Checks `url` from now on every [`INTERVAL`], each given `limit`, settling the first `settle` outcomes:
/// when it started, what the engine gave back, and every outcome it settled or gave back.
async fn checks(url: &str, settle: usize, limit: Duration) -> (Instant, Returned, Vec<ProbeOutcome>) {
    let prober = NetworkProber::default();
    let (recorder, outcomes) = recorder(settle);
    let first = Instant::now();
    let returned = steady(&prober, url).run(first, INTERVAL, limit, recorder).await;
    let outcomes = outcomes.try_iter().map(|(outcome, _)| outcome).collect();
    (first, returned, outcomes)
}

/// The outcome, time taken and next due check of a check the engine gave back unsettled.
fn unsettled(returned: Returned) -> (ProbeOutcome, Duration, Instant) {
    match returned {
        Returned::Unsettled {
            outcome,
            elapsed,
            next,
        } => (outcome, elapsed, next),
        other => panic!("the outcome was not given back unsettled: {other:?}"),
    }
}

fn steady(prober: &NetworkProber, url: &str) -> SteadyHttp {
    prober
        .steady(&Probe::Http(HttpProbe::new(url)))
        .expect("a plain http:// URL to an IP address runs in the engine")
}

/// Reads one request head from `stream`; false when the connection ended first.
fn read_request(stream: &mut TcpStream) -> bool {
    let mut request = Vec::new();
    let mut byte = [0; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A target that answers each of `connections` connections with `response` `per_connection` times (then
/// closes it), and reports the port each came from.
fn target(
    response: &'static [u8],
    connections: usize,
    per_connection: usize,
) -> (String, JoinHandle<Vec<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let mut ports = Vec::new();
        for _ in 0..connections {
            let (mut stream, peer) = listener.accept().unwrap();
            ports.push(peer.port());
            for _ in 0..per_connection {
                if !read_request(&mut stream) {
                    break;
                }
                stream.write_all(response).unwrap();
            }
        }
        ports
    });
    (url, server)
}

const CLOSING: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
const KEEPING: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn a_closing_target_is_checked_at_each_interval_on_a_new_connection_each_time() {
    let (url, server) = target(CLOSING, 3, 1);
    let (first, returned, outcomes) = checks(&url, 2, TIMEOUT).await;
    let ports = server.join().unwrap();
    assert_eq!(outcomes.len(), 3);
    for outcome in &outcomes {
        assert!(outcome.passed, "{outcome:?}");
        assert_eq!(outcome.message, "Service health check passed");
        assert_eq!(outcome.details["http_status"], 200);
    }
    let (outcome, _, next) = unsettled(returned);
    assert!(outcome.passed);
    assert!(
        next >= first + 3 * INTERVAL,
        "the next check is due an interval after the third"
    );
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2],
        "a new connection each time: {ports:?}"
    );
}

#[tokio::test]
async fn a_target_that_keeps_the_connection_is_checked_on_it() {
    let (url, server) = target(KEEPING, 1, 3);
    let (_, returned, outcomes) = checks(&url, 2, TIMEOUT).await;
    assert!(matches!(returned, Returned::Unsettled { ref outcome, .. } if outcome.passed));
    assert_eq!(outcomes.iter().filter(|outcome| outcome.passed).count(), 3);
    assert_eq!(server.join().unwrap().len(), 1, "one connection for three checks");
}

#[tokio::test]
async fn a_kept_connection_the_target_closed_meanwhile_is_replaced_without_a_failure() {
    // Each connection carries one exchange, and the target closes it without saying so (as when its idle
    // timeout ends the connection between two checks).
    let (url, server) = target(KEEPING, 3, 1);
    let (_, returned, outcomes) = checks(&url, 2, TIMEOUT).await;
    assert!(matches!(returned, Returned::Unsettled { ref outcome, .. } if outcome.passed));
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|outcome| outcome.passed), "{outcomes:?}");
    assert_eq!(server.join().unwrap().len(), 3);
}

#[tokio::test]
async fn a_failing_status_is_judged_as_the_prober_judges_it() {
    let (url, server) = target(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown",
        1,
        1,
    );
    let (_, returned, _) = checks(&url, 0, TIMEOUT).await;
    server.join().unwrap();
    let (outcome, ..) = unsettled(returned);
    assert_eq!(outcome.reason, Some(FailureReason::HttpStatus));
    assert_eq!(
        outcome.message,
        format!("GET {url} answered 503 Service Unavailable: down")
    );
    assert_eq!(outcome.details["http_status"], 503);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_failure() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/health");
    let (_, returned, _) = checks(&url, 0, TIMEOUT).await;
    let (outcome, ..) = unsettled(returned);
    assert_eq!(outcome.reason, Some(FailureReason::Connect));
    assert_eq!(
        outcome.message,
        format!("GET {url}: cannot connect: Connection refused (os error 111)")
    );
}

#[tokio::test]
async fn a_target_that_never_answers_times_the_check_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let limit = Duration::from_millis(50);
    let (_, returned, _) = checks(&url, 0, limit).await;
    let (outcome, elapsed, _) = unsettled(returned);
    assert_eq!(outcome.reason, Some(FailureReason::Timeout));
    assert_eq!(outcome.message, "no answer within 50ms");
    assert!(elapsed >= limit, "{elapsed:?}");
    drop(listener);
}

#[tokio::test]
async fn a_check_to_be_traced_is_given_back_at_its_due_time() {
    let (url, server) = target(CLOSING, 1, 1);
    let prober = NetworkProber::default();
    let (mut recorder, outcomes) = recorder(5);
    recorder.trace_at = Some(2);
    let first = Instant::now();
    let returned = steady(&prober, &url)
        .run(first, INTERVAL, TIMEOUT, recorder)
        .await;
    let Returned::Traced { due } = returned else {
        panic!("{returned:?}");
    };
    assert_eq!(
        outcomes.try_iter().count(),
        1,
        "the first check ran in the engine"
    );
    assert!(due >= first + INTERVAL);
    server.join().unwrap();
}

#[tokio::test]
async fn only_plain_http_to_an_ip_address_runs_in_the_engine() {
    let prober = NetworkProber::default();
    for url in ["http://localhost:8080/health", "https://127.0.0.1:8443/health"] {
        assert!(
            prober.steady(&Probe::Http(HttpProbe::new(url))).is_none(),
            "{url}"
        );
    }
    assert!(prober.steady(&Probe::Tcp("127.0.0.1:80".to_owned())).is_none());
    assert!(
        prober
            .steady(&Probe::Http(HttpProbe::new("http://[::1]:8080/health")))
            .is_some()
    );
}

#[tokio::test]
async fn a_job_whose_caller_stopped_waiting_ends() {
    // The target closes its listener once it saw the first connection: a check after the job ended would
    // be refused and reported.
    let (url, server) = target(CLOSING, 1, 1);
    let prober = NetworkProber::default();
    let (outcomes, received) = std_mpsc::channel();
    let recorder = Recorder {
        outcomes,
        settle: usize::MAX,
        ticks: 0,
        trace_at: None,
    };
    let steady = steady(&prober, &url);
    let mut run = Box::pin(steady.run(
        Instant::now(),
        Duration::from_secs(3600),
        TIMEOUT,
        Box::new(recorder),
    ));
    // Polls the job in, and waits for its first check's outcome.
    let (outcome, _) = loop {
        tokio::select! {
            returned = run.as_mut() => panic!("{returned:?}"),
            () = tokio::task::yield_now() => {}
        }
        if let Ok(first) = received.try_recv() {
            break first;
        }
    };
    assert!(outcome.passed);
    server.join().unwrap();
    drop(run);
    // The job was removed: nothing holds the recorder, whose sender is gone with it.
    let removed = async {
        loop {
            match received.try_recv() {
                Err(std_mpsc::TryRecvError::Disconnected) => break,
                Ok(outcome) => panic!("a check after the job ended: {outcome:?}"),
                Err(std_mpsc::TryRecvError::Empty) => tokio::task::yield_now().await,
            }
        }
    };
    tokio::time::timeout(TIMEOUT, removed)
        .await
        .expect("the job ends when its caller stops waiting");
}
