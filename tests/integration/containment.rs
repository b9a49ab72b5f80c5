//! Every process a service starts ends with it: double-forked `setsid` daemons, grandchildren that ignore
//! SIGTERM, a crash loop's leftovers, a fork bomb, and all of them when the orchestrator is SIGKILLed.
//! Real processes under the built binary; each test marks its processes with a unique `sleep` duration and
//! finds them in /proc from outside (their own pids are namespace-local). A service is ready only once its
//! descendants exist (an exec probe counts them), so nothing is waited for by sleeping.

use fog_orchestrator::supervisor::containment::Containment;
use tokio::time::timeout;

use crate::binary::{LIMIT, Orchestrator, http, message, signal};
use crate::harness::exited;

/// A marker no other process on the machine has: `sleep 987654.<random>`; variants end in `1`, `2`, ...
fn marker() -> String {
    format!("987654.{}", fastrand::u64(1_000_000_000..9_999_999_999))
}

/// Processes whose command line starts with `sleep <marker>`.
fn marked(marker: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with(wanted.as_bytes()))
        })
        .collect()
}

/// Processes whose command line mentions `marker` anywhere.
fn mentioning(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .windows(marker.len())
                    .any(|window| window == marker.as_bytes())
            })
        })
        .collect()
}

/// Waits until every process in `pids` has exited.
async fn all_exited(pids: &[u32], what: &str) {
    for &pid in pids {
        timeout(LIMIT, exited(pid))
            .await
            .unwrap_or_else(|_| panic!("{what}: process {pid} is still alive"));
    }
}

/// An exec probe that passes once at least `count` marked processes run.
fn probe_for(marker: &str, count: usize) -> String {
    format!(
        "health.exec = [\"sh\", \"-c\", \"test $(pgrep -c -f '^sleep {marker}') -ge {count}\"]\n\
         health.startup_timeout = \"20s\"\n"
    )
}

/// A service that starts a setsid daemon ignoring SIGTERM, a grandchild in its group ignoring SIGTERM, and
/// its main process, all marked; ready once the three run.
fn escaper(mark: &str) -> String {
    let command = format!(
        "setsid sh -c \\\"trap '' TERM; exec sleep {mark}1\\\" & (trap '' TERM; exec sleep {mark}2) & exec sleep {mark}3"
    );
    format!(
        "[services.escaper]\ncommand = [\"sh\", \"-c\", \"{command}\"]\n{}",
        probe_for(mark, 3)
    )
}

fn namespaces() -> bool {
    let available = Containment::detect() == Containment::PidNamespace;
    if !available {
        eprintln!("PID namespaces are not available here: the escape tests need them");
    }
    available
}

#[tokio::test]
async fn escaped_daemons_and_stubborn_grandchildren_end_with_stop_restart_and_shutdown() {
    if !namespaces() {
        return;
    }
    let mark = marker();
    let mut orchestrator = Orchestrator::start(&escaper(&mark));
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let first = marked(&mark);
    assert_eq!(first.len(), 3, "{first:?}");

    let (status, body) = http("POST", &format!("{api}/api/orchestration/stop/escaper"), "").await;
    assert_eq!(status, 200, "{body}");
    all_exited(&first, "after stop").await;

    let (status, body) = http("POST", &format!("{api}/api/orchestration/start/escaper"), "").await;
    assert_eq!(status, 200, "{body}");
    let second = marked(&mark);
    assert_eq!(second.len(), 3, "{second:?}");
    let (status, body) = http("POST", &format!("{api}/api/orchestration/restart/escaper"), "{}").await;
    assert_eq!(status, 200, "{body}");
    all_exited(&second, "after restart").await;

    let third = marked(&mark);
    assert_eq!(third.len(), 3, "{third:?}");
    assert_eq!(orchestrator.stop().await.code(), Some(0));
    all_exited(&third, "after shutdown").await;
    assert!(marked(&mark).is_empty());
}

/// The soft limit of `pid`'s open files, from `/proc/<pid>/limits` (what `ulimit -Sn` says inside it).
fn open_file_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Under the soft limit most distributions set (1,024), about 330 services would start and the rest fail
/// with "Too many open files"; here the soft limit is 64 and 40 services need three descriptors each. The
/// orchestrator raises its own limit to the hard one, and every service starts with the one it was given.
#[tokio::test]
async fn more_services_than_the_soft_open_file_limit_allows_all_start_with_that_limit() {
    const SOFT: u64 = 64;
    const SERVICES: usize = 40;
    let (_, hard) = open_file_limit(std::process::id());
    if hard < 1024 {
        eprintln!("the hard open-file limit here is {hard}: too low to show the raise");
        return;
    }
    let mark = marker();
    // Ready once its command runs (an exec probe, itself started with the limit, finds it).
    let config: String = (0..SERVICES)
        .map(|i| {
            format!(
                "[services.s{i}]\ncommand = [\"sleep\", \"{mark}{i}\"]\n\
                 health.exec = [\"sh\", \"-c\", \"test $(ulimit -Sn) = {SOFT} && pgrep -f '^sleep {mark}{i}$'\"]\n\
                 health.startup_timeout = \"20s\"\n"
            )
        })
        .collect();
    let mut orchestrator = Orchestrator::start_limited(&config, SOFT);
    let summary = orchestrator.wait_ready().await;
    assert!(
        message(&summary).starts_with(&format!("{SERVICES} services ready")),
        "{summary}"
    );
    assert_eq!(
        open_file_limit(orchestrator.pid()),
        (hard, hard),
        "the orchestrator's own limit is raised"
    );
    let services = marked(&mark);
    assert_eq!(services.len(), SERVICES);
    for pid in &services {
        assert_eq!(
            open_file_limit(*pid),
            (SOFT, hard),
            "a service starts with the limit the orchestrator was given"
        );
    }
    assert_eq!(orchestrator.stop().await.code(), Some(0));
    all_exited(&services, "after shutdown").await;
}

#[tokio::test]
async fn a_crash_loop_leaks_no_daemons() {
    if !namespaces() {
        return;
    }
    let mark = marker();
    let config = format!(
        "[services.leaky]\ncommand = [\"sh\", \"-c\", \"setsid sleep {mark}1 & exit 1\"]\n\
         [services.leaky.restart]\ninitial_delay = \"20ms\"\nmax_attempts = 4\n"
    );
    let mut orchestrator = Orchestrator::start(&config);
    orchestrator
        .wait_for("the crash loop to end", |f| {
            f["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("service failed"))
        })
        .await;
    assert!(marked(&mark).is_empty(), "daemons left: {:?}", marked(&mark));
    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

#[tokio::test]
async fn a_fork_bomb_is_stopped_whole() {
    if !namespaces() {
        return;
    }
    let mark = marker();
    // 60 loops, each in a session of its own and deaf to SIGTERM, forking a short-lived sleeper ten times
    // a second for ever, and a main process.
    let short = format!("0.0{}", &mark[7..]);
    let command = format!(
        "i=0; while [ $i -lt 60 ]; do setsid sh -c \\\"trap '' TERM; while :; do sleep {short}; done\\\" & \
         i=$((i+1)); done; exec sleep {mark}2"
    );
    // Ready once the 60 loops run (`whil[e]` keeps the probe from matching its own command line).
    let config = format!(
        "[services.bomb]\ncommand = [\"sh\", \"-c\", \"{command}\"]\n\
         health.exec = [\"sh\", \"-c\", \"test $(pgrep -c -f 'whil[e] :; do sleep {short}') -ge 60\"]\n\
         health.startup_timeout = \"30s\"\n"
    );
    let mut orchestrator = Orchestrator::start(&config);
    let api = orchestrator.api().await;
    orchestrator.wait_ready().await;
    let before = mentioning(&short);
    assert!(before.len() >= 60, "{}", before.len());
    let (status, body) = http("POST", &format!("{api}/api/orchestration/stop/bomb"), "").await;
    assert_eq!(status, 200, "{body}");
    all_exited(&before, "after stop").await;
    assert!(
        mentioning(&short).is_empty(),
        "still forking: {:?}",
        mentioning(&short)
    );
    assert!(marked(&mark).is_empty());
    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

#[tokio::test]
async fn nothing_survives_a_sigkill_of_the_orchestrator() {
    if !namespaces() {
        return;
    }
    let mark = marker();
    let mut orchestrator = Orchestrator::start(&escaper(&mark));
    orchestrator.wait_ready().await;
    let descendants = marked(&mark);
    assert_eq!(descendants.len(), 3);
    signal(orchestrator.pid(), libc::SIGKILL);
    orchestrator.child.wait().await.unwrap();
    all_exited(&descendants, "after the orchestrator was killed").await;
}

#[tokio::test]
async fn a_flood_of_output_is_rate_limited_and_counted() {
    let config = "[services.chatty]\n\
        command = [\"sh\", \"-c\", \"i=0; while [ $i -lt 5000 ]; do echo line $i; i=$((i+1)); done; sleep 1.2; echo done; exec sleep 1000\"]\n\
        output.rate_limit = 100\n";
    let mut orchestrator = Orchestrator::start(config);
    let api = orchestrator.api().await;
    orchestrator
        .wait_for("the line after the flood", |f| f["message"] == "done")
        .await;
    let dropped: u64 = orchestrator
        .seen
        .iter()
        .filter_map(|l| l["fields"]["dropped"].as_u64())
        .sum();
    assert!(dropped >= 4000, "{dropped} dropped");
    let forwarded = orchestrator
        .seen
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("line "))
        })
        .count() as u64;
    assert!(forwarded <= 250, "{forwarded} lines forwarded at 100/s");
    assert_eq!(forwarded + dropped, 5000, "every line forwarded or counted");
    let (_, metrics) = crate::binary::http_text("GET", &format!("{api}/metrics"), "").await;
    assert!(
        metrics.contains(&format!(
            "orchestrator_service_output_dropped_lines_total{{service=\"chatty\"}} {dropped}"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("output_dropped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(orchestrator.stop().await.code(), Some(0));
}

#[tokio::test]
async fn output_can_go_to_a_rotated_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busy.log");
    let file = file.display();
    let config = format!(
        "[services.busy]\n\
         command = [\"sh\", \"-c\", \"i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; exec sleep 1000\"]\n\
         health.exec = [\"grep\", \"-q\", \"^line 2999$\", \"{file}\"]\n\
         health.startup_timeout = \"20s\"\n\
         [services.busy.output]\nfile = \"{file}\"\nmax_size = 8192\nbackups = 2\n"
    );
    let mut orchestrator = Orchestrator::start(&config);
    orchestrator.wait_ready().await;
    let current = std::fs::read_to_string(dir.path().join("busy.log")).unwrap();
    assert!(current.ends_with("line 2999\n"));
    for name in ["busy.log", "busy.log.1", "busy.log.2"] {
        let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(size <= 8192, "{name}: {size} bytes");
    }
    assert!(!dir.path().join("busy.log.3").exists(), "two backups kept");
    assert_eq!(orchestrator.stop().await.code(), Some(0));
    assert!(
        !orchestrator
            .seen
            .iter()
            .any(|l| l["fields"]["message"] == "line 5"),
        "nothing of it in the orchestrator's log"
    );
}

/// The orchestrator's own binary is the spawn helper where the embedded `fog-spawn` cannot run (other
/// architectures, `vm.memfd_noexec`): run here as such, it behaves as `fog-spawn` does (whose own tests are
/// in the library).
#[test]
fn the_binary_as_its_own_spawn_helper_ends_as_the_service_did_and_starts_it_clean() {
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    let modes: &[&str] = match Containment::detect() {
        Containment::PidNamespace => &["process-group", "pid-namespace"],
        Containment::ProcessGroup => &["process-group"],
    };
    let helper = |mode: &str, script: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fog-orchestrator"));
        command
            .args([
                "__contain",
                &std::process::id().to_string(),
                mode,
                "sh",
                "-c",
                script,
            ])
            .stdout(std::process::Stdio::piped());
        // As an orchestrator started in the background by a shell, with a descriptor it inherited.
        // SAFETY: signal and dup2 are async-signal-safe; they change the child's own state.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                libc::dup2(1, 7);
                Ok(())
            });
        }
        command.output().unwrap()
    };
    for mode in modes {
        assert_eq!(helper(mode, "exit 3").status.code(), Some(3), "{mode}");
        assert_eq!(
            helper(mode, "kill -TERM $$").status.signal(),
            Some(libc::SIGTERM),
            "{mode}"
        );
        let limited = helper(&format!("{mode},nofile=512"), "ulimit -Sn");
        assert_eq!(
            String::from_utf8_lossy(&limited.stdout),
            "512\n",
            "{mode}: the open-file limit of the nofile word"
        );
        let clean = helper(mode, "ls /proc/self/fd; grep SigIgn /proc/self/status");
        assert_eq!(
            String::from_utf8_lossy(&clean.stdout),
            "0\n1\n2\n3\nSigIgn:\t0000000000000000\n",
            "{mode}: only stdin, stdout, stderr (and ls's own directory); nothing ignored"
        );
    }
}
