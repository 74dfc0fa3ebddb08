//! The byte stream under a WebSocket: a Unix or TCP socket, plus the signals
//! that let a blocked read give way.
//!
//! A blocking read must still notice a server shutdown, a message queued for
//! sending by another thread, a handshake deadline or a keepalive deadline.
//! [`Stream`] waits with `poll(2)` on the socket and on those signals; when a
//! signal fires first, the read returns `WouldBlock`, which tungstenite treats
//! as "try again later" without losing state, and the owner of the stream
//! (a [`Connection`](crate::Connection) or the handshake) asks
//! the stream what happened.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::peer::{Peer, PeerCredentials};

/// A connected Unix or TCP socket.
#[derive(Debug)]
pub enum Socket {
    /// A Unix domain socket.
    Unix(UnixStream),
    /// A TCP socket.
    Tcp(TcpStream),
}

impl Socket {
    /// Who is at the other end.
    pub fn peer(&self) -> io::Result<Peer> {
        match self {
            Socket::Unix(s) => PeerCredentials::of(s).map(Peer::Unix),
            Socket::Tcp(s) => s.peer_addr().map(Peer::Tcp),
        }
    }

    /// A second handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
        })
    }

    /// Shut down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.shutdown(how),
            Socket::Tcp(s) => s.shutdown(how),
        }
    }

    /// Bound how long one write may block (`None`: forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_write_timeout(timeout),
            Socket::Tcp(s) => s.set_write_timeout(timeout),
        }
    }

    /// Switch non-blocking mode (for handing the socket to an event loop).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_nonblocking(on),
            Socket::Tcp(s) => s.set_nonblocking(on),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.read(buf),
            Socket::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => s.write(buf),
            Socket::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Unix(s) => s.as_fd(),
            Socket::Tcp(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// A one-way, level-triggered signal that any number of blocked streams
/// (through a descriptor that `poll(2)` watches) and tasks (through a
/// [`ShutdownWaiter`], on any runtime) can wait on: once
/// [`raise`](ShutdownSignal::raise)d, it stays raised.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownSignal {
    inner: Arc<SignalInner>,
}

#[derive(Debug)]
struct SignalInner {
    raised: AtomicBool,
    // Readable once raised: a byte is written and never drained.
    read_end: UnixStream,
    write_end: UnixStream,
    // The tasks waiting: a slot each, so that a waiter polled again
    // replaces its waker instead of adding one.
    waiters: std::sync::Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<std::task::Waker>>,
    free: Vec<usize>,
}

impl ShutdownSignal {
    /// A signal that is not raised yet.
    pub(crate) fn new() -> io::Result<Self> {
        let (read_end, write_end) = UnixStream::pair()?;
        write_end.set_nonblocking(true)?;
        Ok(Self {
            inner: Arc::new(SignalInner {
                raised: AtomicBool::new(false),
                read_end,
                write_end,
                waiters: std::sync::Mutex::default(),
            }),
        })
    }

    /// Raise the signal; every waiter wakes up. Raising twice is harmless.
    pub(crate) fn raise(&self) {
        if !self.inner.raised.swap(true, Ordering::SeqCst) {
            // A full buffer already means readable, so an error here is moot.
            let _ = (&self.inner.write_end).write(&[1]);
            let wakers: Vec<_> = {
                let mut waiters = self.waiters();
                waiters.slots.iter_mut().filter_map(Option::take).collect()
            };
            wakers.into_iter().for_each(std::task::Waker::wake);
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A future that completes once the signal is raised.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn waiter(&self) -> ShutdownWaiter {
        ShutdownWaiter {
            signal: self.clone(),
            slot: None,
            registered: None,
        }
    }

    /// Has it been raised?
    pub(crate) fn is_raised(&self) -> bool {
        self.inner.raised.load(Ordering::SeqCst)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inner.read_end.as_fd()
    }
}

/// Completes when its [`ShutdownSignal`] is raised; cheap to keep in every
/// connection (no allocation of its own, one slot in the signal).
#[derive(Debug)]
pub(crate) struct ShutdownWaiter {
    signal: ShutdownSignal,
    slot: Option<usize>,
    /// The waker registered in the slot: a poll from the same task (the
    /// usual case) takes no lock.
    registered: Option<std::task::Waker>,
}

impl std::future::Future for ShutdownWaiter {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.signal.is_raised() {
            return std::task::Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return std::task::Poll::Pending;
        }
        {
            let this = &mut *self;
            this.registered = Some(cx.waker().clone());
            let mut waiters = this.signal.waiters();
            match this.slot {
                Some(i) => match &mut waiters.slots[i] {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    other => *other = Some(cx.waker().clone()),
                },
                None => {
                    let waker = Some(cx.waker().clone());
                    let i = match waiters.free.pop() {
                        Some(i) => {
                            waiters.slots[i] = waker;
                            i
                        }
                        None => {
                            waiters.slots.push(waker);
                            waiters.slots.len() - 1
                        }
                    };
                    this.slot = Some(i);
                }
            }
        }
        // Raised between the first look and the registration: seen here.
        if self.signal.is_raised() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

impl Drop for ShutdownWaiter {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut waiters = self.signal.waiters();
            waiters.slots[i] = None;
            waiters.free.push(i);
        }
    }
}

/// Wakes one stream from another thread (edge-like: each wake is consumed).
#[derive(Debug, Clone)]
pub(crate) struct WakePipe {
    write_end: Arc<UnixStream>,
}

impl WakePipe {
    pub(crate) fn pair() -> io::Result<(WakePipe, UnixStream)> {
        let (read_end, write_end) = UnixStream::pair()?;
        read_end.set_nonblocking(true)?;
        write_end.set_nonblocking(true)?;
        Ok((
            WakePipe {
                write_end: Arc::new(write_end),
            },
            read_end,
        ))
    }

    pub(crate) fn wake(&self) {
        // WouldBlock means the buffer is full: a wake is already pending.
        let _ = (&*self.write_end).write(&[1]);
    }
}

/// Why a read returned early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// The server is shutting down.
    Shutdown,
    /// Another thread queued something for this connection.
    Wake,
    /// The deadline set with [`Stream::set_deadline`] passed.
    Deadline,
}

/// A socket whose reads give way to shutdown, wake-ups and deadlines.
///
/// This is the `S` of every `tungstenite::WebSocket<S>` that unixws hands out.
/// Without signals or a deadline it reads like the plain socket.
#[derive(Debug)]
pub struct Stream {
    socket: Socket,
    shutdown: Option<ShutdownSignal>,
    wake: Option<UnixStream>,
    deadline: Option<Instant>,
    interrupt: Option<Interrupt>,
}

impl Stream {
    /// A stream over `socket` with no signals.
    pub fn new(socket: Socket) -> Self {
        Self {
            socket,
            shutdown: None,
            wake: None,
            deadline: None,
            interrupt: None,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Give the socket back.
    pub fn into_socket(self) -> Socket {
        self.socket
    }

    pub(crate) fn set_shutdown(&mut self, signal: Option<ShutdownSignal>) {
        self.shutdown = signal;
    }

    pub(crate) fn set_wake(&mut self, read_end: UnixStream) {
        self.wake = Some(read_end);
    }

    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    pub(crate) fn take_interrupt(&mut self) -> Option<Interrupt> {
        self.interrupt.take()
    }

    fn interrupted(&mut self, why: Interrupt) -> io::Error {
        self.interrupt = Some(why);
        io::Error::new(io::ErrorKind::WouldBlock, "unixws: read interrupted")
    }

    /// Waits until the socket is readable, or returns the interrupt that came first.
    fn wait_readable(&mut self) -> Result<(), Interrupt> {
        loop {
            let timeout = match self.deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Interrupt::Deadline);
                    }
                    // Round up so that we never wake just before the deadline.
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let (shutdown_ready, wake_ready, socket_ready) = {
                let mut fds = vec![PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
                let shutdown_at = self.shutdown.as_ref().map(|s| {
                    fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let wake_at = self.wake.as_ref().map(|w| {
                    fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    // poll on valid descriptors does not fail otherwise; if it
                    // does, fall back to a plain blocking read.
                    Err(_) => return Ok(()),
                }
                let ready = |at: Option<usize>| {
                    at.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (ready(shutdown_at), ready(wake_at), ready(Some(0)))
            };
            if shutdown_ready {
                return Err(Interrupt::Shutdown);
            }
            if wake_ready {
                if let Some(w) = &self.wake {
                    let mut sink = [0u8; 64];
                    while matches!((&*w).read(&mut sink), Ok(n) if n > 0) {}
                }
                return Err(Interrupt::Wake);
            }
            if socket_ready {
                return Ok(());
            }
        }
    }
}

impl Stream {
    /// Waits for input (giving way to the signals and the deadline), then
    /// reads once into the spare capacity of `buf`.
    pub(crate) fn read_buf(&mut self, buf: &mut bytes::BytesMut) -> Result<usize, ReadFailure> {
        if self.shutdown.is_some() || self.wake.is_some() || self.deadline.is_some() {
            self.wait_readable().map_err(ReadFailure::Interrupted)?;
        }
        loop {
            match crate::sys::read_into(self.socket.as_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map_err(ReadFailure::Io),
            }
        }
    }

    /// Writes as much of `slices` as the socket takes in one call.
    pub(crate) fn write_vectored(&mut self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let written = match &mut self.socket {
            Socket::Unix(s) => s.write_vectored(slices),
            Socket::Tcp(s) => s.write_vectored(slices),
        };
        written.map_err(write_timed_out)
    }
}

/// Why [`Stream::read_buf`] read nothing.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// A signal or the deadline came first.
    Interrupted(Interrupt),
    /// The socket failed.
    Io(io::Error),
}

/// SO_SNDTIMEO reports an expired write as `WouldBlock`; say what it is.
fn write_timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "write timed out: the peer is not reading",
        )
    } else {
        e
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.shutdown.is_some() || self.wake.is_some() || self.deadline.is_some() {
            if let Err(why) = self.wait_readable() {
                return Err(self.interrupted(why));
            }
        }
        self.socket.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SO_SNDTIMEO reports an expired write as WouldBlock, which tungstenite
        // would take for a non-blocking socket and retry forever.
        self.socket.write(buf).map_err(write_timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
