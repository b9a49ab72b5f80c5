//! The plain TCP socket of an HTTP probe to an IP address, kept from one check to the next.
//!
//! Most targets close the connection after each response. The socket is then dissolved with
//! `connect(AF_UNSPEC)`, which resets the connection as a close with `SO_LINGER` 0 would, and is
//! connected again at the service's next check. A check so spares the socket's creation and close and its
//! registration with the runtime: two `epoll_ctl`s and tokio's bookkeeping (BENCHMARKS.md, "Side by
//! side with the peers").
//!
//! Tokio cannot watch such a socket, since it takes a closed connection's readiness to be final. The
//! sockets are watched instead by an epoll instance of their own ([`Reactor`]), registered once per
//! socket, edge-triggered; one task drains it and wakes whichever check an event concerns. An event is a
//! hint: a check acts on what `recv` and `send` answer.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Events taken from the epoll instance per `epoll_wait`.
const BATCH: usize = 64;

/// What the events on a socket say, as counts a waiting check compares with what it saw last.
#[derive(Debug, Default)]
struct Slot {
    /// Per [`Direction`]: events that may let a `recv` proceed (data, the peer's close, an error), and
    /// events that may let a `send` proceed (the handshake over, room in the buffer, an error).
    events: [AtomicU32; 2],
    /// The check waiting on the socket, if one is.
    waker: Mutex<Option<Waker>>,
}

/// Which way a socket is waited on.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Read = 0,
    Write = 1,
}

impl Slot {
    fn events(&self, direction: Direction) -> u32 {
        self.events[direction as usize].load(Ordering::Acquire)
    }

    fn count(&self, direction: Direction) {
        self.events[direction as usize].fetch_add(1, Ordering::AcqRel);
    }

    fn wake(&self) {
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut slot = lock(&self.waker);
        match slot.as_ref() {
            Some(kept) if kept.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }
}

/// One epoll instance watching every kept probe socket, drained by a task on the runtime that started it.
#[derive(Debug)]
pub(super) struct Reactor {
    epoll: OwnedFd,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    /// False once the draining task is gone (its runtime shut down): the sockets go with it.
    alive: AtomicBool,
}

impl Reactor {
    /// A reactor drained by a task on the current tokio runtime; an error outside of one.
    pub(super) fn start() -> io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let reactor = Arc::new(Self {
            epoll: new_epoll()?,
            slots: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            alive: AtomicBool::new(true),
        });
        let _guard = runtime.enter();
        // SAFETY: the descriptor is the reactor's epoll instance, which `Watched` keeps open (it holds the
        // reactor) for as long as the runtime watches it.
        let watched =
            unsafe { AsyncFd::register_with_interest(Watched(reactor.clone()), Interest::READABLE)? };
        // The marker goes with the task's future, so that even a task never polled marks the reactor.
        runtime.spawn(drain(watched, Stopped(reactor.clone())));
        Ok(reactor)
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Counts each event on its socket's slot and wakes the check waiting there (a wake only schedules
    /// the check: nothing runs under the lock).
    fn dispatch(&self, events: &[libc::epoll_event]) {
        let slots = lock(&self.slots);
        for event in events {
            let Some(slot) = slots.get(&{ event.u64 }) else {
                continue;
            };
            let flags = event.events as libc::c_int;
            let failed = flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
            if failed || flags & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 {
                slot.count(Direction::Read);
            }
            if failed || flags & libc::EPOLLOUT != 0 {
                slot.count(Direction::Write);
            }
            slot.wake();
        }
    }

    /// The draining task is gone: every waiting check is woken to find out.
    fn stop(&self) {
        self.alive.store(false, Ordering::Release);
        for slot in lock(&self.slots).values() {
            slot.wake();
        }
    }
}

/// The reactor's epoll instance as the runtime watches it.
struct Watched(Arc<Reactor>);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.epoll.as_raw_fd()
    }
}

/// Marks the reactor stopped when the draining task ends or is dropped with its runtime.
struct Stopped(Arc<Reactor>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The reactor's task: whenever its epoll instance has events, takes them all and dispatches them.
async fn drain(watched: AsyncFd<Watched>, stopped: Stopped) {
    let reactor = &stopped.0;
    loop {
        let Ok(mut ready) = watched.readable().await else {
            return;
        };
        if let Err(error) = take_events(reactor.epoll.as_raw_fd(), |events| reactor.dispatch(events)) {
            tracing::warn!(%error, "probe sockets: epoll_wait failed");
            return;
        }
        // Events that come after this are a new readiness of the descriptor, not lost.
        ready.clear_ready();
    }
}

/// A new epoll instance (close-on-exec).
pub(super) fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: creates a descriptor, which is checked, and owned below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `epoll` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(epoll) })
}

/// Registers `socket` with an epoll instance, once for all its connections: edge-triggered, for what
/// may let a `recv` or a `send` proceed, its events carrying `token`.
pub(super) fn register(epoll: RawFd, socket: &Socket, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: token,
    };
    // SAFETY: registers a socket the caller owns with an epoll instance it owns; `event` is read only.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &raw mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes the events an epoll instance has now, without waiting, [`BATCH`] at a time, and hands them to
/// `dispatch`, until a batch comes back less than full.
pub(super) fn take_events(epoll: RawFd, mut dispatch: impl FnMut(&[libc::epoll_event])) -> io::Result<()> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        // SAFETY: waits on an epoll descriptor the caller owns, without blocking, into `events`.
        let taken = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), BATCH as libc::c_int, 0) };
        let Ok(taken) = usize::try_from(taken) else {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        };
        dispatch(&events[..taken]);
        if taken < BATCH {
            return Ok(());
        }
    }
}

/// A nonblocking TCP socket watched by a [`Reactor`], connected for one check (or a kept-alive run of
/// them) at a time.
#[derive(Debug)]
pub(super) struct ProbeSocket {
    socket: Socket,
    reactor: Arc<Reactor>,
    slot: Arc<Slot>,
    key: u64,
    ipv6: bool,
    /// Per [`Direction`], the slot's count when a `recv` (a `send`) last found nothing to do, or the
    /// connection began.
    seen: [u32; 2],
}

impl ProbeSocket {
    /// A new socket for addresses of `address`'s family, watched by `reactor`.
    pub(super) fn new(reactor: &Arc<Reactor>, address: SocketAddr) -> io::Result<Self> {
        let socket = check_socket(address)?;
        let key = reactor.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        lock(&reactor.slots).insert(key, slot.clone());
        let socket = Self {
            socket,
            reactor: reactor.clone(),
            slot,
            key,
            ipv6: address.is_ipv6(),
            seen: [0; 2],
        };
        register(reactor.epoll.as_raw_fd(), &socket.socket, key)?;
        Ok(socket)
    }

    /// Whether this socket can connect to `address` at the next check: the same address family, and its
    /// reactor still running.
    pub(super) fn fits(&self, address: SocketAddr) -> bool {
        self.ipv6 == address.is_ipv6() && self.reactor.is_alive()
    }

    /// Connects to `address` and sends as much of `request` as the socket takes at once (nothing while the
    /// handshake is still under way: then waits for it to end). Returns how much went; errors are the
    /// connection's (refused, unreachable).
    pub(super) async fn connect_and_send(
        &mut self,
        address: SocketAddr,
        request: &[u8],
    ) -> io::Result<usize> {
        // What happened to the socket before this connection is no news for it.
        self.seen = [Direction::Read, Direction::Write].map(|direction| self.slot.events(direction));
        connect(&self.socket, address)?;
        // `send` reports the connection's own error and clears it; EAGAIN while the handshake is under
        // way. MSG_NOSIGNAL: a reset is an error, not SIGPIPE.
        match self.socket.send_with_flags(request, libc::MSG_NOSIGNAL) {
            Ok(sent) => return Ok(sent),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
        // Not connected yet: wait until the handshake ends, and say why it failed if it did.
        std::future::poll_fn(|cx| self.poll_event(cx, Direction::Write)).await?;
        self.seen[Direction::Write as usize] = self.slot.events(Direction::Write);
        match self.socket.take_error()? {
            Some(error) => Err(error),
            None => Ok(0),
        }
    }

    /// Which of its reactor's sockets this is.
    #[cfg(test)]
    pub(super) fn key(&self) -> u64 {
        self.key
    }

    /// Ends the connection with a reset and keeps the socket for another: `connect(AF_UNSPEC)`.
    pub(super) fn dissolve(&self) -> io::Result<()> {
        dissolve(&self.socket)
    }

    /// Ready once an event that concerns `direction` came since the last one seen; an error once the
    /// reactor has stopped.
    fn poll_event(&mut self, cx: &mut Context<'_>, direction: Direction) -> Poll<io::Result<()>> {
        let seen = self.seen[direction as usize];
        if self.slot.events(direction) != seen {
            return Poll::Ready(Ok(()));
        }
        self.slot.register(cx.waker());
        // An event dispatched between the first look and the registration woke no one: look again.
        if self.slot.events(direction) != seen {
            return Poll::Ready(Ok(()));
        }
        if !self.reactor.is_alive() {
            return Poll::Ready(Err(io::Error::other("the probe sockets' reactor stopped")));
        }
        Poll::Pending
    }

    /// `operation` as soon as an event allows, until it does not find the socket unready.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        direction: Direction,
        mut operation: impl FnMut(&Socket) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            std::task::ready!(self.poll_event(cx, direction))?;
            let count = self.slot.events(direction);
            match operation(&self.socket) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.seen[direction as usize] = count
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl Drop for ProbeSocket {
    fn drop(&mut self) {
        // Closing the socket takes it out of the epoll instance; its events no longer find a slot.
        lock(&self.reactor.slots).remove(&self.key);
    }
}

impl AsyncRead for ProbeSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // SAFETY: `recv` only writes into the unfilled part, and says how much of it it filled.
        let unfilled = unsafe { buf.unfilled_mut() };
        let received =
            std::task::ready!(this.poll_io(cx, Direction::Read, |socket| { socket.recv(&mut *unfilled) }))?;
        // SAFETY: `recv` initialised the first `received` bytes of the unfilled part.
        unsafe { buf.assume_init(received) };
        buf.advance(received);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ProbeSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(cx, Direction::Write, |socket| {
            socket.send_with_flags(data, libc::MSG_NOSIGNAL)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown(std::net::Shutdown::Write))
    }
}

/// A nonblocking TCP socket for checks of targets at addresses of `address`'s family (close-on-exec, as
/// socket2 makes every socket).
///
/// Its connections hold the handshake's last ACK back, to go with the request sent right after it: one
/// packet fewer per check, and the target woken once for the connection and its request instead of
/// twice. A connecting socket with `TCP_DEFER_ACCEPT` set does that (as one in `TCP_QUICKACK`-off mode
/// does, which HAProxy uses, but that mode is undone at every connection's end, and this option is not).
pub(super) fn check_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM.nonblocking(), None)?;
    let seconds: libc::c_int = 1;
    // SAFETY: sets an option of our own socket from a local of the size given. Only a saving: a socket
    // that refuses it connects as any other.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(socket)
}

/// Starts connecting `socket` to `address`; the handshake goes on from there (errors are the
/// connection's: refused, unreachable).
pub(super) fn connect(socket: &Socket, address: SocketAddr) -> io::Result<()> {
    match socket.connect(&address.into()) {
        Err(error) if error.raw_os_error() != Some(libc::EINPROGRESS) => Err(error),
        _ => Ok(()),
    }
}

/// Ends `socket`'s connection with a reset and keeps the socket for another: `connect(AF_UNSPEC)`.
pub(super) fn dissolve(socket: &Socket) -> io::Result<()> {
    let unspecified = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: `unspecified` is a whole sockaddr, of the length given.
    let dissolved = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            &raw const unspecified,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if dissolved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[tokio::test]
    async fn a_new_connection_carries_the_request_at_once_when_the_handshake_is_over() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let reactor = Reactor::start().unwrap();
        let address = listener.local_addr().unwrap();
        let mut socket = ProbeSocket::new(&reactor, address).unwrap();
        let sent = socket.connect_and_send(address, REQUEST).await.unwrap();
        assert_eq!(sent, REQUEST.len());
        let (mut accepted, _) = listener.accept().unwrap();
        let mut received = vec![0; REQUEST.len()];
        accepted.read_exact(&mut received).unwrap();
        assert_eq!(received, REQUEST);
    }

    #[tokio::test]
    async fn the_handshakes_last_ack_goes_with_the_request_on_every_connection_of_a_kept_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let reactor = Reactor::start().unwrap();
        let address = listener.local_addr().unwrap();
        let read_request = || {
            let (mut accepted, _) = listener.accept().unwrap();
            let mut received = vec![0; REQUEST.len()];
            accepted.read_exact(&mut received).unwrap();
            assert_eq!(received, REQUEST);
            segments_in(&accepted)
        };
        // A plain connection: the handshake's ACK, then the request.
        let mut plain = std::net::TcpStream::connect(address).unwrap();
        plain.write_all(REQUEST).unwrap();
        let plain = read_request();
        let mut socket = ProbeSocket::new(&reactor, address).unwrap();
        // Twice: the socket holds the ACK back on a connection after a dissolved one as well.
        for connection in ["first", "second"] {
            socket.connect_and_send(address, REQUEST).await.unwrap();
            assert_eq!(
                read_request(),
                plain - 1,
                "the {connection} connection's request carried the handshake's ACK"
            );
            socket.dissolve().unwrap();
        }
    }

    /// How many segments an accepted connection has received (`tcpi_segs_in`).
    fn segments_in(accepted: &std::net::TcpStream) -> u32 {
        // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `length` bytes into it.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let got = libc::getsockopt(
                accepted.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut length,
            );
            assert_eq!(got, 0, "TCP_INFO: {}", io::Error::last_os_error());
            info.tcpi_segs_in
        }
    }

    #[tokio::test]
    async fn a_new_connection_still_in_its_handshake_is_waited_for_and_sends_nothing_yet() {
        use std::future::Future as _;
        // A listener whose backlog is full drops the SYN: the connection is under way when the request
        // would go. Once a place frees, the SYN's retransmission (a second later) gets through.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen on our own socket, with the smallest backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let address = listener.local_addr().unwrap();
        let _filler = std::net::TcpStream::connect(address).unwrap();
        let reactor = Reactor::start().unwrap();
        let mut socket = ProbeSocket::new(&reactor, address).unwrap();
        let mut connecting = Box::pin(socket.connect_and_send(address, REQUEST));
        let polled = std::future::poll_fn(|cx| Poll::Ready(connecting.as_mut().poll(cx).is_pending())).await;
        assert!(polled, "the handshake cannot be over with the backlog full");
        let _ = listener.accept().unwrap();
        let sent = connecting.await.unwrap();
        assert_eq!(
            sent, 0,
            "the request waits for the exchange, which writes it whole"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_the_connections_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let reactor = Reactor::start().unwrap();
        let mut socket = ProbeSocket::new(&reactor, closed).unwrap();
        let error = socket.connect_and_send(closed, REQUEST).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }

    /// One exchange on `socket` with a server that answers and closes: the response as read to its end.
    async fn exchange(socket: &mut ProbeSocket, listener: &std::net::TcpListener) -> (Vec<u8>, u16) {
        let address = listener.local_addr().unwrap();
        let sent = socket.connect_and_send(address, REQUEST).await.unwrap();
        socket.write_all(&REQUEST[sent..]).await.unwrap();
        let (mut accepted, peer) = listener.accept().unwrap();
        let mut request = vec![0; REQUEST.len()];
        accepted.read_exact(&mut request).unwrap();
        accepted
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        drop(accepted);
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await.unwrap();
        (response, peer.port())
    }

    #[tokio::test]
    async fn a_dissolved_socket_connects_again_from_a_new_port_and_resets_the_old_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let reactor = Reactor::start().unwrap();
        let mut socket = ProbeSocket::new(&reactor, listener.local_addr().unwrap()).unwrap();
        let (first, first_port) = exchange(&mut socket, &listener).await;
        socket.dissolve().unwrap();
        let (second, second_port) = exchange(&mut socket, &listener).await;
        assert_eq!(first, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(second, first);
        assert_ne!(first_port, second_port, "each connection has a port of its own");
        assert_eq!(lock(&reactor.slots).len(), 1, "one socket, watched once");
    }

    #[tokio::test]
    async fn a_dissolved_connection_is_reset_so_its_server_keeps_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let reactor = Reactor::start().unwrap();
        let mut socket = ProbeSocket::new(&reactor, address).unwrap();
        socket.connect_and_send(address, REQUEST).await.unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        socket.dissolve().unwrap();
        let mut rest = Vec::new();
        let error = accepted.read_to_end(&mut rest).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn a_waiting_socket_is_told_when_its_reactor_stops_with_its_runtime() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut socket = runtime.block_on(async {
            let reactor = Reactor::start().unwrap();
            let mut socket = ProbeSocket::new(&reactor, address).unwrap();
            socket.connect_and_send(address, REQUEST).await.unwrap();
            socket
        });
        drop(runtime);
        assert!(!socket.fits(address), "a socket of a stopped reactor is not kept");
        let other = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut buffer = [0; 16];
        let error = other.block_on(socket.read(&mut buffer)).unwrap_err();
        assert_eq!(error.to_string(), "the probe sockets' reactor stopped");
    }
}
