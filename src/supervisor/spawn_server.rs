//! The spawn server: one long-lived `fog-spawn __serve` (see `spawner/main.rs`) that starts the services'
//! processes for the launcher.
//!
//! `posix_spawn` from the orchestrator costs what the orchestrator has grown to: the child copies its
//! descriptor table (three descriptors per service: two output pipes and a pidfd) and drops it at the
//! exec, and the calling thread waits for that exec. The server holds a few descriptors and a few pages;
//! it clones itself per service (`CLONE_PARENT`: the new process is the orchestrator's child, waited for
//! through a pidfd) and answers with the PID as soon as the clone exists, so the supervision thread goes
//! on to the next service while the last one is still on its way to its exec. What runs in the clone is
//! the helper's `__contain`, unchanged: the same shim, init, service, and behaviour.
//!
//! Only with the embedded `fog-spawn`. A service is `posix_spawn`ed as before when there is no server,
//! when it cannot be started, or when a request does not fit in one message; a server that died is
//! started again at the next request.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::state::Exit;

/// The largest request the server takes (`REQUEST_LIMIT` in `spawner/main.rs`).
const REQUEST_LIMIT: usize = 256 * 1024;
/// The most arguments, and environment variables, a request may carry (`ENTRIES` there).
const ENTRIES: usize = 16 * 1024;
/// The room for each started process's command line as `ps` shows it (longer ones are cut).
const TITLE_ROOM: usize = 4096;
/// How long an answer may take before the server is deemed stuck, killed and replaced.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// One service's process to start.
pub(super) struct Request<'a> {
    /// The spawn helper's arguments as `posix_spawn` would pass them (`argv[0]` included).
    pub argv: Vec<&'a OsStr>,
    /// The whole environment, as `NAME=value`.
    pub env: Vec<OsString>,
    /// The working directory (absolute); `None` for the orchestrator's.
    pub directory: Option<&'a Path>,
    /// Whether stdin is a pipe for the word to start (a standby), rather than /dev/null.
    pub standby: bool,
}

/// The running server.
struct Server {
    socket: OwnedFd,
    /// What a service's stdin is when it is not a standby.
    null: OwnedFd,
    process: std::process::Child,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// Starts `request`'s process through the server: `None` when the server cannot take it (there is none,
/// it cannot be started, or the request is too large), so the caller spawns it itself.
pub(super) fn spawn(helper: &Path, request: &Request<'_>) -> Option<io::Result<Served>> {
    // Its pidfd and pipes are registered with the runtime's reactor.
    tokio::runtime::Handle::try_current().ok()?;
    let message = match encode(request) {
        Ok(Some(message)) => message,
        Ok(None) => return None,
        Err(error) => return Some(Err(error)),
    };
    let pipes = (|| {
        let stdout = pipe_pair()?;
        let stderr = pipe_pair()?;
        let stdin = if request.standby { Some(pipe_pair()?) } else { None };
        io::Result::Ok((stdin, stdout, stderr))
    })();
    let (stdin, stdout, stderr) = match pipes {
        Ok(pipes) => pipes,
        Err(error) => return Some(Err(error)),
    };
    let mut server = SERVER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut answer = None;
    // A server that died (or was killed) since the last request is replaced once.
    for _ in 0..2 {
        if server.is_none() {
            match Server::start_kept(helper) {
                Ok(started) => *server = Some(started),
                Err(error) => {
                    tracing::debug!(%error, "no spawn server: services are started with posix_spawn");
                    return None;
                }
            }
        }
        let running = server.as_mut()?;
        let child_stdin = stdin
            .as_ref()
            .map_or(running.null.as_raw_fd(), |(read, _)| read.as_raw_fd());
        let fds = [child_stdin, stdout.1.as_raw_fd(), stderr.1.as_raw_fd()];
        match running.ask(&message, fds) {
            Ok(pid) => {
                answer = Some(pid);
                break;
            }
            Err(error) => {
                tracing::debug!(%error, "the spawn server is gone or stuck: starting another");
                if let Some(mut gone) = server.take() {
                    let _ = gone.process.kill();
                    let _ = gone.process.wait();
                    // An answer that came as it was given up on stands: its process runs (the server
                    // tells a clone to go on only after answering, so no clone runs unanswered).
                    if let Ok(pid) = gone.answer(libc::MSG_DONTWAIT) {
                        answer = Some(pid);
                        break;
                    }
                }
            }
        }
    }
    drop(server);
    let pid = match answer? {
        pid if pid > 0 => pid,
        error => return Some(Err(io::Error::from_raw_os_error(-error))),
    };
    Some(Served::adopt(
        pid,
        stdin.map(|(_, write)| write),
        stdout.0,
        stderr.0,
        request.standby,
    ))
}

impl Server {
    /// Starts a server from a thread that lives as long as the orchestrator. The server and every process
    /// it clones (`CLONE_PARENT`) have that thread as their parent, and their parent-death signal comes
    /// when it ends: it must not be the thread of a launch, which may end earlier (a runtime's worker, or
    /// a test's).
    fn start_kept(helper: &Path) -> io::Result<Self> {
        type Order = (std::path::PathBuf, std::sync::mpsc::Sender<io::Result<Server>>);
        static KEEPER: Mutex<Option<std::sync::mpsc::Sender<Order>>> = Mutex::new(None);
        let mut keeper = KEEPER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if keeper.is_none() {
            let (orders, received) = std::sync::mpsc::channel::<Order>();
            std::thread::Builder::new()
                .name("fog-spawner".into())
                .spawn(move || {
                    for (helper, reply) in received {
                        let _ = reply.send(Server::start(&helper));
                    }
                })?;
            *keeper = Some(orders);
        }
        let (reply, answer) = std::sync::mpsc::channel();
        keeper
            .as_ref()
            .and_then(|orders| orders.send((helper.to_owned(), reply)).ok())
            .ok_or_else(|| io::Error::other("the spawner thread is gone"))?;
        answer
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))?
    }

    fn start(helper: &Path) -> io::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let mut sockets = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                sockets.as_mut_ptr(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptors just created, owned by nothing else.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sockets[0]), OwnedFd::from_raw_fd(sockets[1])) };
        let timeout = libc::timeval {
            tv_sec: ANSWER_LIMIT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: sets an option of our own socket from a local.
        unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let null = std::fs::File::open("/dev/null")?.into();
        let process = std::process::Command::new(helper)
            .arg0("fog-spawner")
            .args(["__serve", &std::process::id().to_string()])
            // Room for each clone's command line in /proc/PID/cmdline (see `served` in the helper).
            .arg(" ".repeat(TITLE_ROOM))
            .stdin(theirs)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        Ok(Self {
            socket: ours,
            null,
            process,
        })
    }

    /// Sends one request with its three descriptors; the PID, or `-errno`, that comes back.
    fn ask(&mut self, message: &[u8], fds: [RawFd; 3]) -> io::Result<i32> {
        let mut iov = libc::iovec {
            iov_base: message.as_ptr() as *mut libc::c_void,
            iov_len: message.len(),
        };
        let payload = std::mem::size_of_val(&fds) as u32;
        // SAFETY: CMSG_SPACE computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is valid; the fields set point at live locals.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space;
        // SAFETY: the control buffer holds one header and its payload (CMSG_SPACE); the macros compute
        // addresses inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), payload as usize);
        }
        // SAFETY: sends from the buffers above; MSG_NOSIGNAL: a dead server is an error, not SIGPIPE.
        let sent = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &header, libc::MSG_NOSIGNAL) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        self.answer(0)
    }

    /// The answer to the request sent, waiting for it (up to [`ANSWER_LIMIT`]) unless `flags` says not to.
    fn answer(&self, flags: libc::c_int) -> io::Result<i32> {
        let mut answer = [0u8; 4];
        loop {
            // SAFETY: receives at most four bytes into a local.
            let read = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    answer.as_mut_ptr().cast(),
                    answer.len(),
                    flags,
                )
            };
            match read {
                4 => return Ok(i32::from_ne_bytes(answer)),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                read if read < 0 => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
                _ => return Err(io::ErrorKind::InvalidData.into()),
            }
        }
    }
}

/// The request as the server reads it (see `serve` in `spawner/main.rs`); `None` if it is too large for
/// one message.
fn encode(request: &Request<'_>) -> io::Result<Option<Vec<u8>>> {
    if request.argv.len() > ENTRIES || request.env.len() > ENTRIES {
        return Ok(None);
    }
    let directory = request.directory.map_or(OsStr::new(""), Path::as_os_str);
    let strings = std::iter::once(directory)
        .chain(request.argv.iter().copied())
        .chain(request.env.iter().map(OsString::as_os_str));
    let mut message = Vec::with_capacity(4096);
    message.extend_from_slice(&(request.argv.len() as u32).to_le_bytes());
    message.extend_from_slice(&(request.env.len() as u32).to_le_bytes());
    for text in strings {
        let text = text.as_bytes();
        if text.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "nul byte found in provided data",
            ));
        }
        message.extend_from_slice(text);
        message.push(0);
    }
    Ok((message.len() <= REQUEST_LIMIT).then_some(message))
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptors just created, owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A process the server started: a child of the orchestrator, waited for through a pidfd.
#[derive(Debug)]
pub(super) struct Served {
    pid: u32,
    /// Until it is reaped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    exit: Option<Exit>,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    /// Killed if dropped before it exited (a standby never told to start).
    kill_on_drop: bool,
}

/// A pidfd of process `pid`, watched by the current runtime: readable once the process has ended. `pid`
/// must still name the process meant (a child not yet waited for), or be checked after.
pub(super) fn watched_pidfd(pid: libc::pid_t) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a PID and flags; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor just created, owned by nothing else; an OwnedFd keeps it open and the same for
    // as long as the AsyncFd holds it.
    unsafe {
        AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd as RawFd), tokio::io::Interest::READABLE)
    }
    .map_err(Into::into)
}

impl Served {
    fn adopt(
        pid: i32,
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
        kill_on_drop: bool,
    ) -> io::Result<Self> {
        // Its process group, set here as well as in the child (which may not have run yet): a signal to
        // the group right after this returns must find it. After the child's exec it is refused, and done.
        // SAFETY: setpgid on our own child.
        unsafe { libc::setpgid(pid, pid) };
        // What cannot be watched is not left running: killed and reaped at once.
        let abandon = |error: io::Error| {
            // SAFETY: kills and reaps our own child, which nothing else will.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            error
        };
        // The child is ours and not yet waited for, so the PID cannot have been reused.
        let pidfd = watched_pidfd(pid).map_err(abandon)?;
        // Killed if dropped until it is all set up.
        let mut served = Self {
            pid: pid as u32,
            pidfd: Some(pidfd),
            exit: None,
            stdin: None,
            stdout: None,
            stderr: None,
            kill_on_drop: true,
        };
        served.stdin = stdin.map(pipe::Sender::from_owned_fd).transpose()?;
        served.stdout = Some(pipe::Receiver::from_owned_fd(stdout)?);
        served.stderr = Some(pipe::Receiver::from_owned_fd(stderr)?);
        served.kill_on_drop = kill_on_drop;
        Ok(served)
    }

    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Its exit, if it has exited (reaping it).
    pub fn try_wait(&mut self) -> io::Result<Option<Exit>> {
        if let Some(pidfd) = &self.pidfd
            && let Some(exit) = reap(pidfd.get_ref())?
        {
            self.pidfd = None;
            self.exit = Some(exit);
        }
        Ok(self.exit.clone())
    }

    /// Waits for it to exit, and reaps it.
    pub async fn wait(&mut self) -> io::Result<Exit> {
        if let Some(exit) = self.try_wait()? {
            return Ok(exit);
        }
        let Some(pidfd) = &self.pidfd else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let exit = reaped(pidfd).await?;
        self.pidfd = None;
        self.exit = Some(exit.clone());
        Ok(exit)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        if self.kill_on_drop {
            // SAFETY: signals our own child, not yet reaped (so the PID is still its).
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
        // Reaped when it exits, so that no zombie is left behind.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = reaped(&pidfd).await;
                });
            }
            Err(_) if self.kill_on_drop => {
                // SAFETY: waits for our own child, just killed.
                unsafe { libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), 0) };
            }
            // Outside a runtime the orchestrator is ending; its own exit reaps the rest.
            Err(_) => {}
        }
    }
}

/// The exit of the process behind `pidfd`, once it comes, reaping it.
async fn reaped(pidfd: &AsyncFd<OwnedFd>) -> io::Result<Exit> {
    loop {
        let mut ready = pidfd.readable().await?;
        if let Some(exit) = reap(pidfd.get_ref())? {
            return Ok(exit);
        }
        ready.clear_ready();
    }
}

/// The exit of the process behind `pidfd`, reaping it; `None` while it runs.
fn reap(pidfd: &OwnedFd) -> io::Result<Option<Exit>> {
    // SAFETY: an all-zero siginfo_t is valid; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child's pidfd, writing into a local.
    let waited = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if waited < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled in the child's fields, or left them zero when it still runs.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => Exit::Code(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => Exit::Signal(status),
        code => Exit::Error(format!("unknown exit (code {code}, status {status})")),
    }))
}

#[cfg(all(test, fog_spawner))]
mod tests {
    use std::ffi::OsStr;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::supervisor::containment::{self, Containment};

    /// Serves `command` through the embedded helper's server in process-group mode.
    fn serve(command: &[&str], env: &[&str], directory: Option<&Path>, standby: bool) -> Served {
        let helper = containment::spawner().expect("the embedded spawn helper");
        let (_, helper_args) = containment::helper(Containment::ProcessGroup, standby).unwrap();
        let argv = std::iter::once(helper.as_os_str())
            .chain(helper_args.iter().map(OsStr::new))
            .chain(command.iter().map(OsStr::new))
            .collect();
        let request = Request {
            argv,
            env: env.iter().map(OsString::from).collect(),
            directory,
            standby,
        };
        spawn(helper, &request)
            .expect("the server takes it")
            .expect("the server starts it")
    }

    async fn read_all(pipe: Option<pipe::Receiver>) -> String {
        let mut text = String::new();
        pipe.unwrap().read_to_string(&mut text).await.unwrap();
        text
    }

    /// The parent PID of `pid`, from /proc.
    fn parent_of(pid: u32) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[1].parse().unwrap()
    }

    #[tokio::test]
    async fn a_served_process_is_our_child_with_its_environment_directory_and_streams() {
        let directory = tempfile::tempdir().unwrap();
        let directory = directory.path().canonicalize().unwrap();
        let script = "read line; echo \"$GREETING $line\"; pwd; echo err >&2; exit 3";
        let mut served = serve(
            &["sh", "-c", script],
            &["GREETING=hello", "PATH=/usr/bin:/bin"],
            Some(&directory),
            false,
        );
        assert_eq!(parent_of(served.id()), std::process::id());
        let (stdout, stderr) = (served.stdout.take(), served.stderr.take());
        let (stdout, stderr) = tokio::join!(read_all(stdout), read_all(stderr));
        // stdin is /dev/null: `read` finds nothing.
        assert_eq!(stdout, format!("hello \n{}\n", directory.display()));
        assert_eq!(stderr, "err\n");
        assert_eq!(served.wait().await.unwrap(), Exit::Code(3));
        assert_eq!(
            served.try_wait().unwrap(),
            Some(Exit::Code(3)),
            "reaped once, remembered"
        );
    }

    #[tokio::test]
    async fn a_served_process_starts_with_no_signal_ignored_or_blocked() {
        let mut served = serve(
            &["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
            &["PATH=/usr/bin:/bin"],
            None,
            false,
        );
        assert_eq!(
            read_all(served.stdout.take()).await,
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
        );
        assert_eq!(served.wait().await.unwrap(), Exit::Code(0));
    }

    #[tokio::test]
    async fn a_served_process_leads_its_own_group_and_passes_its_signal_on() {
        let mut served = serve(&["sleep", "60"], &["PATH=/usr/bin:/bin"], None, false);
        let pid = served.id() as libc::pid_t;
        // SAFETY: getpgid reads an attribute of our own child.
        assert_eq!(unsafe { libc::getpgid(pid) }, pid);
        assert_eq!(served.try_wait().unwrap(), None);
        // SAFETY: signals our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        assert_eq!(served.wait().await.unwrap(), Exit::Signal(libc::SIGTERM));
    }

    #[tokio::test]
    async fn a_served_standby_starts_on_its_word_and_a_dropped_one_is_killed_and_reaped() {
        let mut served = serve(
            &["sh", "-c", "echo \"$TRACEPARENT\""],
            &["PATH=/usr/bin:/bin", "TRACEPARENT=inherited"],
            None,
            true,
        );
        let mut stdin = served.stdin.take().expect("a standby's stdin");
        stdin.write_all(b"00-trace-span-01\n").await.unwrap();
        drop(stdin);
        assert_eq!(read_all(served.stdout.take()).await, "00-trace-span-01\n");
        assert_eq!(served.wait().await.unwrap(), Exit::Code(0));

        let dropped = serve(&["sleep", "60"], &["PATH=/usr/bin:/bin"], None, true);
        let pid = dropped.id();
        // Our own child, not yet reaped.
        let pidfd = watched_pidfd(pid as libc::pid_t).unwrap();
        drop(dropped);
        let _ = pidfd.readable().await.unwrap();
        // Reaped by the task the drop left behind: the PID goes from /proc.
        while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_request_too_large_for_one_message_is_left_to_posix_spawn() {
        let large = format!("BIG={}", "x".repeat(REQUEST_LIMIT));
        let request = Request {
            argv: vec![OsStr::new("helper"); 5],
            env: vec![large.into()],
            directory: None,
            standby: false,
        };
        assert_eq!(encode(&request).unwrap(), None);
        let request = Request {
            env: vec!["A=1\0B=2".into()],
            ..request
        };
        assert_eq!(encode(&request).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
