//! An open WebSocket connection on tokio: the driver that moves bytes
//! between a tokio socket and the sans-IO session (`session.rs`), which
//! makes every protocol decision the blocking driver makes too: close
//! codes for peer errors, pings, the close handshake, keepalive and idle
//! clocks, the slow-consumer close.
//!
//! [`recv`](Connection::recv) is one poll function over everything a
//! connection waits for (input, room to write, the outbox, server
//! shutdown, one timer): all state lives in the connection, so dropping
//! the future loses nothing (it is cancel-safe), and the socket is read
//! into a buffer without zero-filling it.
//!
//! Memory: the read and write buffers are the worker thread's spares
//! (`spare.rs`), lent while there are bytes to move: a read that finds
//! nothing hands the read buffer back, a flush that wrote everything the
//! write buffer. An idle connection holds its socket, this struct and its
//! task (1.85 KiB with `unixws serve --echo`, BENCHMARKS.md). A buffer
//! grows to what the frames need (a large frame lands whole). There is
//! one timer per connection; it is not re-armed per message: it fires at
//! the earliest deadline it was armed for, and the connection then looks
//! at its clocks and arms it again.
//!
//! Sharing: a connection starts owned by one task, without a lock. It
//! becomes shared (`Arc<Mutex<State>>`, locked only inside a poll) when it
//! is [split](Connection::split) or given an [`Outbox`]: then a small
//! writer task moves queued outbox messages to the socket as they come, so
//! they go out while no task is inside `recv` (a handler that sleeps
//! between reads still sends its ticks on time). The tokio socket keeps
//! one waker per direction, so a shared connection registers one that
//! wakes every party waiting for the socket to take output (reader, write
//! half, writer task).
//!
//! Dropping a `Connection` that is still open finishes the closing
//! handshake (1000) on a background task, bounded by the close timeout.

use std::future::{poll_fn, Future};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
use tungstenite::protocol::Role;
use tungstenite::Message;

use crate::codec::decode::Forward;
use crate::codec::encode::MAX_SLICES;
use crate::codec::CodecError;
use crate::connection::{ConnectionInfo, OutboxError, PeerClose};
use crate::error::{Error, Result};
use crate::handshake::ActiveSlot;
use crate::server_core::HANDLER_FAILED;
use crate::session::{AfterDeadline, Session};
use crate::stats::ServerStats;
use crate::stream::ShutdownWaiter;
use crate::tokio::io::AsyncSocket;
use crate::CloseCode;

/// Output beyond this stops reading until the peer takes some: a peer
/// that sends without reading cannot make its answers pile up.
const OUT_HIGH_WATER: usize = 1 << 20;

/// A handle for other tasks to queue messages on a connection.
///
/// The queue is bounded ([`Limits::send_queue`](crate::Limits::send_queue)). [`Outbox::send`] waits for
/// room; [`Outbox::try_send`] never waits and, when the queue is full, has
/// the connection closed with 1013 so that a slow reader cannot make anyone
/// else wait or grow memory; [`Outbox::send_timeout`] waits for room, but
/// closes a reader that made none for that long.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Message>,
    overflow: Arc<Overflow>,
}

#[derive(Debug, Default)]
struct Overflow {
    /// Raised for the connection to close (it lowers it when it does).
    flag: AtomicBool,
    /// Stays raised: the connection was found too slow, and is closing.
    found_slow: AtomicBool,
    waker: AtomicWaker,
}

impl Outbox {
    /// Queue `message`, waiting while the queue is full. A `Message::Close`
    /// makes the connection start its closing handshake.
    pub async fn send(&self, message: Message) -> Result<(), OutboxError> {
        self.tx.send(message).await.map_err(|_| OutboxError::Closed)
    }

    /// Queue `message` if there is room; otherwise mark the connection as a
    /// slow consumer, to be closed with 1013.
    pub fn try_send(&self, message: Message) -> Result<(), OutboxError> {
        match self.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.overflowed()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(OutboxError::Closed),
        }
    }

    /// Queue `message`, waiting while the queue is full, but no longer
    /// than `timeout` for room: a reader that is behind but reading makes
    /// room within it; one that took nothing for that long is a slow
    /// consumer, closed with 1013 ([`OutboxError::Full`]). A broadcaster
    /// that awaits this before it reads its next message slows its sender
    /// to the pace of the slowest reader that still reads (backpressure),
    /// instead of dropping readers that are only momentarily behind.
    pub async fn send_timeout(
        &self,
        message: Message,
        timeout: Duration,
    ) -> Result<(), OutboxError> {
        if self.overflow.found_slow.load(Ordering::SeqCst) {
            // Already found too slow: closing, no more waiting for it.
            return Err(OutboxError::Full);
        }
        let message = match self.tx.try_send(message) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(OutboxError::Closed),
            Err(mpsc::error::TrySendError::Full(message)) => message,
        };
        match tokio::time::timeout(timeout, self.tx.send(message)).await {
            Ok(sent) => sent.map_err(|_| OutboxError::Closed),
            Err(_) => Err(self.overflowed()),
        }
    }

    /// Marks the connection as a slow consumer, to be closed with 1013.
    fn overflowed(&self) -> OutboxError {
        self.overflow.found_slow.store(true, Ordering::SeqCst);
        self.overflow.flag.store(true, Ordering::SeqCst);
        self.overflow.waker.wake();
        OutboxError::Full
    }
}

#[derive(Debug)]
struct OutboxReceiver {
    rx: mpsc::Receiver<Message>,
    overflow: Arc<Overflow>,
    handle: Outbox,
}

/// An open WebSocket connection on tokio.
///
/// [`recv`](Connection::recv) returns data messages; pings, pongs and the
/// closing handshake are handled inside. It returns `Ok(None)` once the
/// connection has closed (see [`peer_close`](Connection::peer_close)).
pub struct Connection {
    core: Core,
}

enum Core {
    /// One task owns the connection: no lock. Boxed: the handler's future
    /// holds the connection by value (sometimes twice, across an
    /// `.await`), so a small `Connection` keeps idle connections small.
    Own(Box<State>),
    /// Split halves or an outbox's writer task share it; `Party` is who
    /// this handle waits as.
    Shared(Arc<Shared>, Party),
}

/// A connection shared by several tasks (see the module doc).
pub(crate) struct Shared {
    state: Mutex<State>,
    info: ConnectionInfo,
    /// The peer's close, copied out of the session once it is known, so
    /// that `peer_close` can lend it without holding the lock.
    peer_close: OnceLock<PeerClose>,
    /// Handles (a `Connection` or a half) that users hold.
    handles: AtomicUsize,
    /// Set when the server's handler failed: the close says 1011.
    failed: AtomicBool,
}

/// Who waits for the socket to take output, on a shared connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    /// The `Connection` itself, or its read half.
    Reader = 0,
    /// The write half.
    Writer = 1,
    /// The outbox's writer task (and the closer).
    Pump = 2,
}

/// The waker a shared connection gives the socket: it wakes every party
/// that waits for room to write (the socket keeps only one).
#[derive(Debug, Default)]
struct Wakers {
    parties: [AtomicWaker; 3],
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for party in &self.parties {
            party.wake();
        }
    }
}

/// Everything a connection holds.
struct State {
    /// `None` once the connection is over.
    socket: Option<AsyncSocket>,
    session: Session,
    info: ConnectionInfo,
    /// Boxed: few connections have one, and every byte here counts per
    /// idle connection.
    outbox: Option<Box<OutboxReceiver>>,
    /// Fires once when the server shuts down.
    shutdown: Option<ShutdownWaiter>,
    /// The one timer (see the module doc).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Since when the socket has taken none of our pending output.
    write_stalled: Option<Instant>,
    slot: Option<ActiveSlot>,
    /// Set once the connection is shared.
    wakers: Option<Arc<Wakers>>,
    /// An outbox writer task runs: it alone takes queued messages.
    pumped: bool,
    /// Every user handle is gone: the writer task closes the connection.
    abandoned: bool,
    /// When the `recv` in progress started (for the read timeout).
    recv_started: Option<Instant>,
    /// Reads go on however much output waits (the relay, which holds the
    /// other side back instead: two relays' connections that each stopped
    /// reading while their output waited would wait for each other).
    read_past_output: bool,
}

/// The state behind a handle: owned, or locked for the length of a call.
enum StateRef<'a> {
    Own(&'a mut State),
    Locked(MutexGuard<'a, State>),
}

impl Deref for StateRef<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        match self {
            StateRef::Own(s) => s,
            StateRef::Locked(s) => s,
        }
    }
}

impl DerefMut for StateRef<'_> {
    fn deref_mut(&mut self) -> &mut State {
        match self {
            StateRef::Own(s) => s,
            StateRef::Locked(s) => s,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", self.info())
            .field("shared", &matches!(self.core, Core::Shared(..)))
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(socket: AsyncSocket, session: Session, info: ConnectionInfo) -> Self {
        let s = State::new(Some(socket), session, info);
        Self {
            core: Core::Own(Box::new(s)),
        }
    }

    pub(crate) fn serving(
        mut self,
        shutdown: ShutdownWaiter,
        slot: ActiveSlot,
        stats: Arc<ServerStats>,
    ) -> Self {
        let mut s = self.state();
        s.session.count_into(stats);
        s.shutdown = Some(shutdown);
        s.slot = Some(slot);
        drop(s);
        self
    }

    /// The state, locked if shared.
    fn state(&mut self) -> StateRef<'_> {
        match &mut self.core {
            Core::Own(s) => StateRef::Own(s),
            Core::Shared(shared, _) => StateRef::Locked(shared.lock()),
        }
    }

    /// Who this handle waits as.
    fn party(&self) -> Party {
        match &self.core {
            Core::Own(_) => Party::Reader,
            Core::Shared(_, party) => *party,
        }
    }

    /// Makes the connection shared (if it is not yet) and returns the
    /// shared core.
    fn share(&mut self) -> Arc<Shared> {
        let shared = match &mut self.core {
            Core::Shared(shared, _) => return shared.clone(),
            Core::Own(state) => {
                let mut state = state.detach();
                state.wakers = Some(Arc::default());
                Arc::new(Shared {
                    info: state.info.clone(),
                    state: Mutex::new(state),
                    peer_close: OnceLock::new(),
                    handles: AtomicUsize::new(1),
                    failed: AtomicBool::new(false),
                })
            }
        };
        self.core = Core::Shared(shared.clone(), Party::Reader);
        shared
    }

    /// Another handle on the same shared connection (a split half).
    pub(crate) fn handle(&mut self, party: Party) -> Connection {
        let shared = self.share();
        shared.handles.fetch_add(1, Ordering::SeqCst);
        Connection {
            core: Core::Shared(shared, party),
        }
    }

    /// True when both handles share one connection.
    pub(crate) fn same_as(&self, other: &Connection) -> bool {
        match (&self.core, &other.core) {
            (Core::Shared(a, _), Core::Shared(b, _)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Make [`recv`](Connection::recv) return pings and pongs as well as
    /// data. Pings are still answered automatically; this is for relays
    /// that pass them on (a pong sent unsolicited is allowed by RFC 6455).
    pub fn receive_control_frames(&mut self, on: bool) {
        self.state().session.control_frames = on;
    }

    /// Hold the answer to the peer's close until [`close`](Connection::close):
    /// when the peer closes, [`recv`](Connection::recv) returns `Ok(None)`
    /// as usual, but the connection stays open for sending, so that what
    /// the peer's last messages asked for still reaches it (RFC 6455 lets
    /// an endpoint finish sending before it answers a close; the peer
    /// reads until it does). [`peer_close`](Connection::peer_close) has
    /// the peer's code. `close(code, reason)` then answers with the code
    /// of your choosing; a handler that returns without closing answers
    /// with the peer's own code. For one-shot exchanges: a client sends a
    /// request and closes at once, and the server answers a moment later.
    ///
    /// The peer waits for the answer only as long as its own close timeout
    /// (5 s by default in unixws): answer within that.
    pub fn hold_close_reply(&mut self, on: bool) {
        self.state().session.hold_close_reply = on;
    }

    /// What is known about the peer and the request.
    pub fn info(&self) -> &ConnectionInfo {
        match &self.core {
            Core::Own(s) => &s.info,
            Core::Shared(shared, _) => &shared.info,
        }
    }

    /// The peer's close code and reason, once it sent one.
    pub fn peer_close(&self) -> Option<&PeerClose> {
        match &self.core {
            Core::Own(s) => s.session.peer_close(),
            Core::Shared(shared, _) => {
                if let Some(close) = shared.peer_close.get() {
                    return Some(close);
                }
                let known = shared.lock().session.peer_close().cloned();
                known.map(|close| shared.peer_close.get_or_init(|| close))
            }
        }
    }

    /// A handle through which other tasks queue messages for this
    /// connection. A writer task sends them as they arrive, whether or not
    /// a task is inside [`recv`](Connection::recv) (outside a tokio
    /// runtime, `recv` sends them). It returns a `Result` as the blocking
    /// [`Connection::outbox`](crate::Connection::outbox) does (whose
    /// wake-up pipe can fail), so that code moves between the two; here it
    /// is always `Ok`. Messages queued here before a direct
    /// [`send`](Connection::send), [`feed`](Connection::feed) or
    /// [`close`](Connection::close) go out before it.
    pub fn outbox(&mut self) -> Result<Outbox> {
        if let Some(o) = &self.state().outbox {
            return Ok(o.handle.clone());
        }
        let (tx, rx) = mpsc::channel(self.state().session.limits().send_queue.max(1));
        let overflow = Arc::new(Overflow::default());
        let handle = Outbox {
            tx,
            overflow: overflow.clone(),
        };
        self.state().outbox = Some(Box::new(OutboxReceiver {
            rx,
            overflow,
            handle: handle.clone(),
        }));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.share();
            shared.lock().pumped = true;
            runtime.spawn(pump(shared));
        }
        Ok(handle)
    }

    /// Send one message and flush it (bounded by [`Limits::write_timeout`](crate::Limits::write_timeout)).
    /// A `Message::Frame` is written as given (masked on a client), for
    /// tools that craft frames.
    pub async fn send(&mut self, message: Message) -> Result<()> {
        self.queue(message)?;
        self.flush().await
    }

    /// Queue one message without waiting for it to reach the socket: it
    /// goes out with the next [`send`](Connection::send) or
    /// [`flush`](Connection::flush), on close, or as soon as
    /// [`recv`](Connection::recv) has decoded all the input at hand. For
    /// handlers that answer messages as they arrive (an echo): a burst is
    /// answered with one write instead of a system call per message.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: unixws::tokio::Connection) -> unixws::Result<()> {
    /// while let Some(message) = conn.recv().await? {
    ///     conn.feed(message).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn feed(&mut self, message: Message) -> Result<()> {
        self.queue(message)
    }

    /// Write out what [`feed`](Connection::feed) queued.
    pub async fn flush(&mut self) -> Result<()> {
        let write_timeout = {
            let mut s = self.state();
            if s.session.out.is_empty() {
                return Ok(());
            }
            // Most writes complete at once: no timer unless the socket is full.
            if let Poll::Ready(result) = s.try_flush() {
                return result;
            }
            s.session.limits().write_timeout
        };
        let flushing = poll_fn(|cx| self.poll_flush(cx));
        match write_timeout {
            None => flushing.await,
            Some(t) => match tokio::time::timeout(t, flushing).await {
                Ok(result) => result,
                Err(_) => {
                    let mut s = self.state();
                    s.drop_socket();
                    Err(s.write_timed_out(t))
                }
            },
        }
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending_output(&mut self) -> usize {
        self.state().session.out.len()
    }

    /// Queues `message` without writing it (`send`, `Sink`, the relay and
    /// the split halves).
    pub(crate) fn queue(&mut self, message: Message) -> Result<()> {
        let mut s = self.state();
        if Session::wants_now(&message) {
            s.session.tick(Instant::now());
        }
        s.take_queued(None)?;
        s.session.send(message)
    }

    /// Queues the close frame (unless one is out already), without waiting.
    pub(crate) fn queue_close(&mut self, code: CloseCode, reason: &str) {
        let mut s = self.state();
        s.session.tick(Instant::now());
        let _ = s.take_queued(None);
        s.session.start_close(code, reason);
    }

    /// Writes until everything queued is out, waiting for room.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let party = self.party();
        self.state().poll_flush(cx, party)
    }

    /// Receive the next text or binary message (and pings and pongs, see
    /// [`receive_control_frames`](Connection::receive_control_frames));
    /// `Ok(None)` once closed.
    ///
    /// Cancel-safe: dropping the future (in a `select!`) loses nothing;
    /// the next call carries on where it stopped.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        poll_fn(|cx| self.poll_next_message(cx)).await
    }

    /// `recv` as a poll function.
    pub(crate) fn poll_next_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Message>>> {
        let party = self.party();
        self.state().poll_next_message(cx, party)
    }

    /// Start the closing handshake with `code` and `reason` and wait (at most
    /// [`Limits::close_timeout`](crate::Limits::close_timeout)) for the peer's answer. Data messages that
    /// arrive meanwhile are discarded.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.queue_close(code.into(), reason);
        while self.recv().await?.is_some() {}
        Ok(())
    }

    /// For relays: a peer's protocol error does not send its close code at
    /// once, so that what the other side still owes this peer (answers to
    /// messages sent before the error) can be delivered first; then
    /// [`close_deferred`](Connection::close_deferred) sends it.
    pub(crate) fn defer_error_close(&mut self) {
        self.state().session.defer_error_close = true;
    }

    /// For relays: keep reading while output waits (see `read_past_output`).
    pub(crate) fn read_past_output(&mut self) {
        self.state().read_past_output = true;
    }

    /// For relays: the next data frames as they arrived (checked, to pass
    /// on verbatim with [`forward`](Connection::forward)), or a control
    /// frame; `Ok(None)` once closed. Cancel-safe, as `recv`.
    pub(crate) fn poll_next_forward(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Forward>>> {
        let party = self.party();
        self.state().poll_next(cx, party, Session::next_forward)
    }

    /// `poll_next_forward` as a future.
    pub(crate) async fn recv_forward(&mut self) -> Result<Option<Forward>> {
        poll_fn(|cx| self.poll_next_forward(cx)).await
    }

    /// For relays: queues frames another connection's
    /// [`poll_next_forward`](Connection::poll_next_forward) produced.
    pub(crate) fn forward(
        &mut self,
        bytes: bytes::Bytes,
        frame_done: bool,
        messages: u32,
    ) -> Result<()> {
        let mut s = self.state();
        s.session.tick(Instant::now());
        s.session.forward(bytes, frame_done, messages)
    }

    /// For relays: a forwarded frame is not whole yet on this connection,
    /// so no close frame can be sent until it is.
    pub(crate) fn is_compressed(&mut self) -> bool {
        self.state().session.is_compressed()
    }

    /// For relays: hand out whole messages instead of frames as they came
    /// (see `Session::relay_messages`).
    pub(crate) fn relay_messages(&mut self) {
        self.state().session.relay_messages = true;
    }

    /// For relays: a forwarded frame is not whole yet on this connection,
    /// so no close frame can be sent until it is.
    pub(crate) fn output_mid_frame(&mut self) -> bool {
        self.state().session.out.is_mid_frame()
    }

    /// For relays: ends the connection at once, without a close frame
    /// (a frame forwarded to it will never be completed).
    pub(crate) fn drop_socket(&mut self) {
        self.state().drop_socket();
    }

    /// Sends the close code a peer error left waiting, and awaits the answer.
    pub(crate) async fn close_deferred(&mut self) -> Result<()> {
        if self.state().session.close_deferred() {
            while self.recv().await?.is_some() {}
        }
        Ok(())
    }

    /// Sends a close frame without waiting for the answer: messages the
    /// peer sends before its close still come out of [`recv`](Connection::recv).
    pub(crate) async fn begin_close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.queue_close(code, reason);
        self.flush().await
    }
}

impl State {
    fn new(socket: Option<AsyncSocket>, session: Session, info: ConnectionInfo) -> Self {
        State {
            socket,
            session,
            info,
            outbox: None,
            shutdown: None,
            timer: None,
            write_stalled: None,
            slot: None,
            wakers: None,
            pumped: false,
            abandoned: false,
            recv_started: None,
            read_past_output: false,
        }
    }

    /// Moves everything out into a new `State`, leaving this one over
    /// (no socket, no slot), to be shared or handed to a closer.
    fn detach(&mut self) -> State {
        let limits = self.session.shared_limits();
        let session = Session::new(Role::Server, limits, None, Instant::now());
        let husk = State::new(None, session, self.info.clone());
        std::mem::replace(self, husk)
    }

    /// The connection is open and its closing handshake is not over.
    fn is_open(&self) -> bool {
        self.socket.is_some() && !self.session.is_done()
    }

    /// Writes what the socket takes now; `Pending` when it is full.
    fn try_flush(&mut self) -> Poll<Result<()>> {
        let Some(socket) = &self.socket else {
            return Poll::Ready(Err(closed()));
        };
        while !self.session.out.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
            let n = self.session.out.slices(&mut slices);
            match socket.try_write_vectored(&slices[..n]) {
                Ok(0) => {
                    return Poll::Ready(
                        Err(self.write_failed(std::io::ErrorKind::WriteZero.into())),
                    )
                }
                Ok(written) => {
                    self.session.wrote(written);
                    self.write_stalled = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(self.write_failed(e))),
            }
        }
        if self.session.take_write_shutdown() {
            socket.shutdown_write();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes until everything queued is out, waiting for room as `party`.
    fn poll_flush(&mut self, cx: &mut Context<'_>, party: Party) -> Poll<Result<()>> {
        loop {
            if let Poll::Ready(result) = self.try_flush() {
                return Poll::Ready(result);
            }
            let Some(socket) = &self.socket else {
                return Poll::Ready(Err(closed()));
            };
            let ready = match &self.wakers {
                None => socket.poll_write_ready(cx),
                Some(wakers) => {
                    wakers.parties[party as usize].register(cx.waker());
                    let all = Waker::from(wakers.clone());
                    socket.poll_write_ready(&mut Context::from_waker(&all))
                }
            };
            if let Err(e) = std::task::ready!(ready) {
                return Poll::Ready(Err(self.write_failed(e)));
            }
        }
    }

    fn write_failed(&mut self, e: std::io::Error) -> Error {
        self.drop_socket();
        Error::on_connection("writing to the connection", e)
    }

    fn write_timed_out(&self, after: Duration) -> Error {
        Error::Timeout {
            operation: crate::error::Operation::Write,
            addr: self.info.shown(),
            after,
        }
    }

    /// `recv` as a poll function; the read timeout counts from the first
    /// poll after the last message (so a dropped `recv` future does not
    /// restart it).
    fn poll_next_message(
        &mut self,
        cx: &mut Context<'_>,
        party: Party,
    ) -> Poll<Result<Option<Message>>> {
        self.poll_next(cx, party, Session::next_message)
    }

    /// `poll_next_message`, with what to take from the session: messages,
    /// or forwarded frames (`Session::next_forward`).
    fn poll_next<T>(
        &mut self,
        cx: &mut Context<'_>,
        party: Party,
        next: fn(&mut Session) -> std::result::Result<Option<T>, CodecError>,
    ) -> Poll<Result<Option<T>>> {
        let started = *self
            .recv_started
            .get_or_insert_with(|| self.session.recv_started());
        let polled = self.poll_recv(cx, started, party, next);
        if polled.is_ready() {
            self.recv_started = None;
        }
        polled
    }

    fn poll_recv<T>(
        &mut self,
        cx: &mut Context<'_>,
        started: Instant,
        party: Party,
        next: fn(&mut Session) -> std::result::Result<Option<T>, CodecError>,
    ) -> Poll<Result<Option<T>>> {
        loop {
            if self.socket.is_none() {
                return Poll::Ready(Ok(None));
            }
            let held_back = self.poll_signals(cx)?;
            match next(&mut self.session) {
                Ok(Some(message)) => return Poll::Ready(Ok(Some(message))),
                Ok(None) => {}
                Err(e) => {
                    let error = self.session.fail(e, &self.info.peer);
                    let _ = self.try_flush();
                    return Poll::Ready(Err(error));
                }
            }
            // Everything at hand is decoded: answers go out before waiting.
            let flushed = match self.poll_flush(cx, party) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(self.after_write_error(e).map(|()| None))
                }
                Poll::Pending => {
                    self.write_stalled.get_or_insert_with(Instant::now);
                    false
                }
            };
            if flushed && held_back && !self.session.is_closing() {
                // The output drained: take what the high-water mark held back.
                continue;
            }
            if self.session.is_done() {
                if flushed {
                    self.drop_socket();
                    return Poll::Ready(Ok(None));
                }
            } else if self.session.reply_held() {
                // The peer closed; what we still send goes out before our answer.
                if flushed {
                    return Poll::Ready(Ok(None));
                }
            } else if flushed || self.read_past_output || self.session.out.len() < OUT_HIGH_WATER {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(true)) => continue,
                    Poll::Ready(Ok(false)) => {
                        // Ask before drop_socket(), which ends the session either way.
                        let ended = self.session.on_eof();
                        self.drop_socket();
                        return Poll::Ready(ended.map(|()| None));
                    }
                    Poll::Ready(Err(e)) => {
                        let ended = self.session.on_eof();
                        self.drop_socket();
                        return Poll::Ready(match ended {
                            Ok(()) => Ok(None),
                            Err(_) => Err(Error::on_connection("reading from the connection", e)),
                        });
                    }
                    Poll::Pending => {}
                }
            }
            match self.poll_timer(cx, started) {
                Poll::Ready(Some(result)) => return Poll::Ready(result.map(|()| None)),
                Poll::Ready(None) => continue,
                Poll::Pending => {
                    // The writer task may start a close meanwhile (a slow
                    // consumer): it wakes us to arm the timer for it.
                    if let Some(wakers) = &self.wakers {
                        wakers.parties[party as usize].register(cx.waker());
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// A write failed inside `recv`: a peer that hung up after the close
    /// handshake started is the end of it; anything else is an error.
    fn after_write_error(&mut self, e: Error) -> Result<()> {
        if self.session.is_closing() || self.session.reply_held() {
            self.drop_socket();
            return Ok(());
        }
        Err(e)
    }

    /// Server shutdown; the outbox's overflow and queued messages, unless
    /// a writer task takes them. True when output at the high-water mark
    /// held queued messages back (see `take_queued`).
    fn poll_signals(&mut self, cx: &mut Context<'_>) -> Result<bool> {
        if let Some(shutdown) = &mut self.shutdown {
            if Pin::new(shutdown).poll(cx).is_ready() {
                self.shutdown = None;
                // What was queued before the shutdown goes out first.
                self.take_queued(None)?;
                self.session
                    .start_close(CloseCode::Away, "server shutting down");
            }
        }
        if self.pumped {
            return Ok(false);
        }
        self.poll_outbox(cx)
    }

    /// The outbox: its overflow (the slow-consumer close) and its queued
    /// messages, registering `cx` to hear of more (true: held back by the
    /// output's high-water mark, without registering).
    fn poll_outbox(&mut self, cx: &mut Context<'_>) -> Result<bool> {
        if let Some(outbox) = &self.outbox {
            outbox.overflow.waker.register(cx.waker());
            if outbox.overflow.flag.swap(false, Ordering::SeqCst) {
                self.session
                    .close_slow_consumer(&self.info.peer, self.session.limits().send_queue);
            }
        }
        self.take_queued(Some(cx))
    }

    /// Moves queued outbox messages into the session.
    ///
    /// With `cx` (the running connection), only while the output is under
    /// the high-water mark, registering `cx` to hear of more: output the
    /// peer has not taken yet holds the queue back, so that a slow reader
    /// fills its bounded queue, not our memory. Without (before a message
    /// sent directly, a close or the shutdown's close), all of them: they
    /// were sent earlier and go first, and the queue's own bound still
    /// holds.
    ///
    /// True when the high-water mark stopped it: nothing is registered to
    /// hear of the queue then, so the caller must take again once its
    /// output drained (or the connection would wait for an unrelated
    /// wake-up with messages queued).
    fn take_queued(&mut self, mut cx: Option<&mut Context<'_>>) -> Result<bool> {
        while !self.session.is_closing() {
            if cx.is_some() && self.session.out.len() >= OUT_HIGH_WATER {
                return Ok(true);
            }
            let Some(outbox) = &mut self.outbox else {
                return Ok(false);
            };
            let next = match cx.as_deref_mut() {
                Some(cx) => match outbox.rx.poll_recv(cx) {
                    Poll::Ready(m) => m,
                    Poll::Pending => return Ok(false),
                },
                None => outbox.rx.try_recv().ok(),
            };
            // The receiver also holds a sender, so `None` only means empty.
            let Some(message) = next else {
                return Ok(false);
            };
            self.session.send(message)?;
        }
        Ok(false)
    }

    /// The outbox writer task's step: queued messages to the socket.
    /// `Ready` when the task's work is over (the connection ended, or every
    /// user handle is gone and the task is to close it).
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(wakers) = &self.wakers {
            wakers.parties[Party::Pump as usize].register(cx.waker());
        }
        if self.socket.is_none() || self.abandoned {
            return Poll::Ready(());
        }
        // The clocks count from this wake-up (once, not per message).
        self.session.tick(Instant::now());
        // Nothing but `SendAfterClosing` can fail here, and taking stops
        // once the close is queued.
        loop {
            let was_closing = self.session.is_closing();
            let held_back = self.poll_outbox(cx).unwrap_or(false);
            if !was_closing && self.session.is_closing() {
                // The slow-consumer close has a deadline (the close timeout):
                // a reader waiting in `recv` arms its timer for it.
                if let Some(wakers) = &self.wakers {
                    wakers.parties[Party::Reader as usize].wake();
                }
            }
            match self.poll_flush(cx, Party::Pump) {
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                // The output drained: take what the high-water mark held back.
                Poll::Ready(Ok(())) if held_back => {}
                Poll::Ready(Ok(())) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads once: `true` if bytes arrived, `false` at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let Some(socket) = &mut self.socket else {
            return Poll::Ready(Ok(false));
        };
        if self.session.read.is_empty() {
            crate::spare::lend_read(&mut self.session.read);
        }
        let room = self.session.reserve_read();
        loop {
            let Poll::Ready(read) = socket.poll_read_buf(cx, &mut self.session.read) else {
                if self.session.read.is_empty() {
                    crate::spare::take_back_read(&mut self.session.read);
                }
                return Poll::Pending;
            };
            match read {
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(got) => {
                    self.session.note_read(got, room);
                    return Poll::Ready(Ok(true));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Looks at the clocks when the timer fires: `Ready(None)` to go on,
    /// `Ready(Some(result))` to end `recv` (with no message).
    fn poll_timer(&mut self, cx: &mut Context<'_>, started: Instant) -> Poll<Option<Result<()>>> {
        loop {
            let mut due = self.session.timers.next(started).map(|(at, _)| at);
            let stall = match (self.write_stalled, self.session.limits().write_timeout) {
                (Some(stalled), Some(t)) => Some((stalled + t, t)),
                _ => None,
            };
            if let Some((at, _)) = stall {
                due = Some(due.map_or(at, |d| d.min(at)));
            }
            let Some(at) = due else {
                // Nothing is due (no keepalive): an idle connection keeps
                // no timer either, and the clock is not read.
                self.timer = None;
                return Poll::Pending;
            };
            let now = Instant::now();
            self.session.tick(now);
            if let Some((stall_at, t)) = stall {
                if stall_at <= now {
                    self.drop_socket();
                    return Poll::Ready(Some(Err(self.write_timed_out(t))));
                }
            }
            if at <= now {
                return match self.session.on_deadline(started, &self.info) {
                    AfterDeadline::Go => Poll::Ready(None),
                    AfterDeadline::Drop(result) => {
                        self.drop_socket();
                        Poll::Ready(Some(result))
                    }
                    AfterDeadline::Fail(e) => Poll::Ready(Some(Err(e))),
                };
            }
            let at = tokio::time::Instant::from_std(at);
            match &mut self.timer {
                Some(timer) if timer.deadline() <= at => {}
                Some(timer) => timer.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            let Some(timer) = &mut self.timer else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // It fired (perhaps early, for a deadline that moved): arm it
            // again for what is due now.
            self.timer = None;
        }
    }

    /// The connection is over: drop the socket now (and let a writer task
    /// know).
    fn drop_socket(&mut self) {
        self.session.abandon();
        self.socket = None;
        if let Some(wakers) = &self.wakers {
            wakers.parties[Party::Pump as usize].wake();
        }
    }
}

/// The outbox writer task of a shared connection; once every user handle
/// is gone, it closes the connection.
async fn pump(shared: Arc<Shared>) {
    poll_fn(|cx| shared.lock().poll_pump(cx)).await;
    close_abandoned(shared).await;
}

/// Finishes the closing handshake (1000, or 1011 after a failed handler)
/// of a connection nobody holds,
/// after what its outbox still holds, bounded by the close timeout; the server's slot (if any) keeps its
/// drain waiting until then.
async fn close_abandoned(shared: Arc<Shared>) {
    let close_timeout = {
        let mut s = shared.lock();
        if !s.is_open() {
            return;
        }
        s.session.tick(Instant::now());
        // Messages queued before the handle went go out before the close.
        let _ = s.take_queued(None);
        if shared.failed.load(Ordering::SeqCst) {
            s.session.start_close(CloseCode::Error, HANDLER_FAILED);
        } else {
            s.session.close_normally();
        }
        s.session.limits().close_timeout
    };
    let closing = poll_fn(|cx| {
        let mut s = shared.lock();
        loop {
            match s.poll_next_message(cx, Party::Pump) {
                Poll::Ready(Ok(Some(_))) => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    let _ = tokio::time::timeout(close_timeout, closing).await;
    shared.lock().drop_socket();
    drop(shared);
    crate::tokio::memory::freed();
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A server's handler is judged before its connection closes: a
        // failed one closes it with 1011 (see `verdict`).
        let (shared, serving) = match &mut self.core {
            Core::Own(state) => {
                if !state.is_open() {
                    return;
                }
                let serving = state.slot.is_some();
                let shared = Arc::new(Shared {
                    info: state.info.clone(),
                    state: Mutex::new(state.detach()),
                    peer_close: OnceLock::new(),
                    handles: AtomicUsize::new(0),
                    failed: AtomicBool::new(false),
                });
                (shared, serving)
            }
            Core::Shared(shared, _) => {
                if shared.handles.fetch_sub(1, Ordering::SeqCst) != 1 {
                    return;
                }
                let s = shared.lock();
                // A writer task closes it (and notices if it is over).
                if !s.pumped && !s.is_open() {
                    return;
                }
                let serving = s.slot.is_some();
                drop(s);
                (shared.clone(), serving)
            }
        };
        if serving {
            if let Err(shared) = super::verdict::park(shared) {
                close_detached(shared, false);
            }
        } else {
            close_detached(shared, false);
        }
    }
}

/// Closes a connection no handle holds any more, without making the
/// dropper wait: with 1011 when `failed` (its handler returned an error),
/// else 1000. A writer task, if one runs, does it; otherwise a new task.
pub(crate) fn close_detached(shared: Arc<Shared>, failed: bool) {
    shared.failed.store(failed, Ordering::SeqCst);
    let mut s = shared.lock();
    if s.pumped {
        s.abandoned = true;
        if let Some(wakers) = &s.wakers {
            wakers.parties[Party::Pump as usize].wake();
        }
        return;
    }
    drop(s);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(close_abandoned(shared));
    }
}

/// Messages as a `futures::Stream`, as tokio-tungstenite's
/// `WebSocketStream` has them: `while let Some(m) = ws.next().await`. The
/// stream ends after the closing handshake; an error is an item.
impl futures_util::Stream for Connection {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_next_message(cx).map(Result::transpose)
    }
}

/// Sending as a `futures::Sink`: `ws.send(m).await`, `ws.feed(m)`,
/// `ws.close()`. `poll_ready` waits while a megabyte of output is
/// waiting for the peer; `poll_close` sends a close frame (1000) and
/// flushes it (the peer's answer comes out of the stream).
impl futures_util::Sink<Message> for Connection {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.pending_output() < OUT_HIGH_WATER {
            return Poll::Ready(Ok(()));
        }
        Connection::poll_flush(&mut self, cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<()> {
        self.queue(message)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Connection::poll_flush(&mut self, cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.queue_close(CloseCode::Normal, "");
        Connection::poll_flush(&mut self, cx)
    }
}

fn closed() -> Error {
    Error::WebSocket(Box::new(tungstenite::Error::AlreadyClosed))
}
