//! Launching service instances: real child processes, in-process services, and the [`Instance`] handle the
//! actor keeps for either.
//!
//! A child process is spawned in its own process group (so SIGTERM and SIGKILL reach everything it started),
//! with the kernel's parent-death signal set to SIGKILL (so it never outlives the orchestrator, even one
//! killed with SIGKILL), contained as well as the kernel allows ([`Containment`]), its output handed to the
//! actor (module `output`), and a task that reaps it.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::sync::watch;

use super::containment::{self, Containment};
use super::output::Output;
use super::spawn_server::{self, Served};
use super::state::Exit;
use crate::config::ServiceSpec;
use crate::health::ProbeOutcome;

/// Placeholder in commands for the running orchestrator binary.
pub const EXE_PLACEHOLDER: &str = "${ORCHESTRATOR_EXE}";

/// Why an instance could not be launched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

/// Ends a running instance: gracefully, or at once.
pub trait Control: Send + Sync {
    /// Asks the instance to stop (SIGTERM to the process group).
    fn terminate(&self);
    /// Stops the instance at once (SIGKILL to the process group).
    fn kill(&self);
}

/// One running instance of a service: its pid, a way to end it, and its exit when it comes.
pub struct Instance {
    pid: Option<u32>,
    exit: watch::Receiver<Option<Exit>>,
    control: Box<dyn Control>,
    health: Option<Arc<dyn Service>>,
    output: Option<Output>,
    /// Fleet mode: the lease fence of a singleton instance, ended with the instance.
    fence: Option<crate::cluster::FenceGuard>,
    /// A pidfd of the process running the service's command, when that is not the process waited for
    /// (the shim of a PID namespace): readable as soon as the command's process ends, before its init and
    /// shim have followed it.
    main: Option<AsyncFd<OwnedFd>>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Puts the instance under a singleton's lease fence, which ends with it.
    pub fn fence(&mut self, guard: crate::cluster::FenceGuard) {
        self.fence = Some(guard);
    }

    /// An instance whose exit will be sent on `exit` (by whoever waits for it).
    pub fn new(pid: Option<u32>, exit: watch::Receiver<Option<Exit>>, control: Box<dyn Control>) -> Self {
        Self {
            pid,
            exit,
            control,
            health: None,
            output: None,
            fence: None,
            main: None,
        }
    }

    /// The pidfd of the process running the service's command, if it is watched apart from the instance.
    pub(crate) fn take_main(&mut self) -> Option<AsyncFd<OwnedFd>> {
        self.main.take()
    }

    /// The process's stdout and stderr, once, for the actor to forward.
    pub fn take_output(&mut self) -> Option<Output> {
        self.output.take()
    }

    /// The process id, for processes.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Sends SIGTERM (or the in-process equivalent).
    pub fn terminate(&self) {
        if !self.has_exited() {
            self.control.terminate();
        }
    }

    /// Sends SIGKILL (or the in-process equivalent).
    pub fn kill(&self) {
        if !self.has_exited() {
            self.control.kill();
        }
    }

    /// Whether the instance has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Resolves when the instance exits. Cancel-safe: dropping it early loses nothing.
    pub async fn exited(&mut self) -> Exit {
        match self.exit.wait_for(Option::is_some).await {
            Ok(exit) => exit
                .clone()
                .unwrap_or_else(|| Exit::Error("no exit status".into())),
            Err(_) => Exit::Error("the task watching the instance ended".into()),
        }
    }

    /// A receiver of the instance's exit, for waiting on it alongside other work.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    /// The in-process service whose `health` answers checks when the spec has no probe.
    pub fn health_source(&self) -> Option<Arc<dyn Service>> {
        self.health.clone()
    }
}

/// Starts instances of services.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// Starts one instance of `spec`.
    async fn launch(&self, spec: &ServiceSpec) -> Result<Instance, LaunchError>;

    /// The service `name` stopped for good (stopped, failed, removed): anything kept ready for its next
    /// start can go.
    fn forget(&self, _name: &str) {}

    /// Starts the instance kept ready for `spec`'s next start now, untraced, ahead of the [`launch`] that
    /// takes it: the restart is decided, and the bookkeeping before its launch (the exit's log line,
    /// metrics, events and spans) need not hold the service up. Whether there was one to start. If no
    /// launch follows, [`forget`] stops it.
    ///
    /// [`launch`]: Launcher::launch
    /// [`forget`]: Launcher::forget
    fn start_ahead(&self, _spec: &ServiceSpec) -> bool {
        false
    }
}

/// A service that runs inside the orchestrator's process, registered from Rust code.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Starts the service; returning `Ok` means it started.
    async fn start(&self) -> Result<(), String>;
    /// Stops the service gracefully.
    async fn stop(&self) -> Result<(), String>;
    /// Checks the service's health (used when its config names no probe).
    async fn health(&self) -> ProbeOutcome;
}

/// Launches an in-process [`Service`]: `start` on launch; terminating calls `stop`; killing abandons it.
pub struct InProcessLauncher {
    service: Arc<dyn Service>,
}

impl InProcessLauncher {
    /// A launcher for one in-process service.
    pub fn new(service: Arc<dyn Service>) -> Self {
        Self { service }
    }
}

#[async_trait]
impl Launcher for InProcessLauncher {
    async fn launch(&self, _spec: &ServiceSpec) -> Result<Instance, LaunchError> {
        self.service.start().await.map_err(LaunchError)?;
        let (sender, exit) = watch::channel(None);
        let control = InProcessControl {
            service: self.service.clone(),
            exit: Arc::new(sender),
        };
        let mut instance = Instance::new(None, exit, Box::new(control));
        instance.health = Some(self.service.clone());
        Ok(instance)
    }
}

struct InProcessControl {
    service: Arc<dyn Service>,
    exit: Arc<watch::Sender<Option<Exit>>>,
}

impl Control for InProcessControl {
    fn terminate(&self) {
        let service = self.service.clone();
        let exit = self.exit.clone();
        tokio::spawn(async move {
            let result = match service.stop().await {
                Ok(()) => Exit::Code(0),
                Err(error) => Exit::Error(error),
            };
            exit.send_if_modified(|current| current.is_none().then(|| *current = Some(result)).is_some());
        });
    }

    fn kill(&self) {
        self.exit.send_if_modified(|current| {
            current
                .is_none()
                .then(|| *current = Some(Exit::Signal(libc::SIGKILL)))
                .is_some()
        });
    }
}

/// Spawns services as child processes, each contained as well as the kernel allows ([`Containment`]).
///
/// A service restarted without delay (`restart.initial_delay = "0s"`) gets a **standby** after its first
/// restart: the next instance, spawned in advance up to the exec of its program (the spawn helper, its PID
/// namespace and init; see [`containment::helper`]), so the next restart only has to tell it to exec. It is
/// made on the supervision thread after the restart, used if the service's spec is still the same, and
/// killed when the service stops for good ([`Launcher::forget`]) or the orchestrator exits.
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    containment: Containment,
    /// Per service restarted without delay: its standby, once made (the key exists from its first launch).
    standbys: Arc<std::sync::Mutex<std::collections::HashMap<String, Option<Standby>>>>,
}

/// How long after a restart its next standby is made.
const STANDBY_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// An instance spawned in advance, waiting for the word to exec (on its stdin).
#[derive(Debug)]
struct Standby {
    /// What it was made for: used only for the same spec.
    spec: ServiceSpec,
    child: Process,
    /// Told to exec already ([`Launcher::start_ahead`]): the launch only takes it.
    started: bool,
}

/// A spawned child: started by the spawn server, or `posix_spawn`ed here (through tokio).
#[derive(Debug)]
enum Process {
    Served(Served),
    Spawned(tokio::process::Child),
}

impl Process {
    fn id(&self) -> Option<u32> {
        match self {
            Process::Served(served) => Some(served.id()),
            Process::Spawned(child) => child.id(),
        }
    }

    /// Whether it has not exited yet.
    fn running(&mut self) -> bool {
        match self {
            Process::Served(served) => matches!(served.try_wait(), Ok(None)),
            Process::Spawned(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Its stdin, when it is a pipe.
    fn take_stdin(&mut self) -> Option<pipe::Sender> {
        match self {
            Process::Served(served) => served.stdin.take(),
            Process::Spawned(child) => {
                pipe::Sender::from_owned_fd(child.stdin.take()?.into_owned_fd().ok()?).ok()
            }
        }
    }

    /// Its stdout and stderr pipes.
    fn take_output(&mut self) -> Option<Output> {
        let (stdout, stderr) = match self {
            Process::Served(served) => (served.stdout.take()?, served.stderr.take()?),
            Process::Spawned(child) => {
                let stdout = child.stdout.take()?.into_owned_fd().ok()?;
                let stderr = child.stderr.take()?.into_owned_fd().ok()?;
                (
                    pipe::Receiver::from_owned_fd(stdout).ok()?,
                    pipe::Receiver::from_owned_fd(stderr).ok()?,
                )
            }
        };
        Some(Output { stdout, stderr })
    }

    /// Waits for its exit, and reaps it.
    async fn wait(&mut self) -> Exit {
        let waited = match self {
            Process::Served(served) => served.wait().await,
            Process::Spawned(child) => {
                child
                    .wait()
                    .await
                    .map(|status| match (status.code(), status.signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(signal)) => Exit::Signal(signal),
                        (None, None) => Exit::Error(format!("unknown exit status {status}")),
                    })
            }
        };
        waited.unwrap_or_else(|error| Exit::Error(format!("cannot wait for the process: {error}")))
    }
}

impl Default for ProcessLauncher {
    fn default() -> Self {
        Self {
            containment: Containment::detect(),
            standbys: Arc::default(),
        }
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(&self, spec: &ServiceSpec) -> Result<Instance, LaunchError> {
        let command = checked_command(spec).inspect_err(|_| {
            // A standby started ahead runs no command that fails its start: it goes too.
            if let Some(slot) = self.standbys().get_mut(spec.name.as_str())
                && slot.as_ref().is_some_and(|standby| standby.started)
            {
                *slot = None;
            }
        })?;
        let (child, main) = match self.take_standby(spec).await {
            // Its namespace, init and command's process were made in advance, so the latter is there.
            Some(child) => {
                let main = (self.containment == Containment::PidNamespace)
                    .then(|| child.id().and_then(main_process))
                    .flatten();
                (child, main)
            }
            None => (self.spawn(spec, &command, false)?, None),
        };
        if self.keeps_standby(spec) {
            self.prepare_standby(spec, command);
        }
        let mut instance = started(child);
        instance.main = main;
        Ok(instance)
    }

    fn forget(&self, name: &str) {
        // Dropping the standby's child kills it (`kill_on_drop`): its init, and with it the namespace.
        self.standbys().remove(name);
    }

    fn start_ahead(&self, spec: &ServiceSpec) -> bool {
        let mut standbys = self.standbys();
        let Some(Some(standby)) = standbys.get_mut(spec.name.as_str()) else {
            return false;
        };
        if standby.started || standby.spec != *spec || !standby.child.running() {
            return false;
        }
        let Some(stdin) = standby.child.take_stdin() else {
            return false;
        };
        // An empty line: no TRACEPARENT. One byte into an empty pipe is written at once; should it not
        // be, the standby sees its stdin closed and leaves, and the launch spawns anew.
        standby.started = matches!(stdin.try_write(b"\n"), Ok(1));
        if standby.started {
            // A pipe's wake-up tells the kernel that the writer is about to sleep, so the standby is
            // queued on this thread's CPU, even with the other one idle; but this thread goes on (with
            // the exit's bookkeeping, 0.25 ms, or other services), and the standby would wait for it.
            // Yielding lets it run first.
            // SAFETY: sched_yield takes no arguments and cannot fail on Linux.
            unsafe { libc::sched_yield() };
        }
        standby.started
    }
}

impl ProcessLauncher {
    /// The standbys, locked (a panic elsewhere while holding them leaves them usable).
    fn standbys(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Option<Standby>>> {
        self.standbys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns `command` for `spec` (as a standby, waiting for the word to exec, when `standby`): through
    /// the spawn server when there is one, else with `posix_spawn` of the helper (or a fork).
    fn spawn(&self, spec: &ServiceSpec, command: &[String], standby: bool) -> Result<Process, LaunchError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| LaunchError("empty command".into()))?;
        if let Some(served) = self.serve(spec, command, standby) {
            return served
                .map(Process::Served)
                .map_err(|error| LaunchError(format!("cannot start {program}: {error}")));
        }
        let pid_namespace = self.containment == Containment::PidNamespace;
        let mut process = match containment::helper(self.containment, standby) {
            Some((helper, helper_args)) => {
                let mut process = Command::new(helper);
                process.args(helper_args).arg(program);
                process
            }
            None => {
                let mut process = Command::new(program);
                containment::in_forked_child(&mut process, pid_namespace);
                process
            }
        };
        if standby {
            // The word to exec comes on stdin, with the start's TRACEPARENT; killed if never used.
            process.stdin(Stdio::piped()).kill_on_drop(true);
        } else {
            // The `start service` span this launch runs in, for the child's own spans (W3C TRACEPARENT);
            // never an inherited one that says nothing about this start. The service's own env still wins.
            match crate::telemetry::trace::traceparent() {
                Some(traceparent) => process.env("TRACEPARENT", traceparent),
                None => process.env_remove("TRACEPARENT"),
            };
            process.stdin(Stdio::null());
        }
        process
            .args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &spec.working_dir {
            process.current_dir(dir);
        }
        process
            .spawn()
            .map(Process::Spawned)
            .map_err(|error| LaunchError(format!("cannot start {program}: {error}")))
    }

    /// [`Self::spawn`] through the spawn server, with what `posix_spawn` would have given the helper: the
    /// same arguments, the orchestrator's environment with the service's on top (and the start's
    /// `TRACEPARENT`), the working directory. `None` when the server cannot take it.
    fn serve(
        &self,
        spec: &ServiceSpec,
        command: &[String],
        standby: bool,
    ) -> Option<std::io::Result<Served>> {
        let helper = containment::spawner()?;
        let (_, helper_args) = containment::helper(self.containment, standby)?;
        let argv = std::iter::once(helper.as_os_str())
            .chain(helper_args.iter().map(std::ffi::OsStr::new))
            .chain(command.iter().map(std::ffi::OsStr::new))
            .collect();
        let mut env: std::collections::BTreeMap<std::ffi::OsString, std::ffi::OsString> =
            std::env::vars_os().collect();
        if !standby {
            match crate::telemetry::trace::traceparent() {
                Some(traceparent) => env.insert("TRACEPARENT".into(), traceparent.into()),
                None => env.remove(std::ffi::OsStr::new("TRACEPARENT")),
            };
        }
        env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
        let env = env
            .into_iter()
            .map(|(mut name, value)| {
                name.push("=");
                name.push(value);
                name
            })
            .collect();
        let directory = match &spec.working_dir {
            Some(dir) => Some(std::path::absolute(dir).ok()?),
            None => None,
        };
        let request = spawn_server::Request {
            argv,
            env,
            directory: directory.as_deref(),
            standby,
        };
        spawn_server::spawn(helper, &request)
    }

    /// Whether `spec` is restarted without delay and was launched before (its standby's slot exists).
    /// Registers this launch as its first otherwise.
    fn keeps_standby(&self, spec: &ServiceSpec) -> bool {
        if !spec.restart.initial_delay.is_zero() || !containment::helper_available() {
            return false;
        }
        let mut standbys = self.standbys();
        if standbys.contains_key(spec.name.as_str()) {
            return true;
        }
        standbys.insert(spec.name.to_string(), None);
        false
    }

    /// `spec`'s standby, told to exec now, if it has one made for this very spec and still alive; a stale
    /// one is dropped (and so killed).
    async fn take_standby(&self, spec: &ServiceSpec) -> Option<Process> {
        let mut standby = self.standbys().get_mut(spec.name.as_str())?.take()?;
        if standby.started && standby.spec == *spec {
            // Started ahead of this launch: running its command already, or exited, which its instance
            // reports as any exit.
            return Some(standby.child);
        }
        if standby.spec != *spec || !standby.child.running() {
            return None;
        }
        let mut stdin = standby.child.take_stdin()?;
        // The start's TRACEPARENT (or an empty line): one short line into an empty pipe.
        let line = format!("{}\n", crate::telemetry::trace::traceparent().unwrap_or_default());
        stdin.write_all(line.as_bytes()).await.ok()?;
        drop(stdin);
        Some(standby.child)
    }

    /// Makes `spec`'s next standby, on a task of its own (after this launch, on the same thread: the
    /// parent-death signal follows the thread that spawned). Dropped if the service was forgotten
    /// meanwhile.
    fn prepare_standby(&self, spec: &ServiceSpec, command: Vec<String>) {
        let (launcher, spec) = (self.clone(), spec.clone());
        tokio::spawn(async move {
            // Not while the instance just told to exec starts: it comes first for the CPU.
            tokio::time::sleep(STANDBY_AFTER).await;
            let child = match launcher.spawn(&spec, &command, true) {
                Ok(child) => child,
                Err(error) => {
                    tracing::debug!(service = %spec.name, %error, "no standby");
                    return;
                }
            };
            if let Some(slot) = launcher.standbys().get_mut(spec.name.as_str())
                && slot.is_none()
            {
                *slot = Some(Standby {
                    spec,
                    child,
                    started: false,
                });
            }
        });
    }
}

/// A pidfd of the process that runs (or is about to run) the command of the instance whose shim is
/// `shim`: the only child of the shim's only child, the namespace's init. `None` if the tree is not so
/// (the command's process ended already, or `/proc` does not list children).
fn main_process(shim: u32) -> Option<AsyncFd<OwnedFd>> {
    let init = only_child(shim)?;
    let main = only_child(init)?;
    let pidfd = spawn_server::watched_pidfd(libc::pid_t::try_from(main).ok()?).ok()?;
    // The PID may have been reused since it was listed: the process is the init's child, and it was
    // when its parent was read if it still exists now (a PID is not reused before its process is reaped).
    let parent = std::fs::read_to_string(format!("/proc/{main}/stat")).ok()?;
    let parent = parent
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse::<u32>()
        .ok()?;
    // SAFETY: signal 0 to the pidfd's process: only checks that it exists.
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    (parent == init && alive).then_some(pidfd)
}

/// The only child of `pid`, from `/proc`.
fn only_child(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let mut children = children.split_whitespace().map(str::parse::<u32>);
    match (children.next(), children.next()) {
        (Some(Ok(child)), None) => Some(child),
        _ => None,
    }
}

/// `spec`'s command, expanded, once it is known to be able to run: found, and its working directory there
/// (a command that cannot run is a failed start now, not a crash of the helper later).
fn checked_command(spec: &ServiceSpec) -> Result<Vec<String>, LaunchError> {
    let command = expand(
        spec.command
            .as_deref()
            .ok_or_else(|| LaunchError(format!("service {:?} has no command", spec.name)))?,
    )?;
    let (program, _) = command
        .split_first()
        .ok_or_else(|| LaunchError("empty command".into()))?;
    resolve(program, spec)?;
    if let Some(dir) = &spec.working_dir
        && !dir.is_dir()
    {
        return Err(LaunchError(format!(
            "working_dir {} is not a directory",
            dir.display()
        )));
    }
    Ok(command)
}

/// The instance of a spawned child: its output, a task that reaps it, and its process group to signal.
fn started(mut child: Process) -> Instance {
    let pid = child.id();
    let output = child.take_output();
    let (sender, exit) = watch::channel(None);
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = sender.send(Some(status));
    });
    let control = ProcessGroup {
        pid: pid.unwrap_or(0),
    };
    let mut instance = Instance::new(pid, exit, Box::new(control));
    instance.output = output;
    instance
}

/// `${ORCHESTRATOR_EXE}` → the running binary, in every element of the command.
fn expand(command: &[String]) -> Result<Vec<String>, LaunchError> {
    if !command.iter().any(|part| part.contains(EXE_PLACEHOLDER)) {
        return Ok(command.to_vec());
    }
    let exe = std::env::current_exe()
        .map_err(|error| LaunchError(format!("cannot find the orchestrator's own binary: {error}")))?;
    let exe = exe.to_string_lossy();
    Ok(command
        .iter()
        .map(|part| part.replace(EXE_PLACEHOLDER, &exe))
        .collect())
}

/// Checks that `program` can be executed, as `execvp` will look for it: a path as is (a relative one from
/// the service's `working_dir`), a bare name in the directories of `PATH` (the service's own `PATH` when its
/// `env` sets one).
fn resolve(program: &str, spec: &ServiceSpec) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        // A relative path is found from the service's working directory, where it is executed.
        let path = match &spec.working_dir {
            Some(dir) => dir.join(program),
            None => std::path::PathBuf::from(program),
        };
        return if executable(&path) {
            Ok(())
        } else {
            Err(LaunchError(format!(
                "cannot start {program}: {}",
                match std::fs::metadata(&path) {
                    Err(error) => error.to_string(),
                    Ok(_) => "not an executable file".to_owned(),
                }
            )))
        };
    }
    let path = spec
        .env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| std::ffi::OsString::from(value))
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        Ok(())
    } else {
        Err(LaunchError(format!("cannot start {program}: not found in PATH")))
    }
}

/// Signals a child's whole process group.
struct ProcessGroup {
    pid: u32,
}

impl ProcessGroup {
    fn signal(&self, signal: i32) {
        let Ok(group) = i32::try_from(self.pid) else {
            return;
        };
        if group <= 1 {
            return;
        }
        // SAFETY: kill has no memory-safety preconditions; a negative pid addresses the process group the
        // child leads (it was spawned with process_group(0)).
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

impl Control for ProcessGroup {
    fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
}
