//! The real thing: the built binary running the FOG demo topology as child processes (each a
//! `demo-service` with real HTTP health checks), on ports picked at run time. Tests wait on the
//! orchestrator's own JSON log lines and on process exits, never on fixed sleeps.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use crate::binary::{LIMIT, Orchestrator, http, message, signal, spare_port};
use crate::harness::exited;

fn is_ready_line(fields: &Value, service: &str) -> bool {
    message(fields) == "service ready" && fields["service"] == service
}

/// examples/fog.toml with its ports replaced by free ones, restarts after 100 ms.
pub(crate) fn fog_config() -> String {
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fog.toml")).unwrap();
    for (offset, port) in (0..10).map(|_| spare_port()).enumerate() {
        text = text.replace(
            &format!("127.0.0.1:{}", 7100 + offset),
            &format!("127.0.0.1:{port}"),
        );
    }
    let state_dir = tempfile::tempdir().unwrap().keep();
    text = text.replace(
        "\"demo-service\",",
        &format!("\"demo-service\", \"--state-dir\", \"{}\",", state_dir.display()),
    );
    text + "\n[defaults.restart]\ninitial_delay = \"100ms\"\n"
}

/// Process ids of the direct children of `parent`.
fn child_pids(parent: u32) -> Vec<u32> {
    children_of(parent).into_iter().map(|(pid, _)| pid).collect()
}

/// Direct children of `parent` with their state letter (R, S, Z, ...), from /proc: the services' processes
/// (not the orchestrator's spawn server, [`spawn_server_of`]).
fn children_of(parent: u32) -> Vec<(u32, char)> {
    all_children_of(parent)
        .into_iter()
        .filter(|(pid, _, name)| !(name == "fog-spawner" && command_line(*pid).contains("__serve")))
        .map(|(pid, state, _)| (pid, state))
        .collect()
}

/// The orchestrator's spawn server, once it started a service (x86_64 Linux: see `spawner/main.rs`).
fn spawn_server_of(parent: u32) -> Option<u32> {
    all_children_of(parent)
        .into_iter()
        .find(|(pid, _, name)| name == "fog-spawner" && command_line(*pid).contains("__serve"))
        .map(|(pid, _, _)| pid)
}

/// Direct children of `parent` with their state letter and command name, from /proc.
fn all_children_of(parent: u32) -> Vec<(u32, char, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may contain spaces; the fields after its closing parenthesis are fixed.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, name)| name);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            children.push((pid, fields[0].chars().next().unwrap_or('?'), name.to_owned()));
        }
    }
    children
}

#[tokio::test]
async fn the_demo_topology_starts_and_a_killed_child_is_restarted_without_zombies() {
    let mut orchestrator = Orchestrator::start(&fog_config());
    let summary = orchestrator.wait_ready().await;
    assert!(message(&summary).starts_with("10 services ready"), "{summary}");

    let ready = orchestrator
        .seen
        .iter()
        .filter(|l| message(&l["fields"]) == "service ready")
        .count();
    assert_eq!(ready, 10);
    let children = children_of(orchestrator.pid());
    assert_eq!(children.len(), 10, "{children:?}");

    let onion = orchestrator
        .seen
        .iter()
        .find(|l| is_ready_line(&l["fields"], "onion"))
        .and_then(|l| l["fields"]["pid"].as_u64())
        .unwrap() as u32;
    signal(onion, libc::SIGKILL);
    let exit = orchestrator
        .wait_for("the crash", |f| {
            message(f) == "service exited unexpectedly" && f["service"] == "onion"
        })
        .await;
    assert_eq!(exit["status"], "killed by signal 9 (SIGKILL)");
    let again = orchestrator
        .wait_for("onion ready again", |f| is_ready_line(f, "onion"))
        .await;
    let replacement = again["pid"].as_u64().unwrap() as u32;
    assert_ne!(replacement, onion);

    let children = children_of(orchestrator.pid());
    assert!(
        children.iter().all(|(_, state)| *state != 'Z'),
        "zombies: {children:?}"
    );
    assert_eq!(children.len(), 10);
    assert!(children.iter().any(|(pid, _)| *pid == replacement));
    assert!(!children.iter().any(|(pid, _)| *pid == onion));

    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

#[tokio::test]
async fn sigterm_stops_services_in_reverse_order_and_exits_zero() {
    let mut orchestrator = Orchestrator::start(&fog_config());
    let summary = orchestrator.wait_ready().await;
    assert!(message(&summary).starts_with("10 services ready"), "{summary}");
    let children: Vec<u32> = child_pids(orchestrator.pid()).into_iter().collect();

    // stop() has read every remaining log line.
    assert_eq!(orchestrator.stop().await.code(), Some(0));

    let stopped: Vec<String> = orchestrator
        .seen
        .iter()
        .filter(|l| message(&l["fields"]) == "service stopped")
        .map(|l| l["fields"]["service"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stopped.len(), 10, "{}", orchestrator.transcript());
    let position = |name: &str| stopped.iter().position(|n| n == name).unwrap();
    for (dependent, dependency) in [
        ("harvest", "edge"),
        ("onion", "fog_coordinator"),
        ("vpn_coordinator", "onion"),
        ("betanet", "p2p"),
        ("bitchat", "p2p"),
        ("edge", "dao"),
        ("scheduler", "dao"),
    ] {
        assert!(
            position(dependent) < position(dependency),
            "{dependent} after {dependency}: {stopped:?}"
        );
    }
    assert_eq!(stopped.last().map(String::as_str), Some("dao"));
    for pid in children {
        timeout(LIMIT, exited(pid)).await.expect("every child stopped");
    }
}

#[tokio::test]
async fn no_child_survives_a_sigkill_of_the_orchestrator() {
    let mut orchestrator = Orchestrator::start(&fog_config());
    let summary = orchestrator.wait_ready().await;
    assert!(message(&summary).starts_with("10 services ready"), "{summary}");
    let mut children: HashSet<u32> = child_pids(orchestrator.pid()).into_iter().collect();
    assert_eq!(children.len(), 10);
    // The spawn server goes too, where there is one.
    children.extend(spawn_server_of(orchestrator.pid()));

    orchestrator.child.start_kill().unwrap();
    orchestrator.child.wait().await.unwrap();
    for pid in children {
        timeout(LIMIT, exited(pid))
            .await
            .unwrap_or_else(|_| panic!("child {pid} outlived the orchestrator"));
    }
}

#[tokio::test]
async fn a_second_sigterm_kills_a_service_that_ignores_the_first() {
    // Ready only once the trap is installed (a SIGTERM before it would end the shell).
    let dir = tempfile::tempdir().unwrap();
    let trapped = dir.path().join("trapped");
    let trapped = trapped.display();
    let mut orchestrator = Orchestrator::start(&format!(
        "[services.stubborn]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; touch {trapped}; exec sleep 1000\"]\n\
         shutdown.timeout = \"1h\"\nhealth.exec = [\"test\", \"-e\", \"{trapped}\"]\n"
    ));
    let summary = orchestrator.wait_ready().await;
    assert!(message(&summary).starts_with("1 service ready"), "{summary}");
    let children: Vec<u32> = child_pids(orchestrator.pid()).into_iter().collect();
    assert_eq!(children.len(), 1);

    signal(orchestrator.pid(), libc::SIGTERM);
    orchestrator
        .wait_for("the shutdown", |f| message(f).starts_with("shutting down"))
        .await;
    assert!(
        timeout(Duration::from_millis(300), exited(children[0]))
            .await
            .is_err(),
        "SIGTERM is ignored"
    );
    signal(orchestrator.pid(), libc::SIGTERM);
    let status = timeout(LIMIT, orchestrator.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    timeout(LIMIT, exited(children[0]))
        .await
        .expect("killed by the second signal");
    while let Some(line) = orchestrator.lines.recv().await {
        orchestrator.seen.push(line);
    }
    assert!(
        orchestrator
            .seen
            .iter()
            .any(|l| message(&l["fields"]).starts_with("second signal"))
    );
}

/// Starts `demo-service` on a free port; returns the process and its base URL.
async fn demo_service(state_dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"))
        .args([
            "demo-service",
            "--name",
            "probe-me",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state_dir)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = timeout(LIMIT, lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test]
async fn demo_service_injects_faults_and_keeps_sticky_ones() {
    let state = tempfile::tempdir().unwrap();
    let (mut demo, url) = demo_service(state.path()).await;
    let (status, body) = http("GET", &format!("{url}/health"), "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("healthy")));

    let (status, _) = http("POST", &format!("{url}/fault"), "{\"mode\": \"sideways\"}").await;
    assert_eq!(status, 400);
    let (status, _) = http("POST", &format!("{url}/fault"), "not json").await;
    assert_eq!(status, 400);
    let (status, _) = http("DELETE", &format!("{url}/fault"), "").await;
    assert_eq!(status, 405);

    http("POST", &format!("{url}/fault"), "{\"mode\": \"unhealthy\"}").await;
    let (status, body) = http("GET", &format!("{url}/health"), "").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unhealthy")));

    let (status, _) = http(
        "POST",
        &format!("{url}/fault"),
        "{\"mode\": \"crash\", \"sticky\": true}",
    )
    .await;
    assert_eq!(status, 200);
    let exit = timeout(LIMIT, demo.wait()).await.unwrap().unwrap();
    assert_eq!(exit.code(), Some(1));

    // The sticky crash survives into the next instance, which exits at once.
    let again = Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"))
        .args([
            "demo-service",
            "--name",
            "probe-me",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state.path())
        .stderr(Stdio::null())
        .status();
    assert_eq!(timeout(LIMIT, again).await.unwrap().unwrap().code(), Some(1));
}

#[tokio::test]
async fn the_rest_api_serves_the_seed_shapes_over_a_real_socket() {
    let mut orchestrator = Orchestrator::start(&fog_config());
    let api = orchestrator.api().await;
    let summary = orchestrator.wait_ready().await;
    assert!(message(&summary).starts_with("10 services ready"), "{summary}");

    let (status, services) = http("GET", &format!("{api}/api/orchestration/services"), "").await;
    assert_eq!(status, 200);
    for key in ["success", "total_services", "services", "is_ready", "initialized"] {
        assert!(services.get(key).is_some(), "services lacks {key}");
    }
    for key in [
        "status",
        "restart_count",
        "last_restart",
        "last_error",
        "is_critical",
    ] {
        assert!(services["services"]["dao"].get(key).is_some(), "dao lacks {key}");
    }
    assert_eq!(services["is_ready"], true);

    let (_, health) = http("GET", &format!("{api}/api/orchestration/health"), "").await;
    assert_eq!(health["composite_health"], "healthy");
    assert_eq!(
        health["services"]["onion"]["last_check"]["details"]["http_status"],
        200
    );

    let (_, dependencies) = http("GET", &format!("{api}/api/orchestration/dependencies"), "").await;
    assert_eq!(dependencies["shutdown_order"][0], "bitchat");
    let (_, metrics) = http("GET", &format!("{api}/api/orchestration/metrics"), "").await;
    assert_eq!(metrics["metrics"]["running_services"], 10);
    let (_, detail) = http("GET", &format!("{api}/api/orchestration/service/harvest"), "").await;
    assert_eq!(detail["dependencies"]["required"][0], "edge");
    let (_, checked) = http("POST", &format!("{api}/api/orchestration/health/check-now"), "").await;
    assert!(checked["results"]["dao"]["response_time_ms"].as_f64().unwrap() > 0.0);

    let (status, restarted) = http(
        "POST",
        &format!("{api}/api/orchestration/restart/p2p"),
        "{\"force\": false}",
    )
    .await;
    assert_eq!(status, 200, "{restarted}");
    assert_eq!(restarted["status"], "running");
    assert_eq!(restarted["message"], "Service 'p2p' restarted successfully");

    let (status, _) = http("GET", &format!("{api}/readyz"), "").await;
    assert_eq!(status, 200);
    let (status, missing) = http("GET", &format!("{api}/api/orchestration/service/ghost"), "").await;
    assert_eq!((status, missing["success"].clone()), (404, Value::Bool(false)));

    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

#[tokio::test]
async fn promtool_accepts_a_real_scrape() {
    let mut orchestrator = Orchestrator::start(&fog_config());
    let api = orchestrator.api().await;
    let summary = orchestrator.wait_ready().await;
    assert!(message(&summary).starts_with("10 services ready"), "{summary}");
    // Some API traffic first, so its series exist too.
    http("GET", &format!("{api}/api/orchestration/services"), "").await;
    let scrape = {
        use http_body_util::{BodyExt, Empty};
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<bytes::Bytes>>();
        let response = client
            .get(format!("{api}/metrics").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    };
    let text = String::from_utf8_lossy(&scrape);
    for series in [
        "orchestrator_build_info{",
        "orchestrator_service_state{service=\"dao\",state=\"running\"} 1",
        "orchestrator_service_health{service=\"onion\",status=\"healthy\"} 1",
        "orchestrator_health_checks_total{service=\"dao\"}",
        "orchestrator_service_restarts_total{service=\"dao\",reason=\"crashed\"} 0",
        "orchestrator_dependency_info{dependency=\"edge\",kind=\"required\",service=\"harvest\"} 1",
        "orchestrator_api_requests_total{code=\"200\",method=\"GET\",route=\"/api/orchestration/services\"} 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(series), "the scrape lacks {series}");
    }

    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => panic!(
            "promtool is needed ({error}); scripts/test.sh installs it from Debian's prometheus package"
        ),
    };
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = promtool.stdin.take().unwrap();
        stdin.write_all(&scrape).await.unwrap();
    }
    let output = timeout(LIMIT, promtool.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(report.trim().is_empty(), "promtool found problems:\n{report}");

    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

/// Through the spawn helper, a command that cannot run is a failed start at once, with the reason, not a
/// crash of the helper; and a relative command runs from the service's working directory.
#[tokio::test]
async fn the_spawn_helper_reports_what_cannot_start_and_runs_relative_commands_from_working_dir() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 3600\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[services.relative]\ncommand = [\"./run.sh\"]\nworking_dir = \"{}\"\n\
         [services.missing]\ncommand = [\"no-such-command-anywhere\"]\nrestart.max_attempts = 0\n",
        dir.path().display()
    );
    let mut orchestrator = Orchestrator::start(&config);
    let api = orchestrator.api().await;
    let failed = orchestrator
        .wait_for("the failed start", |f| {
            message(f) == "service failed: automatic restarts exhausted; restart it with force=true"
        })
        .await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("start failed: cannot start no-such-command-anywhere: not found in PATH"),
        "{failed}"
    );
    let (_, detail) = http("GET", &format!("{api}/api/orchestration/service/relative"), "").await;
    assert_eq!(detail["status"], "running", "{detail}");
    assert!(detail["pid"].as_u64().is_some());
    assert!(orchestrator.stop().await.success());
}

/// The command line of process `pid`, its arguments joined by spaces (empty once it is gone).
fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|line| String::from_utf8_lossy(&line).replace('\0', " "))
        .unwrap_or_default()
}

/// The standby children of `parent`: spawn helpers waiting for the word to exec.
fn standbys(parent: u32) -> Vec<u32> {
    child_pids(parent)
        .into_iter()
        .filter(|pid| command_line(*pid).contains(",standby "))
        .collect()
}

const ZERO_DELAY: &str = r#"
[services.worker]
command = ["sleep", "3600"]

[services.worker.restart]
initial_delay = "0s"
"#;

/// The orchestrator running [`ZERO_DELAY`], its API, and the pid of the worker's first instance.
async fn zero_delay_worker() -> (Orchestrator, String, u32) {
    let mut orchestrator = Orchestrator::start(ZERO_DELAY);
    let api = orchestrator.api().await;
    let ready = orchestrator
        .wait_for("worker ready", |f| is_ready_line(f, "worker"))
        .await;
    (orchestrator, api, ready["pid"].as_u64().unwrap() as u32)
}

/// SIGKILLs the worker's instance `pid` and returns its replacement's pid, once that is ready.
async fn replaced(orchestrator: &mut Orchestrator, pid: u32) -> u32 {
    signal(pid, libc::SIGKILL);
    let ready = orchestrator
        .wait_for("the worker ready again", |f| {
            is_ready_line(f, "worker") && f["pid"].as_u64() != Some(u64::from(pid))
        })
        .await;
    ready["pid"].as_u64().unwrap() as u32
}

/// A standby child of `parent` other than `besides`, once there is one.
async fn a_standby_besides(parent: u32, besides: u32) -> u32 {
    crate::deploy::eventually("a standby", LIMIT, async || {
        standbys(parent).into_iter().find(|pid| *pid != besides)
    })
    .await
}

#[tokio::test]
async fn a_restart_without_delay_starts_from_a_standby_made_in_advance_which_goes_with_the_service() {
    let (mut orchestrator, api, first) = zero_delay_worker().await;
    let parent = orchestrator.pid();
    // The first start makes no standby: a service that never restarts keeps no process idle.
    assert_eq!(standbys(parent), Vec::<u32>::new());

    let second = replaced(&mut orchestrator, first).await;
    let standby = a_standby_besides(parent, second).await;
    let third = replaced(&mut orchestrator, second).await;
    assert_eq!(third, standby, "the restart used the standby");
    let (status, services) = http("GET", &format!("{api}/api/orchestration/services"), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        services["services"]["worker"]["pid"].as_u64(),
        Some(u64::from(standby))
    );
    assert_eq!(services["services"]["worker"]["restart_count"], 2);
    // It runs the service's command now (itself, or under its init in its PID namespace).
    crate::deploy::eventually("the command run by the standby", LIMIT, async || {
        let mut tree = vec![standby];
        let mut next = 0;
        while let Some(pid) = tree.get(next).copied() {
            tree.extend(child_pids(pid));
            next += 1;
        }
        tree.iter()
            .any(|pid| command_line(*pid) == "sleep 3600 ")
            .then_some(())
    })
    .await;

    // Stopped for good: the next standby (made after that restart) goes too, and nothing is left behind.
    let next = a_standby_besides(parent, standby).await;
    let (status, _) = http("POST", &format!("{api}/api/orchestration/stop/worker"), "").await;
    assert_eq!(status, 200);
    timeout(LIMIT, exited(next))
        .await
        .expect("the standby is killed when the service stops");
    crate::deploy::eventually("no children left", LIMIT, async || {
        children_of(parent).is_empty().then_some(())
    })
    .await;
    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

/// The processes under `root` (itself included), from /proc.
fn tree_of(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(pid) = tree.get(next).copied() {
        tree.extend(all_children_of(pid).into_iter().map(|(pid, _, _)| pid));
        next += 1;
    }
    tree
}

/// The process running `sleep 3600` under `root`, once there is one.
async fn sleep_under(root: u32) -> u32 {
    crate::deploy::eventually("the command running", LIMIT, async || {
        tree_of(root)
            .into_iter()
            .find(|pid| command_line(*pid) == "sleep 3600 ")
    })
    .await
}

/// In a PID namespace, the end of the command's own process starts the standby, before the namespace's
/// init and the shim have ended and been reaped. A stopped shim holds the instance's exit back, so the
/// replacement runs while the old instance still shows as running; once the shim goes on, the exit is
/// recorded and the replacement is the instance.
#[tokio::test]
async fn a_standby_starts_when_the_command_ends_before_its_namespace_has_gone() {
    use fog_orchestrator::supervisor::containment::Containment;
    if Containment::detect() != Containment::PidNamespace {
        eprintln!("PID namespaces are not available here: nothing ends before the shim");
        return;
    }
    let (mut orchestrator, api, first) = zero_delay_worker().await;
    let parent = orchestrator.pid();
    let second = replaced(&mut orchestrator, first).await;
    let standby = a_standby_besides(parent, second).await;
    // Started from a standby: its command's process is watched apart from its shim.
    let third = replaced(&mut orchestrator, second).await;
    assert_eq!(third, standby);
    let next = a_standby_besides(parent, third).await;

    signal(third, libc::SIGSTOP);
    signal(sleep_under(third).await, libc::SIGKILL);
    let replacement = sleep_under(next).await;
    let (_, services) = http("GET", &format!("{api}/api/orchestration/services"), "").await;
    let worker = &services["services"]["worker"];
    assert_eq!(worker["pid"].as_u64(), Some(u64::from(third)), "{worker}");
    assert_eq!(worker["status"], "running", "{worker}");
    assert_eq!(worker["restart_count"], 2, "{worker}");

    signal(third, libc::SIGCONT);
    let ready = orchestrator
        .wait_for("the worker ready again", |f| {
            is_ready_line(f, "worker") && f["pid"].as_u64() == Some(u64::from(next))
        })
        .await;
    assert_eq!(ready["pid"].as_u64(), Some(u64::from(next)));
    let (_, services) = http("GET", &format!("{api}/api/orchestration/services"), "").await;
    assert_eq!(services["services"]["worker"]["restart_count"], 3);
    assert!(tree_of(next).contains(&replacement), "the same process runs on");
    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[tokio::test]
async fn services_start_through_one_spawn_server_and_one_killed_is_replaced_at_the_next_start() {
    let (mut orchestrator, _, first) = zero_delay_worker().await;
    let parent = orchestrator.pid();
    let server = spawn_server_of(parent).expect("a spawn server started the worker");
    // The worker's process is a clone of the server, yet the orchestrator's own child, and shows the
    // helper's command line (or, exec'd already, the service's).
    assert!(child_pids(parent).contains(&first));
    assert!(
        command_line(first).contains("sleep 3600"),
        "{:?}",
        command_line(first)
    );

    signal(server, libc::SIGKILL);
    timeout(LIMIT, exited(server)).await.expect("the server died");
    let second = replaced(&mut orchestrator, first).await;
    let again = spawn_server_of(parent).expect("another spawn server");
    assert_ne!(again, server);
    assert!(child_pids(parent).contains(&second));
    assert_eq!(orchestrator.stop().await.code(), Some(0));
    timeout(LIMIT, exited(again))
        .await
        .expect("the server ends with the orchestrator");
}

#[tokio::test]
async fn a_service_too_large_for_the_spawn_server_starts_through_posix_spawn_all_the_same() {
    // 300 KiB of environment does not fit in one request to the spawn server: the launcher spawns the
    // helper itself, with the same output, exit and restart. (Three variables: execve refuses one over
    // 128 KiB.)
    let part = "x".repeat(100 * 1024);
    let mut orchestrator = Orchestrator::start(&format!(
        "[services.big]\ncommand = [\"sh\", \"-c\", \"echo ${{#A}} ${{#B}} ${{#C}} bytes; exec sleep 3600\"]\n\
         env = {{ A = \"{part}\", B = \"{part}\", C = \"{part}\" }}\n\
         [services.big.restart]\ninitial_delay = \"0s\"\n"
    ));
    let printed = orchestrator
        .wait_for("its output", |f| message(f) == "102400 102400 102400 bytes")
        .await;
    assert_eq!(printed["stream"], "stdout", "{printed}");
    // Ready before or after its output.
    let seen = orchestrator
        .seen
        .iter()
        .find(|l| is_ready_line(&l["fields"], "big"))
        .map(|l| l["fields"].clone());
    let ready = match seen {
        Some(ready) => ready,
        None => {
            orchestrator
                .wait_for("big ready", |f| is_ready_line(f, "big"))
                .await
        }
    };
    let first = ready["pid"].as_u64().unwrap() as u32;
    signal(first, libc::SIGKILL);
    let again = orchestrator
        .wait_for("big ready again", |f| {
            is_ready_line(f, "big") && f["pid"].as_u64() != Some(u64::from(first))
        })
        .await;
    assert!(child_pids(orchestrator.pid()).contains(&(again["pid"].as_u64().unwrap() as u32)));
    // Both starts went around the spawn server, which was never needed.
    assert_eq!(spawn_server_of(orchestrator.pid()), None);
    assert!(orchestrator.stop().await.success());
}

#[tokio::test]
async fn a_standby_made_before_a_reload_changed_the_service_is_not_used() {
    let (mut orchestrator, api, first) = zero_delay_worker().await;
    let parent = orchestrator.pid();
    let second = replaced(&mut orchestrator, first).await;
    let stale = a_standby_besides(parent, second).await;

    // A live key: the service keeps its process, and its spec is no longer the standby's.
    std::fs::write(
        orchestrator.config_path(),
        format!("{ZERO_DELAY}max_attempts = 7\n"),
    )
    .unwrap();
    let (status, answer) = http("POST", &format!("{api}/api/orchestration/reload"), "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["applied"][0]["action"], "updated", "{answer}");

    let third = replaced(&mut orchestrator, second).await;
    assert_ne!(third, stale, "the stale standby was used");
    timeout(LIMIT, exited(stale))
        .await
        .expect("the stale standby is killed");
    assert_eq!(orchestrator.stop().await.code(), Some(0));
}
