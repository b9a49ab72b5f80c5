//! Fencing by lease: a singleton's instance must be gone before its lease can expire at etcd, even when
//! the orchestrator itself cannot act (stopped by SIGSTOP, a long pause, starved of CPU).
//!
//! Each singleton instance gets a **fence**: a tiny process (this binary, `__fence PGID`) that holds a
//! deadline on the system's monotonic clock and SIGKILLs the instance's process group when the deadline
//! passes without being moved. The orchestrator moves every fence's deadline forward after each lease
//! renewal etcd confirms, to `sent + lease_ttl - margin`, measured from when the renewal was *sent* (etcd
//! cannot have renewed it earlier). A paused orchestrator moves nothing, so its fences fire before the
//! lease can expire and another node be elected. When the instance ends normally, the orchestrator closes
//! the fence's pipe and it exits.
//!
//! Limits, honestly: the guarantee rests on the monotonic clocks of this machine and of etcd's leader
//! running at about the same rate (they do on one host; across hosts NTP slews rates by at most 0.05 %),
//! on the fence itself being scheduled within `margin` (a machine so overloaded that a 1-page process
//! does not run for seconds breaks it), and on SIGKILL ending the process group at once (a process in
//! uninterruptible sleep dies when the sleep ends). A program that embeds the orchestrator without calling
//! [`crate::supervisor::containment::helper_entry`] has no fence process: its singletons are stopped by
//! the orchestrator alone, which a pause can delay.

use std::io::{self, Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{oneshot, watch};

/// The hidden first argument that makes the binary a fence.
pub const FENCE: &str = "__fence";
/// The fence's exit code once it has killed its instance.
const FIRED: i32 = 3;

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock every process of this machine shares.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only to `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64
}

/// The deadline every singleton instance of this node lives under.
#[derive(Debug)]
pub struct Fence {
    /// `CLOCK_MONOTONIC` nanoseconds; 0: no valid lease (kill at once).
    deadline: watch::Sender<u64>,
}

impl Fence {
    /// A fence with no lease yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            deadline: watch::channel(0).0,
        })
    }

    /// Moves every fence to `deadline` (`CLOCK_MONOTONIC` ns; 0 when the lease is known to be gone).
    pub fn set_deadline(&self, deadline: u64) {
        self.deadline.send_replace(deadline);
    }

    /// The lease is still certainly held: a singleton may start.
    pub fn holds(&self) -> bool {
        *self.deadline.borrow() > monotonic_ns()
    }

    /// Puts the instance leading process group `pgid` under the fence, for `service`. `None` when this
    /// binary cannot serve as its own fence (an embedding program that did not call `helper_entry`) or the
    /// fence could not be started (logged).
    pub fn guard(&self, service: &str, pgid: u32) -> Option<FenceGuard> {
        if !crate::supervisor::containment::helper_ready() {
            return None;
        }
        let spawned = tokio::process::Command::new("/proc/self/exe")
            .arg(FENCE)
            .arg(pgid.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(service, %error, "cannot start the lease fence of a singleton instance");
                return None;
            }
        };
        let mut stdin = child.stdin.take()?;
        let mut deadlines = self.deadline.subscribe();
        let (release, mut released) = oneshot::channel::<()>();
        let service = service.to_owned();
        tokio::spawn(async move {
            loop {
                let deadline = *deadlines.borrow_and_update();
                if stdin.write_all(&deadline.to_be_bytes()).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = deadlines.changed() => if changed.is_err() { break },
                    _ = &mut released => break,
                    exit = child.wait() => {
                        if exit.is_ok_and(|status| status.code() == Some(FIRED)) {
                            tracing::error!(
                                service = %service,
                                pgid,
                                "fence: the lease was not renewed in time; the singleton instance was killed"
                            );
                        }
                        return;
                    }
                }
            }
            // The instance has ended: the closed pipe ends the fence.
            drop(stdin);
            let _ = child.wait().await;
        });
        Some(FenceGuard { _release: release })
    }
}

/// Held while a singleton instance runs; dropping it ends its fence.
#[derive(Debug)]
pub struct FenceGuard {
    _release: oneshot::Sender<()>,
}

/// The fence process (`fog-orchestrator __fence PGID`): reads 8-byte big-endian deadlines from stdin and
/// SIGKILLs process group PGID when the latest one passes; exits when stdin closes. Never returns.
pub fn run_fence(pgid: &str) -> ! {
    let Ok(pgid) = pgid.parse::<libc::pid_t>() else {
        let _ = writeln!(
            io::stderr(),
            "fog-orchestrator: the fence needs a process group id"
        );
        std::process::exit(2)
    };
    let mut stdin = io::stdin().lock();
    let mut buffer = [0u8; 8];
    // The first deadline comes at once; until it does, nothing is fenced.
    if stdin.read_exact(&mut buffer).is_err() {
        std::process::exit(0)
    }
    let mut deadline = u64::from_be_bytes(buffer);
    loop {
        let now = monotonic_ns();
        if deadline <= now {
            // SAFETY: kill only sends a signal.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            std::process::exit(FIRED)
        }
        let wait = Duration::from_nanos(deadline - now);
        let timeout = i32::try_from(wait.as_millis() + 1).unwrap_or(i32::MAX);
        let mut poll = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes only `poll`.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        if ready > 0 {
            match stdin.read_exact(&mut buffer) {
                Ok(()) => deadline = u64::from_be_bytes(buffer),
                // Closed: the instance ended (or the orchestrator died, and containment ends it).
                Err(_) => std::process::exit(0),
            }
        }
    }
}
