//! Containment: every process a service starts — grandchildren, double-forked `setsid` daemons, a fork
//! bomb — ends with the service, and with the orchestrator, even when the orchestrator is killed with
//! SIGKILL.
//!
//! Where the kernel allows it (root, or a user namespace), each service runs in a **PID namespace of its
//! own**, the mechanism `unshare --pid --kill-child` and bubblewrap's `--die-with-parent` rely on: when the
//! namespace's first process (its init) exits, the kernel SIGKILLs everything left in it, and escaped
//! descendants are reparented to that init, not to the host's. The process tree is:
//!
//! ```text
//! orchestrator ── shim (the pid the orchestrator signals and waits for; parent-death signal SIGKILL)
//!                  └─ init (PID 1 of the namespace; parent-death signal SIGKILL)
//!                      └─ the service's command (PID 2), and whatever it starts
//! ```
//!
//! The shim blocks every signal and only waits: SIGTERM to the service's process group reaches the service
//! directly (it is still in the group) and the init, which forwards it to every process of the namespace
//! (`kill(-1)` from a namespace's init), escaped daemons included. When the service exits, the init hands
//! its exact wait status to the shim over a pipe and exits, and the kernel kills whatever is left; the shim
//! then ends the same way the service did (same exit code, or same signal). SIGKILL of the group kills the
//! shim and the init at once, and with the init the whole namespace. If the orchestrator dies, the shim
//! dies (parent-death signal), the init dies (its own parent-death signal), and the namespace with it.
//! The orchestrator never forks: it starts a small helper with `posix_spawn` ([`helper`]), and the helper
//! sets the parent-death signal, creates the namespace, forks the init and the service (cheap: the helper
//! is a fresh, small process) and execs the service's program. The shim and the init are the helper
//! running a loop of async-signal-safe system calls. The helper is `fog-spawn` ([`spawner`]: a static
//! program without libc, embedded in the binary) where it can run, else the orchestrator's own binary
//! ([`helper_entry`], this module's `run_helper`), which behaves the same and costs milliseconds more per
//! start.
//!
//! Elsewhere the fallback is the process group: SIGTERM and SIGKILL reach every process that stayed in
//! it, but a `setsid` daemon escapes, and grandchildren survive a SIGKILL of the orchestrator. The active
//! containment is logged at start and reported in `/readyz`.

use std::fmt;
use std::io;
use std::sync::OnceLock;

/// How a service's processes are held together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// A PID namespace per service: nothing it starts outlives it or the orchestrator.
    PidNamespace,
    /// The service's process group only (PID namespaces are not allowed here).
    ProcessGroup,
}

impl Containment {
    /// The name used in logs and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Containment::PidNamespace => "pid-namespace",
            Containment::ProcessGroup => "process-group",
        }
    }

    /// What the kernel allows here, found out once by trying: a forked child that only unshares and exits.
    pub fn detect() -> Self {
        static DETECTED: OnceLock<Containment> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            // SAFETY: the child calls only unshare and _exit (async-signal-safe); the parent waits for it.
            let allowed = unsafe {
                match libc::fork() {
                    -1 => false,
                    0 => libc::_exit(i32::from(libc::unshare(libc::CLONE_NEWPID) != 0)),
                    child => {
                        let mut status = 0;
                        libc::waitpid(child, &mut status, 0) == child
                            && libc::WIFEXITED(status)
                            && libc::WEXITSTATUS(status) == 0
                    }
                }
            };
            if allowed {
                Containment::PidNamespace
            } else {
                Containment::ProcessGroup
            }
        })
    }
}

impl fmt::Display for Containment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`raise_open_file_limit`] did: the soft limit before (the one services start with) and after.
static RAISED: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises this process's soft limit on open files (`RLIMIT_NOFILE`) to its hard limit, as Go programs and
/// systemd's guidance do, and remembers the soft limit it had so that every service still starts with
/// that one (a program that loops over every possible descriptor, or calls `select`, sees what it would
/// under any other supervisor). Each service holds three descriptors here (two output pipes and a pidfd),
/// an HTTP probe a socket, each API client one: under the soft limit of 1,024 most distributions set,
/// about 330 services would start and the rest fail with "Too many open files". Call first in `main`,
/// before any thread starts; the binary does, and so should a program that embeds the orchestrator to run
/// hundreds of services. [`open_file_limit`] says what it did.
pub fn raise_open_file_limit() {
    let Ok(mut limit) = open_files() else {
        return;
    };
    let original = limit.rlim_cur;
    // An unlimited hard limit is not a number of descriptors: the kernel's own ceiling is.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    limit.rlim_cur = limit.rlim_max.min(ceiling);
    // SAFETY: setrlimit sets this process's own limit from a local.
    if limit.rlim_cur <= original || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return;
    }
    let _ = RAISED.set((original, limit.rlim_cur));
}

/// This process's open-file limit. Async-signal-safe.
fn open_files() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes this process's own limit into a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// The soft open-file limit now, and what it was before [`raise_open_file_limit`] raised it (`None` when
/// it did not).
pub fn open_file_limit() -> (u64, Option<u64>) {
    match RAISED.get() {
        Some(&(original, raised)) => (raised, Some(original)),
        None => (open_files().map_or(0, |limit| limit.rlim_cur), None),
    }
}

/// The open-file limit a service starts with, when it differs from the orchestrator's.
fn service_open_files() -> Option<u64> {
    RAISED.get().map(|&(original, _)| original)
}

/// The mode word that gives a service the open-file limit the orchestrator was started with
/// (`nofile=1024`): see [`raise_open_file_limit`].
const NOFILE: &str = "nofile=";

/// Sets this process's soft open-file limit to `soft` (at most its hard limit). Async-signal-safe.
fn restore_open_files(soft: u64) -> io::Result<()> {
    let mut limit = open_files()?;
    limit.rlim_cur = soft.min(limit.rlim_max);
    // SAFETY: setrlimit sets this process's own limit from a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `nofile=` word of a helper's MODE, if it has one: its limit, or EINVAL when that is not a number.
fn open_files_in(mode: &str) -> Option<io::Result<u64>> {
    let limit = mode.split(',').find_map(|word| word.strip_prefix(NOFILE))?;
    Some(
        limit
            .parse()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)),
    )
}

/// The hidden first argument that makes the binary the spawn helper ([`helper_entry`]).
pub const HELPER: &str = "__contain";

/// Set by [`helper_entry`]: this binary serves as its own spawn helper.
static HELPER_READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Call first in `main`: when this process was started as the spawn helper it becomes the service (never
/// returns); otherwise it marks the binary as able to serve as its own helper, where the embedded one
/// ([`spawner`]) is missing or cannot run. A program that embeds the orchestrator without calling this
/// and without the embedded helper starts its services by forking itself instead (correct, and slower
/// when the program is large).
pub fn helper_entry() {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(first) if first == HELPER => run_helper(&args.collect::<Vec<_>>()),
        Some(first) if first == crate::cluster::fence::FENCE => {
            let pgid = args.next().unwrap_or_default();
            crate::cluster::fence::run_fence(&pgid.to_string_lossy())
        }
        _ => {}
    }
    HELPER_READY.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`helper_entry`] ran in this process.
pub(crate) fn helper_ready() -> bool {
    HELPER_READY.load(std::sync::atomic::Ordering::Relaxed)
}

/// How a service is started: `posix_spawn` of a spawn helper, with these arguments before the service's own
/// command, or `None` when there is no helper (the launcher then forks the orchestrator). The helper is
/// the embedded `fog-spawn` ([`spawner`]) where there is one, else this binary (`/proc/<pid>/exe`: the
/// image that runs now, even after a package upgrade replaced the file) when [`helper_entry`] ran. The
/// orchestrator itself never forks: `posix_spawn` shares its memory with the child until the exec (no page
/// tables copied, no copy-on-write faults afterwards, however large the orchestrator has grown), which is
/// what makes launching a thousand services and a restart cheap.
///
/// A `standby` helper does everything but the exec (the namespace, its init and the service's process are
/// there), then waits for one line on its stdin: the start's `TRACEPARENT` (or an empty line), and execs;
/// stdin closed without a line, it exits. A restart without delay uses one made in advance, so it waits
/// for the exec of the service's program alone.
pub(super) fn helper(containment: Containment, standby: bool) -> Option<(std::path::PathBuf, [String; 3])> {
    let parent = std::process::id();
    let program = match spawner() {
        Some(spawner) => spawner.to_owned(),
        None if helper_ready() => format!("/proc/{parent}/exe").into(),
        None => return None,
    };
    let mode = match containment {
        Containment::PidNamespace => "pid-namespace",
        Containment::ProcessGroup => "process-group",
    };
    let mut mode = mode.to_owned();
    if standby {
        mode = format!("{mode},{STANDBY}");
    }
    if let Some(limit) = service_open_files() {
        mode = format!("{mode},{NOFILE}{limit}");
    }
    Some((program, [HELPER.to_owned(), parent.to_string(), mode]))
}

/// Whether services are started through a spawn helper ([`helper`]) rather than a fork of the orchestrator.
pub(super) fn helper_available() -> bool {
    spawner().is_some() || helper_ready()
}

/// `spawner/main.rs`, built by `build.rs`: the spawn helper as a static program without libc, whose exec,
/// forks and exits cost tens of microseconds where this binary's cost milliseconds (its loading,
/// relocations and glibc's start-up). x86_64 Linux only.
#[cfg(fog_spawner)]
const SPAWNER: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/fog-spawn")));
#[cfg(not(fog_spawner))]
const SPAWNER: Option<&[u8]> = None;

/// The embedded spawn helper, written once to a sealed memfd and run from there (`/proc/<pid>/fd/<fd>`):
/// no file on disk, and always the one built with this orchestrator. `None` where there is none, or where
/// the kernel will not run it from memory (`vm.memfd_noexec`, a security module); that is logged once,
/// and this binary serves as the helper instead.
pub(crate) fn spawner() -> Option<&'static std::path::Path> {
    static LOADED: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let image = SPAWNER?;
            load_spawner(image)
                .inspect_err(|error| {
                    tracing::warn!(%error, "the embedded spawn helper cannot run; services are started through the orchestrator's own binary")
                })
                .ok()
        })
        .as_deref()
}

fn load_spawner(image: &[u8]) -> io::Result<std::path::PathBuf> {
    use std::io::Write as _;
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    const MFD_EXEC: libc::c_uint = 0x10;
    let create = |flags: libc::c_uint| {
        // SAFETY: a NUL-terminated name; the result is a new descriptor or -1.
        unsafe { libc::memfd_create(c"fog-spawn".as_ptr(), flags) }
    };
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC says so explicitly since Linux 6.3; before, it is unknown (EINVAL) and memfds are executable.
    let mut fd = create(flags | MFD_EXEC);
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        fd = create(flags);
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created and owned by nothing else.
    let mut writable = unsafe { std::fs::File::from_raw_fd(fd) };
    writable.write_all(image)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor this function owns.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // A descriptor open for writing would make every exec of it fail (ETXTBSY): keep a read-only one.
    let readable = std::fs::File::open(format!("/proc/self/fd/{fd}"))?;
    drop(writable);
    let path = std::path::PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        readable.as_raw_fd()
    ));
    // Run once without arguments, it must say it needs them and exit with 127.
    let trial = std::process::Command::new(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if trial.code() != Some(127) {
        return Err(io::Error::other(format!("a trial run ended with {trial}")));
    }
    // Kept open for the life of the process: services are started from it.
    std::mem::forget(readable);
    Ok(path)
}

/// The spawn helper, in the new process (`fog-orchestrator __contain PARENT MODE PROGRAM [ARGS...]`):
/// parent-death signal SIGKILL, the PID namespace with its shim and init when MODE is `pid-namespace`,
/// the open-file limit of its `nofile=N` word ([`raise_open_file_limit`]), then exec of PROGRAM (looked up
/// in `PATH`). Never returns; on failure it says why on stderr (the service's output) and exits with 127,
/// as a shell does for a command it cannot run.
fn run_helper(args: &[std::ffi::OsString]) -> ! {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    let fail = |message: String| -> ! {
        let _ = writeln!(io::stderr(), "fog-orchestrator: {message}");
        std::process::exit(127)
    };
    let (Some(parent), Some(mode), Some(program)) = (args.first(), args.get(1), args.get(2)) else {
        fail("the spawn helper needs PARENT MODE PROGRAM [ARGS...]".into());
    };
    let parent: libc::pid_t = parent.to_str().and_then(|p| p.parse().ok()).unwrap_or(-1);
    // SAFETY: prctl and getppid only read and set this process's own attributes.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(format!(
                "cannot set the parent-death signal: {}",
                io::Error::last_os_error()
            ));
        }
        // The orchestrator may have died before the prctl: then no signal would ever come.
        if libc::getppid() != parent {
            fail("the orchestrator exited while starting the service".into());
        }
    }
    let mode = mode.to_string_lossy();
    let mut words = mode.split(',');
    if words.next() == Some("pid-namespace") {
        // SAFETY: this process is single-threaded (nothing started a thread yet); see `enter_pid_namespace`.
        if let Err(error) = unsafe { enter_pid_namespace() } {
            fail(format!("cannot create the service's PID namespace: {error}"));
        }
    }
    if let Some(limit) = open_files_in(&mode)
        && let Err(error) = limit.and_then(restore_open_files)
    {
        fail(format!("cannot set the service's open-file limit: {error}"));
    }
    let mut command = std::process::Command::new(program);
    command.args(&args[3..]);
    if words.any(|word| word == STANDBY) {
        // A standby: everything is ready but the exec, which waits for the orchestrator's word on stdin.
        match wait_for_start() {
            Some(traceparent) if traceparent.is_empty() => command.env_remove("TRACEPARENT"),
            Some(traceparent) => command.env("TRACEPARENT", traceparent),
            // Discarded unused: the orchestrator closed the pipe.
            None => std::process::exit(0),
        };
        // SAFETY: open and dup2 only replace this process's stdin with /dev/null, as services get it.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            if null < 0 || libc::dup2(null, 0) < 0 {
                fail(format!("cannot open /dev/null: {}", io::Error::last_os_error()));
            }
            if null > 0 {
                libc::close(null);
            }
        }
    }
    // SAFETY: this process is single-threaded and about to exec.
    unsafe { clean_start() };
    let error = command.exec();
    fail(format!("cannot start {}: {error}", program.to_string_lossy()))
}

/// The mode word that makes the helper a standby ([`helper`]).
const STANDBY: &str = "standby";

/// A standby's wait: the line the orchestrator writes on stdin to start the service (the start's
/// `TRACEPARENT`, or nothing), or `None` when stdin closes without one.
fn wait_for_start() -> Option<String> {
    use std::io::Read as _;
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into_owned()),
            Ok(1) if line.len() < 256 => line.push(byte[0]),
            Ok(1) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            _ => return None,
        }
    }
}

/// Gives a program the orchestrator starts itself (an exec probe) the open-file limit services start
/// with, when the orchestrator raised its own ([`raise_open_file_limit`]): set in the child before its
/// exec, which makes std fork there instead of using `posix_spawn` (only then).
pub(crate) fn with_service_open_files(command: &mut tokio::process::Command) {
    with_open_files(command, service_open_files());
}

fn with_open_files(command: &mut tokio::process::Command, limit: Option<u64>) {
    if let Some(limit) = limit {
        // SAFETY: the closure calls getrlimit and setrlimit only (async-signal-safe) and allocates nothing.
        unsafe { command.pre_exec(move || restore_open_files(limit)) };
    }
}

/// The fallback when this binary is not its own helper: `process` forks the orchestrator and, in the child
/// before exec, sets the parent-death signal, (with `pid_namespace`) enters the PID namespace, and takes
/// the open-file limit services start with ([`raise_open_file_limit`]).
pub(super) fn in_forked_child(process: &mut tokio::process::Command, pid_namespace: bool) {
    contain_forked(process, pid_namespace, service_open_files());
}

fn contain_forked(process: &mut tokio::process::Command, pid_namespace: bool, open_files: Option<u64>) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe system
    // calls (prctl, getppid, and those of `enter_pid_namespace`), allocating nothing.
    unsafe {
        process.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other(
                    "the orchestrator exited while starting the service",
                ));
            }
            if pid_namespace {
                enter_pid_namespace()?;
            }
            if let Some(limit) = open_files {
                restore_open_files(limit)?;
            }
            clean_start();
            Ok(())
        });
    }
}

/// What the service's process does before its exec, whichever way it was started: every signal back to its
/// default action (an ignored one stays ignored across exec: the orchestrator ignores SIGPIPE, and may
/// have been started with SIGQUIT or SIGINT ignored, as background jobs of a shell are), and every
/// descriptor from 3 up closed at the exec (the orchestrator's are already; this closes what it inherited
/// itself, such as a CI runner's pipes, which a service would otherwise hold open).
///
/// # Safety
/// Call only in the service's process, single-threaded, before its exec; async-signal-safe.
unsafe fn clean_start() {
    // SAFETY: rt_sigaction and close_range only change this process's own dispositions and descriptors.
    unsafe {
        // The kernel's struct sigaction, all zero (SIG_DFL, no flags, an empty mask), through the system
        // call: glibc's sigaction refuses the two signals it reserves (32 and 33), which can be ignored too.
        let default = [0u64; 4];
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        // Marked, not closed: std's spawn reports a failed exec through a descriptor of its own.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
    }
}

/// Makes this process continue as PID 2 of a new PID namespace, under the shim and init described in the
/// module documentation: returns in the service's process (which then execs the service's program); the
/// shim and init never return.
///
/// # Safety
/// Call only from a single-threaded process: it forks, and the forked branches call only
/// async-signal-safe system calls (unshare, pipe2, sigprocmask, fork, prctl, close_range, sigwaitinfo,
/// waitpid, read, write, kill, signal, _exit).
unsafe fn enter_pid_namespace() -> io::Result<()> {
    // SAFETY: see the function's contract.
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut status_pipe = [0; 2];
        if libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        let [status_read, status_write] = status_pipe;
        // Blocked before forking, so no signal is lost or acted on by default in the shim or init.
        let mut every: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut every);
        libc::sigprocmask(libc::SIG_BLOCK, &every, &mut before);
        match libc::fork() {
            -1 => {
                let error = io::Error::last_os_error();
                libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
                Err(error)
            }
            0 => {
                // The init: PID 1 of the new namespace.
                libc::close(status_read);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                libc::prctl(libc::PR_SET_NAME, c"fog-init".as_ptr(), 0, 0, 0);
                match libc::fork() {
                    -1 => libc::_exit(127),
                    0 => {
                        // The service: normal signal handling, then exec.
                        libc::close(status_write);
                        libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
                        Ok(())
                    }
                    service => {
                        close_all_but(status_write);
                        run_init(service, status_write, &every)
                    }
                }
            }
            init => {
                libc::prctl(libc::PR_SET_NAME, c"fog-shim".as_ptr(), 0, 0, 0);
                libc::close(status_write);
                close_all_but(status_read);
                run_shim(init, status_read)
            }
        }
    }
}

/// Closes every descriptor from 3 up except `keep` (among them the pipe through which the parent learns
/// whether exec succeeded: it must see only the service's copy).
unsafe fn close_all_but(keep: libc::c_int) {
    let keep = keep as libc::c_uint;
    // SAFETY: close_range only closes descriptors of this (forked, single-threaded) process.
    unsafe {
        if keep > 3 {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                keep - 1,
                0 as libc::c_uint,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
    }
}

/// The namespace's init: forwards termination signals to every process of the namespace, reaps every
/// child (escaped daemons are reparented here), and exits when the service exits, after passing on its
/// wait status. The kernel then kills whatever is left in the namespace.
unsafe fn run_init(service: libc::pid_t, status_write: libc::c_int, every: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: plain system calls on this process's own state.
        let signal = unsafe { libc::sigwaitinfo(every, std::ptr::null_mut()) };
        match signal {
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT | libc::SIGUSR1 | libc::SIGUSR2 => unsafe {
                libc::kill(-1, signal);
            },
            _ => loop {
                let mut status = 0;
                // SAFETY: waitpid writes only to `status`.
                let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if reaped <= 0 {
                    break;
                }
                if reaped == service {
                    // SAFETY: writes four bytes from a local to our own pipe, then exits.
                    unsafe {
                        libc::write(
                            status_write,
                            (&status as *const libc::c_int).cast(),
                            std::mem::size_of::<libc::c_int>(),
                        );
                        libc::_exit(0);
                    }
                }
            },
        }
    }
}

/// The process the orchestrator knows: waits for the init and ends exactly as the service did.
unsafe fn run_shim(init: libc::pid_t, status_read: libc::c_int) -> ! {
    let mut init_status = 0;
    loop {
        // SAFETY: waitpid writes only to `init_status`.
        let waited = unsafe { libc::waitpid(init, &mut init_status, 0) };
        if waited == init || (waited == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            break;
        }
    }
    let mut service_status: libc::c_int = 0;
    // SAFETY: reads at most four bytes into a local.
    let read = unsafe {
        libc::read(
            status_read,
            (&mut service_status as *mut libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        )
    };
    // Without a report (the init was killed), the init's own end is the service's.
    let status = if read == std::mem::size_of::<libc::c_int>() as isize {
        service_status
    } else {
        init_status
    };
    // SAFETY: ends this process, by exit code or by re-raising the same signal with its default action.
    unsafe {
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let signal = if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            libc::SIGKILL
        };
        libc::signal(signal, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn the_spawn_helper_is_embedded_and_runs_from_memory() {
        let spawner = super::spawner().expect("the embedded spawn helper runs here");
        assert!(spawner.starts_with(format!("/proc/{}/fd/", std::process::id())));
    }

    #[test]
    fn a_helpers_mode_may_carry_the_open_file_limit_services_start_with() {
        let limit = |mode: &str| super::open_files_in(mode).map(|limit| limit.map_err(|e| e.kind()));
        assert_eq!(limit("pid-namespace,standby,nofile=1024"), Some(Ok(1024)));
        assert_eq!(limit("process-group,nofile=64"), Some(Ok(64)));
        assert_eq!(limit("pid-namespace,standby"), None);
        assert_eq!(
            limit("process-group,nofile="),
            Some(Err(std::io::ErrorKind::InvalidInput))
        );
        assert_eq!(
            limit("process-group,nofile=-1"),
            Some(Err(std::io::ErrorKind::InvalidInput))
        );
    }

    /// An exec probe's program, which the orchestrator starts itself.
    #[tokio::test]
    async fn a_program_started_directly_takes_the_open_file_limit_services_start_with() {
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", "ulimit -Sn"]);
        super::with_open_files(&mut command, Some(512));
        let output = command.output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "512\n");
    }

    /// For `pre_exec`: the process starts as an orchestrator started in the background by a shell does,
    /// with SIGQUIT ignored, and with a descriptor it inherited (7). Async-signal-safe: signal and dup2.
    fn as_a_background_job() -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
        || {
            // SAFETY: both change this (forked) process's own state.
            unsafe {
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                libc::dup2(1, 7);
            }
            Ok(())
        }
    }

    /// The fallback where there is no helper at all: the orchestrator forks, and the child contains itself.
    #[tokio::test]
    async fn a_forked_service_is_contained_and_starts_clean() {
        let modes: &[bool] = match super::Containment::detect() {
            super::Containment::PidNamespace => &[false, true],
            super::Containment::ProcessGroup => &[false],
        };
        for &pid_namespace in modes {
            let mut command = tokio::process::Command::new("sh");
            command
                .args([
                    "-c",
                    "ls /proc/self/fd; grep SigIgn /proc/self/status; echo $$; ulimit -Sn; exit 3",
                ])
                .stdout(std::process::Stdio::piped());
            // SAFETY: the closure is async-signal-safe (see `as_a_background_job`).
            unsafe { command.pre_exec(as_a_background_job()) };
            super::contain_forked(&mut command, pid_namespace, Some(512));
            let output = command.output().await.unwrap();
            assert_eq!(output.status.code(), Some(3), "namespace: {pid_namespace}");
            let text = String::from_utf8_lossy(&output.stdout);
            let (clean, pid) = text
                .split_once("0000000000000000\n")
                .unwrap_or_else(|| panic!("a signal ignored: {text}"));
            assert_eq!(
                clean, "0\n1\n2\n3\nSigIgn:\t",
                "only stdin, stdout, stderr and ls's own"
            );
            let (pid, limit) = pid.split_once('\n').unwrap();
            assert_eq!(pid == "2", pid_namespace, "PID 2 of its own namespace: {pid}");
            assert_eq!(limit, "512\n", "the open-file limit services start with");
        }
    }

    /// `fog-spawn` itself, run as real processes.
    #[cfg(fog_spawner)]
    mod fog_spawn {
        use super::super::*;
        use std::io::Write as _;
        use std::os::unix::process::ExitStatusExt as _;
        use std::process::{Command, Output, Stdio};

        /// Runs `command` through the embedded spawn helper in `mode`, started as a shell's background job
        /// ([`super::as_a_background_job`]), writing `input` to its stdin.
        fn through_spawner(mode: &str, command: &[&str], input: Option<&str>) -> Output {
            use std::os::unix::process::CommandExt as _;
            let (program, arguments) = helper(Containment::ProcessGroup, false).expect("a spawn helper");
            let mut process = Command::new(program);
            // SAFETY: the closure is async-signal-safe (see `as_a_background_job`).
            unsafe { process.pre_exec(super::as_a_background_job()) };
            process
                .args(&arguments[..2])
                .arg(mode)
                .args(command)
                .env("TRACEPARENT", "inherited")
                .stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = process.spawn().expect("the helper starts");
            if let Some(input) = input {
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(input.as_bytes()).unwrap();
            }
            child.wait_with_output().unwrap()
        }

        fn text(bytes: &[u8]) -> String {
            String::from_utf8_lossy(bytes).into_owned()
        }

        /// The modes the kernel lets this process use.
        fn modes() -> Vec<&'static str> {
            match Containment::detect() {
                Containment::PidNamespace => vec!["process-group", "pid-namespace"],
                Containment::ProcessGroup => vec!["process-group"],
            }
        }

        #[test]
        fn the_helper_ends_as_the_service_did() {
            for mode in modes() {
                let exited = through_spawner(mode, &["sh", "-c", "echo out; echo err >&2; exit 3"], None);
                assert_eq!(exited.status.code(), Some(3), "{mode}");
                assert_eq!(text(&exited.stdout), "out\n", "{mode}");
                assert_eq!(text(&exited.stderr), "err\n", "{mode}");
                let killed = through_spawner(mode, &["sh", "-c", "kill -TERM $$"], None);
                assert_eq!(killed.status.signal(), Some(libc::SIGTERM), "{mode}");
            }
            if modes().contains(&"pid-namespace") {
                let inside = through_spawner("pid-namespace", &["sh", "-c", "echo $$"], None);
                assert_eq!(
                    text(&inside.stdout),
                    "2\n",
                    "the service is PID 2 of its namespace"
                );
            }
        }

        #[test]
        fn the_helper_looks_programs_up_as_execvp_does_and_says_what_cannot_start() {
            let dir = tempfile::tempdir().unwrap();
            let script = dir.path().join("no-shebang");
            std::fs::write(&script, "echo ran with \"$1\"\n").unwrap();
            std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            for mode in modes() {
                let ran = through_spawner(mode, &[script.to_str().unwrap(), "one"], None);
                assert_eq!(
                    text(&ran.stdout),
                    "ran with one\n",
                    "{mode}: a script without #! runs in sh"
                );
                let missing = through_spawner(mode, &["no-such-program-anywhere"], None);
                assert_eq!(missing.status.code(), Some(127), "{mode}");
                assert_eq!(
                    text(&missing.stderr),
                    "fog-orchestrator: cannot start no-such-program-anywhere: No such file or directory (os error 2)\n"
                );
            }
        }

        #[test]
        fn the_service_starts_with_default_signals_and_no_inherited_descriptors() {
            for mode in modes() {
                let output = through_spawner(
                    mode,
                    &["sh", "-c", "ls /proc/self/fd; grep SigIgn /proc/self/status"],
                    None,
                );
                assert_eq!(
                    text(&output.stdout),
                    "0\n1\n2\n3\nSigIgn:\t0000000000000000\n",
                    "{mode}: only stdin, stdout, stderr (and ls's own directory); nothing ignored"
                );
            }
        }

        #[test]
        fn the_service_starts_with_the_open_file_limit_of_its_nofile_word() {
            let hard = match open_files().unwrap().rlim_max {
                libc::RLIM_INFINITY => "unlimited".to_owned(),
                hard => hard.to_string(),
            };
            for mode in modes() {
                let limited =
                    through_spawner(&format!("{mode},nofile=512"), &["sh", "-c", "ulimit -Sn"], None);
                assert_eq!(text(&limited.stdout), "512\n", "{mode}");
                let standby = format!("{mode},{STANDBY},{NOFILE}512");
                let started = through_spawner(&standby, &["sh", "-c", "ulimit -Sn"], Some("\n"));
                assert_eq!(text(&started.stdout), "512\n", "{mode}: a standby");
                let above = through_spawner(
                    &format!("{mode},nofile={}", u64::MAX),
                    &["sh", "-c", "ulimit -Sn"],
                    None,
                );
                assert_eq!(
                    text(&above.stdout),
                    format!("{hard}\n"),
                    "{mode}: never above the hard limit"
                );
                let bad = through_spawner(&format!("{mode},nofile=12x"), &["true"], None);
                assert_eq!(bad.status.code(), Some(127), "{mode}");
                assert_eq!(
                    text(&bad.stderr),
                    "fog-orchestrator: cannot set the service's open-file limit: Invalid argument (os error 22)\n"
                );
            }
        }

        #[test]
        fn a_standby_execs_on_its_word_with_that_traceparent_and_leaves_quietly_without_one() {
            let print = ["sh", "-c", "echo \"${TRACEPARENT-unset}\"; cat"];
            for mode in modes() {
                let standby = format!("{mode},{STANDBY}");
                let started =
                    through_spawner(&standby, &print, Some("00-trace-span-01\nnot for the service\n"));
                assert!(started.status.success(), "{mode}");
                // The word's TRACEPARENT replaces the inherited one; stdin is /dev/null afterwards.
                assert_eq!(text(&started.stdout), "00-trace-span-01\n", "{mode}");
                let untraced = through_spawner(&standby, &print, Some("\n"));
                assert_eq!(text(&untraced.stdout), "unset\n", "{mode}");
                let discarded = through_spawner(&standby, &print, Some(""));
                assert_eq!(discarded.status.code(), Some(0), "{mode}");
                assert_eq!(text(&discarded.stdout), "", "{mode}: never started");
            }
        }
    }
}
