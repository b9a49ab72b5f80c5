//! `GET /api/orchestration/events` (Server-Sent Events) and the built-in page at `/`.
//!
//! Each event-stream request gets a task that writes SSE frames into a small channel the response body
//! reads from: the backlog first (everything the ring keeps, or what came after `Last-Event-ID`), then a
//! `caught_up` marker (no id: what follows happens now), then live events, with a comment every [`KEEPALIVE`] so idle connections stay open through proxies. The task
//! ends when the client goes away, when the orchestrator shuts down, or when the client falls more than
//! [`CONSUMER_BUFFER`](crate::events::CONSUMER_BUFFER) events behind (dropped, counted; it may reconnect with
//! `Last-Event-ID`).
//!
//! The page is three files compiled into the binary (no CDN, nothing fetched at build time). It reads the
//! same API as everyone (`/services`, `/dependencies`, the event stream) and its buttons POST to the same
//! control endpoints, under the same browser rules (same origin only; a token prompt when one is set).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use tokio::sync::{broadcast, mpsc};

use super::reply::{ApiError, Reply, ReplyBody, bytes_reply};
use super::{Api, query_value};
use crate::events::{EventHub, EventKind, Filter, Published, Subscription};

/// How often an idle stream gets a comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Frames a stream's task may write ahead of the client.
const FRAMES_AHEAD: usize = 64;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// What the page may load and where it may connect: only this orchestrator, and it may not be framed.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                           img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

impl Api {
    /// `GET /api/orchestration/events[?service=a,b][&type=restart,health][&follow=false]`, resuming after
    /// the `Last-Event-ID` header (or `last_event_id`).
    pub(super) fn events(&self, query: &[(String, String)], headers: &HeaderMap) -> Result<Reply, ApiError> {
        let filter = filter(query)?;
        let follow = match query_value(query, "follow") {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "follow must be true or false, not {other:?}"
                )));
            }
        };
        let last_id = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .or_else(|| query_value(query, "last_event_id"))
            .map(|id| {
                id.trim().parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "Last-Event-ID must be an event id (a number), not {id:?}"
                    ))
                })
            })
            .transpose()?;
        let hub = self.state.supervisor.events().clone();
        let subscription = hub.subscribe(last_id);
        let (frames, body) = mpsc::channel(FRAMES_AHEAD);
        tokio::spawn(stream(hub, subscription, filter, follow, frames));
        let mut reply = Response::new(ReplyBody::stream(body));
        let headers = reply.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Proxies that buffer responses (nginx) would hold events back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(reply)
    }

    /// `GET /`, `/ui/app.js`, `/ui/style.css`: the built-in page (404 with `api.ui = false`).
    pub(super) fn page(&self, file: &str) -> Result<Reply, ApiError> {
        if !self.access().ui {
            return Err(ApiError::not_found("the built-in page is off (api.ui = false)"));
        }
        let (content_type, text) = match file {
            "app.js" => ("text/javascript; charset=utf-8", APP_JS),
            "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
            _ => ("text/html; charset=utf-8", INDEX_HTML),
        };
        let mut reply = bytes_reply(StatusCode::OK, content_type, Bytes::from_static(text.as_bytes()));
        let headers = reply.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(reply)
    }
}

/// `service` and `type` filters: comma-separated lists, each name checked.
fn filter(query: &[(String, String)]) -> Result<Filter, ApiError> {
    let list = |key: &str| -> Vec<String> {
        query
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let services = list("service")
        .into_iter()
        .map(super::checked_name)
        .collect::<Result<_, _>>()?;
    let kinds = list("type")
        .into_iter()
        .map(|name| {
            EventKind::parse(&name).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::bad_request(format!(
                    "unknown event type {name:?}; known: {}",
                    known.join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Filter { services, kinds })
}

/// One SSE frame for `event`.
fn frame(event: &Published) -> Bytes {
    Bytes::from(format!("id: {}\ndata: {}\n\n", event.id, event.json))
}

/// Counts a consumer while it is connected.
struct Connected(Arc<EventHub>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.metrics().consumers.dec();
    }
}

/// While a send waits for the client, how often it checks whether the client fell too far behind.
const LAG_CHECK: Duration = Duration::from_millis(500);

/// Sends `bytes`; false when the client is gone, the orchestrator shuts down, or the client stopped
/// reading and fell more than the buffer behind (then it is dropped, and counted).
async fn send(
    frames: &mpsc::Sender<Bytes>,
    hub: &EventHub,
    live: &broadcast::Receiver<Arc<Published>>,
    bytes: Bytes,
) -> bool {
    loop {
        tokio::select! {
            permit = frames.reserve() => {
                return match permit {
                    Ok(permit) => {
                        permit.send(bytes);
                        true
                    }
                    Err(_) => false,
                };
            }
            () = hub.closed().cancelled() => return false,
            () = tokio::time::sleep(LAG_CHECK) => {
                if live.len() > crate::events::CONSUMER_BUFFER {
                    dropped(hub, frames, live.len());
                    return false;
                }
            }
        }
    }
}

/// The consumer fell `behind` events behind: it is dropped (its stream ends).
fn dropped(hub: &EventHub, frames: &mpsc::Sender<Bytes>, behind: usize) {
    hub.metrics().dropped.inc();
    tracing::warn!(behind, "event stream consumer dropped: it fell too far behind");
    // Best effort: its buffer is likely full. Reconnecting with Last-Event-ID resumes (or resets).
    let _ = frames.try_send(Bytes::from(format!(
        ": dropped: {behind} events behind; reconnect with Last-Event-ID\n\n"
    )));
}

/// Writes one consumer's stream: the backlog, then live events, until it ends (see the module docs).
async fn stream(
    hub: Arc<EventHub>,
    subscription: Subscription,
    filter: Filter,
    follow: bool,
    frames: mpsc::Sender<Bytes>,
) {
    hub.metrics().consumers.inc();
    let _connected = Connected(hub.clone());
    let Subscription {
        backlog,
        reset,
        mut live,
    } = subscription;
    if !send(&frames, &hub, &live, Bytes::from_static(b"retry: 2000\n\n")).await {
        return;
    }
    if let Some(oldest) = reset {
        // No id: the client's position stays where it was; it reads the state again and carries on.
        let reset = serde_json::json!({
            "type": "reset",
            "oldest_id": oldest,
            "latest_id": hub.latest_id(),
            "reason": "events after the given Last-Event-ID are no longer kept: read the current state again",
        });
        if !send(&frames, &hub, &live, Bytes::from(format!("data: {reset}\n\n"))).await {
            return;
        }
    }
    let mut last = 0;
    for event in backlog {
        last = event.id;
        if filter.keeps(&event) && !send(&frames, &hub, &live, frame(&event)).await {
            return;
        }
    }
    if !follow {
        return;
    }
    // No id: a marker, not an event. What follows happens now.
    let caught_up = serde_json::json!({"type": "caught_up", "latest_id": last.max(hub.latest_id())});
    if !send(
        &frames,
        &hub,
        &live,
        Bytes::from(format!("data: {caught_up}\n\n")),
    )
    .await
    {
        return;
    }
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        let bytes = tokio::select! {
            () = hub.closed().cancelled() => return,
            () = frames.closed() => return,
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            received = live.recv() => match received {
                Ok(event) if event.id > last => {
                    last = event.id;
                    if !filter.keeps(&event) {
                        continue;
                    }
                    frame(&event)
                }
                // Already sent from the backlog.
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    dropped(&hub, &frames, usize::try_from(missed).unwrap_or(usize::MAX));
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if !send(&frames, &hub, &live, bytes).await {
            return;
        }
    }
}
