//! The built-in page in a real browser: headless Chromium (Debian's package, driven over the DevTools
//! protocol) loads `/` from the running FOG demo, the test breaks a service through its `/fault` endpoint,
//! and the page, live from the event stream, shows it unhealthy and then restarted; a button restarts
//! another service through the API. The final screenshot is written to `target/fog-demo-page.png`
//! (and to `$FOG_SCREENSHOT` when set: `docs/fog-demo-page.png` is made this way).

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::binary::{Orchestrator, http, http_with};

/// Headless Chromium with the DevTools protocol on a port it picks.
struct Browser {
    _child: Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--no-zygote",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1400,1150",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("chromium is needed ({e}); scripts/test.sh installs it from Debian"));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let devtools = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ws://") {
                    return url.split('/').next().unwrap().to_owned();
                }
            }
            panic!("chromium ended without opening the DevTools port");
        })
        .await
        .expect("chromium opens its DevTools port");
        // Keep reading its stderr, or it blocks once the pipe is full.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            devtools,
            _profile: profile,
        }
    }

    /// A new tab on `url`.
    async fn open(&self, url: &str) -> Page {
        let (status, target) = http_with(
            "PUT",
            &format!("http://{}/json/new?{url}", self.devtools),
            "",
            &[],
        )
        .await;
        assert_eq!(status, 200, "{target}");
        let target: Value = serde_json::from_str(&target).unwrap();
        let socket = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(socket).await.unwrap();
        Page { socket, next: 0 }
    }
}

/// One tab, driven over its DevTools WebSocket.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(request)).await.unwrap();
        while let Some(message) = self.socket.next().await {
            let Ok(Message::Text(text)) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
        panic!("the DevTools connection closed during {method}");
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page; on timeout, says what the page showed.
    async fn until(&mut self, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let shown = self
                    .eval("document.querySelector('#services').innerText + '\\n' + document.querySelector('#events').innerText")
                    .await;
                panic!(
                    "the page never showed {what}; it shows:\n{}",
                    shown.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the DevTools event `method` (after `Page.enable` for page events) and returns its params.
    async fn event(&mut self, method: &str) -> Value {
        let wait = async {
            while let Some(message) = self.socket.next().await {
                let Ok(Message::Text(text)) = message else {
                    continue;
                };
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["method"] == method {
                    return event["params"].clone();
                }
            }
            panic!("the DevTools connection closed while waiting for {method}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {method} within 30 s"))
    }

    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64_decode(shot["data"].as_str().unwrap())
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let bits =
                chunk.iter().fold(0u32, |acc, d| (acc << 6) | u32::from(*d)) << (6 * (4 - chunk.len()));
            let bytes = bits.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

/// The demo port of `service` in a FOG config.
fn port_of(config: &str, service: &str) -> u16 {
    let marker = format!("\"--name\", \"{service}\", \"--listen\", \"127.0.0.1:");
    let start = config.find(&marker).unwrap() + marker.len();
    config[start..start + 5]
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap()
}

fn row(service: &str, condition: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('tr[data-service=\"{service}\"]'); return !!r && ({condition}); }})()"
    )
}

#[tokio::test]
async fn the_page_shows_a_broken_service_unhealthy_and_then_restarted() {
    let config = crate::processes::fog_config();
    let fast = [
        ("ORCHESTRATOR__DEFAULTS__HEALTH__CHECK_INTERVAL", "1s"),
        ("ORCHESTRATOR__DEFAULTS__HEALTH__TIMEOUT", "500ms"),
        ("ORCHESTRATOR__DEFAULTS__RESTART__INITIAL_DELAY", "1s"),
    ];
    let mut orchestrator = Orchestrator::start_with(&config, &fast);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let browser = Browser::launch().await;
    let mut page = browser.open(&format!("{api}/")).await;

    page.until(
        "the ten services, live",
        "document.querySelectorAll('#services tbody tr').length === 10 \
         && document.querySelector('#connection').dataset.state === 'live' \
         && document.querySelectorAll('#graph .node').length === 10",
    )
    .await;
    page.until("edge healthy", &row("edge", "r.dataset.health === 'healthy'"))
        .await;

    // Everything edge's row and graph node show from now on, as the DOM changes (a state may last less
    // than a polling interval).
    page.eval(
        "window.shown = []; new MutationObserver(() => { \
           const r = document.querySelector('tr[data-service=\"edge\"]'); \
           const n = document.querySelector('#graph .node[data-service=\"edge\"]'); \
           if (r && n) window.shown.push(r.dataset.health + '/' + n.getAttribute('class')); \
         }).observe(document.body, {subtree: true, childList: true, attributes: true});",
    )
    .await;

    // Break edge through its own /fault endpoint: the page shows it unhealthy, then restarted.
    let fault = format!("http://127.0.0.1:{}/fault", port_of(&config, "edge"));
    assert_eq!(http("POST", &fault, "{\"mode\": \"unhealthy\"}").await.0, 200);
    page.until(
        "edge unhealthy (table and graph)",
        "window.shown.includes('unhealthy/node unhealthy')",
    )
    .await;
    page.until(
        "edge restarted and healthy again",
        &row(
            "edge",
            "r.dataset.restarts === '1' && r.dataset.lastReason === 'unhealthy' \
             && r.dataset.state === 'running' && r.dataset.health === 'healthy'",
        ),
    )
    .await;
    page.until(
        "the restart in the recent events",
        "!!document.querySelector('#events li[data-type=\"restart\"][data-service=\"edge\"]')",
    )
    .await;

    // A button goes through the same API, from the page's own origin.
    page.eval("document.querySelector('tr[data-service=\"scheduler\"] button').click()")
        .await;
    page.until(
        "scheduler restarted by its button",
        &row(
            "scheduler",
            "r.dataset.restarts === '1' && r.dataset.lastReason === 'manual'",
        ),
    )
    .await;
    page.until(
        "scheduler healthy again",
        &row("scheduler", "r.dataset.health === 'healthy'"),
    )
    .await;

    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fog-demo-page.png");
    std::fs::write(&target, &png).unwrap();
    if let Ok(path) = std::env::var("FOG_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    assert!(orchestrator.stop().await.success());
}

/// `api.ui = false`: no page, the API as before.
#[tokio::test]
async fn the_page_can_be_turned_off() {
    let mut orchestrator =
        Orchestrator::start("[api]\nui = false\n[services.one]\ncommand = [\"sleep\", \"3600\"]\n");
    let api = orchestrator.api().await;
    for path in ["/", "/ui/app.js"] {
        let (status, body) = crate::binary::http_text("GET", &format!("{api}{path}"), "").await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("api.ui = false"), "{body}");
    }
    assert_eq!(
        http("GET", &format!("{api}/api/orchestration/services"), "")
            .await
            .0,
        200
    );
    assert!(orchestrator.stop().await.success());
}

/// With `api.token` set, reading needs nothing, and a button asks for the token once: the prompt's answer
/// authorizes the request (and the ones after it); a wrong or missing token changes nothing.
#[tokio::test]
async fn a_button_asks_for_the_token_when_one_is_set() {
    let config = "[api]\ntoken = \"s3cret\"\n[services.one]\ncommand = [\"sleep\", \"3600\"]\n";
    let mut orchestrator = Orchestrator::start(config);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let browser = Browser::launch().await;
    let mut page = browser.open(&format!("{api}/")).await;
    page.call("Page.enable", json!({})).await;
    page.until("one running", &row("one", "r.dataset.state === 'running'"))
        .await;

    // Refused without the token: the prompt, dismissed, leaves everything as it was.
    page.eval("document.querySelector('tr[data-service=\"one\"] button').click()")
        .await;
    let dialog = page.event("Page.javascriptDialogOpening").await;
    assert_eq!(dialog["type"], "prompt");
    assert!(dialog["message"].as_str().unwrap().contains("token"), "{dialog}");
    page.call("Page.handleJavaScriptDialog", json!({"accept": false}))
        .await;
    page.until(
        "the refusal said",
        "document.querySelector('#message').textContent.includes('missing bearer token')",
    )
    .await;
    assert_eq!(
        page.eval(&row("one", "r.dataset.restarts === '0'")).await,
        Value::Bool(true)
    );

    // Given at the prompt: the restart goes through, and the next click needs no prompt.
    page.eval("document.querySelector('tr[data-service=\"one\"] button').click()")
        .await;
    page.event("Page.javascriptDialogOpening").await;
    page.call(
        "Page.handleJavaScriptDialog",
        json!({"accept": true, "promptText": "s3cret"}),
    )
    .await;
    page.until(
        "one restarted with the token",
        &row("one", "r.dataset.restarts === '1'"),
    )
    .await;
    page.eval("document.querySelector('tr[data-service=\"one\"] button').click()")
        .await;
    page.until(
        "one restarted again, no prompt",
        &row("one", "r.dataset.restarts === '2'"),
    )
    .await;
    assert!(orchestrator.stop().await.success());
}
