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
//! into the connection's own buffer without zero-filling it.
//!
//! Memory: the read buffer grows to what the frames need (at least
//! 8 KiB, a large frame lands whole) and is freed, with the write
//! buffer, when the connection has been quiet for
//! [`Limits::release_idle_after`]: an idle connection holds its socket,
//! this struct and its task. There is one timer per connection; it is not
//! re-armed per message: it fires at the earliest deadline it was armed
//! for, and the connection then looks at its clocks and arms it again.
//!
//! Dropping a `Connection` that is still open finishes the closing
//! handshake (1000) on a background task, bounded by the close timeout.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
use tungstenite::protocol::Role;
use tungstenite::Message;

use crate::codec::encode::MAX_SLICES;
use crate::config::Limits;
use crate::connection::{ConnectionInfo, OutboxError, PeerClose};
use crate::error::{Error, Result};
use crate::handshake::ActiveSlot;
use crate::session::{AfterDeadline, Session};
use crate::stats::ServerStats;
use crate::stream::ShutdownWaiter;
use crate::tokio::io::AsyncSocket;

/// Output beyond this stops reading until the peer takes some: a peer
/// that sends without reading cannot make its answers pile up.
const OUT_HIGH_WATER: usize = 1 << 20;

/// A handle for other tasks to queue messages on a connection.
///
/// The queue is bounded ([`Limits::send_queue`]). [`Outbox::send`] waits for
/// room; [`Outbox::try_send`] never waits and, when the queue is full, has
/// the connection closed with 1013 so that a slow reader cannot make anyone
/// else wait or grow memory.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Message>,
    overflow: Arc<Overflow>,
}

#[derive(Debug, Default)]
struct Overflow {
    flag: AtomicBool,
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
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.flag.store(true, Ordering::SeqCst);
                self.overflow.waker.wake();
                Err(OutboxError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(OutboxError::Closed),
        }
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
    s: Box<State>,
}

/// Everything a connection holds, boxed: the handler's future holds the
/// connection by value (sometimes twice, across an `.await`), so a small
/// `Connection` keeps idle connections small.
struct State {
    /// `None` once the connection is over.
    socket: Option<AsyncSocket>,
    session: Session,
    info: ConnectionInfo,
    limits: Arc<Limits>,
    outbox: Option<OutboxReceiver>,
    /// Fires once when the server shuts down.
    shutdown: Option<ShutdownWaiter>,
    /// The one timer (see the module doc).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Reads done so far, and at the last look at the idle clock.
    reads: u64,
    reads_seen: u64,
    /// When the buffers may be released if nothing is read until then.
    release_at: Option<Instant>,
    /// Since when the socket has taken none of our pending output.
    write_stalled: Option<Instant>,
    slot: Option<ActiveSlot>,
    /// Set on the background closer's copy: its drop only drops.
    lingering: bool,
    /// `recv` returned `Pending` last: its next poll reads the clock.
    woken: bool,
    /// When the `recv` in progress started (for the read timeout).
    recv_started: Option<Instant>,
    /// Reads go on however much output waits (the relay, which holds the
    /// other side back instead: two relays' connections that each stopped
    /// reading while their output waited would wait for each other).
    read_past_output: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.s.info)
            .field("open", &self.s.socket.is_some())
            .field("session", &self.s.session)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(
        socket: AsyncSocket,
        session: Session,
        info: ConnectionInfo,
        limits: Arc<Limits>,
    ) -> Self {
        let s = State {
            socket: Some(socket),
            session,
            info,
            limits,
            outbox: None,
            shutdown: None,
            timer: None,
            reads: 0,
            reads_seen: 0,
            release_at: None,
            write_stalled: None,
            slot: None,
            lingering: false,
            woken: false,
            recv_started: None,
            read_past_output: false,
        };
        Self { s: Box::new(s) }
    }

    pub(crate) fn serving(
        mut self,
        shutdown: ShutdownWaiter,
        slot: ActiveSlot,
        stats: Arc<ServerStats>,
    ) -> Self {
        self.s.session.counting(stats);
        self.s.shutdown = Some(shutdown);
        self.s.slot = Some(slot);
        self
    }

    /// Make [`recv`](Connection::recv) return pings and pongs as well as
    /// data. Pings are still answered automatically; this is for relays
    /// that pass them on (a pong sent unsolicited is allowed by RFC 6455).
    pub fn receive_control_frames(&mut self, on: bool) {
        self.s.session.control_frames = on;
    }

    /// What is known about the peer and the request.
    pub fn info(&self) -> &ConnectionInfo {
        &self.s.info
    }

    /// The peer's close code and reason, once it sent one.
    pub fn peer_close(&self) -> Option<&PeerClose> {
        self.s.session.peer_close()
    }

    /// A handle through which other tasks queue messages for this
    /// connection; [`recv`](Connection::recv) sends them as they arrive.
    pub fn outbox(&mut self) -> Outbox {
        if let Some(o) = &self.s.outbox {
            return o.handle.clone();
        }
        let (tx, rx) = mpsc::channel(self.s.limits.send_queue.max(1));
        let overflow = Arc::new(Overflow::default());
        let handle = Outbox {
            tx,
            overflow: overflow.clone(),
        };
        self.s.outbox = Some(OutboxReceiver {
            rx,
            overflow,
            handle: handle.clone(),
        });
        handle
    }

    /// Send one message and flush it (bounded by [`Limits::write_timeout`]).
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
        self.s.session.send(message)
    }

    /// Write out what [`feed`](Connection::feed) queued.
    pub async fn flush(&mut self) -> Result<()> {
        if self.s.session.out.is_empty() {
            return Ok(());
        }
        // Most writes complete at once: no timer unless the socket is full.
        if let Poll::Ready(result) = self.try_flush() {
            return result;
        }
        let write_timeout = self.s.limits.write_timeout;
        let flushing = poll_fn(|cx| self.poll_flush(cx));
        match write_timeout {
            None => flushing.await,
            Some(t) => match tokio::time::timeout(t, flushing).await {
                Ok(result) => result,
                Err(_) => {
                    self.finished();
                    Err(self.write_timed_out(t))
                }
            },
        }
    }

    /// Writes what the socket takes now; `Pending` when it is full.
    fn try_flush(&mut self) -> Poll<Result<()>> {
        let Some(socket) = &self.s.socket else {
            return Poll::Ready(Err(closed()));
        };
        while !self.s.session.out.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
            let n = self.s.session.out.slices(&mut slices);
            match socket.try_write_vectored(&slices[..n]) {
                Ok(0) => {
                    return Poll::Ready(
                        Err(self.write_failed(std::io::ErrorKind::WriteZero.into())),
                    )
                }
                Ok(written) => {
                    self.s.session.out.advance(written);
                    self.s.write_stalled = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(self.write_failed(e))),
            }
        }
        if self.s.session.take_write_shutdown() {
            socket.shutdown_write();
        }
        Poll::Ready(Ok(()))
    }

    /// True when nothing waits to be written.
    pub(crate) fn output_is_empty(&self) -> bool {
        self.s.session.out.is_empty()
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending_output(&self) -> usize {
        self.s.session.out.len()
    }

    /// Queues `message` without writing it (`send`, `Sink`, the relay and
    /// the split halves).
    pub(crate) fn queue(&mut self, message: Message) -> Result<()> {
        self.s.session.tick(Instant::now());
        self.s.session.send(message)
    }

    /// Queues the close frame (unless one is out already), without waiting.
    pub(crate) fn queue_close(&mut self, code: u16, reason: &str) {
        self.s.session.tick(Instant::now());
        self.s.session.start_close(code, reason);
    }

    /// Writes until everything queued is out, waiting for room.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            if let Poll::Ready(result) = self.try_flush() {
                return Poll::Ready(result);
            }
            let Some(socket) = &self.s.socket else {
                return Poll::Ready(Err(closed()));
            };
            if let Err(e) = std::task::ready!(socket.poll_write_ready(cx)) {
                return Poll::Ready(Err(self.write_failed(e)));
            }
        }
    }

    fn write_failed(&mut self, e: std::io::Error) -> Error {
        self.finished();
        Error::io("writing to the connection", e)
    }

    fn write_timed_out(&self, after: Duration) -> Error {
        Error::Timeout {
            operation: "write",
            addr: self.s.info.peer.to_string(),
            after,
        }
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

    /// `recv` as a poll function; the read timeout counts from the first
    /// poll after the last message (so a dropped `recv` future does not
    /// restart it).
    pub(crate) fn poll_next_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Message>>> {
        let started = *self
            .s
            .recv_started
            .get_or_insert_with(|| self.s.session.recv_started());
        let polled = self.poll_recv(cx, started);
        if polled.is_ready() {
            self.s.recv_started = None;
        }
        polled
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        started: Instant,
    ) -> Poll<Result<Option<Message>>> {
        loop {
            if self.s.socket.is_none() {
                return Poll::Ready(Ok(None));
            }
            self.poll_signals(cx)?;
            match self.s.session.next_message() {
                Ok(Some(message)) => return Poll::Ready(Ok(Some(message))),
                Ok(None) => {}
                Err(e) => {
                    let error = self.s.session.fail(e, &self.s.info.peer);
                    let _ = self.try_flush();
                    return Poll::Ready(Err(error));
                }
            }
            // Everything at hand is decoded: answers go out before waiting.
            let flushed = match self.poll_flush(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(self.after_write_error(e)),
                Poll::Pending => {
                    self.s.write_stalled.get_or_insert_with(Instant::now);
                    false
                }
            };
            if self.s.session.is_done() {
                if flushed {
                    self.finished();
                    return Poll::Ready(Ok(None));
                }
            } else if flushed
                || self.s.read_past_output
                || self.s.session.out.len() < OUT_HIGH_WATER
            {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(true)) => continue,
                    Poll::Ready(Ok(false)) => {
                        self.finished();
                        return Poll::Ready(self.s.session.on_eof().map(|()| None));
                    }
                    Poll::Ready(Err(e)) => {
                        self.finished();
                        return Poll::Ready(match self.s.session.on_eof() {
                            Ok(()) => Ok(None),
                            Err(_) => Err(Error::io("reading from the connection", e)),
                        });
                    }
                    Poll::Pending => {}
                }
            }
            match self.poll_timer(cx, started) {
                Poll::Ready(Some(result)) => return Poll::Ready(result),
                Poll::Ready(None) => continue,
                Poll::Pending => {
                    self.s.woken = true;
                    return Poll::Pending;
                }
            }
        }
    }

    /// A write failed inside `recv`: a peer that hung up after the close
    /// handshake started is the end of it; anything else is an error.
    fn after_write_error(&mut self, e: Error) -> Result<Option<Message>> {
        if self.s.session.is_closing() {
            self.finished();
            return Ok(None);
        }
        Err(e)
    }

    /// Server shutdown, outbox overflow, queued messages.
    fn poll_signals(&mut self, cx: &mut Context<'_>) -> Result<()> {
        if let Some(shutdown) = &mut self.s.shutdown {
            if Pin::new(shutdown).poll(cx).is_ready() {
                self.s.shutdown = None;
                // What was queued before the shutdown goes out first.
                self.take_queued(None)?;
                self.s.session.start_close(1001, "server shutting down");
            }
        }
        if let Some(outbox) = &self.s.outbox {
            outbox.overflow.waker.register(cx.waker());
            if outbox.overflow.flag.swap(false, Ordering::SeqCst) {
                self.s
                    .session
                    .close_slow_consumer(&self.s.info.peer, self.s.limits.send_queue);
            }
        }
        self.take_queued(Some(cx))
    }

    /// Moves queued outbox messages into the session (registering `cx` to
    /// hear of more).
    fn take_queued(&mut self, mut cx: Option<&mut Context<'_>>) -> Result<()> {
        // Output the peer has not taken yet holds the queue back, so that
        // a slow reader fills its bounded queue, not our memory.
        while !self.s.session.is_closing() && self.s.session.out.len() < OUT_HIGH_WATER {
            let Some(outbox) = &mut self.s.outbox else {
                return Ok(());
            };
            let next = match cx.as_deref_mut() {
                Some(cx) => match outbox.rx.poll_recv(cx) {
                    Poll::Ready(m) => m,
                    Poll::Pending => return Ok(()),
                },
                None => outbox.rx.try_recv().ok(),
            };
            // The receiver also holds a sender, so `None` only means empty.
            let Some(message) = next else {
                return Ok(());
            };
            self.s.session.send(message)?;
        }
        Ok(())
    }

    /// Reads once: `true` if bytes arrived, `false` at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let Some(socket) = &mut self.s.socket else {
            return Poll::Ready(Ok(false));
        };
        let room = self.s.session.reserve_read();
        loop {
            match std::task::ready!(socket.poll_read_buf(cx, &mut self.s.session.read)) {
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(got) => {
                    self.s.session.note_read(got, room);
                    self.s.reads += 1;
                    return Poll::Ready(Ok(true));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Looks at the clocks when the timer fires: `Ready(None)` to go on,
    /// `Ready(Some(result))` to end `recv`.
    fn poll_timer(
        &mut self,
        cx: &mut Context<'_>,
        started: Instant,
    ) -> Poll<Option<Result<Option<Message>>>> {
        loop {
            let now = Instant::now();
            self.s.session.tick(now);
            let mut due = self.s.session.timers.next(started).map(|(at, _)| at);
            if let (Some(stalled), Some(t)) = (self.s.write_stalled, self.s.limits.write_timeout) {
                let at = stalled + t;
                if at <= now {
                    self.finished();
                    return Poll::Ready(Some(Err(self.write_timed_out(t))));
                }
                due = Some(due.map_or(at, |d| d.min(at)));
            }
            if due.is_some_and(|at| at <= now) {
                return match self.s.session.on_deadline(started, &self.s.info.peer) {
                    AfterDeadline::Go => Poll::Ready(None),
                    AfterDeadline::Drop(result) => {
                        self.finished();
                        Poll::Ready(Some(result.map(|()| None)))
                    }
                    AfterDeadline::Fail(e) => Poll::Ready(Some(Err(e))),
                };
            }
            if let Some(at) = self.release_due(now) {
                due = Some(due.map_or(at, |d| d.min(at)));
            }
            let Some(at) = due else {
                return Poll::Pending;
            };
            let at = tokio::time::Instant::from_std(at);
            match &mut self.s.timer {
                Some(timer) if timer.deadline() <= at => {}
                Some(timer) => timer.as_mut().reset(at),
                None => self.s.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            let Some(timer) = &mut self.s.timer else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // It fired (perhaps early, for a deadline that moved): arm it
            // again for what is due now.
            self.s.timer = None;
        }
    }

    /// The idle clock: releases the buffers once nothing has been read for
    /// [`Limits::release_idle_after`]; otherwise when to look again.
    fn release_due(&mut self, now: Instant) -> Option<Instant> {
        let after = self.s.limits.release_idle_after?;
        if self.s.session.is_released() {
            self.s.release_at = None;
            return None;
        }
        match self.s.release_at {
            Some(at) if at <= now => {
                if self.s.reads == self.s.reads_seen && self.s.session.out.is_empty() {
                    self.s.session.release_buffers();
                    self.s.release_at = None;
                    crate::tokio::memory::freed();
                    return None;
                }
                self.s.reads_seen = self.s.reads;
                self.s.release_at = Some(now + after);
            }
            Some(_) => {}
            None => {
                self.s.reads_seen = self.s.reads;
                self.s.release_at = Some(now + after);
            }
        }
        self.s.release_at
    }

    /// Start the closing handshake with `code` and `reason` and wait (at most
    /// [`Limits::close_timeout`]) for the peer's answer. Data messages that
    /// arrive meanwhile are discarded.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.queue_close(code, reason);
        while self.recv().await?.is_some() {}
        Ok(())
    }

    /// For relays: a peer's protocol error does not send its close code at
    /// once, so that what the other side still owes this peer (answers to
    /// messages sent before the error) can be delivered first; then
    /// [`close_deferred`](Connection::close_deferred) sends it.
    pub(crate) fn defer_error_close(&mut self) {
        self.s.session.defer_error_close = true;
    }

    /// For relays: keep reading while output waits (see `read_past_output`).
    pub(crate) fn read_past_output(&mut self) {
        self.s.read_past_output = true;
    }

    /// Sends the close code a peer error left waiting, and awaits the answer.
    pub(crate) async fn close_deferred(&mut self) -> Result<()> {
        if self.s.session.close_deferred() {
            while self.recv().await?.is_some() {}
        }
        Ok(())
    }

    /// Sends a close frame without waiting for the answer: messages the
    /// peer sends before its close still come out of [`recv`](Connection::recv).
    pub(crate) async fn begin_close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.queue_close(code, reason);
        self.flush().await
    }

    /// The connection is over: drop the socket now.
    fn finished(&mut self) {
        self.s.session.abandon();
        self.s.socket = None;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.s.lingering || self.s.session.is_done() {
            return;
        }
        let Some(socket) = self.s.socket.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Finish the closing handshake without making the dropper wait; the
        // slot (if any) keeps the server's drain waiting for it.
        let session = std::mem::replace(
            &mut self.s.session,
            Session::new(Role::Server, &self.s.limits, None, Instant::now()),
        );
        let mut closer =
            Connection::new(socket, session, self.s.info.clone(), self.s.limits.clone());
        closer.s.slot = self.s.slot.take();
        closer.s.lingering = true;
        let close_timeout = self.s.limits.close_timeout;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(close_timeout, closer.close(1000, "")).await;
            drop(closer);
            crate::tokio::memory::freed();
        });
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
        if self.s.session.out.len() < OUT_HIGH_WATER {
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
        self.queue_close(1000, "");
        Connection::poll_flush(&mut self, cx)
    }
}

fn closed() -> Error {
    Error::WebSocket(Box::new(tungstenite::Error::AlreadyClosed))
}
