//! An open WebSocket connection (client or server side) on a blocking
//! socket: the driver that moves bytes between the socket and the
//! sans-IO session (`session.rs`, which holds the codec, the close
//! handshake, close codes for peer errors, keepalive and the
//! slow-consumer rule), plus an [`Outbox`] through which other threads
//! queue messages with a bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::http::HeaderMap;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::addr::Address;
use crate::codec::encode::MAX_SLICES;
use crate::error::{Error, Result};
use crate::peer::Peer;
use crate::session::{AfterDeadline, Session};
use crate::stats::ServerStats;
use crate::stream::{Interrupt, ReadFailure, Stream, WakePipe};

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
    /// The socket address the connection runs over: the server's on the
    /// server side, the one connected to on the client side; `None` for a
    /// stream the caller wrapped itself.
    pub address: Option<Arc<Address>>,
}

impl ConnectionInfo {
    /// Where this connection is, for messages: its socket address, or the
    /// peer for a stream the caller wrapped.
    pub(crate) fn shown(&self) -> String {
        match &self.address {
            Some(a) => a.endpoint_display(),
            None => self.peer.to_string(),
        }
    }
}

/// How the connection ended, as the peer said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClose {
    /// The close code ([`CloseCode::Normal`], [`CloseCode::Away`],
    /// [`CloseCode::Size`], ...).
    pub code: CloseCode,
    /// The reason text.
    pub reason: String,
}

/// A handle for other threads to queue messages on a connection.
///
/// The queue is bounded ([`Limits::send_queue`](crate::Limits::send_queue)). [`Outbox::send`] waits for
/// room; [`Outbox::try_send`] never waits and, when the queue is full, has
/// the connection closed with 1013 (a slow consumer must not make the
/// sender's memory grow).
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: SyncSender<Message>,
    waker: WakePipe,
    /// Raised for the connection to close (it lowers it when it does).
    overflowed: Arc<AtomicBool>,
    /// Stays raised: the connection was found too slow, and is closing.
    found_slow: Arc<AtomicBool>,
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
            Err(TrySendError::Full(_)) => Err(self.overflowed()),
            Err(TrySendError::Disconnected(_)) => Err(OutboxError::Closed),
        }
    }

    /// Queue `message`, waiting while the queue is full, but no longer than
    /// `timeout` for room; a reader that took nothing for that long is a
    /// slow consumer, closed with 1013 ([`OutboxError::Full`]). See the
    /// tokio `Outbox::send_timeout` (feature `tokio`) for why a
    /// broadcaster wants this. (std's bounded channel cannot wait
    /// with a timeout: this one looks again after pauses of 50 µs doubling
    /// to 5 ms.)
    pub fn send_timeout(&self, mut message: Message, timeout: Duration) -> Result<(), OutboxError> {
        if self.found_slow.load(Ordering::SeqCst) {
            // Already found too slow: closing, no more waiting for it.
            return Err(OutboxError::Full);
        }
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(50);
        loop {
            match self.tx.try_send(message) {
                Ok(()) => {
                    self.waker.wake();
                    return Ok(());
                }
                Err(TrySendError::Disconnected(_)) => return Err(OutboxError::Closed),
                Err(TrySendError::Full(m)) => message = m,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.overflowed());
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Marks the connection as a slow consumer, to be closed with 1013.
    fn overflowed(&self) -> OutboxError {
        self.found_slow.store(true, Ordering::SeqCst);
        self.overflowed.store(true, Ordering::SeqCst);
        self.waker.wake();
        OutboxError::Full
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
    stream: Stream,
    session: Session,
    info: ConnectionInfo,
    outbox: Option<OutboxReceiver>,
}

impl Connection {
    pub(crate) fn new(stream: Stream, session: Session, info: ConnectionInfo) -> Self {
        Self {
            stream,
            session,
            info,
            outbox: None,
        }
    }

    pub(crate) fn serving(mut self, stats: Arc<ServerStats>) -> Self {
        self.session.count_into(stats);
        self
    }

    /// What is known about the peer and the request.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The peer's close code and reason, once it sent one.
    pub fn peer_close(&self) -> Option<&PeerClose> {
        self.session.peer_close()
    }

    /// Make [`recv`](Connection::recv) return pings and pongs as well as
    /// data. Pings are still answered automatically.
    pub fn receive_control_frames(&mut self, on: bool) {
        self.session.control_frames = on;
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
        self.session.hold_close_reply = on;
    }

    /// A handle through which other threads queue messages for this
    /// connection; [`recv`](Connection::recv) sends them as they arrive.
    /// Messages queued here before a direct [`send`](Connection::send),
    /// [`feed`](Connection::feed) or [`close`](Connection::close) go out
    /// before it.
    pub fn outbox(&mut self) -> Result<Outbox> {
        if let Some(o) = &self.outbox {
            return Ok(o.handle.clone());
        }
        let (waker, read_end) =
            WakePipe::pair().map_err(|e| Error::io("creating the outbox wake-up pipe", e))?;
        self.stream.set_wake(read_end);
        let (tx, rx) = mpsc::sync_channel(self.session.limits().send_queue.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let handle = Outbox {
            tx,
            waker,
            overflowed: overflowed.clone(),
            found_slow: Arc::default(),
        };
        self.outbox = Some(OutboxReceiver {
            rx,
            overflowed,
            handle: handle.clone(),
        });
        Ok(handle)
    }

    /// Send one message and flush it. A `Message::Frame` is written as
    /// given (masked on a client), for tools that craft frames.
    pub fn send(&mut self, message: Message) -> Result<()> {
        self.feed(message)?;
        self.flush()
    }

    /// Queue one message without writing it yet: it goes out with the next
    /// [`send`](Connection::send) or [`flush`](Connection::flush), or when
    /// [`recv`](Connection::recv) waits for input.
    pub fn feed(&mut self, message: Message) -> Result<()> {
        if Session::wants_now(&message) {
            self.session.tick(Instant::now());
        }
        // What the outbox holds was sent earlier: it goes first.
        self.drain_outbox()?;
        self.session.send(message)
    }

    /// Write out everything queued (bounded by [`Limits::write_timeout`](crate::Limits::write_timeout)).
    pub fn flush(&mut self) -> Result<()> {
        while !self.session.out.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
            let n = self.session.out.slices(&mut slices);
            let written = self.stream.write_vectored(&slices[..n]);
            match written {
                Ok(0) => {
                    return Err(Error::io(
                        "writing to the connection",
                        std::io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(written) => self.session.wrote(written),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.session.abandon();
                    return Err(self.write_error(e));
                }
            }
        }
        Ok(())
    }

    /// Receive the next text or binary message; `Ok(None)` once closed.
    pub fn recv(&mut self) -> Result<Option<Message>> {
        self.session.tick(Instant::now());
        let started = self.session.recv_started();
        loop {
            self.drain_outbox()?;
            match self.session.next_message() {
                Ok(Some(message)) => {
                    self.flush()?;
                    return Ok(Some(message));
                }
                Ok(None) => {}
                Err(e) => {
                    let error = self.session.fail(e, &self.info.peer);
                    let _ = self.flush();
                    return Err(error);
                }
            }
            if self.session.is_done() {
                let _ = self.flush();
                self.drop_socket();
                return Ok(None);
            }
            if self.session.reply_held() {
                // The peer closed; what we still send goes out before our answer.
                self.flush()?;
                return Ok(None);
            }
            self.flush()?;
            if self.session.take_write_shutdown() {
                let _ = self.stream.socket().shutdown(std::net::Shutdown::Write);
            }
            let deadline = self.session.timers.next(started).map(|(at, _)| at);
            self.stream.set_deadline(deadline);
            let room = self.session.reserve_read();
            match self.stream.read_buf(&mut self.session.read) {
                Ok(0) => {
                    // Ask before abort(), which ends the session either way.
                    let ended = self.session.on_eof();
                    self.drop_socket();
                    return ended.map(|()| None);
                }
                Ok(got) => {
                    self.session.note_read(got, room);
                    self.session.tick(Instant::now());
                }
                Err(ReadFailure::Interrupted(Interrupt::Wake)) => {}
                Err(ReadFailure::Interrupted(Interrupt::Shutdown)) => {
                    self.session.tick(Instant::now());
                    self.stream.set_shutdown(None);
                    self.drain_outbox()?;
                    self.session
                        .start_close(CloseCode::Away, "server shutting down");
                }
                Err(ReadFailure::Interrupted(Interrupt::Deadline)) => {
                    self.session.tick(Instant::now());
                    match self.session.on_deadline(started, &self.info) {
                        AfterDeadline::Go => {}
                        AfterDeadline::Drop(result) => {
                            self.drop_socket();
                            return result.map(|()| None);
                        }
                        AfterDeadline::Fail(e) => return Err(e),
                    }
                }
                Err(ReadFailure::Io(e)) => {
                    let ended = self.session.on_eof();
                    self.drop_socket();
                    return match ended {
                        Ok(()) => Ok(None),
                        Err(_) => Err(Error::on_connection("reading from the connection", e)),
                    };
                }
            }
        }
    }

    /// Start the closing handshake with `code` and `reason`, and wait (at
    /// most [`Limits::close_timeout`](crate::Limits::close_timeout)) for the peer's answer. Data messages
    /// that arrive meanwhile are discarded.
    pub fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        let code = code.into();
        self.finish(|session| session.start_close(code, reason))
    }

    /// Close normally unless already closing, then wait for the end. Used by
    /// the server after a handler returns.
    pub(crate) fn close_normally(&mut self) -> Result<()> {
        self.finish(Session::close_normally)
    }

    /// Queues what the outbox holds (sent before the close, so it goes
    /// first), starts the close with `start`, and waits for the end.
    fn finish(&mut self, start: impl FnOnce(&mut Session)) -> Result<()> {
        self.session.tick(Instant::now());
        self.drain_outbox()?;
        start(&mut self.session);
        while self.recv()?.is_some() {}
        Ok(())
    }

    fn drain_outbox(&mut self) -> Result<()> {
        let Some(outbox) = &self.outbox else {
            return Ok(());
        };
        if outbox.overflowed.swap(false, Ordering::SeqCst) {
            self.session
                .close_slow_consumer(&self.info.peer, self.session.limits().send_queue);
            return Ok(());
        }
        while !self.session.is_closing() {
            let message = match self.outbox.as_ref().map(|o| o.rx.try_recv()) {
                Some(Ok(m)) => m,
                Some(Err(TryRecvError::Empty | TryRecvError::Disconnected)) | None => break,
            };
            self.session.send(message)?;
        }
        Ok(())
    }

    fn drop_socket(&mut self) {
        self.session.abandon();
        let _ = self.stream.socket().shutdown(std::net::Shutdown::Both);
    }

    fn write_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::TimedOut {
            return Error::Timeout {
                operation: crate::error::Operation::Write,
                addr: self.info.shown(),
                after: self.session.limits().write_timeout.unwrap_or_default(),
            };
        }
        Error::on_connection("writing to the connection", e)
    }
}

impl PeerClose {
    pub(crate) fn from_frame(frame: Option<CloseFrame>) -> Self {
        match frame {
            Some(f) => PeerClose {
                code: f.code,
                reason: f.reason.to_string(),
            },
            // RFC 6455: a close frame without a code reads as 1005.
            None => PeerClose {
                code: CloseCode::Status,
                reason: String::new(),
            },
        }
    }
}
