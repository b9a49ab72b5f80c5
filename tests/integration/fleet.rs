//! Fleet mode (DESIGN.md section 9) with real processes: a 3-member etcd cluster on loopback (Debian's
//! `etcd-server`, which the test command installs) and three orchestrators. The fleet-wide views list every
//! node's services; a singleton runs on exactly one node, moves when its node is SIGKILLed or SIGSTOPped
//! (never two live instances, sampled every 50 ms), survives the loss of etcd's raft leader, and every node
//! keeps supervising while etcd is gone entirely.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::binary::{Orchestrator, http, http_text, signal, spare_port};
use crate::otlp::{grpc_receiver, text};

/// The lease of the test fleet: the shortest that rides out an etcd leader election without a warning, so
/// fail-overs are quick to watch. A node steps down once no renewal was confirmed for half its etcd lease
/// (granted for a second less), and killing etcd's leader takes an election of 1 to 2 s here (twice etcd's
/// default `--election-timeout` at most): with renewals every 1.4 s, each try given 1.4 s, the node holds on
/// through an election of up to 2.8 s.
const LEASE_TTL: Duration = Duration::from_secs(8);
/// How long anything in the fleet may take to settle.
const SETTLE: Duration = Duration::from_secs(20);

/// One etcd member: its client URL, data directory and process.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A 3-member etcd cluster on loopback, stopped with the test.
struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
}

impl EtcdCluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let members = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: spare_port(),
                peer: spare_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            members,
            dir,
            token: format!("fog-test-{}", fastrand::u64(..)),
        };
        for i in 0..3 {
            cluster.start_member(i);
        }
        for i in 0..3 {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    fn start_member(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let member = &self.members[i];
        let data = self.dir.path().join(&member.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name))).unwrap();
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", member.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", member.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", member.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", member.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("etcd starts (the test command installs Debian's etcd-server)");
        self.members[i].child = Some(child);
    }

    async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].client);
        let healthy = eventually(SETTLE, || async {
            let (status, body) = http("GET", &url, "").await;
            (status == 200 && body["health"] == "true").then_some(())
        })
        .await;
        assert!(
            healthy.is_some(),
            "etcd member {i} never became healthy: {}",
            self.log(i)
        );
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("m{i}.log"))).unwrap_or_default()
    }

    /// The member that is etcd's raft leader now.
    async fn leader(&self) -> usize {
        let found = eventually(SETTLE, || async {
            for (i, member) in self.members.iter().enumerate() {
                if member.child.is_none() {
                    continue;
                }
                let url = format!("http://127.0.0.1:{}/v3/maintenance/status", member.client);
                let (status, body) = http("POST", &url, "{}").await;
                if status == 200
                    && body["leader"].is_string()
                    && body["leader"] == body["header"]["member_id"]
                {
                    return Some(i);
                }
            }
            None
        })
        .await;
        found.expect("the etcd cluster has a leader")
    }

    async fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("\"http://127.0.0.1:{}\"", m.client))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn etcd_binary() -> PathBuf {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("etcd is not installed: run scripts/test.sh, which installs Debian's etcd-server");
}

/// Polls `probe` every 50 ms until it gives a value or `limit` passes.
async fn eventually<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The live (not zombie) processes running `sleep MARKER`: the singleton's instances, on any node.
fn instances(marker: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{marker}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline != wanted.as_bytes() {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if state != Some(Some('Z')) {
            found.push(pid);
        }
    }
    found
}

fn config(node: &str, fleet: &str, endpoints: &str, marker: &str) -> String {
    format!(
        r#"
[cluster]
etcd_endpoints = [{endpoints}]
name = "{fleet}"
node = "{node}"
lease_ttl = "{ttl}s"

[services.local-{node}]
command = ["sleep", "3600"]

[services.scheduler]
command = ["sleep", "{marker}"]
singleton = true
shutdown.timeout = "1s"
"#,
        ttl = LEASE_TTL.as_secs()
    )
}

/// One node: its name, orchestrator and API.
struct Node {
    name: String,
    orchestrator: Orchestrator,
    api: String,
}

async fn fleet_view(api: &str, path: &str) -> Value {
    let (status, body) = http("GET", &format!("{api}{path}"), "").await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The node that leads the singleton, by every live node's own `/services`.
async fn leaders(nodes: &[&Node]) -> Vec<String> {
    let mut leading = Vec::new();
    for node in nodes {
        let body = fleet_view(&node.api, "/api/orchestration/services").await;
        if body["services"]["scheduler"]["leader"] == true {
            leading.push(node.name.clone());
        }
    }
    leading
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Watches `marker`'s instances every 50 ms until a live instance other than `old` runs; panics if two are
/// ever alive at once. The time from `since` to the new instance, and its pid.
async fn watch_failover(marker: &str, old: u32, since: Instant) -> (Duration, u32) {
    loop {
        let alive = instances(marker);
        assert!(alive.len() <= 1, "two live singleton instances: {alive:?}");
        if let Some(&new) = alive.iter().find(|pid| **pid != old) {
            return (since.elapsed(), new);
        }
        assert!(
            since.elapsed() < SETTLE,
            "the singleton never moved (alive: {alive:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_fleet_on_etcd_shares_its_views_and_moves_its_singleton_without_ever_running_two() {
    let mut etcd = EtcdCluster::start().await;
    let fleet = format!("test-{}", fastrand::u32(..));
    let marker = format!("{}.{}", 4000 + fastrand::u32(..1000), fastrand::u32(..1_000_000));
    let endpoints = etcd.endpoints();
    let (otlp, received) = grpc_receiver().await;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let mut orchestrator = Orchestrator::start_with(
            &config(name, &fleet, &endpoints, &marker),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        );
        let api = orchestrator.api().await;
        nodes.push(Node {
            name: name.to_owned(),
            orchestrator,
            api,
        });
    }
    // A service registered at run time on each node, with a metrics address for service discovery.
    for node in &nodes {
        let port = spare_port();
        let registration = format!(
            r#"{{"name": "worker-{}", "type": "worker", "metadata": {{"metrics": "127.0.0.1:{port}"}}}}"#,
            node.name
        );
        let (status, body) = http_text(
            "POST",
            &format!("{}/api/orchestration/registry", node.api),
            &registration,
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    // Fleet-wide views, asked of one node, list every node's services, registrations and targets.
    let api = nodes[0].api.clone();
    let listed = eventually(SETTLE, || async {
        let services = fleet_view(&api, "/api/orchestration/services?scope=fleet").await;
        let registry = fleet_view(&api, "/api/orchestration/registry?scope=fleet&type=worker").await;
        let targets = fleet_view(&api, "/api/orchestration/sd?scope=fleet").await;
        let complete = services["total_services"] == 6
            && registry["total_services"] == 3
            && targets.as_array().is_some_and(|groups| groups.len() == 3);
        complete.then_some((services, registry, targets))
    })
    .await;
    let (services, registry, targets) = listed.expect("the fleet views never listed every node");
    for node in ["a", "b", "c"] {
        let local = &services["services"][format!("{node}/local-{node}")];
        assert_eq!(local["node"], node, "{services}");
        assert_eq!(local["status"], "running", "{services}");
        assert_eq!(
            registry["services"][format!("{node}/worker-{node}")]["node"],
            node,
            "{registry}"
        );
    }
    let mut labelled: Vec<&str> = targets
        .as_array()
        .unwrap()
        .iter()
        .map(|group| group["labels"]["node"].as_str().unwrap())
        .collect();
    labelled.sort_unstable();
    assert_eq!(labelled, ["a", "b", "c"], "{targets}");
    let mut members: Vec<&str> = services["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["node"].as_str().unwrap())
        .collect();
    members.sort_unstable();
    assert_eq!(members, ["a", "b", "c"], "{services}");
    let advertised = services["nodes"][0]["api"].as_str().unwrap();
    assert!(advertised.starts_with("http://127.0.0.1:"), "{services}");

    // The singleton runs on exactly one node.
    let running = eventually(SETTLE, || async { (instances(&marker).len() == 1).then_some(()) }).await;
    assert!(running.is_some(), "the singleton never started");
    let all: Vec<&Node> = nodes.iter().collect();
    let leading = leaders(&all).await;
    assert_eq!(leading.len(), 1, "leaders: {leading:?}");
    let first = instances(&marker)[0];

    // SIGKILL of the leading orchestrator: another node runs the singleton within the lease plus its start
    // (a `sleep`: milliseconds; a second allowed for a loaded machine).
    let leader = nodes.iter().position(|n| n.name == leading[0]).unwrap();
    let killed = nodes.remove(leader);
    let killed_at = Instant::now();
    signal(killed.orchestrator.pid(), libc::SIGKILL);
    let (after_kill, second) = watch_failover(&marker, first, killed_at).await;
    println!(
        "fleet: SIGKILL of the leader → the singleton running on another node: {after_kill:?} (lease_ttl {LEASE_TTL:?})"
    );
    assert!(
        after_kill < LEASE_TTL + Duration::from_secs(1),
        "fail-over took {after_kill:?}"
    );
    // The fail-over is one trace: `fail over singleton` (naming the node it came from) holds the start.
    let traced = eventually(SETTLE, || async {
        let spans = received.spans();
        let failover = spans.iter().find(|(_, span)| {
            span.name == "fail over singleton"
                && text(&span.attributes, "orchestrator.previous_node").as_deref()
                    == Some(killed.name.as_str())
        })?;
        let start = spans.iter().find(|(_, span)| {
            span.name == "start service"
                && span.trace_id == failover.1.trace_id
                && text(&span.attributes, "orchestrator.service.name").as_deref() == Some("scheduler")
        })?;
        Some((failover.1.clone(), start.1.clone()))
    })
    .await;
    let (failover, start) = traced.unwrap_or_else(|| {
        let seen: Vec<String> = received
            .spans()
            .iter()
            .filter(|(_, span)| span.name.contains("singleton") || span.name == "start service")
            .map(|(_, span)| {
                format!(
                    "{} {:?} {} {:?}",
                    span.name,
                    &span.trace_id[..4],
                    hex(&span.parent_span_id),
                    span.attributes.iter().map(|a| a.key.clone()).collect::<Vec<_>>()
                )
            })
            .collect();
        panic!("no fail-over trace holding the singleton's start: {seen:#?}")
    });
    assert_ne!(
        text(&failover.attributes, "orchestrator.node").as_deref(),
        Some(killed.name.as_str())
    );
    assert_eq!(
        start.parent_span_id, failover.span_id,
        "the start is inside the fail-over"
    );
    // The dead node's keys went with its lease: the fleet views no longer list it.
    let survivor = nodes[0].api.clone();
    let gone = eventually(SETTLE, || async {
        let services = fleet_view(&survivor, "/api/orchestration/services?scope=fleet").await;
        let prefix = format!("{}/", killed.name);
        let listed = services["services"]
            .as_object()?
            .keys()
            .any(|key| key.starts_with(&prefix));
        let member = services["nodes"]
            .as_array()?
            .iter()
            .any(|member| member["node"] == killed.name.as_str());
        (!listed && !member).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the killed node's entries never expired");
    drop(killed);

    // SIGSTOP of the new leader (a partition stand-in): its fence kills its instance before the lease can
    // expire, and the last node takes over; never two at once.
    let rest: Vec<&Node> = nodes.iter().collect();
    let leading = eventually(SETTLE, || async {
        let leading = leaders(&rest).await;
        (leading.len() == 1).then_some(leading)
    })
    .await
    .expect("one leader among the remaining nodes");
    let paused = nodes.iter().find(|n| n.name == leading[0]).unwrap();
    let other = nodes.iter().find(|n| n.name != leading[0]).unwrap();
    let stopped_at = Instant::now();
    signal(paused.orchestrator.pid(), libc::SIGSTOP);
    let (after_stop, third) = watch_failover(&marker, second, stopped_at).await;
    println!("fleet: SIGSTOP of the leader → the singleton running on another node: {after_stop:?}");
    assert!(
        after_stop < LEASE_TTL + Duration::from_secs(1),
        "fail-over took {after_stop:?}"
    );
    assert!(
        !instances(&marker).contains(&second),
        "the paused node's instance still runs"
    );
    // The paused node comes back and stands by: still one instance.
    signal(paused.orchestrator.pid(), libc::SIGCONT);
    let standing_by = eventually(SETTLE, || async {
        let body = fleet_view(&paused.api, "/api/orchestration/services").await;
        (body["services"]["scheduler"]["leader"] == false).then_some(())
    })
    .await;
    assert!(standing_by.is_some(), "the resumed node never stood by");
    assert_eq!(instances(&marker), [third]);

    // etcd's leader killed: etcd elects another and nothing else changes; the traffic of a steady window is
    // measured meanwhile.
    let metrics_before = http_text("GET", &format!("{}/metrics", other.api), "").await.1;
    let window = Instant::now();
    let lost = etcd.leader().await;
    etcd.kill_member(lost).await;
    let steady_until = Instant::now() + 2 * LEASE_TTL;
    while Instant::now() < steady_until {
        assert_eq!(
            instances(&marker),
            [third],
            "the singleton moved after etcd's leader was lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics_after = http_text("GET", &format!("{}/metrics", other.api), "").await.1;
    let elapsed = window.elapsed().as_secs_f64();
    let per_minute =
        |series: &str| (sample(&metrics_after, series) - sample(&metrics_before, series)) * 60.0 / elapsed;
    println!(
        "fleet: etcd traffic of one node (lease_ttl {LEASE_TTL:?}): {:.0} requests, {:.0} bytes sent, {:.0} bytes received per minute",
        per_minute("orchestrator_cluster_requests_total{result=\"ok\"}"),
        per_minute("orchestrator_cluster_sent_bytes_total"),
        per_minute("orchestrator_cluster_received_bytes_total"),
    );
    assert_eq!(sample(&metrics_after, "orchestrator_cluster_up"), 1.0);
    // Renewals, members and the elections' safety-net reads, each every fifth of the lease (1.4 to 1.6 s):
    // about 120 calls a minute. Read every 250 ms instead of watched, the elections alone would be 240.
    let calls = per_minute("orchestrator_cluster_requests_total{result=\"ok\"}");
    assert!(
        calls < 240.0,
        "{calls:.0} etcd calls a minute: the elections are not watched"
    );
    let leader_series = "orchestrator_singleton_leader{service=\"scheduler\"}";
    let mut leads = 0.0;
    for api in [&paused.api, &other.api] {
        leads += sample(
            &http_text("GET", &format!("{api}/metrics"), "").await.1,
            leader_series,
        );
    }
    assert_eq!(
        leads, 1.0,
        "orchestrator_singleton_leader must be 1 on exactly one node"
    );

    // Every etcd member killed: each node goes on supervising its own services, says so, and comes back.
    for i in 0..3 {
        etcd.kill_member(i).await;
    }
    let local = format!("local-{}", other.name);
    let detail = fleet_view(&other.api, &format!("/api/orchestration/service/{local}")).await;
    let local_pid = detail["pid"].as_u64().expect("a pid") as u32;
    let down = eventually(SETTLE, || async {
        let (_, ready) = http("GET", &format!("{}/readyz", other.api), "").await;
        (ready["cluster"]["up"] == false).then_some(ready)
    })
    .await
    .expect("/readyz never said etcd was lost");
    assert!(down["cluster"]["last_error"].is_string(), "{down}");
    signal(local_pid, libc::SIGKILL);
    let restarted = eventually(SETTLE, || async {
        let detail = fleet_view(&other.api, &format!("/api/orchestration/service/{local}")).await;
        let pid = detail["pid"].as_u64().map(|pid| pid as u32);
        (detail["status"] == "running" && pid.is_some_and(|pid| pid != local_pid)).then_some(())
    })
    .await;
    assert!(
        restarted.is_some(),
        "a local service was not restarted while etcd was down"
    );
    // Without etcd no node can hold a lease: the singleton stops everywhere (and never runs twice).
    let fenced = eventually(SETTLE, || async { instances(&marker).is_empty().then_some(()) }).await;
    assert!(fenced.is_some(), "the singleton kept running without a lease");

    for i in 0..3 {
        etcd.start_member(i);
    }
    for i in 0..3 {
        etcd.wait_healthy(i).await;
    }
    let back = eventually(SETTLE, || async {
        let services = fleet_view(&other.api, "/api/orchestration/services?scope=fleet").await;
        let (_, ready) = http("GET", &format!("{}/readyz", other.api), "").await;
        (ready["cluster"]["up"] == true && services["total_services"] == 4).then_some(())
    })
    .await;
    assert!(back.is_some(), "the nodes did not republish once etcd was back");
    let again = eventually(SETTLE, || async { (instances(&marker).len() == 1).then_some(()) }).await;
    assert!(
        again.is_some(),
        "the singleton did not run again once etcd was back"
    );

    for node in &mut nodes {
        assert!(node.orchestrator.stop().await.success());
    }
    assert!(
        instances(&marker).is_empty(),
        "a singleton instance outlived the fleet"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// etcd with TLS (server certificate from the test's CA, client certificates required) and authentication:
/// a node with the CA, its client certificate and the right password joins and runs its singleton; a node
/// with a wrong password keeps supervising, and says why it is not in the fleet.
#[tokio::test]
async fn a_node_joins_an_etcd_with_tls_client_certificates_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (spare_port(), spare_port());
    let start = |tls: bool| {
        let scheme = if tls { "https" } else { "http" };
        let mut command = Command::new(etcd_binary());
        command
            .arg("--name=m0")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={scheme}://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster=m0=http://127.0.0.1:{peer}"));
        if tls {
            command
                .arg(format!("--cert-file={}", dir.path().join("server.pem").display()))
                .arg(format!("--key-file={}", dir.path().join("server.key").display()))
                .arg(format!(
                    "--trusted-ca-file={}",
                    dir.path().join("ca.pem").display()
                ))
                .arg("--client-cert-auth");
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // Users, a role on the fleet's prefix, and authentication on, over plain HTTP first.
    let mut etcd = start(false);
    let base = format!("http://127.0.0.1:{client}");
    let healthy = eventually(SETTLE, || async {
        let (status, body) = http("GET", &format!("{base}/health"), "").await;
        (status == 200 && body["health"] == "true").then_some(())
    })
    .await;
    assert!(healthy.is_some(), "etcd never became healthy");
    let b64 = |text: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name": "root", "password": "root-secret"}"#.to_owned(),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user": "root", "role": "root"}"#.to_owned(),
        ),
        (
            "/v3/auth/user/add",
            r#"{"name": "fog", "password": "fog-secret"}"#.to_owned(),
        ),
        ("/v3/auth/role/add", r#"{"name": "fog"}"#.to_owned()),
        (
            "/v3/auth/role/grant",
            format!(
                r#"{{"name": "fog", "perm": {{"permType": "READWRITE", "key": "{}", "range_end": "{}"}}}}"#,
                b64("/fog-orchestrator/"),
                b64("/fog-orchestrator0")
            ),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user": "fog", "role": "fog"}"#.to_owned(),
        ),
        ("/v3/auth/enable", "{}".to_owned()),
    ] {
        let (status, answer) = http_text("POST", &format!("{base}{path}"), &body).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    etcd.start_kill().unwrap();
    etcd.wait().await.unwrap();

    // The same member, now with TLS and client certificates required.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let signed = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        // No Common Name: with authentication on, etcd's gateway refuses a client certificate that has one.
        params.distinguished_name = rcgen::DistinguishedName::new();
        let certificate = params.signed_by(&key, &ca, &ca_key).unwrap();
        (certificate.pem(), key.serialize_pem())
    };
    let (server, server_key) = signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]);
    let (node, node_key) = signed(vec!["fog-orchestrator".to_owned()]);
    for (name, text) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server),
        ("server.key", server_key),
        ("node.pem", node),
        ("node.key", node_key),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let _etcd = start(true);
    let node_config = |name: &str, password: &str| {
        format!(
            r#"
[cluster]
etcd_endpoints = ["https://127.0.0.1:{client}"]
name = "secure"
node = "{name}"
lease_ttl = "3s"
ca_file = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
username = "fog"
password = "{password}"

[services.local]
command = ["sleep", "3600"]

[services.scheduler]
command = ["sleep", "3600"]
singleton = true
"#,
            ca = dir.path().join("ca.pem").display(),
            cert = dir.path().join("node.pem").display(),
            key = dir.path().join("node.key").display(),
        )
    };
    let mut good = Orchestrator::start(&node_config("good", "fog-secret"));
    let good_api = good.api().await;
    let joined = eventually(SETTLE, || async {
        let (_, ready) = http("GET", &format!("{good_api}/readyz"), "").await;
        let (_, scheduler) = http(
            "GET",
            &format!("{good_api}/api/orchestration/service/scheduler"),
            "",
        )
        .await;
        (ready["cluster"]["up"] == true && scheduler["status"] == "running").then_some(())
    })
    .await;
    let (_, ready) = http("GET", &format!("{good_api}/readyz"), "").await;
    assert!(
        joined.is_some(),
        "the node never joined over TLS with its password: {ready}"
    );
    let published = eventually(SETTLE, || async {
        let fleet = fleet_view(&good_api, "/api/orchestration/services?scope=fleet").await;
        (fleet["services"]["good/scheduler"]["leader"] == true).then_some(())
    })
    .await;
    assert!(
        published.is_some(),
        "the leading node never published its singleton"
    );

    let mut wrong = Orchestrator::start(&node_config("wrong", "not-the-password"));
    let wrong_api = wrong.api().await;
    let refused = eventually(SETTLE, || async {
        let (_, ready) = http("GET", &format!("{wrong_api}/readyz"), "").await;
        let error = ready["cluster"]["last_error"].as_str()?.to_owned();
        (ready["cluster"]["up"] == false).then_some(error)
    })
    .await
    .expect("the node with a wrong password never said why it is not in the fleet");
    assert!(refused.contains("authentication failed"), "{refused}");
    let local = fleet_view(&wrong_api, "/api/orchestration/service/local").await;
    assert_eq!(
        local["status"], "running",
        "local supervision goes on without etcd"
    );
    assert!(wrong.stop().await.success());
    assert!(good.stop().await.success());
}

/// Fleet mode that cannot be set up (a CA file that does not exist) stops the start before any service
/// is spawned, and says why.
#[tokio::test]
async fn unusable_etcd_tls_settings_stop_the_start_with_nothing_spawned() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("{}.{}", 7000 + fastrand::u32(..1000), fastrand::u32(..1_000_000));
    let path = dir.path().join("orchestrator.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\netcd_endpoints = [\"https://127.0.0.1:{}\"]\nca_file = \"{}\"\n\
             [services.local]\ncommand = [\"sleep\", \"{marker}\"]\n",
            spare_port(),
            dir.path().join("missing-ca.pem").display()
        ),
    )
    .unwrap();
    let output = tokio::time::timeout(
        SETTLE,
        Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"))
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env_remove("ORCHESTRATOR_CONFIG")
            .output(),
    )
    .await
    .expect("the start fails at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot set up fleet mode"), "{stderr}");
    assert!(stderr.contains("missing-ca.pem"), "{stderr}");
    assert!(instances(&marker).is_empty(), "a service was spawned");
}
