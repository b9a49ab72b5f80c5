//! `fog-spawn`: the spawn helper the orchestrator starts for every service, with the same arguments and
//! the same process tree as the orchestrator's own `__contain` mode (see `src/supervisor/containment.rs`):
//!
//! ```text
//! fog-spawn __contain PARENT MODE PROGRAM [ARGS...]
//! fog-spawn __serve PARENT
//! ```
//!
//! The second form is the spawn server: one long-lived process that starts each service with a clone of
//! itself (a few pages) instead of the orchestrator's `posix_spawn`, whose cost grows with the
//! orchestrator's descriptors (three per service) and which holds the calling thread until the exec. See
//! [`serve`] for its requests.
//!
//! It exists for speed. Exec'ing the orchestrator's own binary costs its dynamic loading, relocations and
//! glibc's start-up (CPU feature detection with `cpuid`, which traps to the hypervisor on virtual machines)
//! about 2 ms per service, and a shim and an init forked from that large image take longer to exit. This
//! program is static, has no libc and makes raw system calls, so its exec, its forks and its exits cost
//! tens of microseconds. `build.rs` compiles it (`#![no_std]`, `panic = abort`) and the orchestrator
//! embeds it and runs it from a sealed memfd, so it needs no file on disk and matches the orchestrator that
//! started it.
//!
//! Only x86_64 Linux has it; elsewhere the orchestrator's binary is its own helper, as before.
#![no_std]
#![no_main]
// Keeps the compiler from turning the loops of `memcpy` and its kin below into calls to themselves.
#![no_builtins]

use core::arch::{asm, global_asm};

// The kernel starts the process here with argc, argv and envp on the stack.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

mod sys {
    //! The system calls this program makes (x86_64 numbers) and the constants they take.
    use super::asm;

    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const MMAP: usize = 9;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const DUP2: usize = 33;
    pub const GETPID: usize = 39;
    pub const FORK: usize = 57;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const GETPPID: usize = 110;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const PRCTL: usize = 157;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const UNSHARE: usize = 272;
    pub const PIPE2: usize = 293;
    pub const CLOSE_RANGE: usize = 436;
    pub const RECVMSG: usize = 47;
    pub const CLONE: usize = 56;
    pub const CHDIR: usize = 80;
    pub const SETPGID: usize = 109;
    pub const PRLIMIT64: usize = 302;
    pub const RLIMIT_NOFILE: usize = 7;

    pub const ENOENT: isize = 2;
    pub const EINTR: isize = 4;
    pub const E2BIG: isize = 7;
    pub const EINVAL: isize = 22;
    pub const ENOEXEC: isize = 8;
    pub const EACCES: isize = 13;
    pub const ENODEV: isize = 19;
    pub const ENOTDIR: isize = 20;
    pub const ETIMEDOUT: isize = 110;
    pub const ESTALE: isize = 116;

    pub const PR_SET_PDEATHSIG: usize = 1;
    pub const PR_SET_NAME: usize = 15;
    pub const CLONE_NEWPID: usize = 0x2000_0000;
    pub const O_CLOEXEC: usize = 0o2_000_000;
    pub const AT_FDCWD: isize = -100;
    pub const SIG_BLOCK: usize = 0;
    pub const SIG_UNBLOCK: usize = 1;
    pub const SIG_SETMASK: usize = 2;
    pub const WNOHANG: usize = 1;
    pub const SIGKILL: usize = 9;
    pub const SIGSTOP: usize = 19;
    pub const CLOSE_RANGE_CLOEXEC: usize = 4;
    pub const CLONE_PARENT: usize = 0x8000;
    pub const SIGCHLD: usize = 17;
    pub const MSG_TRUNC: i32 = 0x20;
    pub const MSG_CTRUNC: i32 = 0x08;
    pub const MSG_CMSG_CLOEXEC: usize = 0x4000_0000;
    pub const SOL_SOCKET: u64 = 1;
    pub const SCM_RIGHTS: u64 = 1;
    /// The signals the namespace's init passes on to every process of the namespace.
    pub const FORWARDED: [usize; 6] = [15, 2, 1, 3, 10, 12];

    /// A system call; a negative result is `-errno`.
    ///
    /// # Safety
    /// The arguments must be what system call `number` expects (valid pointers where it takes them).
    pub unsafe fn call(number: usize, args: [usize; 6]) -> isize {
        let result: isize;
        // SAFETY: the `syscall` instruction clobbers rcx and r11 only; the caller vouches for the arguments.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") number as isize => result,
                in("rdi") args[0],
                in("rsi") args[1],
                in("rdx") args[2],
                in("r10") args[3],
                in("r8") args[4],
                in("r9") args[5],
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        result
    }

    /// [`call`] with fewer arguments.
    ///
    /// # Safety
    /// As for [`call`].
    pub unsafe fn call3(number: usize, a: usize, b: usize, c: usize) -> isize {
        // SAFETY: the caller's.
        unsafe { call(number, [a, b, c, 0, 0, 0]) }
    }

    pub fn exit(code: i32) -> ! {
        // SAFETY: exit_group takes a number and does not return.
        unsafe {
            call3(EXIT_GROUP, code as usize, 0, 0);
            // SAFETY: exit_group never returns.
            core::hint::unreachable_unchecked()
        }
    }
}

/// A NUL-terminated string from the stack or the environment.
type CStr = *const u8;

/// The length of `text` (up to its NUL).
///
/// # Safety
/// `text` must be NUL-terminated.
unsafe fn length(text: CStr) -> usize {
    let mut n = 0;
    // SAFETY: the caller's: every byte up to the NUL is readable.
    while unsafe { *text.add(n) } != 0 {
        n += 1;
    }
    n
}

/// The bytes of `text`, without its NUL.
///
/// # Safety
/// `text` must be NUL-terminated and outlive the slice.
unsafe fn bytes<'a>(text: CStr) -> &'a [u8] {
    // SAFETY: the caller's.
    unsafe { core::slice::from_raw_parts(text, length(text)) }
}

/// Writes `parts` to stderr (the service's output, which the orchestrator logs).
fn say(parts: &[&[u8]]) {
    for part in parts {
        // SAFETY: writes from a live slice.
        unsafe {
            sys::call3(sys::WRITE, 2, part.as_ptr() as usize, part.len());
        }
    }
}

/// `error` as text, in the words of Rust's `io::Error` ("No such file or directory (os error 2)").
fn describe(error: isize, digits: &mut [u8; 20]) -> [&[u8]; 3] {
    let text: &[u8] = match error {
        1 => b"Operation not permitted",
        2 => b"No such file or directory",
        7 => b"Argument list too long",
        8 => b"Exec format error",
        11 => b"Resource temporarily unavailable",
        12 => b"Out of memory",
        13 => b"Permission denied",
        20 => b"Not a directory",
        22 => b"Invalid argument",
        24 => b"Too many open files",
        26 => b"Text file busy",
        36 => b"File name too long",
        40 => b"Too many levels of symbolic links",
        _ => b"Unknown error",
    };
    let mut n = error.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    [text, b" (os error ", &digits[start..]]
}

/// Says why on stderr and exits with 127, as a shell does for a command it cannot run.
fn fail(what: &[&[u8]], error: Option<isize>) -> ! {
    say(&[b"fog-orchestrator: "]);
    say(what);
    if let Some(error) = error {
        let mut digits = [0; 20];
        say(&[b": "]);
        say(&describe(error, &mut digits));
        say(&[b")"]);
    }
    say(&[b"\n"]);
    sys::exit(127)
}

/// The program's arguments and environment, as the kernel laid them out.
struct Start {
    argc: usize,
    argv: *mut CStr,
    envp: *const CStr,
}

impl Start {
    fn arg(&self, index: usize) -> Option<CStr> {
        // SAFETY: argv holds argc entries.
        (index < self.argc).then(|| unsafe { *self.argv.add(index) })
    }
}

extern "C" fn entry(stack: *const usize) -> ! {
    // SAFETY: the kernel's layout: argc, then argc pointers and a NULL, then the environment and a NULL.
    let start = unsafe {
        let argc = *stack;
        let argv = stack.add(1) as *mut CStr;
        Start {
            argc,
            argv,
            envp: argv.add(argc + 1),
        }
    };
    // SAFETY: a single-threaded process with its arguments as the kernel gave them.
    unsafe {
        match start.arg(1) {
            Some(mode) if bytes(mode) == b"__serve" => serve(&start),
            _ => run(&start, false),
        }
    }
}

/// Dies with the orchestrator (`PARENT`, this process's parent): the parent-death signal, and a check that
/// the parent did not die before it was set.
fn bind_to_parent(parent: Option<CStr>) {
    // SAFETY: the argument is a NUL-terminated string that lives as long as the process.
    let parent = parent.map(|parent| unsafe { bytes(parent) });
    let parent = parent.and_then(|parent| {
        parent.iter().try_fold(0usize, |pid, digit| {
            digit
                .is_ascii_digit()
                .then(|| pid * 10 + usize::from(digit - b'0'))
        })
    });
    // SAFETY: prctl and getppid only read and set this process's own attributes.
    unsafe {
        let error = sys::call3(sys::PRCTL, sys::PR_SET_PDEATHSIG, sys::SIGKILL, 0);
        if error < 0 {
            fail(&[b"cannot set the parent-death signal"], Some(-error));
        }
        // The orchestrator may have died before the prctl: then no signal would ever come.
        if parent != Some(sys::call3(sys::GETPPID, 0, 0, 0) as usize) {
            fail(&[b"the orchestrator exited while starting the service"], None);
        }
    }
}

/// `__contain PARENT MODE PROGRAM [ARGS...]`: see the module documentation. With `clean_signals`, this
/// process's signals are at their default actions already (a clone of the spawn server, which reset them
/// once), so only its descriptors need cleaning.
///
/// # Safety
/// `start` must describe this process's own arguments and environment.
unsafe fn run(start: &Start, clean_signals: bool) -> ! {
    let (Some(mode), Some(program)) = (start.arg(3), start.arg(4)) else {
        fail(
            &[b"the spawn helper needs __contain PARENT MODE PROGRAM [ARGS...]"],
            None,
        );
    };
    // SAFETY: the arguments are NUL-terminated strings that live as long as the process.
    let (mode, program) = unsafe { (bytes(mode), bytes(program)) };
    bind_to_parent(start.arg(2));
    let mut words = mode.split(|byte| *byte == b',');
    if words.next() == Some(b"pid-namespace") {
        // SAFETY: this process is single-threaded.
        if let Err(error) = unsafe { enter_pid_namespace() } {
            fail(&[b"cannot create the service's PID namespace"], Some(error));
        }
    }
    let mut standby = false;
    for word in words {
        if word == b"standby" {
            standby = true;
        } else if let Some(limit) = word.strip_prefix(b"nofile=") {
            // The open-file limit the orchestrator was started with, before it raised its own.
            if let Err(error) = restore_open_files(limit) {
                fail(&[b"cannot set the service's open-file limit"], Some(error));
            }
        }
    }
    // Before a standby's wait, so that its word to start is followed by the exec alone.
    if !clean_signals {
        default_signals();
    }
    close_inherited();
    // SAFETY: the environment is the kernel's NULL-terminated array.
    let mut environment = unsafe { Environment::new(start.envp, standby) };
    if standby {
        // SAFETY: system calls on this process's own descriptors and memory.
        unsafe { wait_for_start(&mut environment) };
    }
    // SAFETY: argv[4..] is the service's command line, NULL-terminated.
    unsafe { exec(start, program, environment.pointers) }
}

/// The largest request the spawn server takes (command line, environment and working directory).
const REQUEST_LIMIT: usize = 256 * 1024;
/// The most arguments, and the most environment variables, a request may carry.
const ENTRIES: usize = 16 * 1024;

/// The request being served; a clone starts with its own copy.
static mut REQUEST: [u8; REQUEST_LIMIT] = [0; REQUEST_LIMIT];
/// The request's arguments, NULL-terminated, as `__contain` takes them from the kernel.
static mut ARGV: [CStr; ENTRIES + 1] = [core::ptr::null(); ENTRIES + 1];
/// The request's environment, NULL-terminated.
static mut ENVP: [CStr; ENTRIES + 1] = [core::ptr::null(); ENTRIES + 1];
/// The server's arguments' memory: where a clone writes its command line.
static mut TITLE: (*mut u8, usize) = (core::ptr::null_mut(), 0);

#[repr(C)]
struct IoVec {
    base: *mut u8,
    len: usize,
}

#[repr(C)]
struct MessageHeader {
    name: usize,
    name_len: u32,
    iov: *mut IoVec,
    iov_len: usize,
    control: *mut u64,
    control_len: usize,
    flags: i32,
}

/// `__serve PARENT`: the spawn server, on a `SOCK_SEQPACKET` socket as stdin. Each request is one message:
///
/// ```text
/// u32 argc, u32 envc (little-endian), then NUL-terminated strings: the working directory (empty: this
/// process's), argc arguments (`__contain PARENT MODE PROGRAM [ARGS...]`), envc `NAME=value` variables
/// ```
///
/// with three descriptors (`SCM_RIGHTS`): the service's stdin, stdout and stderr. The server clones itself
/// with `CLONE_PARENT`, so the new process is the orchestrator's child (it waits for it, signals its
/// process group, and gets its exit as before); the clone takes the descriptors as 0, 1 and 2, becomes
/// the leader of a process group of its own, changes to the working directory, and continues as
/// `__contain` does (the same shim, init and service). The answer is one `i32`: the new process's PID, or
/// `-errno`. The server exits when the orchestrator closes the socket, or dies.
///
/// # Safety
/// Single-threaded, with stdin the socket described above.
unsafe fn serve(start: &Start) -> ! {
    bind_to_parent(start.arg(2));
    // The arguments' memory, which /proc/PID/cmdline shows: the orchestrator passes a blank fourth
    // argument to make room for each clone's own command line (see `served`), cleared here for this one.
    if let (Some(first), Some(last)) = (start.arg(0), start.arg(start.argc - 1)) {
        // SAFETY: the kernel lays the arguments out one after the other, each NUL-terminated.
        unsafe {
            let end = last.add(length(last) + 1);
            let blank = start.arg(3).unwrap_or(end);
            memset(blank as *mut u8, 0, end as usize - blank as usize);
            TITLE = (first as *mut u8, end as usize - first as usize);
        }
    }
    // SAFETY: names this process.
    unsafe { sys::call3(sys::PRCTL, sys::PR_SET_NAME, c"fog-spawner".as_ptr() as usize, 0) };
    // Once for every clone, which inherits the default actions and the empty signal mask.
    default_signals();
    let nothing: u64 = 0;
    // SAFETY: sets this process's own signal mask from a local.
    unsafe {
        sys::call(
            sys::RT_SIGPROCMASK,
            [sys::SIG_SETMASK, &nothing as *const u64 as usize, 0, 8, 0, 0],
        )
    };
    loop {
        let mut control = [0u64; 8];
        let mut iov = IoVec {
            base: core::ptr::addr_of_mut!(REQUEST).cast(),
            len: REQUEST_LIMIT,
        };
        let mut header = MessageHeader {
            name: 0,
            name_len: 0,
            iov: &mut iov,
            iov_len: 1,
            control: control.as_mut_ptr(),
            control_len: core::mem::size_of_val(&control),
            flags: 0,
        };
        // SAFETY: receives into the static buffer and the local control buffer the header points to.
        let received = unsafe {
            sys::call3(
                sys::RECVMSG,
                0,
                &mut header as *mut MessageHeader as usize,
                sys::MSG_CMSG_CLOEXEC,
            )
        };
        if received == -sys::EINTR {
            continue;
        }
        if received <= 0 {
            // The orchestrator closed its end (or the socket broke): nothing more will come.
            sys::exit(0);
        }
        // One control message at most: the descriptors.
        let mut fds = [-1i32; 3];
        let mut count = 0;
        if header.control_len >= 16 && control[1] == sys::SOL_SOCKET | (sys::SCM_RIGHTS << 32) {
            let length = (control[0] as usize).min(header.control_len);
            for index in 0..(length.saturating_sub(16) / 4) {
                let fd = (control[2 + index / 2] >> (32 * (index % 2))) as u32 as i32;
                if count < fds.len() {
                    fds[count] = fd;
                } else {
                    // SAFETY: closes a descriptor just received and owned by nothing else.
                    unsafe { sys::call3(sys::CLOSE, fd as usize, 0, 0) };
                }
                count += 1;
            }
        }
        let truncated = header.flags & (sys::MSG_TRUNC | sys::MSG_CTRUNC) != 0;
        let answer = if count != fds.len() || truncated {
            Err(sys::EINVAL)
        } else {
            // SAFETY: the request is the first `received` bytes of the static buffer.
            match unsafe { parse(received as usize) } {
                // SAFETY: this process is single-threaded; the clone continues in `served`.
                Ok((directory, argc)) => unsafe { clone(fds, directory, argc) },
                Err(error) => Err(error),
            }
        };
        for fd in fds.into_iter().filter(|fd| *fd >= 0) {
            // SAFETY: closes the descriptors received for this request (the clone has its own).
            unsafe { sys::call3(sys::CLOSE, fd as usize, 0, 0) };
        }
        let (answer, go) = match answer {
            Ok((pid, go)) => (pid as i32, Some(go)),
            Err(error) => (-error as i32, None),
        };
        // SAFETY: writes four bytes from a local to the socket.
        unsafe { sys::call3(sys::WRITE, 0, &answer as *const i32 as usize, 4) };
        if let Some(go) = go {
            // Answered: the clone may go on (had this process died before answering, the clone would
            // have found the pipe closed and ended, unknown to the orchestrator and doing nothing).
            // SAFETY: writes one byte from a static to our pipe, then closes it.
            unsafe {
                sys::call3(sys::WRITE, go, b"!".as_ptr() as usize, 1);
                sys::call3(sys::CLOSE, go, 0, 0);
            }
        }
    }
}

/// Clones this process for a request: the clone's PID and the pipe that tells it to go on, or an errno.
///
/// # Safety
/// Single-threaded, with ARGV and ENVP filled by [`parse`].
unsafe fn clone(fds: [i32; 3], directory: CStr, argc: usize) -> Result<(isize, usize), isize> {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into a local.
    let piped = unsafe { sys::call3(sys::PIPE2, pipe.as_mut_ptr() as usize, sys::O_CLOEXEC, 0) };
    if piped < 0 {
        return Err(-piped);
    }
    let [wait, go] = pipe.map(|fd| fd as usize);
    // SAFETY: a fork-like clone of this single-threaded process.
    match unsafe { sys::call(sys::CLONE, [sys::CLONE_PARENT | sys::SIGCHLD, 0, 0, 0, 0, 0]) } {
        0 => {
            let mut word = 0u8;
            // SAFETY: closes and reads our own descriptors, into a local.
            let read = unsafe {
                sys::call3(sys::CLOSE, go, 0, 0);
                let read = sys::call3(sys::READ, wait, &mut word as *mut u8 as usize, 1);
                sys::call3(sys::CLOSE, wait, 0, 0);
                read
            };
            if read != 1 {
                sys::exit(0);
            }
            // SAFETY: the new process, with the request parsed into ARGV and ENVP.
            unsafe { served(fds, directory, argc) }
        }
        error if error < 0 => {
            // SAFETY: closes our own descriptors.
            unsafe {
                sys::call3(sys::CLOSE, wait, 0, 0);
                sys::call3(sys::CLOSE, go, 0, 0);
            }
            Err(-error)
        }
        pid => {
            // SAFETY: closes our own descriptor.
            unsafe { sys::call3(sys::CLOSE, wait, 0, 0) };
            Ok((pid, go))
        }
    }
}

/// Fills ARGV and ENVP from the request in the first `length` bytes of REQUEST: its working directory
/// and argument count, or the errno of what is wrong with it.
///
/// # Safety
/// Single-threaded: the only user of the statics.
unsafe fn parse(length: usize) -> Result<(CStr, usize), isize> {
    // SAFETY: the caller's; the first `length` bytes were written by the kernel.
    let (request, argv, envp) = unsafe {
        (
            core::slice::from_raw_parts_mut(core::ptr::addr_of_mut!(REQUEST).cast::<u8>(), length),
            &mut *core::ptr::addr_of_mut!(ARGV),
            &mut *core::ptr::addr_of_mut!(ENVP),
        )
    };
    if length < 8 {
        return Err(sys::EINVAL);
    }
    let count = |at: usize| {
        u32::from_le_bytes([request[at], request[at + 1], request[at + 2], request[at + 3]]) as usize
    };
    let (argc, envc) = (count(0), count(4));
    if argc < 5 {
        return Err(sys::EINVAL);
    }
    if argc > ENTRIES || envc > ENTRIES {
        return Err(sys::E2BIG);
    }
    let mut at = 8;
    let mut next = || -> Result<CStr, isize> {
        let end = request[at..]
            .iter()
            .position(|byte| *byte == 0)
            .ok_or(sys::EINVAL)?;
        let text = request[at..].as_ptr();
        at += end + 1;
        Ok(text)
    };
    let directory = next()?;
    for slot in argv.iter_mut().take(argc) {
        *slot = next()?;
    }
    argv[argc] = core::ptr::null();
    for slot in envp.iter_mut().take(envc) {
        *slot = next()?;
    }
    envp[envc] = core::ptr::null();
    Ok((directory, argc))
}

/// The clone of a request: takes its descriptors as stdin, stdout and stderr, leads a process group of its
/// own, changes to its working directory, and continues as `__contain`.
///
/// # Safety
/// In the new single-threaded process, with ARGV and ENVP filled by [`parse`].
unsafe fn served(fds: [i32; 3], directory: CStr, argc: usize) -> ! {
    // SAFETY: system calls on this process's own descriptors and attributes, NUL-terminated paths.
    unsafe {
        for (target, fd) in fds.into_iter().enumerate() {
            let error = sys::call3(sys::DUP2, fd as usize, target, 0);
            if error < 0 {
                fail(&[b"cannot pass the service its standard streams"], Some(-error));
            }
        }
        sys::call3(sys::SETPGID, 0, 0, 0);
        // Its command line in ps and /proc, as if the helper had been exec'd with these arguments (as far
        // as they fit; the service's own process execs and shows its own).
        let (title, room) = *core::ptr::addr_of!(TITLE);
        if room > 0 {
            memset(title, 0, room);
            let argv: *const CStr = core::ptr::addr_of!(ARGV).cast();
            let mut at = 0;
            for index in 0..argc {
                let argument = bytes(*argv.add(index));
                let fits = argument.len().min(room.saturating_sub(at + 1));
                memcpy(title.add(at), argument.as_ptr(), fits);
                at += fits + 1;
                if at >= room {
                    break;
                }
            }
        }
        if *directory != 0 {
            let error = sys::call3(sys::CHDIR, directory as usize, 0, 0);
            if error < 0 {
                fail(
                    &[b"cannot change to the working directory ", bytes(directory)],
                    Some(-error),
                );
            }
        }
        let start = Start {
            argc,
            argv: core::ptr::addr_of_mut!(ARGV).cast(),
            envp: core::ptr::addr_of!(ENVP).cast(),
        };
        run(&start, true)
    }
}

/// Sets this process's soft open-file limit to `limit` (decimal digits), at most its hard limit; as
/// `restore_open_files` in `src/supervisor/containment.rs`. An error is `-errno`.
fn restore_open_files(limit: &[u8]) -> Result<(), isize> {
    let mut soft: u64 = 0;
    for digit in limit {
        if !digit.is_ascii_digit() {
            return Err(sys::EINVAL);
        }
        soft = soft
            .checked_mul(10)
            .and_then(|soft| soft.checked_add(u64::from(digit - b'0')))
            .ok_or(sys::EINVAL)?;
    }
    // struct rlimit: the soft limit, then the hard one.
    let mut now = [0u64; 2];
    // SAFETY: prlimit64 on this process (0) writes its limit into a local of the right size.
    let error = unsafe {
        sys::call(
            sys::PRLIMIT64,
            [0, sys::RLIMIT_NOFILE, 0, now.as_mut_ptr() as usize, 0, 0],
        )
    };
    if error < 0 {
        return Err(-error);
    }
    let wanted = [soft.min(now[1]), now[1]];
    // SAFETY: prlimit64 on this process (0) reads the new limit from a local of the right size.
    let error = unsafe {
        sys::call(
            sys::PRLIMIT64,
            [0, sys::RLIMIT_NOFILE, wanted.as_ptr() as usize, 0, 0, 0],
        )
    };
    if error < 0 {
        return Err(-error);
    }
    Ok(())
}

/// As `clean_start` in `src/supervisor/containment.rs`, in two parts: every signal back to its default
/// action (an ignored one would stay ignored across the exec) ...
fn default_signals() {
    // struct sigaction as the kernel takes it, all zero: SIG_DFL, no flags, an empty mask.
    let default = [0usize; 4];
    for signal in 1..=64 {
        if signal != sys::SIGKILL && signal != sys::SIGSTOP {
            // SAFETY: changes this process's own disposition; the kernel reads 32 bytes from a local.
            unsafe {
                sys::call(sys::RT_SIGACTION, [signal, default.as_ptr() as usize, 0, 8, 0, 0]);
            }
        }
    }
}

/// ... and every descriptor from 3 up closed at the exec (the orchestrator's are already; this closes what
/// it inherited itself).
fn close_inherited() {
    // SAFETY: marks this process's own descriptors close-on-exec.
    unsafe { sys::call3(sys::CLOSE_RANGE, 3, u32::MAX as usize, sys::CLOSE_RANGE_CLOEXEC) };
}

/// The environment the service gets: as inherited, except that a standby's `TRACEPARENT` is the one the
/// orchestrator sends with the word to start.
struct Environment {
    /// NULL-terminated, with one spare slot for `TRACEPARENT` when built for a standby.
    pointers: *mut CStr,
    /// Where `TRACEPARENT` goes, if it comes.
    free: usize,
}

const TRACEPARENT: &[u8] = b"TRACEPARENT=";

impl Environment {
    /// # Safety
    /// `envp` must be a NULL-terminated array of NUL-terminated strings.
    unsafe fn new(envp: *const CStr, standby: bool) -> Self {
        if !standby {
            return Environment {
                pointers: envp as *mut CStr,
                free: usize::MAX,
            };
        }
        let mut count = 0;
        // SAFETY: the caller's.
        while !unsafe { *envp.add(count) }.is_null() {
            count += 1;
        }
        let size = (count + 2) * core::mem::size_of::<CStr>();
        // SAFETY: an anonymous private mapping, read and written by this process only.
        let memory = unsafe { sys::call(sys::MMAP, [0, size, 3, 0x22, usize::MAX, 0]) };
        if memory < 0 {
            fail(&[b"cannot build the service's environment"], Some(-memory));
        }
        let pointers = memory as *mut CStr;
        let mut kept = 0;
        for index in 0..count {
            // SAFETY: index < count; both arrays have room; the strings are NUL-terminated.
            unsafe {
                let variable = *envp.add(index);
                if !bytes(variable).starts_with(TRACEPARENT) {
                    *pointers.add(kept) = variable;
                    kept += 1;
                }
            }
        }
        // The mapping is zeroed: the array is NULL-terminated with or without `TRACEPARENT`.
        Environment { pointers, free: kept }
    }
}

/// The value of variable `name` (given with its `=`) in `environment`.
///
/// # Safety
/// `environment` must be a NULL-terminated array of NUL-terminated strings that outlive the result.
unsafe fn lookup<'a>(environment: *const CStr, name: &[u8]) -> Option<&'a [u8]> {
    let mut index = 0;
    loop {
        // SAFETY: the caller's.
        let variable = unsafe { *environment.add(index) };
        if variable.is_null() {
            return None;
        }
        // SAFETY: as above.
        let variable = unsafe { bytes(variable) };
        if let Some(value) = variable.strip_prefix(name) {
            return Some(value);
        }
        index += 1;
    }
}

/// The standby's wait: one line on stdin is the word to start (the start's `TRACEPARENT`, or nothing);
/// stdin closed without one, the standby was discarded and exits. Then stdin becomes /dev/null, as
/// services get it.
///
/// # Safety
/// Single-threaded; `environment` built for a standby.
unsafe fn wait_for_start(environment: &mut Environment) {
    // Opened before the wait, so the word to start is followed by the exec alone.
    // SAFETY: a NUL-terminated path.
    let null = unsafe {
        sys::call(
            sys::OPENAT,
            [
                sys::AT_FDCWD as usize,
                c"/dev/null".as_ptr() as usize,
                sys::O_CLOEXEC,
                0,
                0,
                0,
            ],
        )
    };
    if null < 0 {
        fail(&[b"cannot open /dev/null"], Some(-null));
    }
    // "TRACEPARENT=" + at most 256 bytes + NUL; static, as the exec needs it after this returns.
    static mut VARIABLE: [u8; 12 + 256 + 1] = [0; 12 + 256 + 1];
    // SAFETY: the only reference to VARIABLE in this single-threaded process.
    let variable = unsafe { &mut *core::ptr::addr_of_mut!(VARIABLE) };
    variable[..TRACEPARENT.len()].copy_from_slice(TRACEPARENT);
    let mut line = 0;
    let mut chunk = [0u8; 512];
    'wait: loop {
        // SAFETY: reads into a local buffer.
        let read = unsafe { sys::call3(sys::READ, 0, chunk.as_mut_ptr() as usize, chunk.len()) };
        if read == -sys::EINTR {
            continue;
        }
        if read <= 0 {
            // Discarded unused: the orchestrator closed the pipe.
            sys::exit(0);
        }
        for byte in &chunk[..read as usize] {
            if *byte == b'\n' {
                break 'wait;
            }
            if line < 256 {
                variable[TRACEPARENT.len() + line] = *byte;
                line += 1;
            }
        }
    }
    if line > 0 {
        variable[TRACEPARENT.len() + line] = 0;
        // SAFETY: the spare slot; the slot after it stays NULL.
        unsafe { *environment.pointers.add(environment.free) = variable.as_ptr() };
    }
    // SAFETY: replaces this process's stdin.
    let replaced = unsafe { sys::call3(sys::DUP2, null as usize, 0, 0) };
    if replaced < 0 {
        fail(&[b"cannot open /dev/null"], Some(-replaced));
    }
}

/// Execs the service's program as `execvp` would: a name without a slash is looked up in the
/// environment's `PATH`, and a file the kernel cannot execute is run by `/bin/sh`.
///
/// # Safety
/// `start.argv[4..]` must be the service's NULL-terminated command line, `environment` a NULL-terminated
/// array of NUL-terminated strings.
unsafe fn exec(start: &Start, program: &[u8], environment: *mut CStr) -> ! {
    // SAFETY: the caller's.
    let argv = unsafe { start.argv.add(4) };
    let try_path = |path: CStr| -> isize {
        // SAFETY: NUL-terminated path, the caller's arrays.
        let error = unsafe { -sys::call3(sys::EXECVE, path as usize, argv as usize, environment as usize) };
        if error == sys::ENOEXEC {
            // As execvp does: a script without `#!` is run by the shell, argv[0] becoming the path.
            // SAFETY: argv[3] and argv[4] are slots of this process's own argument array, no longer needed.
            unsafe {
                let shell = start.argv.add(3);
                *shell = c"/bin/sh".as_ptr().cast();
                *shell.add(1) = path;
                sys::call3(sys::EXECVE, *shell as usize, shell as usize, environment as usize);
            }
        }
        error
    };
    // SAFETY: argv[0] is the program, NUL-terminated.
    let program_path = unsafe { *argv };
    if program.contains(&b'/') {
        fail(&[b"cannot start ", program], Some(try_path(program_path)));
    }
    // SAFETY: the caller's.
    let search = unsafe { lookup(environment, b"PATH=") }.unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
    let mut denied = false;
    let mut buffer = [0u8; 4096];
    for directory in search.split(|byte| *byte == b':') {
        let directory: &[u8] = if directory.is_empty() { b"." } else { directory };
        let size = directory.len() + 1 + program.len();
        if size >= buffer.len() {
            continue;
        }
        buffer[..directory.len()].copy_from_slice(directory);
        buffer[directory.len()] = b'/';
        buffer[directory.len() + 1..size].copy_from_slice(program);
        buffer[size] = 0;
        match try_path(buffer.as_ptr()) {
            sys::EACCES => denied = true,
            // Not there (or not a directory, or gone): the next directory may have it.
            sys::ENOENT | sys::ENOTDIR | sys::ESTALE | sys::ENODEV | sys::ETIMEDOUT => {}
            error => fail(&[b"cannot start ", program], Some(error)),
        }
    }
    let error = if denied { sys::EACCES } else { sys::ENOENT };
    fail(&[b"cannot start ", program], Some(error))
}

/// Makes this process continue as PID 2 of a new PID namespace, under a shim (this process) and the
/// namespace's init, as `enter_pid_namespace` in `src/supervisor/containment.rs` does: returns in the
/// service's process; the shim and the init never return. Fails with the errno of what failed.
///
/// # Safety
/// Single-threaded.
unsafe fn enter_pid_namespace() -> Result<(), isize> {
    // SAFETY: system calls on this process's own state, with pointers to locals.
    unsafe {
        let unshared = sys::call3(sys::UNSHARE, sys::CLONE_NEWPID, 0, 0);
        if unshared < 0 {
            return Err(-unshared);
        }
        let mut pipe = [0i32; 2];
        let piped = sys::call3(sys::PIPE2, pipe.as_mut_ptr() as usize, sys::O_CLOEXEC, 0);
        if piped < 0 {
            return Err(-piped);
        }
        let [status_read, status_write] = pipe.map(|fd| fd as usize);
        // Blocked before forking, so no signal is lost or acted on by default in the shim or init.
        let every: u64 = !0;
        let mut before: u64 = 0;
        sys::call(
            sys::RT_SIGPROCMASK,
            [
                sys::SIG_BLOCK,
                &every as *const u64 as usize,
                &mut before as *mut u64 as usize,
                8,
                0,
                0,
            ],
        );
        match sys::call3(sys::FORK, 0, 0, 0) {
            error if error < 0 => {
                sys::call(
                    sys::RT_SIGPROCMASK,
                    [sys::SIG_SETMASK, &before as *const u64 as usize, 0, 8, 0, 0],
                );
                Err(-error)
            }
            0 => {
                // The init: PID 1 of the new namespace.
                sys::call3(sys::CLOSE, status_read, 0, 0);
                sys::call3(sys::PRCTL, sys::PR_SET_PDEATHSIG, sys::SIGKILL, 0);
                sys::call3(sys::PRCTL, sys::PR_SET_NAME, c"fog-init".as_ptr() as usize, 0);
                match sys::call3(sys::FORK, 0, 0, 0) {
                    error if error < 0 => sys::exit(127),
                    0 => {
                        // The service: normal signal handling, then exec.
                        sys::call3(sys::CLOSE, status_write, 0, 0);
                        sys::call(
                            sys::RT_SIGPROCMASK,
                            [sys::SIG_SETMASK, &before as *const u64 as usize, 0, 8, 0, 0],
                        );
                        Ok(())
                    }
                    service => {
                        close_all_but(status_write);
                        run_init(service, status_write, every)
                    }
                }
            }
            init => {
                sys::call3(sys::PRCTL, sys::PR_SET_NAME, c"fog-shim".as_ptr() as usize, 0);
                sys::call3(sys::CLOSE, status_write, 0, 0);
                close_all_but(status_read);
                run_shim(init, status_read)
            }
        }
    }
}

/// Closes every descriptor from 3 up except `keep`.
fn close_all_but(keep: usize) {
    // SAFETY: close_range only closes this process's descriptors.
    unsafe {
        if keep > 3 {
            sys::call3(sys::CLOSE_RANGE, 3, keep - 1, 0);
        }
        sys::call3(sys::CLOSE_RANGE, keep + 1, u32::MAX as usize, 0);
    }
}

/// The namespace's init: forwards termination signals to every process of the namespace, reaps every
/// child (escaped daemons are reparented here), and exits when the service exits, after passing on its
/// wait status. The kernel then kills whatever is left in the namespace.
fn run_init(service: isize, status_write: usize, every: u64) -> ! {
    loop {
        // SAFETY: waits for one of this process's own (blocked) signals.
        let signal = unsafe {
            sys::call(
                sys::RT_SIGTIMEDWAIT,
                [&every as *const u64 as usize, 0, 0, 8, 0, 0],
            )
        };
        if signal < 0 {
            continue;
        }
        let signal = signal as usize;
        if sys::FORWARDED.contains(&signal) {
            // SAFETY: signals every process of this namespace.
            unsafe { sys::call3(sys::KILL, usize::MAX, signal, 0) };
            continue;
        }
        loop {
            let mut status: i32 = 0;
            // SAFETY: wait4 writes only to `status`.
            let reaped = unsafe {
                sys::call(
                    sys::WAIT4,
                    [
                        usize::MAX,
                        &mut status as *mut i32 as usize,
                        sys::WNOHANG,
                        0,
                        0,
                        0,
                    ],
                )
            };
            if reaped <= 0 {
                break;
            }
            if reaped == service {
                // SAFETY: writes four bytes from a local to our own pipe.
                unsafe {
                    sys::call3(sys::WRITE, status_write, &status as *const i32 as usize, 4);
                }
                sys::exit(0);
            }
        }
    }
}

/// The process the orchestrator knows: waits for the init and ends exactly as the service did.
fn run_shim(init: isize, status_read: usize) -> ! {
    let mut init_status: i32 = 0;
    loop {
        // SAFETY: wait4 writes only to `init_status`.
        let waited = unsafe {
            sys::call(
                sys::WAIT4,
                [init as usize, &mut init_status as *mut i32 as usize, 0, 0, 0, 0],
            )
        };
        if waited == init || (waited < 0 && waited != -sys::EINTR) {
            break;
        }
    }
    let mut service_status: i32 = 0;
    // SAFETY: reads at most four bytes into a local.
    let read = unsafe {
        sys::call3(
            sys::READ,
            status_read,
            &mut service_status as *mut i32 as usize,
            4,
        )
    };
    // Without a report (the init was killed), the init's own end is the service's.
    let status = if read == 4 { service_status } else { init_status };
    let signal = status & 0x7f;
    if signal == 0 {
        sys::exit((status >> 8) & 0xff);
    }
    let signal = if signal == 0x7f {
        sys::SIGKILL
    } else {
        signal as usize
    };
    // SAFETY: ends this process by re-raising the same signal with its default action (the shim never
    // set a handler, so only the mask stands in the way).
    unsafe {
        let only: u64 = 1 << (signal - 1);
        sys::call(
            sys::RT_SIGPROCMASK,
            [sys::SIG_UNBLOCK, &only as *const u64 as usize, 0, 8, 0, 0],
        );
        let me = sys::call3(sys::GETPID, 0, 0, 0);
        sys::call3(sys::KILL, me as usize, signal, 0);
    }
    sys::exit(128 + signal as i32)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(&[b"the spawn helper failed"], None)
}

/// Named by the prebuilt `core` (built to unwind); never called, as this program aborts on panic.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

// What the compiler may call for copies and comparisons, with no libc to provide them.

#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(to: *mut u8, from: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's contract for memcpy.
        unsafe { *to.add(i) = *from.add(i) };
    }
    to
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(to: *mut u8, from: *const u8, n: usize) -> *mut u8 {
    if (to as usize) < (from as usize) {
        for i in 0..n {
            // SAFETY: the caller's contract for memmove; forwards, as `to` is below `from`.
            unsafe { *to.add(i) = *from.add(i) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: as above, backwards.
            unsafe { *to.add(i) = *from.add(i) };
        }
    }
    to
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memset(to: *mut u8, byte: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's contract for memset.
        unsafe { *to.add(i) = byte as u8 };
    }
    to
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's contract for memcmp.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}
