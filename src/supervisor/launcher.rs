//! Launching service instances: real child processes, in-process services, and the [`Instance`] handle the
//! actor keeps for either.
//!
//! A child process is spawned in its own process group (so SIGTERM and SIGKILL reach everything it started),
//! with the kernel's parent-death signal set to SIGKILL (so it never outlives the orchestrator, even one
//! killed with SIGKILL), contained as well as the kernel allows ([`Containment`]), its output handed to the
//! actor (module `output`), and a task that reaps it.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::watch;

use super::containment::{self, Containment};
use super::output::Output;
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
        }
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
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    containment: Containment,
}

impl Default for ProcessLauncher {
    fn default() -> Self {
        Self {
            containment: Containment::detect(),
        }
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(&self, spec: &ServiceSpec) -> Result<Instance, LaunchError> {
        let Some(command) = &spec.command else {
            return Err(LaunchError(format!("service {:?} has no command", spec.name)));
        };
        let command = expand(command)?;
        let (program, args) = command
            .split_first()
            .ok_or_else(|| LaunchError("empty command".into()))?;
        // Found here, so a command that cannot run is a failed start now, not a crash of the helper later.
        resolve(program, spec)?;
        if let Some(dir) = &spec.working_dir
            && !dir.is_dir()
        {
            return Err(LaunchError(format!(
                "working_dir {} is not a directory",
                dir.display()
            )));
        }
        let pid_namespace = self.containment == Containment::PidNamespace;
        let mut process = if containment::helper_ready() {
            let (helper, helper_args) = containment::helper(self.containment);
            let mut process = Command::new(helper);
            process.args(helper_args).arg(program);
            process
        } else {
            let mut process = Command::new(program);
            containment::in_forked_child(&mut process, pid_namespace);
            process
        };
        // The `start service` span this launch runs in, for the child's own spans (W3C TRACEPARENT);
        // never an inherited one that says nothing about this start. The service's own env still wins.
        match crate::telemetry::trace::traceparent() {
            Some(traceparent) => process.env("TRACEPARENT", traceparent),
            None => process.env_remove("TRACEPARENT"),
        };
        process
            .args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &spec.working_dir {
            process.current_dir(dir);
        }
        let mut child = process
            .spawn()
            .map_err(|error| LaunchError(format!("cannot start {program}: {error}")))?;
        let pid = child.id();
        let output = match (child.stdout.take(), child.stderr.take()) {
            (Some(stdout), Some(stderr)) => Some(Output { stdout, stderr }),
            _ => None,
        };
        let (sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    (None, None) => Exit::Error(format!("unknown exit status {status}")),
                },
                Err(error) => Exit::Error(format!("cannot wait for the process: {error}")),
            };
            let _ = sender.send(Some(status));
        });
        let control = ProcessGroup {
            pid: pid.unwrap_or(0),
        };
        let mut instance = Instance::new(pid, exit, Box::new(control));
        instance.output = output;
        Ok(instance)
    }
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
