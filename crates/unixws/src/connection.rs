//! An open WebSocket connection (client or server side) with what
//! production needs around tungstenite's `WebSocket`: close codes for
//! protocol and size errors (1002, 1007, 1009), keepalive pings, idle and
//! close timeouts, shutdown with 1001, and an [`Outbox`] through which other
//! threads queue messages with a bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::http::HeaderMap;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::keepalive::{Expiry, Timers};
use crate::peer::Peer;
use crate::stats::{Counter, ServerStats};
use crate::stream::{Interrupt, Stream, Waker};

/// What is known about a connection once its handshake is done.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The other end: credentials of a Unix-socket peer, or a TCP address.
    pub peer: Peer,
    /// The request path, e.g. `/chat`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Server side: the request headers, without those of the upgrade
    /// mechanics (`Upgrade`, `Connection`, `Sec-WebSocket-Key`, `-Version`,
    /// `-Extensions`). Client side: the response headers.
    pub headers: HeaderMap,
    /// The negotiated subprotocol, if any.
    pub subprotocol: Option<String>,
}

/// How the connection ended, as the peer said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClose {
    /// The close code (1000 normal, 1001 going away, 1009 too big, ...).
    pub code: u16,
    /// The reason text.
    pub reason: String,
}

/// A handle for other threads to queue messages on a connection.
///
/// The queue is bounded ([`Limits::send_queue`]). [`Outbox::send`] waits for
/// room; [`Outbox::try_send`] never waits and, when the queue is full, has
/// the connection closed with 1013 (a slow consumer must not make the
/// sender's memory grow).
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: SyncSender<Message>,
    waker: Waker,
    overflowed: Arc<AtomicBool>,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// The connection is gone.
    #[error("the connection is closed")]
    Closed,
    /// The queue was full; the connection is being closed with 1013.
    #[error("the connection's send queue is full; it is being closed as too slow")]
    Full,
}

impl Outbox {
    /// Queue `message`, waiting while the queue is full. A `Message::Close`
    /// makes the connection start its closing handshake.
    pub fn send(&self, message: Message) -> Result<(), OutboxError> {
        self.tx.send(message).map_err(|_| OutboxError::Closed)?;
        self.waker.wake();
        Ok(())
    }

    /// Queue `message` if there is room; otherwise mark the connection as a
    /// slow consumer, to be closed with 1013.
    pub fn try_send(&self, message: Message) -> Result<(), OutboxError> {
        match self.tx.try_send(message) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::SeqCst);
                self.waker.wake();
                Err(OutboxError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(OutboxError::Closed),
        }
    }
}

#[derive(Debug)]
struct OutboxReceiver {
    rx: Receiver<Message>,
    overflowed: Arc<AtomicBool>,
    handle: Outbox,
}

/// An open WebSocket connection.
///
/// [`recv`](Connection::recv) returns data messages; pings, pongs and the
/// closing handshake are handled inside. It returns `Ok(None)` once the
/// connection has closed cleanly (see [`peer_close`](Connection::peer_close)
/// for the peer's code).
#[derive(Debug)]
pub struct Connection {
    ws: WebSocket<Stream>,
    info: ConnectionInfo,
    limits: Limits,
    timers: Timers,
    outbox: Option<OutboxReceiver>,
    peer_close: Option<PeerClose>,
    stats: Option<Arc<ServerStats>>,
}

impl Connection {
    pub(crate) fn new(
        ws: WebSocket<Stream>,
        info: ConnectionInfo,
        limits: Limits,
        read_timeout: Option<Duration>,
    ) -> Self {
        Self {
            ws,
            info,
            timers: Timers::new(&limits, read_timeout),
            limits,
            outbox: None,
            peer_close: None,
            stats: None,
        }
    }

    fn count(&self, counter: Counter) {
        if let Some(stats) = &self.stats {
            stats.count(counter);
        }
    }

    pub(crate) fn counting(mut self, stats: Arc<ServerStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// What is known about the peer and the request.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The peer's close code and reason, once it sent one.
    pub fn peer_close(&self) -> Option<&PeerClose> {
        self.peer_close.as_ref()
    }

    /// tungstenite's `WebSocket`, for what this type does not cover. Reading
    /// from it directly bypasses keepalive and close-code handling.
    pub fn websocket_mut(&mut self) -> &mut WebSocket<Stream> {
        &mut self.ws
    }

    /// A handle through which other threads queue messages for this
    /// connection; [`recv`](Connection::recv) sends them as they arrive.
    pub fn outbox(&mut self) -> Result<Outbox> {
        if let Some(o) = &self.outbox {
            return Ok(o.handle.clone());
        }
        let (waker, read_end) =
            Waker::pair().map_err(|e| Error::io("creating the outbox wake-up pipe", e))?;
        self.ws.get_mut().set_wake(read_end);
        let (tx, rx) = mpsc::sync_channel(self.limits.send_queue.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let handle = Outbox {
            tx,
            waker,
            overflowed: overflowed.clone(),
        };
        self.outbox = Some(OutboxReceiver {
            rx,
            overflowed,
            handle: handle.clone(),
        });
        Ok(handle)
    }

    /// Send one message and flush it.
    pub fn send(&mut self, message: Message) -> Result<()> {
        if message.is_text() || message.is_binary() {
            self.timers.sent_data();
        }
        let result = self.ws.send(message);
        result.map_err(|e| self.write_error(e))
    }

    /// Receive the next text or binary message; `Ok(None)` once closed.
    pub fn recv(&mut self) -> Result<Option<Message>> {
        let started = Instant::now();
        loop {
            self.drain_outbox()?;
            let deadline = self.timers.next(started).map(|(at, _)| at);
            self.ws.get_mut().set_deadline(deadline);
            match self.ws.read() {
                Ok(message) => {
                    if let Some(data) =
                        book_incoming(&mut self.timers, &mut self.peer_close, message, false)
                    {
                        return Ok(Some(data));
                    }
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    // tungstenite leaves the socket open; the peer (Node `ws`
                    // for one) waits for our end before it reports the close.
                    self.abort();
                    return Ok(None);
                }
                Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match self.ws.get_mut().take_interrupt() {
                        Some(Interrupt::Wake) => {}
                        Some(Interrupt::Shutdown) => {
                            self.ws.get_mut().set_shutdown(None);
                            self.start_close(CloseCode::Away, "server shutting down")?;
                        }
                        Some(Interrupt::Deadline) => {
                            if let Some(done) = self.on_deadline(started)? {
                                return Ok(done);
                            }
                        }
                        Some(Interrupt::BudgetExhausted) | None => {
                            return Err(Error::io("reading from the connection", e))
                        }
                    }
                }
                Err(WsError::Io(_)) if self.peer_close.is_some() => {
                    // The peer closed first and dropped the socket before our
                    // reply got out: the close handshake is as done as it gets.
                    self.abort();
                    return Ok(None);
                }
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    /// Start the closing handshake with `code` and `reason`, and wait (at
    /// most [`Limits::close_timeout`]) for the peer's answer. Data messages
    /// that arrive meanwhile are discarded.
    pub fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.start_close(CloseCode::from(code), reason)?;
        while self.recv()?.is_some() {}
        Ok(())
    }

    /// Close normally unless already closing, then wait for the end. Used by
    /// the server after a handler returns.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if self.ws.can_write() {
            self.start_close(CloseCode::Normal, "")?;
        }
        while self.recv()?.is_some() {}
        Ok(())
    }

    fn start_close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        if !self.ws.can_write() {
            return Ok(());
        }
        self.timers.closing();
        let frame = CloseFrame {
            code,
            reason: reason.to_string().into(),
        };
        match self.ws.close(Some(frame)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn drain_outbox(&mut self) -> Result<()> {
        let Some(outbox) = &self.outbox else {
            return Ok(());
        };
        if outbox.overflowed.swap(false, Ordering::SeqCst) {
            tracing::warn!(peer = %self.info.peer, queue = self.limits.send_queue, "send queue full: closing slow consumer with 1013");
            self.count(Counter::SlowConsumer);
            return self.start_close(CloseCode::Again, "send queue full: reading too slowly");
        }
        let mut wrote = false;
        while self.ws.can_write() {
            let message = match self.outbox.as_ref().map(|o| o.rx.try_recv()) {
                Some(Ok(m)) => m,
                Some(Err(TryRecvError::Empty | TryRecvError::Disconnected)) | None => break,
            };
            if let Message::Close(frame) = message {
                let (code, reason) = frame.map_or((CloseCode::Normal, String::new()), |f| {
                    (f.code, f.reason.to_string())
                });
                return self.start_close(code, &reason);
            }
            if message.is_text() || message.is_binary() {
                self.timers.sent_data();
            }
            let result = self.ws.write(message);
            result.map_err(|e| self.write_error(e))?;
            wrote = true;
        }
        if wrote {
            let result = self.ws.flush();
            result.map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Acts on the clock that ran out; `Some(None)` ends `recv`.
    fn on_deadline(&mut self, started: Instant) -> Result<Option<Option<Message>>> {
        match self
            .timers
            .on_expiry(started, &self.info.peer, self.stats.as_deref())
        {
            Expiry::Nothing => Ok(None),
            Expiry::Drop => {
                self.abort();
                Ok(Some(None))
            }
            Expiry::DropWith(e) => {
                self.abort();
                Err(e)
            }
            Expiry::Ping => {
                let result = self.ws.send(Message::Ping(Default::default()));
                result.map_err(|e| self.write_error(e))?;
                Ok(None)
            }
            Expiry::Close(code, reason) => {
                self.start_close(code, reason)?;
                Ok(None)
            }
            Expiry::Fail(e) => Err(e),
        }
    }

    fn abort(&mut self) {
        let _ = self
            .ws
            .get_ref()
            .socket()
            .shutdown(std::net::Shutdown::Both);
    }

    /// Sends the close code that fits `e` (1002, 1007, 1009): tungstenite
    /// itself only returns the error. The peer's answer is awaited by
    /// [`close`](Connection::close) or the server, within the close timeout.
    fn read_error(&mut self, e: WsError) -> Error {
        let Some((code, reason)) = close_code_for(&e) else {
            return Error::from(e);
        };
        tracing::info!(peer = %self.info.peer, error = %e, code = u16::from(code), "closing connection on a peer error");
        self.count(Counter::ProtocolError);
        if self.ws.can_write() {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = self.ws.close(Some(frame));
            let _ = self.ws.flush();
            self.timers.closing();
        }
        error_after_close(e, code)
    }

    fn write_error(&self, e: WsError) -> Error {
        match e {
            WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Error::Timeout {
                operation: "write",
                addr: self.info.peer.to_string(),
                after: self.limits.write_timeout.unwrap_or_default(),
            },
            other => Error::from(other),
        }
    }
}

impl PeerClose {
    pub(crate) fn from_frame(frame: Option<CloseFrame>) -> Self {
        match frame {
            Some(f) => PeerClose {
                code: u16::from(f.code),
                reason: f.reason.to_string(),
            },
            // RFC 6455: a close frame without a code reads as 1005.
            None => PeerClose {
                code: 1005,
                reason: String::new(),
            },
        }
    }
}

/// Books an incoming message on the clocks and returns it if the caller
/// wants it: data (text or binary), and pings and pongs when `control`
/// (tungstenite has answered a ping already); a close frame is recorded as
/// the peer's close.
pub(crate) fn book_incoming(
    timers: &mut Timers,
    peer_close: &mut Option<PeerClose>,
    message: Message,
    control: bool,
) -> Option<Message> {
    let data = message.is_text() || message.is_binary();
    timers.heard(data);
    if data || (control && (message.is_ping() || message.is_pong())) {
        return Some(message);
    }
    if let Message::Close(frame) = message {
        *peer_close = Some(PeerClose::from_frame(frame));
        timers.closing();
    }
    None
}

/// The close code owed to a peer whose input caused `e`, if any:
/// 1009 for size, 1007 for bad UTF-8, 1002 for protocol violations.
pub(crate) fn close_code_for(e: &WsError) -> Option<(CloseCode, &'static str)> {
    match e {
        // RFC 6455 5.2: the most significant bit of a 64-bit length must be
        // 0; tungstenite reports such a length as merely too large.
        WsError::Capacity(CapacityError::MessageTooLong { size, .. })
            if *size > i64::MAX as usize =>
        {
            Some((CloseCode::Protocol, "invalid frame length"))
        }
        WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8")),
        WsError::Io(e) if crate::frames::is_invalid_utf8(e) => {
            Some((CloseCode::Invalid, "invalid UTF-8"))
        }
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        _ => None,
    }
}

/// The error to report once `code` has been sent for `e`.
pub(crate) fn error_after_close(e: WsError, code: CloseCode) -> Error {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size })
            if code == CloseCode::Size =>
        {
            Error::MessageTooLarge {
                size,
                max: max_size,
            }
        }
        other => Error::Protocol {
            code: code.into(),
            detail: other.to_string(),
        },
    }
}
