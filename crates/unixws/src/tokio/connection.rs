//! An open WebSocket connection on tokio, with the same behaviour as the
//! blocking [`crate::Connection`]: close codes for protocol and size errors,
//! keepalive pings, idle and close timeouts (the clocks are shared, see
//! `keepalive.rs`), 1001 on server shutdown after flushing what was queued,
//! and a bounded [`Outbox`] for other tasks.
//!
//! Dropping a `Connection` that is still open finishes the closing
//! handshake (1000) on a background task, bounded by the close timeout.
//!
//! Memory: tungstenite gives every connection a read buffer as large as its
//! read chunk (128 KiB by default) and keeps it, and whatever its buffers
//! grew to, for the life of the connection. A server connection here starts
//! with a small buffer ([`SMALL_READS`]), moves to a read chunk sized to
//! the largest frame seen (up to [`LARGE_READS`]), and when it has been quiet for
//! [`Limits::release_idle_after`] drops tungstenite altogether ("parks"),
//! keeping only the socket; the next byte or send rebuilds it. This is safe
//! because `AsyncStream` follows frame boundaries: a connection parks only
//! when tungstenite holds no half-read frame, no open fragmented message
//! and no unsent bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::WebSocketStream;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::Message;

use crate::config::Limits;
use crate::connection::{
    book_incoming, close_code_for, error_after_close, ConnectionInfo, OutboxError, PeerClose,
};
use crate::error::{Error, Result};
use crate::handshake::ActiveSlot;
use crate::keepalive::{Expiry, Timers};
use crate::stats::{Counter, ServerStats};
use crate::tokio::io::AsyncStream;

/// tungstenite's read chunk for a server connection that has only seen
/// small frames: also the buffer a busy small-message connection holds.
pub const SMALL_READS: usize = 1 << 10;

/// tungstenite's read chunk after a large frame: big chunks keep large
/// messages fast (fewer system calls).
pub const LARGE_READS: usize = 128 << 10;

/// A frame that does not fit one small read (with its header) moves a
/// connection to larger reads: two system calls per message halved the
/// rate of 1 KiB, 4 KiB and 16 KiB echoes.
const LARGE_FRAME: u64 = SMALL_READS as u64 - 14;

/// The read chunk for frames of up to `largest` bytes: the next power of
/// two that holds one, between [`SMALL_READS`] and [`LARGE_READS`].
/// tungstenite zeroes its whole read chunk before every read
/// (`FrameCodec::read_in` resizes its buffer with zeros), so a chunk much
/// larger than the frames costs more in `memset` than it saves in system
/// calls: 16 KiB echoes on 128 KiB chunks spent a third of the server's
/// time zeroing.
fn read_chunk_for(largest: u64) -> usize {
    if largest < LARGE_FRAME {
        return SMALL_READS;
    }
    let frame = usize::try_from(largest)
        .unwrap_or(LARGE_READS)
        .saturating_add(14);
    frame
        .checked_next_power_of_two()
        .unwrap_or(LARGE_READS)
        .clamp(SMALL_READS, LARGE_READS)
}

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
    notify: Notify,
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
                self.overflow.notify.notify_one();
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
#[derive(Debug)]
pub struct Connection {
    wire: Wire,
    role: Role,
    /// tungstenite's read chunk: [`SMALL_READS`] until larger frames come.
    read_chunk: usize,
    /// The chunk a pending move to larger reads asked for.
    wanted_chunk: usize,
    /// A move to large reads could not happen cleanly; wait for more input.
    regrow_blocked: bool,
    /// `recv` returns pings and pongs too (after tungstenite answered pings).
    control_frames: bool,
    info: ConnectionInfo,
    limits: Arc<Limits>,
    timers: Timers,
    outbox: Option<OutboxReceiver>,
    shutdown: Option<watch::Receiver<bool>>,
    peer_close: Option<PeerClose>,
    stats: Option<Arc<ServerStats>>,
    closing: bool,
    /// [`feed`](Connection::feed) left messages in tungstenite's buffer.
    unflushed: bool,
    /// A peer error's close code waits for [`close_deferred`](Connection::close_deferred).
    defer_error_close: bool,
    deferred_close: Option<(CloseCode, &'static str)>,
    slot: Option<ActiveSlot>,
}

/// The state of the socket under the connection.
#[derive(Debug)]
enum Wire {
    /// tungstenite is driving the socket, with its buffers (boxed: a
    /// parked connection should not carry its size).
    Open(Box<WebSocketStream<AsyncStream>>),
    /// Idle between messages: tungstenite and its buffers are dropped; they
    /// are rebuilt when data arrives or something must be sent.
    Parked(AsyncStream),
    /// Finished, or handed to the background closer.
    Gone,
}

/// What woke `recv` up.
enum Event {
    Shutdown,
    Overflow,
    Outgoing(Option<Message>),
    Deadline,
    Incoming(Option<Result<Message, WsError>>),
    Readable,
    Park,
}

impl Connection {
    pub(crate) fn new(
        ws: WebSocketStream<AsyncStream>,
        info: ConnectionInfo,
        limits: Arc<Limits>,
        read_timeout: Option<std::time::Duration>,
    ) -> Self {
        Self {
            wire: Wire::Open(Box::new(ws)),
            role: Role::Client,
            read_chunk: SMALL_READS,
            wanted_chunk: SMALL_READS,
            regrow_blocked: false,
            control_frames: false,
            info,
            timers: Timers::new(&limits, read_timeout),
            limits,
            outbox: None,
            shutdown: None,
            peer_close: None,
            stats: None,
            closing: false,
            unflushed: false,
            defer_error_close: false,
            deferred_close: None,
            slot: None,
        }
    }

    pub(crate) fn serving(
        mut self,
        shutdown: watch::Receiver<bool>,
        slot: ActiveSlot,
        stats: Arc<ServerStats>,
    ) -> Self {
        self.stats = Some(stats);
        self.shutdown = Some(shutdown);
        self.slot = Some(slot);
        self.role = Role::Server;
        self
    }

    fn count(&self, counter: Counter) {
        if let Some(stats) = &self.stats {
            stats.count(counter);
        }
    }

    /// Make [`recv`](Connection::recv) return pings and pongs as well as
    /// data. Pings are still answered automatically; this is for relays
    /// that pass them on (a pong sent unsolicited is allowed by RFC 6455).
    pub fn receive_control_frames(&mut self, on: bool) {
        self.control_frames = on;
    }

    /// What is known about the peer and the request.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The peer's close code and reason, once it sent one.
    pub fn peer_close(&self) -> Option<&PeerClose> {
        self.peer_close.as_ref()
    }

    /// A handle through which other tasks queue messages for this
    /// connection; [`recv`](Connection::recv) sends them as they arrive.
    pub fn outbox(&mut self) -> Outbox {
        if let Some(o) = &self.outbox {
            return o.handle.clone();
        }
        let (tx, rx) = mpsc::channel(self.limits.send_queue.max(1));
        let overflow = Arc::new(Overflow::default());
        let handle = Outbox {
            tx,
            overflow: overflow.clone(),
        };
        self.outbox = Some(OutboxReceiver {
            rx,
            overflow,
            handle: handle.clone(),
        });
        handle
    }

    /// Send one message and flush it (bounded by [`Limits::write_timeout`]).
    pub async fn send(&mut self, message: Message) -> Result<()> {
        self.write(Some(message), true).await
    }

    /// Queue one message without waiting for it to reach the socket: it
    /// goes out with the next [`send`](Connection::send) or
    /// [`flush`](Connection::flush), on close, or as soon as
    /// [`recv`](Connection::recv) finds nothing more to read. For handlers
    /// that answer messages as they arrive (an echo): a burst is answered
    /// with a few large writes instead of a system call per message.
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
        self.write(Some(message), false).await
    }

    /// Write out what [`feed`](Connection::feed) queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.unflushed {
            return Ok(());
        }
        self.write(None, true).await
    }

    async fn write(&mut self, message: Option<Message>, flush: bool) -> Result<()> {
        if message
            .as_ref()
            .is_some_and(|m| m.is_text() || m.is_binary())
        {
            self.timers.sent_data();
        }
        let write_timeout = self.limits.write_timeout;
        let ws = self.open().await?;
        let writing = async {
            if let Some(message) = message {
                ws.feed(message).await?;
            }
            if flush {
                ws.flush().await?;
            }
            Ok::<(), WsError>(())
        };
        let result = match write_timeout {
            Some(t) => match tokio::time::timeout(t, writing).await {
                Ok(result) => result.map_err(Error::from),
                Err(_) => Err(Error::Timeout {
                    operation: "write",
                    addr: self.info.peer.to_string(),
                    after: t,
                }),
            },
            None => writing.await.map_err(Error::from),
        };
        self.unflushed = !flush;
        result
    }

    /// tungstenite's stream, rebuilt first if the connection was parked.
    async fn open(&mut self) -> Result<&mut WebSocketStream<AsyncStream>> {
        if let Wire::Parked(_) = self.wire {
            if let Wire::Parked(stream) = std::mem::replace(&mut self.wire, Wire::Gone) {
                let config = Some(self.config());
                // Boxed: rare, and its state would enlarge every caller's future.
                let rebuilding = boxed_rebuild(stream, self.role, config);
                self.wire = Wire::Open(Box::new(rebuilding.await));
            }
        }
        match &mut self.wire {
            Wire::Open(ws) => Ok(ws),
            _ => Err(Error::WebSocket(Box::new(WsError::AlreadyClosed))),
        }
    }

    /// tungstenite's configuration for (re)building this connection's stream.
    fn config(&self) -> WebSocketConfig {
        server_config(&self.limits, self.read_chunk)
    }

    /// Drops tungstenite and its buffers if nothing is half-read or
    /// half-written, then either parks (idle) or rebuilds at once with large
    /// reads (`regrow`). Called only right after tungstenite found no
    /// complete frame in its buffer.
    async fn park(&mut self, regrow: bool) {
        let Wire::Open(ws) = &mut self.wire else {
            return;
        };
        let flushed = matches!(ws.flush().now_or_never(), Some(Ok(())));
        if !(flushed && ws.get_ref().at_message_boundary()) {
            // Messages back to back leave no moment between frames: carry
            // the frame in progress over to the rebuilt tungstenite instead.
            if regrow && flushed {
                if let Some(partial) = ws.get_mut().take_partial_frame() {
                    if let Wire::Open(ws) = std::mem::replace(&mut self.wire, Wire::Gone) {
                        let mut stream = (*ws).into_inner();
                        stream.replay(partial);
                        self.regrow(stream).await;
                    }
                    return;
                }
                ws.get_mut().record_partial_frames();
            }
            tracing::trace!(peer = %self.info.peer, flushed, "not parking: a frame is half-read or a write is pending");
            self.regrow_blocked = regrow;
            return;
        }
        if let Wire::Open(ws) = std::mem::replace(&mut self.wire, Wire::Gone) {
            let mut stream = (*ws).into_inner();
            // A copy of the frame in progress is not needed at a boundary.
            let _ = stream.take_partial_frame();
            if regrow {
                self.regrow(stream).await;
            } else {
                tracing::trace!(peer = %self.info.peer, "parking idle connection");
                self.read_chunk = SMALL_READS;
                self.wire = Wire::Parked(stream);
            }
        }
    }

    /// Rebuilds tungstenite over `stream` with the read chunk the pending
    /// move to larger reads asked for.
    async fn regrow(&mut self, stream: AsyncStream) {
        self.read_chunk = self.wanted_chunk;
        let config = Some(self.config());
        self.wire = Wire::Open(Box::new(
            WebSocketStream::from_raw_socket(stream, self.role, config).await,
        ));
    }

    /// Receive the next text or binary message (and pings and pongs, see
    /// [`receive_control_frames`](Connection::receive_control_frames));
    /// `Ok(None)` once closed.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        let started = Instant::now();
        loop {
            if let Wire::Gone = self.wire {
                return Ok(None);
            }
            // Only a server parks: its tracker has seen every frame byte
            // (a client may get frames glued to the handshake response).
            let (park_after, regrow) = match &mut self.wire {
                Wire::Open(ws) if self.role == Role::Server && !self.closing => {
                    let wanted = read_chunk_for(ws.get_mut().take_largest_frame());
                    if wanted > self.read_chunk && !self.regrow_blocked {
                        self.wanted_chunk = wanted;
                        (Some(std::time::Duration::ZERO), true)
                    } else {
                        (self.limits.release_idle_after, false)
                    }
                }
                _ => (None, false),
            };
            // One timer: the next keepalive/idle/close deadline, or parking.
            let deadline = self.timers.next(started).map(|(at, _)| at);
            let park_at = park_after.map(|after| Instant::now() + after);
            let (wake_at, on_wake) = match (deadline, park_at) {
                (Some(d), Some(p)) if p < d => (Some(p), Event::Park),
                (None, Some(p)) => (Some(p), Event::Park),
                (d, _) => (d, Event::Deadline),
            };
            // Fed messages wait only while more input is at hand.
            let mut ready = None;
            if self.unflushed {
                let more =
                    matches!(&self.wire, Wire::Open(ws) if ws.get_ref().more_may_be_waiting());
                if more {
                    ready = next_incoming(&mut self.wire).now_or_never();
                }
                if ready.is_none() {
                    self.flush().await?;
                }
            }
            let shutdown = &mut self.shutdown;
            let overflow = self.outbox.as_ref().map(|o| o.overflow.clone());
            let outbox = &mut self.outbox;
            let can_send = !self.closing;
            let event = if let Some(event) = ready {
                event
            } else {
                tokio::select! {
                biased;
                _ = wait_true(shutdown), if shutdown.is_some() => Event::Shutdown,
                _ = wait_overflow(&overflow), if overflow.is_some() => Event::Overflow,
                m = next_outgoing(outbox), if outbox.is_some() && can_send => Event::Outgoing(m),
                event = next_incoming(&mut self.wire) => event,
                // Polled after `next_incoming`, so when parking is due,
                // tungstenite has just found no complete frame in its buffer.
                _ = sleep_until(wake_at), if wake_at.is_some() => on_wake,
                }
            };
            if let Event::Incoming(Some(Ok(message))) = event {
                self.regrow_blocked = false;
                if let Some(data) = book_incoming(
                    &mut self.timers,
                    &mut self.peer_close,
                    message,
                    self.control_frames,
                ) {
                    return Ok(Some(data));
                }
                // After the peer's close, tungstenite answers it; we send nothing more.
                self.closing |= self.peer_close.is_some();
                continue;
            }
            // Everything but a message is rare: boxed, so that its state does
            // not enlarge every idle connection's future.
            let handling = self.boxed_handle(event, started, regrow);
            if let Some(done) = handling.await? {
                return Ok(done);
            }
        }
    }

    // A plain function: `Box::pin(self.handle(..)).await` would keep room
    // for the unboxed future in `recv`'s state all the same.
    fn boxed_handle(&mut self, event: Event, started: Instant, regrow: bool) -> Handling<'_> {
        Box::pin(self.handle(event, started, regrow))
    }

    /// Acts on what woke `recv`; `Some(result)` ends `recv` with it.
    async fn handle(
        &mut self,
        event: Event,
        started: Instant,
        regrow: bool,
    ) -> Result<Option<Option<Message>>> {
        match event {
            Event::Shutdown => {
                self.shutdown = None;
                self.flush_outbox().await?;
                self.start_close(CloseCode::Away, "server shutting down")
                    .await?;
            }
            Event::Overflow => return self.close_slow_consumer().await.transpose(),
            Event::Outgoing(None) => self.outbox = None,
            Event::Outgoing(Some(message)) => {
                // A send that stalls because the peer stopped reading must
                // give way when the queue behind it overflows.
                let overflow = self.outbox.as_ref().map(|o| o.overflow.clone());
                let sent = tokio::select! {
                    biased;
                    _ = wait_overflow(&overflow) => None,
                    sent = self.send_queued(message) => Some(sent),
                };
                match sent {
                    Some(result) => result?,
                    None => return self.close_slow_consumer().await.transpose(),
                }
            }
            Event::Deadline => return self.on_deadline(started).await,
            Event::Park => self.park(regrow).await,
            Event::Readable => {
                self.open().await?;
            }
            Event::Incoming(Some(Ok(_))) => {}
            Event::Incoming(
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)),
            ) => {
                self.finished();
                return Ok(Some(None));
            }
            Event::Incoming(Some(Err(WsError::Io(_)))) if self.peer_close.is_some() => {
                self.finished();
                return Ok(Some(None));
            }
            Event::Incoming(Some(Err(e))) => return Err(self.read_error(e).await),
        }
        Ok(None)
    }

    /// Start the closing handshake with `code` and `reason` and wait (at most
    /// [`Limits::close_timeout`]) for the peer's answer. Data messages that
    /// arrive meanwhile are discarded.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.start_close(CloseCode::from(code), reason).await?;
        while self.recv().await?.is_some() {}
        Ok(())
    }

    /// For relays: a peer's protocol error does not send its close code at
    /// once, so that what the other side still owes this peer (answers to
    /// messages sent before the error) can be delivered first; then
    /// [`close_deferred`](Connection::close_deferred) sends it.
    pub(crate) fn defer_error_close(&mut self) {
        self.defer_error_close = true;
    }

    /// Sends the close code a peer error left waiting, and awaits the answer.
    pub(crate) async fn close_deferred(&mut self) -> Result<()> {
        match self.deferred_close.take() {
            Some((code, reason)) => self.close(code.into(), reason).await,
            None => Ok(()),
        }
    }

    /// Sends a close frame without waiting for the answer: messages the
    /// peer sends before its close still come out of [`recv`](Connection::recv).
    pub(crate) async fn begin_close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.start_close(CloseCode::from(code), reason).await
    }

    async fn start_close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        if self.closing {
            return Ok(());
        }
        self.closing = true;
        self.timers.closing();
        let frame = CloseFrame {
            code,
            reason: reason.to_string().into(),
        };
        let Ok(ws) = self.open().await else {
            return Ok(());
        };
        match ws.close(Some(frame)).await {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
            Err(e) => Err(Error::from(e)),
        }
    }

    async fn send_queued(&mut self, message: Message) -> Result<()> {
        match message {
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((CloseCode::Normal, String::new()), |f| {
                    (f.code, f.reason.to_string())
                });
                self.start_close(code, &reason).await
            }
            message => self.send(message).await,
        }
    }

    /// The send queue overflowed: try to say 1013 within the close timeout,
    /// and drop the connection if even that cannot be written.
    async fn close_slow_consumer(&mut self) -> Option<Result<Option<Message>>> {
        tracing::warn!(peer = %self.info.peer, queue = self.limits.send_queue, "send queue full: closing slow consumer with 1013");
        self.count(Counter::SlowConsumer);
        let bound = self.limits.close_timeout;
        let closing = self.start_close(CloseCode::Again, "send queue full: reading too slowly");
        match tokio::time::timeout(bound, closing).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => {
                self.finished();
                Some(Err(Error::Timeout {
                    operation: "write",
                    addr: self.info.peer.to_string(),
                    after: self.limits.close_timeout,
                }))
            }
        }
    }

    /// Sends whatever is queued, so that shutdown loses nothing accepted.
    async fn flush_outbox(&mut self) -> Result<()> {
        while let Some(message) = self.outbox.as_mut().and_then(|o| o.rx.try_recv().ok()) {
            if self.closing {
                break;
            }
            self.send_queued(message).await?;
        }
        Ok(())
    }

    /// Acts on the clock that ran out; `Some(None)` ends `recv`.
    async fn on_deadline(&mut self, started: Instant) -> Result<Option<Option<Message>>> {
        match self
            .timers
            .on_expiry(started, &self.info.peer, self.stats.as_deref())
        {
            Expiry::Nothing => Ok(None),
            Expiry::Drop => {
                self.finished();
                Ok(Some(None))
            }
            Expiry::DropWith(e) => {
                self.finished();
                Err(e)
            }
            Expiry::Ping => {
                self.send(Message::Ping(Default::default())).await?;
                Ok(None)
            }
            Expiry::Close(code, reason) => {
                self.start_close(code, reason).await?;
                Ok(None)
            }
            Expiry::Fail(e) => Err(e),
        }
    }

    /// Sends the close code that fits `e` (1002, 1007, 1009), which
    /// tokio-tungstenite itself does not; the answer is awaited by `close`
    /// or by the drop of the connection.
    async fn read_error(&mut self, e: WsError) -> Error {
        let Some((code, reason)) = close_code_for(&e) else {
            self.finished();
            return Error::from(e);
        };
        tracing::info!(peer = %self.info.peer, error = %e, code = u16::from(code), "closing connection on a peer error");
        self.count(Counter::ProtocolError);
        if self.defer_error_close {
            self.deferred_close = Some((code, reason));
        } else {
            let _ = self.start_close(code, reason).await;
        }
        error_after_close(e, code)
    }

    /// The connection is over: drop the socket now.
    fn finished(&mut self) {
        self.wire = Wire::Gone;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let wire = std::mem::replace(&mut self.wire, Wire::Gone);
        if let Wire::Gone = wire {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (role, config) = (self.role, self.config());
        // Finish the closing handshake without making the dropper wait; the
        // slot (if any) keeps the server's drain waiting for it.
        let slot = self.slot.take();
        let close_timeout = self.limits.close_timeout;
        let closing = self.closing;
        runtime.spawn(async move {
            let _slot = slot;
            let mut ws = match wire {
                Wire::Open(ws) => *ws,
                Wire::Parked(stream) => {
                    WebSocketStream::from_raw_socket(stream, role, Some(config)).await
                }
                Wire::Gone => return,
            };
            let _ = tokio::time::timeout(close_timeout, async {
                if !closing {
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    if ws.close(Some(frame)).await.is_err() {
                        return;
                    }
                }
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            drop(ws);
            crate::memory::freed();
        });
    }
}

/// `handle`'s future, boxed; `Some(result)` ends `recv`.
type Handling<'a> = Pin<Box<dyn Future<Output = Result<Option<Option<Message>>>> + Send + 'a>>;

type Rebuild = Pin<Box<dyn Future<Output = WebSocketStream<AsyncStream>> + Send>>;

fn boxed_rebuild(stream: AsyncStream, role: Role, config: Option<WebSocketConfig>) -> Rebuild {
    Box::pin(WebSocketStream::from_raw_socket(stream, role, config))
}

/// tungstenite's configuration for a server connection.
pub(crate) fn server_config(limits: &Limits, read_chunk: usize) -> WebSocketConfig {
    limits.websocket_config().read_buffer_size(read_chunk)
}

async fn wait_true(rx: &mut Option<watch::Receiver<bool>>) {
    match rx {
        Some(rx) => {
            if rx.wait_for(|raised| *raised).await.is_err() {
                // The server is gone without raising: never fire.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn wait_overflow(overflow: &Option<Arc<Overflow>>) {
    match overflow {
        Some(o) => loop {
            if o.flag.swap(false, Ordering::SeqCst) {
                return;
            }
            o.notify.notified().await;
        },
        None => std::future::pending().await,
    }
}

async fn next_outgoing(outbox: &mut Option<OutboxReceiver>) -> Option<Message> {
    match outbox {
        // The receiver also holds a sender, so `None` never comes from here.
        Some(o) => o.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next frame from tungstenite, or readability of a parked socket.
async fn next_incoming(wire: &mut Wire) -> Event {
    match wire {
        Wire::Open(ws) => Event::Incoming(ws.next().await),
        // An error here shows up again, typed, on the rebuilt stream.
        Wire::Parked(stream) => {
            let _ = stream.readable().await;
            Event::Readable
        }
        Wire::Gone => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod read_chunk_tests {
    use super::{read_chunk_for, LARGE_READS, SMALL_READS};

    #[test]
    fn chunks_follow_the_largest_frame() {
        assert_eq!(read_chunk_for(100), SMALL_READS);
        assert_eq!(read_chunk_for(1000), SMALL_READS);
        assert_eq!(read_chunk_for(1024), 2 << 10);
        assert_eq!(read_chunk_for(4 << 10), 8 << 10);
        assert_eq!(read_chunk_for(16 << 10), 32 << 10);
        assert_eq!(read_chunk_for(64 << 10), 128 << 10);
        assert_eq!(read_chunk_for(1 << 20), LARGE_READS);
        assert_eq!(read_chunk_for(u64::MAX), LARGE_READS);
    }
}
