//! Driving the built binary: start `fog-orchestrator run` on a config with JSON logs and the API on a port
//! picked at run time, wait on its log lines, talk HTTP to it, and stop it with a signal.

use std::collections::HashSet;
use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long any one wait on the binary may take.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A running orchestrator and the JSON log lines it wrote so far.
pub struct Orchestrator {
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<Value>,
    pub seen: Vec<Value>,
    /// Lines a strict JSON parser refuses (not JSON, or a key written twice in one object).
    malformed: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Orchestrator {
    /// `run` on `config`, with `env` added to a clean `ORCHESTRATOR*` environment.
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(config, env, None)
    }

    /// `run` on `config`, started with a soft open-file limit of `open_files` (its hard limit as this
    /// process's), as a shell's `ulimit -Sn` would.
    pub fn start_limited(config: &str, open_files: u64) -> Self {
        Self::launch(config, &[], Some(open_files))
    }

    fn launch(config: &str, env: &[(&str, &str)], open_files: Option<u64>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orchestrator.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"));
        if let Some(soft) = open_files {
            // SAFETY: getrlimit and setrlimit are async-signal-safe and change the child's own limit.
            unsafe {
                command.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                    limit.rlim_cur = soft;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args([
                "run",
                "--log-format",
                "json",
                "--listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&path)
            .env("RUST_LOG", "info")
            .env_remove("ORCHESTRATOR_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::unbounded_channel();
        let malformed = Arc::new(Mutex::new(Vec::new()));
        let refused = malformed.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Err(error) = serde_json::from_str::<Strict>(&line) {
                    refused.lock().unwrap().push(format!("{error}: {line}"));
                }
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = sender.send(value);
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            malformed,
            _dir: dir,
        }
    }

    /// `run` on `config`.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// The configuration file it was started with (a test may rewrite it and ask for a reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("orchestrator.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Waits for the next log line whose fields match `wanted` and returns the fields.
    pub async fn wait_for(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let found = timeout(LIMIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if wanted(&line["fields"]) {
                    return Some(line["fields"].clone());
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(fields)) => fields,
            _ => panic!("no log line for {what}; saw:\n{}", self.transcript()),
        }
    }

    /// Waits for the startup summary ("N services ready in ..."), which may have come before a line an
    /// earlier wait was looking for (the API's address, say): the lines seen already count.
    pub async fn wait_ready(&mut self) -> Value {
        let summary = |f: &Value| message(f).contains(" ready in ");
        if let Some(line) = self.seen.iter().find(|line| summary(&line["fields"])) {
            return line["fields"].clone();
        }
        self.wait_for("the startup summary", summary).await
    }

    /// The API's base URL, from its log line.
    pub async fn api(&mut self) -> String {
        let line = self
            .wait_for("the API address", |f| message(f).starts_with("API listening"))
            .await;
        format!("http://{}", line["address"].as_str().unwrap())
    }

    /// SIGTERM, then the exit status; the remaining log lines are read into `seen`, and every line the
    /// orchestrator wrote must have parsed under a strict JSON parser.
    pub async fn stop(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        let status = timeout(LIMIT, self.child.wait()).await.unwrap().unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        let malformed = self.malformed.lock().unwrap();
        assert!(
            malformed.is_empty(),
            "log lines a strict parser refuses:\n{}",
            malformed.join("\n")
        );
        status
    }

    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|l| l["fields"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Any JSON value, parsed the way a strict parser does: an object that names a key twice is an error
/// (serde_json's `Value` silently keeps the last one).
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value without duplicate keys")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(A::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }
}

#[test]
fn the_strict_parser_refuses_duplicate_keys() {
    assert!(serde_json::from_str::<Strict>(r#"{"a": [1, {"b": null}], "c": "x"}"#).is_ok());
    assert!(serde_json::from_str::<Strict>(r#"{"fields": {"message": "a", "message": "b"}}"#).is_err());
}

/// The `message` field of a log line's fields.
pub fn message(fields: &Value) -> &str {
    fields["message"].as_str().unwrap_or_default()
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// One HTTP request; the status and the body as text. A refused connection (a server still starting) is
/// status 0 with an empty body.
pub async fn http_text(method: &str, url: &str, body: &str) -> (u16, String) {
    http_with(method, url, body, &[]).await
}

/// One HTTP request with extra `headers`; the status and the body as text (0 and empty when refused).
pub async fn http_with(method: &str, url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let content_type = if body.is_empty() {
        "text/plain"
    } else {
        "application/json"
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let Ok(Ok(response)) = timeout(LIMIT, client.request(request)).await else {
        return (0, String::new());
    };
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// One HTTP request; the status and the body as JSON (`Null` when it is not JSON).
pub async fn http(method: &str, url: &str, body: &str) -> (u16, Value) {
    let (status, text) = http_text(method, url, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A free port on 127.0.0.1 for a server the test must name before it starts (a service in a config, a
/// Prometheus). Picked at random below the kernel's ephemeral range (32768 and up on Linux), so a server
/// another test binds to port 0 meanwhile cannot be handed the same port, and never handed out twice by
/// this test binary; it was free when checked.
pub fn spare_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = fastrand::u16(20_000..32_000);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}
