//! A fake world for deterministic supervision tests: a launcher whose processes exit, hang or ignore SIGTERM
//! on command, and a health target whose answers the test sets. Everything it sees is logged with tokio's
//! (paused) time, so tests assert exact schedules.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use fog_orchestrator::config::{Config, Probe, ServiceSpec};
use fog_orchestrator::health::probe::Prober;
use fog_orchestrator::health::{FailureReason, ProbeOutcome};
use fog_orchestrator::supervisor::launcher::Control;
use fog_orchestrator::supervisor::{
    Exit, Instance, LaunchError, Launcher, ServiceHandle, ServiceState, Snapshot, Supervisor,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::Instant;

/// Something the fake world saw, with the time it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Launch(String),
    Terminate(String),
    Kill(String),
    Exit(String),
    /// The replacement kept ready was started ahead of its launch.
    StartAhead(String),
    /// What was kept ready for the service's next start can go.
    Forget(String),
}

/// How one fake service behaves; the test changes it at will.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Checks pass (once `ready_after` has passed since launch).
    pub healthy: bool,
    /// Checks never answer.
    pub hang: bool,
    /// Time from launch until checks can pass.
    pub ready_after: Duration,
    /// Launches fail.
    pub fail_launch: bool,
    /// SIGTERM is ignored (only SIGKILL ends the process).
    pub ignore_sigterm: bool,
    /// The process exits by itself this long after launch.
    pub exit_after: Option<Duration>,
    /// A replacement is kept ready, which `start_ahead` starts.
    pub standby: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            healthy: true,
            hang: false,
            ready_after: Duration::ZERO,
            fail_launch: false,
            ignore_sigterm: false,
            exit_after: None,
            standby: false,
        }
    }
}

#[derive(Default)]
struct Process {
    exit: Option<Arc<watch::Sender<Option<Exit>>>>,
    launched_at: Option<Instant>,
}

#[derive(Default)]
struct WorldState {
    behaviour: HashMap<String, Behaviour>,
    processes: HashMap<String, Process>,
    events: Vec<(Instant, Event)>,
    next_pid: u32,
    /// Services launched while an instance of theirs was still alive.
    overlaps: Vec<String>,
    /// Handles of the services whose published snapshot a start ahead notes.
    handles: HashMap<String, ServiceHandle>,
    /// The published snapshot of a service at each start ahead.
    ahead: Vec<Snapshot>,
}

/// The fake launcher and health target, shared by the supervisor and the test.
#[derive(Clone, Default)]
pub struct World {
    state: Arc<Mutex<WorldState>>,
}

impl World {
    fn lock(&self) -> MutexGuard<'_, WorldState> {
        self.state.lock().expect("the world lock is never poisoned")
    }

    /// Changes how `service` behaves from now on.
    pub fn set(&self, service: &str, change: impl FnOnce(&mut Behaviour)) {
        change(self.lock().behaviour.entry(service.to_owned()).or_default());
    }

    /// Makes the running process of `service` exit with `code`.
    pub fn crash(&self, service: &str, code: i32) {
        let sender = self.lock().processes.get(service).and_then(|p| p.exit.clone());
        if let Some(sender) = sender {
            self.exit(service, &sender, Exit::Code(code));
        }
    }

    /// Notes `handle`'s published snapshot whenever its service's replacement is started ahead.
    pub fn watch(&self, handle: ServiceHandle) {
        self.lock().handles.insert(handle.name().to_owned(), handle);
    }

    /// The published snapshots noted at each start ahead.
    pub fn seen_ahead(&self) -> Vec<Snapshot> {
        self.lock().ahead.clone()
    }

    /// Everything seen so far.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.lock().events.clone()
    }

    /// When `service` was launched, every time.
    pub fn launches(&self, service: &str) -> Vec<Instant> {
        self.events()
            .into_iter()
            .filter(|(_, event)| *event == Event::Launch(service.to_owned()))
            .map(|(at, _)| at)
            .collect()
    }

    /// The services sent SIGTERM, in order.
    pub fn terminations(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|(_, event)| match event {
                Event::Terminate(name) => Some(name),
                _ => None,
            })
            .collect()
    }

    /// Services that were launched while an instance of theirs still ran (never, if all is well).
    pub fn overlapping_launches(&self) -> Vec<String> {
        self.lock().overlaps.clone()
    }

    /// Whether `service` has a live process.
    pub fn is_running(&self, service: &str) -> bool {
        self.lock()
            .processes
            .get(service)
            .is_some_and(|p| p.exit.is_some())
    }

    fn record(&self, event: Event) {
        self.lock().events.push((Instant::now(), event));
    }

    fn exit(&self, service: &str, sender: &Arc<watch::Sender<Option<Exit>>>, status: Exit) {
        {
            let mut state = self.lock();
            let current = state.processes.get(service).and_then(|p| p.exit.as_ref());
            if current.is_some_and(|c| Arc::ptr_eq(c, sender)) {
                state.processes.remove(service);
            }
        }
        if sender.borrow().is_none() {
            self.record(Event::Exit(service.to_owned()));
            let _ = sender.send(Some(status));
        }
    }
}

#[async_trait]
impl Launcher for World {
    async fn launch(&self, spec: &ServiceSpec) -> Result<Instance, LaunchError> {
        let name = spec.name.to_string();
        self.record(Event::Launch(name.clone()));
        let behaviour = self.lock().behaviour.get(&name).cloned().unwrap_or_default();
        if behaviour.fail_launch {
            return Err(LaunchError(format!("{name}: no such file or directory")));
        }
        let (sender, exit) = watch::channel(None);
        let sender = Arc::new(sender);
        let pid = {
            let mut state = self.lock();
            if state.processes.get(&name).is_some_and(|p| p.exit.is_some()) {
                state.overlaps.push(name.clone());
            }
            state.next_pid += 1;
            state.processes.insert(
                name.clone(),
                Process {
                    exit: Some(sender.clone()),
                    launched_at: Some(Instant::now()),
                },
            );
            1000 + state.next_pid
        };
        if let Some(after) = behaviour.exit_after {
            let (world, sender, name) = (self.clone(), sender.clone(), name.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                world.exit(&name, &sender, Exit::Code(1));
            });
        }
        let control = FakeControl {
            world: self.clone(),
            name,
            sender,
        };
        Ok(Instance::new(Some(pid), exit, Box::new(control)))
    }

    fn forget(&self, name: &str) {
        self.record(Event::Forget(name.to_owned()));
    }

    fn start_ahead(&self, spec: &ServiceSpec) -> bool {
        let name = spec.name.to_string();
        let (standby, handle) = {
            let state = self.lock();
            let standby = state.behaviour.get(&name).is_some_and(|b| b.standby);
            (standby, state.handles.get(&name).cloned())
        };
        if !standby {
            return false;
        }
        if let Some(handle) = handle {
            let snapshot = handle.snapshot();
            self.lock().ahead.push(snapshot);
        }
        self.record(Event::StartAhead(name));
        true
    }
}

struct FakeControl {
    world: World,
    name: String,
    sender: Arc<watch::Sender<Option<Exit>>>,
}

impl Control for FakeControl {
    fn terminate(&self) {
        self.world.record(Event::Terminate(self.name.clone()));
        let ignore = self
            .world
            .lock()
            .behaviour
            .get(&self.name)
            .is_some_and(|b| b.ignore_sigterm);
        if !ignore {
            self.world.exit(&self.name, &self.sender, Exit::Signal(15));
        }
    }

    fn kill(&self) {
        self.world.record(Event::Kill(self.name.clone()));
        self.world.exit(&self.name, &self.sender, Exit::Signal(9));
    }
}

#[async_trait]
impl Prober for World {
    async fn probe(&self, service: &str, _probe: &Probe) -> ProbeOutcome {
        let (behaviour, launched_at) = {
            let state = self.lock();
            let behaviour = state.behaviour.get(service).cloned().unwrap_or_default();
            let launched_at = state.processes.get(service).and_then(|p| p.launched_at);
            (behaviour, launched_at)
        };
        if behaviour.hang {
            return std::future::pending().await;
        }
        let Some(launched_at) = launched_at else {
            return ProbeOutcome::fail(FailureReason::Connect, "connection refused");
        };
        if launched_at.elapsed() < behaviour.ready_after {
            return ProbeOutcome::fail(FailureReason::Connect, "connection refused");
        }
        if behaviour.healthy {
            ProbeOutcome::pass("Service health check passed")
        } else {
            ProbeOutcome::fail(FailureReason::HttpStatus, "503 Service Unavailable")
        }
    }
}

/// A config from TOML; every service with a `command` runs in the fake world.
pub fn config(toml: &str) -> Config {
    Config::from_toml(toml).unwrap_or_else(|error| panic!("{error}"))
}

/// Starts a supervisor for `toml` in `world`.
pub fn supervise(world: &World, toml: &str) -> Supervisor {
    Supervisor::builder(config(toml))
        .launcher(Arc::new(world.clone()))
        .prober(Arc::new(world.clone()))
        .start()
        .expect("the supervisor starts")
}

/// The handle of `name`.
pub fn service(supervisor: &Supervisor, name: &str) -> ServiceHandle {
    supervisor
        .service(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// Waits (in paused time, bounded) until `name` reaches `state`.
pub async fn reach(supervisor: &Supervisor, name: &str, state: ServiceState) -> Snapshot {
    within(
        Duration::from_secs(3600),
        service(supervisor, name).wait_for(|s| s.state == state),
    )
    .await
}

/// Runs `future`, failing the test if it takes longer than `limit` of (paused) time.
pub async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .expect("waited too long")
}

/// The FOG topology with fake commands, an HTTP probe on each, and fast startup probes.
pub const FOG: &str = r#"
[defaults.health]
check_interval = "5s"
timeout = "1s"
[services.dao]
critical = true
command = ["fake"]
health.http = "http://fake/health"
[services.scheduler]
optional_depends_on = ["dao"]
command = ["fake"]
health.http = "http://fake/health"
[services.edge]
optional_depends_on = ["dao"]
command = ["fake"]
health.http = "http://fake/health"
[services.fog_coordinator]
priority = 2
command = ["fake"]
health.http = "http://fake/health"
[services.harvest]
depends_on = ["edge"]
command = ["fake"]
health.http = "http://fake/health"
[services.onion]
depends_on = ["fog_coordinator"]
command = ["fake"]
health.http = "http://fake/health"
[services.p2p]
optional_depends_on = ["fog_coordinator"]
command = ["fake"]
health.http = "http://fake/health"
[services.vpn_coordinator]
depends_on = ["fog_coordinator", "onion"]
command = ["fake"]
health.http = "http://fake/health"
[services.betanet]
priority = 5
optional_depends_on = ["p2p", "onion"]
command = ["fake"]
health.http = "http://fake/health"
[services.bitchat]
priority = 5
optional_depends_on = ["p2p"]
command = ["fake"]
health.http = "http://fake/health"
"#;

/// Resolves when process `pid` has exited (works for processes that are not our children).
pub async fn exited(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return; // already gone
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the descriptor is owned by the AsyncFd for as long as it is registered.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }) else {
        panic!("cannot watch pid {pid}");
    };
    let _ = fd.readable().await.unwrap();
}
