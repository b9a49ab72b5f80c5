//! Supervision with real processes and real time. Run with `cargo bench --bench supervision`, or name
//! one or more of `startup`, `restart`, `checks`, `idle` after `--` to run only those.
//!
//! - startup: the FOG graph, each service a `demo-service` with a 200 ms start-up delay: launch to all-ready.
//! - restart: SIGKILL of a child to its replacement running, restart delay 0.
//! - checks: orchestrator CPU per 1,000 HTTP health checks, 100 services checked every second.
//! - traced=RATIO: the same with every span exported over OTLP/HTTP (batched, to a sink in another
//!   process) and passing checks sampled at RATIO (`telemetry.check_sample_ratio`), e.g. `traced=1.0`.
//! - idle: 1,000 idle children supervised: orchestrator CPU per minute and resident memory.
//! - metrics: rendering `/metrics` for 1,000 services and for 10 (with check history and API traffic), as a
//!   scrape does (`Metrics::exposition`: the kept parts shared, not copied): after every service was
//!   checked (what a scrape every 15 s finds), after every family changed, after a heartbeat, and with
//!   nothing changed.
//! - reload: 1,000 idle children; a reload that changes one service's command, one that adds and removes one,
//!   and one that changes nothing: how long applying takes (until the restarted or added service runs), and
//!   how many of the other 999 kept their process.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fog_orchestrator::config::Config;
use fog_orchestrator::supervisor::{ServiceState, Supervisor};

const DEMO: &str = env!("CARGO_BIN_EXE_fog-orchestrator");

fn main() {
    // The allocator settings of the binary, so a 4 MB `/metrics` text is not mapped and faulted in anew.
    fog_orchestrator::tune_malloc();
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let runs = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let traced = wanted
        .iter()
        .find_map(|w| w.strip_prefix("traced="))
        .map(|ratio| ratio.parse::<f64>().expect("traced=RATIO, a number from 0 to 1"));
    if let Some(ratio) = traced {
        traced_checks(ratio);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if runs("startup") {
        runtime.block_on(startup());
    }
    if runs("restart") {
        runtime.block_on(restart());
    }
    if runs("checks") {
        runtime.block_on(checks(""));
    }
    if runs("idle") {
        runtime.block_on(idle());
    }
    if runs("metrics") {
        runtime.block_on(metrics(1000));
        runtime.block_on(metrics(10));
    }
    if runs("reload") {
        runtime.block_on(reload());
    }
}

async fn reload() {
    use fog_orchestrator::config::Plan;
    const CHILDREN: usize = 1000;
    let topology = |changed: &str, extra: &str| {
        let mut text = String::new();
        for i in 0..CHILDREN {
            let seconds = if i == 500 { changed } else { "3600" };
            text.push_str(&format!(
                "[services.idle{i}]\ncommand = [\"sleep\", \"{seconds}\"]\n"
            ));
        }
        text + extra
    };
    let before = topology("3600", "");
    let supervisor = Supervisor::builder(config(&before)).start().unwrap();
    supervisor.initialized().await;
    let pids = |supervisor: &Supervisor| -> Vec<Option<u32>> {
        supervisor.services().iter().map(|s| s.snapshot().pid).collect()
    };
    let steps = [
        ("one command changed", topology("3601", "")),
        (
            "one service added",
            topology("3601", "[services.extra]\ncommand = [\"sleep\", \"3602\"]\n"),
        ),
        ("one service removed", topology("3601", "")),
        ("nothing changed", topology("3601", "")),
    ];
    let mut running = config(&before);
    for (what, text) in steps {
        let new = config(&text);
        let plan = Plan::between(&running, &new);
        let kept_before = pids(&supervisor);
        let started = Instant::now();
        let applied = supervisor.reload(new.clone(), &plan).await.expect("applied");
        let took = started.elapsed();
        let kept_after = pids(&supervisor);
        let untouched = kept_before
            .iter()
            .zip(&kept_after)
            .filter(|(a, b)| a.is_some() && a == b)
            .count();
        assert!(applied.iter().all(|a| a.ok), "{applied:?}");
        println!(
            "reload   1,000 services, {what}: applied in {:.1} ms; {untouched} processes kept",
            took.as_secs_f64() * 1e3
        );
        running = new;
    }
    supervisor.shutdown(Duration::from_secs(5)).await;
}

fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|error| panic!("{error}"))
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Resident memory of this process, in MiB.
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn startup() {
    let fog =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fog.toml")).unwrap();
    let mut times = Vec::new();
    for _ in 0..5 {
        let mut text = fog.replace("${ORCHESTRATOR_EXE}", DEMO).replace(
            "\"demo-service\",",
            "\"demo-service\", \"--startup-delay\", \"200ms\",",
        );
        for (offset, port) in free_ports(10).into_iter().enumerate() {
            text = text.replace(
                &format!("127.0.0.1:{}", 7100 + offset),
                &format!("127.0.0.1:{port}"),
            );
        }
        let config = config(&text);
        let graph = config.graph.clone();
        let start = Instant::now();
        let supervisor = Supervisor::builder(config).start().unwrap();
        supervisor.initialized().await;
        let elapsed = start.elapsed();
        assert!(
            supervisor.services().iter().all(|s| s.snapshot().ready),
            "every service ready"
        );
        // Never before its dependencies allowed: each started after its dependencies were ready, so it
        // became ready at least 200 ms after each of them.
        for service in supervisor.services().iter() {
            let ready = service.snapshot().ready_since.unwrap();
            for dependency in graph
                .dependencies(service.name())
                .into_iter()
                .chain(graph.optional_dependencies(service.name()))
            {
                let before = supervisor
                    .service(dependency)
                    .unwrap()
                    .snapshot()
                    .ready_since
                    .unwrap();
                assert!(ready.duration_since(before).unwrap_or_default() >= Duration::from_millis(200));
            }
        }
        times.push(elapsed);
        supervisor.shutdown(Duration::from_secs(5)).await;
    }
    times.sort_unstable();
    println!(
        "startup  FOG graph, 200 ms start-up delay each: launch to all-ready median {:.0} ms, worst {:.0} ms \
         (5 runs; critical path 6 layers x 200 ms = 1200 ms)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}

async fn restart() {
    let supervisor = Supervisor::builder(config(
        "[services.sleeper]\ncommand = [\"sleep\", \"3600\"]\n\
         [services.sleeper.restart]\ninitial_delay = \"0s\"\nmax_attempts = 100000\n",
    ))
    .start()
    .unwrap();
    let sleeper = supervisor.service("sleeper").unwrap().clone();
    let mut times = Vec::new();
    for _ in 0..300 {
        let running = sleeper
            .wait_for(|s| s.state == ServiceState::Running && s.pid.is_some())
            .await;
        let pid = running.pid.unwrap();
        let start = Instant::now();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        sleeper
            .wait_for(|s| s.state == ServiceState::Running && s.pid.is_some_and(|p| p != pid))
            .await;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    println!(
        "restart  SIGKILL to replacement running (restart delay 0): median {:.2} ms, p90 {:.2} ms, worst {:.2} ms \
         (300 kills)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    supervisor.shutdown(Duration::from_secs(5)).await;
}

/// `telemetry` starts the config (a `[telemetry]` table, or nothing).
async fn checks(telemetry: &str) {
    const SERVICES: usize = 100;
    const SECONDS: u64 = 20;
    let port = free_ports(1)[0];
    let mut target = tokio::process::Command::new(DEMO)
        .args([
            "demo-service",
            "--name",
            "target",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut text = telemetry.to_owned();
    for i in 0..SERVICES {
        text.push_str(&format!(
            "[services.s{i}]\nhealth.http = \"http://127.0.0.1:{port}/health\"\nhealth.check_interval = \"1s\"\n\
             health.timeout = \"500ms\"\nhealth.startup_interval = \"50ms\"\n"
        ));
    }
    let supervisor = Supervisor::builder(config(&text)).start().unwrap();
    supervisor.initialized().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_before, checks_before) = (cpu_time(), checks_recorded(&supervisor).await);
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let (cpu_after, checks_after) = (cpu_time(), checks_recorded(&supervisor).await);
    let checks = checks_after - checks_before;
    let cpu = cpu_after - cpu_before;
    let failures: usize = {
        let mut failed = 0;
        for service in supervisor.services().iter() {
            failed += service
                .report()
                .await
                .unwrap()
                .history
                .iter()
                .filter(|r| !r.passed)
                .count();
        }
        failed
    };
    println!(
        "checks   {SERVICES} services checked every second over HTTP: {checks} checks in {SECONDS} s, \
         orchestrator CPU {:.1} ms per 1,000 checks ({failures} failed)",
        cpu.as_secs_f64() * 1e3 / checks as f64 * 1000.0
    );
    supervisor.shutdown(Duration::from_secs(5)).await;
    let _ = target.kill().await;
}

/// `checks` with trace export on: OTLP/HTTP to a sink in another process (so its work is not counted), the
/// batch exporter's thread counted as the orchestrator's.
fn traced_checks(ratio: f64) {
    let port = free_ports(1)[0];
    let sink = r#"
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"#;
    let mut sink = std::process::Command::new("python3")
        .args(["-c", sink, &port.to_string()])
        .spawn()
        .expect("python3 for the OTLP sink");
    std::thread::sleep(Duration::from_millis(500));
    let settings = fog_orchestrator::config::TelemetrySettings {
        log_format: fog_orchestrator::config::LogFormat::Pretty,
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
        otlp_protocol: fog_orchestrator::config::OtlpProtocol::Http,
        check_sample_ratio: ratio,
    };
    // (The supervisor reads the ratio from its config, below; the settings here only start the export.)
    let telemetry = fog_orchestrator::telemetry::init(&settings);
    println!("traced   spans exported over OTLP/HTTP, passing checks sampled at {ratio}:");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(checks(&format!("[telemetry]\ncheck_sample_ratio = {ratio:?}\n")));
    drop(runtime);
    telemetry.shutdown();
    let _ = sink.kill();
    let _ = sink.wait();
}

/// Checks recorded so far (history is capped at 100 per service, so read it within 100 checks).
async fn checks_recorded(supervisor: &Supervisor) -> usize {
    let mut total = 0;
    for service in supervisor.services().iter() {
        total += service.report().await.unwrap().history.len();
    }
    total
}

async fn idle() {
    const CHILDREN: usize = 1000;
    const SECONDS: u64 = 60;
    let mut text = String::new();
    for i in 0..CHILDREN {
        text.push_str(&format!("[services.idle{i}]\ncommand = [\"sleep\", \"3600\"]\n"));
    }
    let base = resident_mib();
    let supervisor = Supervisor::builder(config(&text)).start().unwrap();
    supervisor.initialized().await;
    let running = supervisor
        .services()
        .iter()
        .filter(|s| s.snapshot().state == ServiceState::Running)
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_time();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let cpu = cpu_time() - cpu_before;
    println!(
        "idle     {running} idle children supervised: orchestrator CPU {:.1} ms per minute, resident memory \
         {:.1} MiB ({:.1} MiB before starting them)",
        cpu.as_secs_f64() * 1e3 * 60.0 / SECONDS as f64,
        resident_mib(),
        base
    );
    supervisor.shutdown(Duration::from_secs(5)).await;
}

async fn metrics(services: usize) {
    let mut text = String::new();
    for i in 0..services {
        text.push_str(&format!("[services.s{i}]\n"));
        if i > 0 {
            text.push_str(&format!("depends_on = [\"s{}\"]\n", i / 2));
        }
    }
    let supervisor = Supervisor::builder(config(&text)).start().unwrap();
    supervisor.initialized().await;
    for service in supervisor.services().iter() {
        service.check_now().await.unwrap();
    }
    let metrics = supervisor.metrics().clone();
    let bytes = metrics
        .render(fog_orchestrator::telemetry::metrics::Format::Text)
        .len();
    let renders = if services < 100 { 2000 } else { 50 };
    let format = fog_orchestrator::telemetry::metrics::Format::Text;
    let registry = metrics.for_registry();
    // `work` timed `count` times, after `before` each time (untimed), sorted.
    let timed = |count: usize, before: &dyn Fn(), work: &dyn Fn()| {
        let mut times: Vec<Duration> = (0..count)
            .map(|_| {
                before();
                let start = Instant::now();
                work();
                start.elapsed()
            })
            .collect();
        times.sort_unstable();
        times
    };
    let scrape = || drop(std::hint::black_box(metrics.exposition(format)));
    // What a scrape every 15 s finds of services checked every 15 s or more often: every service checked
    // since the last scrape (its check counter and durations written anew), and a heartbeat.
    let mut checked = Vec::with_capacity(renders);
    for _ in 0..renders {
        for service in supervisor.services().iter() {
            service.check_now().await.unwrap();
        }
        registry.heartbeat("s0", std::time::SystemTime::now());
        let start = Instant::now();
        scrape();
        checked.push(start.elapsed());
    }
    checked.sort_unstable();
    // Every part written anew: a service added and removed (every family's lines change).
    let everything = timed(
        renders,
        &|| {
            drop(metrics.service("added", "added", false, false, 0));
            metrics.remove_service("added");
        },
        &scrape,
    );
    // A heartbeat: only the heartbeat families written anew.
    let heartbeat = timed(
        renders,
        &|| registry.heartbeat("s0", std::time::SystemTime::now()),
        &scrape,
    );
    // Nothing changed since the last scrape: every part's text is reused.
    let unchanged = timed(renders, &|| {}, &scrape);
    let gathers = timed(20, &|| {}, &|| {
        drop(std::hint::black_box(metrics.registry().gather()))
    });
    println!(
        "metrics  of which gather: median {:.2} ms",
        percentile(&gathers, 0.5).as_secs_f64() * 1e3
    );
    for (times, what) in [
        (&checked, "after every service was checked"),
        (&everything, "after every family changed"),
        (&heartbeat, "after a heartbeat"),
        (&unchanged, "nothing changed"),
    ] {
        println!(
            "metrics  /metrics for {services} services ({} KiB), {what}: render median {:.3} ms, worst {:.3} ms \
             ({renders} renders)",
            bytes / 1024,
            percentile(times, 0.5).as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
    supervisor.shutdown(Duration::from_secs(5)).await;
}
