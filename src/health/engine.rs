//! The steady-check engine: one task that runs the steady checks of every running service whose probe is
//! plain `http://` to an IP address, which is most of them.
//!
//! A checker task per service (`supervisor::actor::checker`) costs each check two wake-ups of its own
//! task (the tick, the response), an entry in the runtime's timer wheel, a hop through the probe
//! sockets' reactor, and lookups of the service's target and kept socket by name. The engine does the same
//! work for all of them at once: one timer (the earliest due check or deadline), one epoll instance that
//! the runtime watches as one descriptor, and per service a job that owns its target, its socket and its
//! read buffer. At a tick it connects and sends every due check back to back; when its epoll instance
//! has events, it reads each response that came, judges it, and settles it (BENCHMARKS.md, "Side by side
//! with the peers").
//!
//! The engine decides nothing: a job's [`Steady`] settles each outcome, which records a quiet pass itself
//! (a pass of a healthy service) and hands anything else to the service's actor. What it cannot settle (the
//! actor has not taken the last one yet), and a check that is to be traced, the engine gives back to the
//! caller ([`Returned`]), which runs or hands it on and then brings the job back.
//!
//! A check here is the same as the prober's: the same request bytes, one connection per check on a
//! socket kept and dissolved (`connect(AF_UNSPEC)`, a reset) between checks, or a connection the target
//! keeps alive reused (once more on a new connection if it turns out closed), the same response parsing
//! ([`parse_response`]), the same outcomes and messages, the same timeout.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ProbeOutcome;
use super::http::{Failure, IDLE_LIMIT, Response, Target, make_room, parse_response};
use super::probe::judged;
use super::socket::{check_socket, connect, dissolve, new_epoll, register, take_events};
use crate::config::HttpProbe;

/// How late a check may start before the next ones are delayed (tokio's `Interval` allows the same).
pub const LATE: Duration = Duration::from_millis(5);

/// Most room a job keeps for its next response (a health response is usually a few hundred bytes).
const KEPT_BUFFER: usize = 4096;

/// When the check after one due at `due` and started at `started` is due: a check that started late
/// delays the next ones rather than bunching them.
pub fn next_due(due: Instant, started: Instant, interval: Duration) -> Instant {
    let from = if started > due + LATE { started } else { due };
    from + interval
}

/// What settles a job's checks: the service's side of the engine.
pub trait Steady: Send + 'static {
    /// Whether the check due now is to be traced (the engine then gives it back instead of running it).
    fn traced(&mut self) -> bool;

    /// Takes one check's outcome (a quiet pass is recorded, anything else handed on); gives it back when
    /// it cannot be taken now, and the engine then gives it back to the caller.
    fn settle(&mut self, outcome: ProbeOutcome, elapsed: Duration) -> Result<(), ProbeOutcome>;
}

/// Why the engine gave a job back.
#[derive(Debug)]
pub enum Returned {
    /// The check due at `due` is to be traced: the caller runs it.
    Traced {
        /// When it was due.
        due: Instant,
    },
    /// A check's outcome could not be settled: the caller hands it on; the next check is due at `next`.
    Unsettled {
        /// What the check found.
        outcome: ProbeOutcome,
        /// How long it took.
        elapsed: Duration,
        /// When the next check is due.
        next: Instant,
    },
    /// The engine stopped (its runtime is shutting down): the caller checks on its own.
    Stopped,
}

/// The real prober's engine, started on the current runtime at the first job (and again there, should
/// the runtime it ran on have gone).
#[derive(Debug, Default)]
pub struct Engine {
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
}

impl Engine {
    /// The steady checks of `probe`, if the engine can run them: a plain `http://` URL naming an IP
    /// address, on a tokio runtime.
    pub(super) fn steady(&self, probe: &HttpProbe, target: Target) -> Option<SteadyHttp> {
        let address = target.plain_address()?;
        Some(SteadyHttp {
            commands: self.commands()?,
            target: Arc::new(target),
            address,
            url: probe.url.as_str().into(),
            passing: probe.passing,
        })
    }

    fn commands(&self) -> Option<mpsc::UnboundedSender<Command>> {
        let mut commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = commands.as_ref().filter(|running| !running.is_closed()) {
            return Some(running.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let _entered = runtime.enter();
        let epoll = match epoll() {
            Ok(epoll) => epoll,
            Err(error) => {
                tracing::debug!(%error, "no steady-check engine: checkers check on their own");
                return None;
            }
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        runtime.spawn(run(receiver, epoll));
        Some(commands.insert(sender).clone())
    }
}

/// A new epoll instance, watched by the current runtime.
fn epoll() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the descriptor is owned by the `AsyncFd`, which keeps it open for as long as the runtime
    // watches it.
    Ok(unsafe { AsyncFd::register_with_interest(new_epoll()?, Interest::READABLE)? })
}

/// One service's steady checks, as the engine can run them.
#[derive(Debug, Clone)]
pub struct SteadyHttp {
    commands: mpsc::UnboundedSender<Command>,
    target: Arc<Target>,
    address: SocketAddr,
    url: Arc<str>,
    passing: (u16, u16),
}

impl SteadyHttp {
    /// Checks from `first` on, every `interval`, each given `timeout`, settling each with `steady`, until a
    /// check is to be traced or cannot be settled; [`Returned`] says which. Dropped, the job ends.
    pub async fn run(
        &self,
        first: Instant,
        interval: Duration,
        timeout: Duration,
        steady: Box<dyn Steady>,
    ) -> Returned {
        static NEXT_JOB: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        let (back, returned) = oneshot::channel();
        let job = Job {
            id,
            token: 0,
            stamp: 0,
            target: self.target.clone(),
            address: self.address,
            url: self.url.clone(),
            passing: self.passing,
            interval,
            timeout,
            due: first,
            steady,
            back: Some(back),
            socket: None,
            kept: None,
            phase: Phase::Waiting,
            buffer: Vec::new(),
        };
        if self.commands.send(Command::Add(Box::new(job))).is_err() {
            return Returned::Stopped;
        }
        let mut withdraw = Withdraw {
            id,
            commands: Some(&self.commands),
        };
        let returned = returned.await.unwrap_or(Returned::Stopped);
        // The engine let go of the job when it gave it back.
        withdraw.commands = None;
        returned
    }
}

/// Ends a job whose caller stopped waiting for it.
struct Withdraw<'a> {
    id: u64,
    commands: Option<&'a mpsc::UnboundedSender<Command>>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Some(commands) = self.commands {
            let _ = commands.send(Command::Remove(self.id));
        }
    }
}

#[derive(Debug)]
enum Command {
    Add(Box<Job>),
    Remove(u64),
}

/// One service's steady checks in the engine.
struct Job {
    /// Which [`SteadyHttp::run`] added it.
    id: u64,
    /// Its slot, and a number of its own: what its socket's events carry.
    token: u64,
    /// Its timer's number: a timer whose number is not the job's is stale.
    stamp: u64,
    target: Arc<Target>,
    address: SocketAddr,
    url: Arc<str>,
    passing: (u16, u16),
    interval: Duration,
    timeout: Duration,
    /// When the next check is due (while one runs: the one after it).
    due: Instant,
    steady: Box<dyn Steady>,
    back: Option<oneshot::Sender<Returned>>,
    /// Made at the first check, registered once, dissolved between checks.
    socket: Option<Socket>,
    /// Since when the target keeps the connection alive for the next check, if it does.
    kept: Option<Instant>,
    phase: Phase,
    /// The response read so far; kept from one check to the next (its room, not its bytes).
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// Where a job's check stands.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No check runs: the next is due at the job's `due`.
    Waiting,
    /// Connecting, or sending the request (`sent` bytes of it went); on a kept connection if `reused`.
    Sending {
        started: Instant,
        sent: usize,
        reused: bool,
    },
    /// The request went: reading the response.
    Reading { started: Instant, reused: bool },
}

/// How a check ended without a response.
enum Unanswered {
    Failed(Failure),
    TimedOut,
}

/// Every job, and the timers and epoll instance they share.
struct Jobs {
    slots: Vec<Option<Box<Job>>>,
    free: Vec<usize>,
    /// Each job's next due check or current deadline, earliest first, with the job's stamp then.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    stamps: u64,
    epoll: std::os::fd::RawFd,
}

/// The engine's task: takes jobs, checks at their times, and reads what their sockets' events announce.
async fn run(mut commands: mpsc::UnboundedReceiver<Command>, epoll: AsyncFd<OwnedFd>) {
    let mut jobs = Jobs {
        slots: Vec::new(),
        free: Vec::new(),
        timers: BinaryHeap::new(),
        stamps: 0,
        epoll: epoll.get_ref().as_raw_fd(),
    };
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed = None;
    loop {
        let next = jobs.next_timer();
        if next != armed
            && let Some(at) = next
        {
            timer.as_mut().reset(at);
        }
        armed = next;
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(Command::Add(job)) => jobs.add(job),
                Some(Command::Remove(id)) => jobs.remove_job(id),
                // The prober is gone: so are its jobs.
                None => return,
            },
            ready = epoll.readable() => {
                let Ok(mut ready) = ready else {
                    return;
                };
                let descriptor = jobs.epoll;
                if let Err(error) = take_events(descriptor, |events| {
                    for event in events {
                        jobs.event(event.u64);
                    }
                }) {
                    tracing::warn!(%error, "steady checks: epoll_wait failed");
                    return;
                }
                // Events that come after this are a new readiness of the descriptor, not lost.
                ready.clear_ready();
            },
            () = timer.as_mut(), if armed.is_some() => {
                armed = None;
                jobs.fire(Instant::now());
            },
        }
    }
}

impl Jobs {
    fn add(&mut self, mut job: Box<Job>) {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.stamps += 1;
        job.token = index as u64 | (self.stamps << 32);
        let due = job.due;
        self.slots[index] = Some(job);
        self.set_timer(index, due);
    }

    fn remove_job(&mut self, id: u64) {
        if let Some(index) = self
            .slots
            .iter()
            .position(|slot| slot.as_ref().is_some_and(|job| job.id == id))
        {
            self.remove(index);
        }
    }

    /// Takes the job out (its socket closes, which takes it out of the epoll instance).
    fn remove(&mut self, index: usize) -> Option<Box<Job>> {
        let job = self.slots.get_mut(index)?.take()?;
        self.free.push(index);
        Some(job)
    }

    fn set_timer(&mut self, index: usize, at: Instant) {
        self.stamps += 1;
        if let Some(job) = self.slots[index].as_mut() {
            job.stamp = self.stamps;
            self.timers.push(Reverse((at, index, self.stamps)));
        }
    }

    /// The earliest live timer (stale ones are dropped on the way).
    fn next_timer(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, index, stamp))) = self.timers.peek() {
            if self.live(index, stamp) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn live(&self, index: usize, stamp: u64) -> bool {
        matches!(self.slots.get(index), Some(Some(job)) if job.stamp == stamp)
    }

    /// Starts every check due by `now`, and ends every check whose deadline passed.
    fn fire(&mut self, now: Instant) {
        while let Some(&Reverse((at, index, stamp))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !self.live(index, stamp) {
                continue;
            }
            match self.slots[index].as_ref().map(|job| job.phase) {
                // Timed from its own start, not the batch's.
                Some(Phase::Waiting) => self.start(index, Instant::now()),
                Some(_) => self.finish(index, Err(Unanswered::TimedOut)),
                None => {}
            }
        }
    }

    /// Starts the job's due check, unless its caller is gone (the job ends) or it is to be traced (the job
    /// goes back).
    fn start(&mut self, index: usize, now: Instant) {
        let Some(job) = self.slots[index].as_mut() else {
            return;
        };
        if job.back.as_ref().is_none_or(oneshot::Sender::is_closed) {
            self.remove(index);
            return;
        }
        let due = job.due;
        job.due = next_due(due, now, job.interval);
        if job.steady.traced() {
            self.give_back(index, Returned::Traced { due });
            return;
        }
        job.buffer.clear();
        let reused = match job.kept.take() {
            Some(since) if now.duration_since(since) < IDLE_LIMIT => true,
            Some(_) => {
                job.release();
                false
            }
            None => false,
        };
        let deadline = now + job.timeout;
        self.send(index, now, reused);
        if self.slots[index]
            .as_ref()
            .is_some_and(|job| !matches!(job.phase, Phase::Waiting))
        {
            self.set_timer(index, deadline);
        }
    }

    /// Sends the request: on the kept connection if `reused`, else on a new one.
    fn send(&mut self, index: usize, started: Instant, reused: bool) {
        let Some(job) = self.slots[index].as_mut() else {
            return;
        };
        job.phase = Phase::Sending {
            started,
            sent: 0,
            reused,
        };
        if !reused && let Err(error) = job.connect(self.epoll) {
            self.finish(index, Err(Unanswered::Failed(Failure::Connect(error))));
            return;
        }
        self.progress(index);
    }

    /// Sends what is left of the request, and reads once it is all out.
    fn progress(&mut self, index: usize) {
        let Some(job) = self.slots[index].as_mut() else {
            return;
        };
        let Phase::Sending {
            started,
            mut sent,
            reused,
        } = job.phase
        else {
            return;
        };
        let Some(socket) = job.socket.as_ref() else {
            return;
        };
        let request = job.target.request(None);
        while sent < request.len() {
            // MSG_NOSIGNAL: a reset is an error, not SIGPIPE. On a new connection, `send` reports the
            // connection's own error (refused, unreachable); EAGAIN while its handshake is under way.
            match socket.send_with_flags(&request[sent..], libc::MSG_NOSIGNAL) {
                Ok(more) => sent += more,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    job.phase = Phase::Sending {
                        started,
                        sent,
                        reused,
                    };
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // The target closed the kept connection: an ordinary race with its idle timeout, not a
                // failed check. Once more on a new connection.
                Err(_) if reused && sent == 0 => return self.again(index, started),
                Err(error) if sent == 0 => {
                    return self.finish(index, Err(Unanswered::Failed(Failure::Connect(error))));
                }
                Err(error) => return self.finish(index, Err(Unanswered::Failed(Failure::Io(error)))),
            }
        }
        job.phase = Phase::Reading { started, reused };
    }

    /// The kept connection turned out closed: the check once more on a new connection.
    fn again(&mut self, index: usize, started: Instant) {
        if let Some(job) = self.slots[index].as_mut() {
            job.release();
            job.buffer.clear();
        }
        self.send(index, started, false);
    }

    /// An event on a job's socket: the check goes on as far as the socket lets it.
    fn event(&mut self, token: u64) {
        let index = (token & u64::from(u32::MAX)) as usize;
        let Some(Some(job)) = self.slots.get(index) else {
            return;
        };
        if job.token != token {
            return;
        }
        match job.phase {
            // A kept connection closed by its target, or a dissolved one's reset: found out at the next
            // check, if it matters.
            Phase::Waiting => {}
            Phase::Sending { .. } => self.progress(index),
            Phase::Reading { .. } => self.read(index),
        }
    }

    /// Reads what came, and ends the check once the response is whole.
    fn read(&mut self, index: usize) {
        let Some(job) = self.slots[index].as_mut() else {
            return;
        };
        let Phase::Reading { started, reused } = job.phase else {
            return;
        };
        let Some(socket) = job.socket.as_ref() else {
            return;
        };
        let buffer = &mut job.buffer;
        let closed = loop {
            make_room(buffer);
            match socket.recv(buffer.spare_capacity_mut()) {
                Ok(0) => break Ok(()),
                Ok(received) => {
                    // SAFETY: `recv` initialised the first `received` bytes of the spare capacity.
                    unsafe { buffer.set_len(buffer.len() + received) };
                    match parse_response(buffer, false) {
                        Ok(Some(whole)) => return self.finish(index, Ok(whole)),
                        Ok(None) => {}
                        Err(failure) => return self.finish(index, Err(Unanswered::Failed(failure))),
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        if buffer.is_empty() && reused {
            // The kept connection was closed before this request reached it: once more on a new one.
            return self.again(index, started);
        }
        let result = match closed {
            Err(error) => Err(Failure::Io(error)),
            Ok(()) => match parse_response(buffer, true) {
                Ok(Some(whole)) => Ok(whole),
                Ok(None) => Err(Failure::Io(io::ErrorKind::UnexpectedEof.into())),
                Err(failure) => Err(failure),
            },
        };
        self.finish(index, result.map_err(Unanswered::Failed));
    }

    /// Ends the job's check with `result`, settles its outcome, and waits for the next check (or gives the
    /// job back when the outcome cannot be settled).
    fn finish(&mut self, index: usize, result: Result<(Response, bool), Unanswered>) {
        let now = Instant::now();
        let Some(job) = self.slots[index].as_mut() else {
            return;
        };
        let (Phase::Sending { started, .. } | Phase::Reading { started, .. }) = job.phase else {
            return;
        };
        job.phase = Phase::Waiting;
        if job.buffer.capacity() > KEPT_BUFFER {
            // A large response is not room kept for every check after it.
            job.buffer = Vec::new();
        }
        let outcome = match result {
            Ok((response, reusable)) => {
                if reusable {
                    job.kept = Some(now);
                } else {
                    job.release();
                }
                judged(&job.url, job.passing, &response)
            }
            Err(unanswered) => {
                job.release();
                match unanswered {
                    Unanswered::Failed(failure) => super::probe::unanswered(&job.url, &failure),
                    Unanswered::TimedOut => ProbeOutcome::timed_out(job.timeout),
                }
            }
        };
        let elapsed = now.duration_since(started);
        match job.steady.settle(outcome, elapsed) {
            Ok(()) => {
                let due = job.due;
                self.set_timer(index, due);
            }
            Err(outcome) => {
                let next = job.due;
                self.give_back(
                    index,
                    Returned::Unsettled {
                        outcome,
                        elapsed,
                        next,
                    },
                );
            }
        }
    }

    fn give_back(&mut self, index: usize, returned: Returned) {
        if let Some(mut job) = self.remove(index)
            && let Some(back) = job.back.take()
        {
            let _ = back.send(returned);
        }
    }
}

impl Job {
    /// Connects the job's socket (made and registered at the first check) to its target; the handshake
    /// goes on from there.
    fn connect(&mut self, epoll: std::os::fd::RawFd) -> io::Result<()> {
        let socket = match self.socket {
            Some(ref socket) => socket,
            None => {
                let socket = check_socket(self.address)?;
                register(epoll, &socket, self.token)?;
                self.socket.insert(socket)
            }
        };
        connect(socket, self.address)
    }

    /// Ends the connection with a reset and keeps the socket for the next (closes it should that fail).
    fn release(&mut self) {
        self.kept = None;
        if let Some(socket) = self.socket.as_ref()
            && dissolve(socket).is_err()
        {
            self.socket = None;
        }
    }
}

#[cfg(test)]
mod tests;
