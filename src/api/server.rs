//! The hyper 1.x server around [`Api`]: an accept loop with a connection limit and a header-read timeout,
//! and a graceful shutdown that stops accepting, lets in-flight requests finish, then returns.
//!
//! Under pressure it keeps serving: once half the connections are in use, new connections get a much
//! shorter header-read deadline (slow-header clients are cut off in a second, not ten); at the limit, the
//! oldest connection is asked to close gracefully (an idle keep-alive closes at once, a request in flight
//! finishes first) so that a retry finds room, and the refused connection is counted
//! (`orchestrator_api_connections_refused_total`) and logged at most once every ten seconds.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Api;

/// Limits that keep slow or abusive clients from starving the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// A client must send its request headers within this time.
    pub header_read_timeout: Duration,
    /// The header deadline of connections accepted while more than half the limit is in use.
    pub pressured_header_read_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            pressured_header_read_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// How often a refused connection may be logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `api` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(listener: TcpListener, api: Api, limits: Limits, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Connections::default();
    let draining = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // A response goes out in several writes when its body is in parts (`/metrics`): with
                // Nagle's algorithm the last one would wait for the client's delayed ACK (40 ms).
                let _ = stream.set_nodelay(true);
                let pressured = permits.available_permits() < limits.max_connections / 2;
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Make room for the client's retry: the oldest connection closes gracefully.
                    connections.evict_oldest();
                    api.connection_refused();
                    refusals.refused(peer, limits.max_connections);
                    continue;
                };
                let header_read_timeout = if pressured {
                    limits.pressured_header_read_timeout
                } else {
                    limits.header_read_timeout
                };
                let api = api.clone();
                let service = service_fn(move |request| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(request).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                let (id, evict) = connections.add();
                let (connections, draining) = (connections.clone(), draining.clone());
                tasks.spawn(async move {
                    tokio::pin!(connection);
                    let mut closing = false;
                    loop {
                        tokio::select! {
                            _ = connection.as_mut() => break,
                            () = evict.cancelled(), if !closing => {
                                closing = true;
                                connection.as_mut().graceful_shutdown();
                            }
                            () = draining.cancelled(), if !closing => {
                                closing = true;
                                connection.as_mut().graceful_shutdown();
                            }
                        }
                    }
                    connections.remove(id);
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    draining.cancel();
    tasks.close();
    if tokio::time::timeout(limits.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("API requests still running after the drain timeout; closing them");
    }
}

/// The open connections, oldest first, each with the token that asks it to close.
#[derive(Debug, Clone, Default)]
struct Connections(Arc<Mutex<Open>>);

#[derive(Debug, Default)]
struct Open {
    last_id: u64,
    oldest_first: VecDeque<(u64, CancellationToken)>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self) -> (u64, CancellationToken) {
        let mut open = self.lock();
        open.last_id += 1;
        let id = open.last_id;
        let token = CancellationToken::new();
        open.oldest_first.push_back((id, token.clone()));
        (id, token)
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        if let Some(position) = open.oldest_first.iter().position(|(other, _)| *other == id) {
            open.oldest_first.remove(position);
        }
    }

    /// Asks the oldest connection not already closing to close.
    fn evict_oldest(&self) {
        let open = self.lock();
        if let Some((_, token)) = open.oldest_first.iter().find(|(_, token)| !token.is_cancelled()) {
            token.cancel();
        }
    }
}

/// Refused connections: counted, and logged at most once every [`REFUSAL_LOG_EVERY`].
#[derive(Debug, Default)]
struct Refusals {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

impl Refusals {
    fn refused(&mut self, peer: std::net::SocketAddr, limit: usize) {
        self.since_logged += 1;
        let now = std::time::Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(
                %peer,
                limit,
                refused = self.since_logged,
                "connection limit reached: refused {} connection(s) since the last report",
                self.since_logged
            );
            self.since_logged = 0;
            self.logged_at = Some(now);
        }
    }
}
