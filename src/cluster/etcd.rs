//! A small etcd v3 client over etcd's own JSON gateway (the v3 API as JSON over HTTP/1.1 on the client
//! port, served by etcd 3.4 and later): KV, transactions and leases, through hyper's HTTP/1 client on one
//! kept connection. No generated protobuf code and no `protoc` at build time, which keeps the README's
//! first command working on a machine with nothing but a Rust toolchain.
//!
//! Endpoints are tried in turn: when the current one fails (refused, reset, timed out), the next one is
//! used, so losing one member of a 3-member cluster costs one retried request. Keys and values travel
//! base64-encoded and 64-bit integers as strings, as the gateway's JSON mapping has them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::config::ClusterSettings;

/// The largest answer read (a fleet-wide range at 100,000 registry entries is some 50 MB).
const ANSWER_LIMIT: usize = 256 * 1024 * 1024;

/// Why an etcd call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached, or every one failed mid-request.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd error {code}: {message}")]
    Server {
        /// The gRPC status code etcd gave.
        code: i64,
        /// What it said.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
}

/// gRPC status code etcd gives for a missing or expired auth token.
const UNAUTHENTICATED: i64 = 16;

#[derive(Debug, Clone)]
struct Endpoint {
    /// `host:port`.
    authority: String,
    host: String,
    tls: bool,
}

/// Bytes and requests exchanged with etcd, for the traffic metrics.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Request bytes written (bodies and heads, approximately: heads are counted at their usual size).
    pub sent: AtomicU64,
    /// Answer bodies read.
    pub received: AtomicU64,
    /// Calls answered.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
}

/// One HTTP/1 head's usual size on this connection (method, path, four headers).
const HEAD_BYTES: u64 = 160;

struct Connection {
    endpoint: usize,
    sender: SendRequest<Full<Bytes>>,
}

/// The etcd client: one request at a time on one kept connection.
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<(String, String)>,
    timeout: Duration,
    state: tokio::sync::Mutex<State>,
    traffic: Arc<Traffic>,
}

#[derive(Default)]
struct State {
    connection: Option<Connection>,
    /// The endpoint to try first.
    next: usize,
    token: Option<String>,
}

/// One key of a range answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The lease it is attached to (0: none).
    pub lease: i64,
    /// The revision that created it.
    pub create_revision: i64,
}

impl Etcd {
    /// A client for `settings`' endpoints; each call gives up after `timeout`.
    pub fn new(settings: &ClusterSettings, timeout: Duration) -> Result<Self, String> {
        let endpoints = settings
            .etcd_endpoints
            .iter()
            .map(|url| {
                let (tls, authority) = match url.strip_prefix("https://") {
                    Some(rest) => (true, rest),
                    None => (false, url.trim_start_matches("http://")),
                };
                let authority = authority.trim_end_matches('/').to_owned();
                let host = match authority.rsplit_once(':') {
                    Some((host, port)) if port.parse::<u16>().is_ok() => host,
                    _ => authority.as_str(),
                }
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
                let authority = if authority.contains(':') && !authority.ends_with(']') {
                    authority
                } else {
                    format!("{authority}:{}", if tls { 443 } else { 2379 })
                };
                Endpoint { authority, host, tls }
            })
            .collect::<Vec<_>>();
        let tls = if endpoints.iter().any(|endpoint| endpoint.tls) {
            let identity = settings.client_identity.clone();
            Some(Arc::new(crate::health::http::tls_client_config(
                settings.ca_file.clone(),
                identity,
            )?))
        } else {
            None
        };
        Ok(Self {
            endpoints,
            tls,
            credentials: settings.credentials.clone(),
            timeout,
            state: tokio::sync::Mutex::new(State::default()),
            traffic: Arc::default(),
        })
    }

    /// Bytes and calls so far.
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// Calls `path` (such as `/v3/kv/range`) with `body`; on a transport failure, once on each other
    /// endpoint.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let mut state = self.state.lock().await;
        let mut last = String::new();
        let mut authenticated_again = false;
        let mut tries = 0;
        while tries < self.endpoints.len() {
            let sent =
                tokio::time::timeout(self.timeout, self.exchange(&mut state, path, body.clone())).await;
            let outcome = sent.unwrap_or_else(|_| Err(Failure::Transport("timed out".into())));
            match outcome {
                Ok(answer) => {
                    self.traffic.ok.fetch_add(1, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(Failure::Server { code, message })
                    if code == UNAUTHENTICATED && self.credentials.is_some() && !authenticated_again =>
                {
                    // The token expired (etcd's default is 5 minutes): once more with a new one.
                    state.token = None;
                    authenticated_again = true;
                    last = message;
                }
                Err(failure @ (Failure::Server { .. } | Failure::Protocol(_))) => {
                    self.traffic.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(failure.into());
                }
                Err(Failure::Transport(message)) => {
                    let failed = state
                        .connection
                        .take()
                        .map_or(state.next, |connection| connection.endpoint);
                    state.next = (failed + 1) % self.endpoints.len();
                    last = format!("{}: {message}", self.endpoints[failed].authority);
                    tries += 1;
                }
            }
        }
        self.traffic.failed.fetch_add(1, Ordering::Relaxed);
        Err(EtcdError::Unreachable(last))
    }

    async fn exchange(&self, state: &mut State, path: &str, body: Bytes) -> Result<Value, Failure> {
        self.ready(state).await?;
        self.send(state, path, body).await
    }

    /// Connected, and (with credentials) holding a token.
    async fn ready(&self, state: &mut State) -> Result<(), Failure> {
        if state.connection.as_ref().is_none_or(|c| c.sender.is_closed()) {
            let endpoint = state.next % self.endpoints.len();
            let sender = self.connect(&self.endpoints[endpoint]).await?;
            state.connection = Some(Connection { endpoint, sender });
        }
        if state.token.is_none()
            && let Some((name, password)) = &self.credentials
        {
            let request = json!({"name": name, "password": password});
            let bytes = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
            let answer = self.send(state, "/v3/auth/authenticate", bytes).await?;
            let token = answer["token"]
                .as_str()
                .ok_or_else(|| Failure::Protocol("authenticate answered without a token".into()))?;
            state.token = Some(token.to_owned());
        }
        Ok(())
    }

    async fn send(&self, state: &mut State, path: &str, body: Bytes) -> Result<Value, Failure> {
        let connection = state
            .connection
            .as_mut()
            .ok_or_else(|| Failure::Transport("not connected".into()))?;
        let endpoint = &self.endpoints[connection.endpoint];
        self.traffic
            .sent
            .fetch_add(HEAD_BYTES + body.len() as u64, Ordering::Relaxed);
        let request = post(endpoint, path, state.token.as_deref(), body)?;
        connection
            .sender
            .ready()
            .await
            .map_err(|error| Failure::Transport(error.to_string()))?;
        let response = connection
            .sender
            .send_request(request)
            .await
            .map_err(|error| Failure::Transport(error.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|error| Failure::Transport(error.to_string()))?
            .to_bytes();
        self.traffic
            .received
            .fetch_add(HEAD_BYTES + bytes.len() as u64, Ordering::Relaxed);
        let answer: Value = serde_json::from_slice(&bytes).map_err(|_| {
            // Not the gateway's JSON: etcd's HTTP layer refused the request (it says why in plain text).
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.trim().chars().take(300).collect();
            Failure::Protocol(format!("{status}: {text}"))
        })?;
        if status == StatusCode::OK && answer.get("error").is_none() {
            return Ok(answer);
        }
        let code = answer["code"].as_i64().unwrap_or(2);
        let message = answer["message"]
            .as_str()
            .or_else(|| answer["error"].as_str())
            .unwrap_or("no message")
            .to_owned();
        if status.is_server_error() && code == 14 {
            // Unavailable: this member has no leader (cut off, or the cluster lost its quorum).
            return Err(Failure::Transport(message));
        }
        Err(Failure::Server { code, message })
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = TcpStream::connect(&endpoint.authority)
            .await
            .map_err(|error| Failure::Transport(error.to_string()))?;
        let _ = stream.set_nodelay(true);
        if endpoint.tls {
            let config = self
                .tls
                .clone()
                .ok_or_else(|| Failure::Transport("no TLS settings".into()))?;
            let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|error| Failure::Transport(error.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|error| Failure::Transport(format!("TLS: {error}")))?;
            handshake(stream).await
        } else {
            handshake(stream).await
        }
    }

    /// Watches every key under `prefix`, on a connection of its own (the first endpoint that accepts it):
    /// the stream yields once for each batch of changes etcd reports.
    pub async fn watch(&self, prefix: &str) -> Result<Watch, EtcdError> {
        // The token the node's calls hold (authenticating is costly: etcd checks the password with bcrypt).
        let (token, first) = {
            let mut state = self.state.lock().await;
            if self.credentials.is_some() {
                self.ready(&mut state).await.map_err(EtcdError::from)?;
            }
            (state.token.clone(), state.next)
        };
        let body = Bytes::from(
            serde_json::to_vec(&json!({"create_request": {
                "key": encode(prefix), "range_end": encode_bytes(&prefix_end(prefix))
            }}))
            .unwrap_or_default(),
        );
        let mut last = String::new();
        for offset in 0..self.endpoints.len() {
            let endpoint = &self.endpoints[(first + offset) % self.endpoints.len()];
            let mut sender = match self.connect(endpoint).await {
                Ok(sender) => sender,
                Err(Failure::Transport(message) | Failure::Protocol(message)) => {
                    last = format!("{}: {message}", endpoint.authority);
                    continue;
                }
                Err(Failure::Server { message, .. }) => {
                    last = message;
                    continue;
                }
            };
            let Ok(request) = post(endpoint, "/v3/watch", token.as_deref(), body.clone()) else {
                continue;
            };
            match sender.send_request(request).await {
                Ok(response) if response.status() == StatusCode::OK => {
                    return Ok(Watch {
                        body: response.into_body(),
                        buffer: Vec::new(),
                        traffic: self.traffic.clone(),
                    });
                }
                Ok(response) => {
                    last = format!("{}: watch answered {}", endpoint.authority, response.status())
                }
                Err(error) => last = format!("{}: {error}", endpoint.authority),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    /// Grants a lease of `ttl`; its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let answer = self
            .call("/v3/lease/grant", &json!({"TTL": ttl.as_secs().to_string()}))
            .await?;
        integer(&answer["ID"]).ok_or_else(|| EtcdError::Protocol("lease grant without an ID".into()))
    }

    /// Renews lease `id`: its remaining TTL in seconds, or `None` when it no longer exists.
    pub async fn keep_alive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))
            .await?;
        let ttl = integer(&answer["result"]["TTL"]).unwrap_or(0);
        Ok((ttl > 0).then_some(ttl))
    }

    /// Ends lease `id` now: every key attached to it goes.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .await
            .map(drop)
    }

    /// Every key under `prefix`.
    pub async fn range_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let answer = self
            .call(
                "/v3/kv/range",
                &json!({"key": encode(prefix), "range_end": encode_bytes(&prefix_end(prefix))}),
            )
            .await?;
        key_values(&answer)
    }

    /// Puts and deletes in one transaction (at most etcd's `--max-txn-ops`, 128 by default).
    pub async fn write(&self, operations: &[Operation]) -> Result<(), EtcdError> {
        let success: Vec<Value> = operations.iter().map(Operation::to_json).collect();
        self.call("/v3/kv/txn", &json!({"success": success}))
            .await
            .map(drop)
    }

    /// Creates `key` = `value` on `lease` if it does not exist: `Ok(None)` when created, else the holder's
    /// value.
    pub async fn create(&self, key: &str, value: &str, lease: i64) -> Result<Option<Vec<u8>>, EtcdError> {
        let answer = self
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [{"key": encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                    "success": [{"request_put": {"key": encode(key), "value": encode(value), "lease": lease.to_string()}}],
                    "failure": [{"request_range": {"key": encode(key)}}],
                }),
            )
            .await?;
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(None);
        }
        let range = &answer["responses"][0]["response_range"];
        Ok(key_values(range)?.into_iter().next().map(|kv| kv.value))
    }

    /// Deletes `key` if it is attached to `lease` (gives up a leadership this node holds, nobody else's).
    pub async fn delete_if_leased(&self, key: &str, lease: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": encode(key), "target": "LEASE", "result": "EQUAL", "lease": lease.to_string()}],
                "success": [{"request_delete_range": {"key": encode(key)}}],
            }),
        )
        .await
        .map(drop)
    }
}

/// An open watch: etcd streams one JSON message per line (the watch's creation, then batches of events).
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    traffic: Arc<Traffic>,
}

impl Watch {
    /// Waits for the next batch of changes: `Ok(())` when one came, an error when the stream ended, broke,
    /// or etcd cancelled the watch (it must be opened again).
    pub async fn changed(&mut self) -> Result<(), EtcdError> {
        loop {
            while let Some(end) = self.buffer.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let result = &message["result"];
                if message.get("error").is_some() || result["canceled"] == true {
                    let why = result["cancel_reason"]
                        .as_str()
                        .or_else(|| message["error"]["message"].as_str())
                        .unwrap_or("canceled");
                    return Err(EtcdError::Protocol(format!("watch ended: {why}")));
                }
                if result["events"]
                    .as_array()
                    .is_some_and(|events| !events.is_empty())
                {
                    return Ok(());
                }
            }
            let frame = self
                .body
                .frame()
                .await
                .ok_or_else(|| EtcdError::Unreachable("the watch stream ended".into()))?
                .map_err(|error| EtcdError::Unreachable(format!("the watch stream broke: {error}")))?;
            if let Some(data) = frame.data_ref() {
                self.traffic
                    .received
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.buffer.extend_from_slice(data);
                if self.buffer.len() > ANSWER_LIMIT {
                    return Err(EtcdError::Protocol("a watch message too large".into()));
                }
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| Failure::Transport(error.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

enum Failure {
    Transport(String),
    Server { code: i64, message: String },
    Protocol(String),
}

impl From<Failure> for EtcdError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Transport(message) => EtcdError::Unreachable(message),
            Failure::Server { code, message } => EtcdError::Server { code, message },
            Failure::Protocol(message) => EtcdError::Protocol(message),
        }
    }
}

/// A JSON `POST` of `body` to `path` at `endpoint`, with the auth token when there is one.
fn post(
    endpoint: &Endpoint,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, Failure> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, &endpoint.authority)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, token);
    }
    request
        .body(Full::new(body))
        .map_err(|error| Failure::Protocol(error.to_string()))
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `key` = `value`, attached to `lease`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease: i64,
    },
    /// Delete `key`.
    Delete(String),
}

impl Operation {
    fn to_json(&self) -> Value {
        match self {
            Operation::Put { key, value, lease } => json!({"request_put": {
                "key": encode(key), "value": encode_bytes(value), "lease": lease.to_string()
            }}),
            Operation::Delete(key) => json!({"request_delete_range": {"key": encode(key)}}),
        }
    }
}

fn encode(text: &str) -> String {
    BASE64.encode(text)
}

fn encode_bytes(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The end of the range of every key starting with `prefix`: the prefix with its last byte incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A 64-bit integer as the gateway writes it: a string (or a number).
fn integer(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(|| value.as_i64())
}

fn key_values(answer: &Value) -> Result<Vec<KeyValue>, EtcdError> {
    let Some(kvs) = answer.get("kvs") else {
        return Ok(Vec::new());
    };
    let kvs = kvs
        .as_array()
        .ok_or_else(|| EtcdError::Protocol("kvs is not a list".into()))?;
    kvs.iter()
        .map(|kv| {
            let decode = |field: &str| {
                BASE64
                    .decode(kv[field].as_str().unwrap_or_default())
                    .map_err(|error| EtcdError::Protocol(format!("{field}: {error}")))
            };
            Ok(KeyValue {
                key: String::from_utf8_lossy(&decode("key")?).into_owned(),
                value: decode("value")?,
                lease: integer(&kv["lease"]).unwrap_or(0),
                create_revision: integer(&kv["create_revision"]).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_byte() {
        assert_eq!(prefix_end("/fog/a/"), b"/fog/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn gateway_integers_are_strings_or_numbers() {
        assert_eq!(
            integer(&json!("7587899259337995013")),
            Some(7_587_899_259_337_995_013)
        );
        assert_eq!(integer(&json!(5)), Some(5));
        assert_eq!(integer(&json!(null)), None);
    }

    #[test]
    fn range_answers_decode_keys_values_and_leases() {
        let answer = json!({"kvs": [{"key": "Zm9v", "value": "YmFy", "lease": "42", "create_revision": "2"}], "count": "1"});
        let kvs = key_values(&answer).expect("decodes");
        assert_eq!(
            kvs,
            [KeyValue {
                key: "foo".into(),
                value: b"bar".to_vec(),
                lease: 42,
                create_revision: 2
            }]
        );
        assert!(key_values(&json!({"count": "0"})).expect("empty").is_empty());
    }
}
