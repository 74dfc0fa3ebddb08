//! An open WebSocket connection on tokio, with the same behaviour as the
//! blocking [`crate::Connection`]: close codes for protocol and size errors,
//! keepalive pings, idle and close timeouts (the clocks are shared, see
//! `keepalive.rs`), 1001 on server shutdown after flushing what was queued,
//! and a bounded [`Outbox`] for other tasks.
//!
//! Dropping a `Connection` that is still open finishes the closing
//! handshake (1000) on a background task, bounded by the close timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::WebSocketStream;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::config::Limits;
use crate::connection::{
    close_code_for, error_after_close, ConnectionInfo, OutboxError, PeerClose,
};
use crate::error::{Error, Result};
use crate::handshake::ActiveSlot;
use crate::keepalive::{Deadline, Timers};
use crate::tokio::io::AsyncStream;

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
    // `None` only after the connection is finished or handed to the closer.
    ws: Option<WebSocketStream<AsyncStream>>,
    info: ConnectionInfo,
    limits: Limits,
    timers: Timers,
    outbox: Option<OutboxReceiver>,
    shutdown: Option<watch::Receiver<bool>>,
    peer_close: Option<PeerClose>,
    closing: bool,
    slot: Option<ActiveSlot>,
}

/// What woke `recv` up.
enum Event {
    Shutdown,
    Overflow,
    Outgoing(Option<Message>),
    Deadline,
    Incoming(Option<Result<Message, WsError>>),
}

impl Connection {
    pub(crate) fn new(
        ws: WebSocketStream<AsyncStream>,
        info: ConnectionInfo,
        limits: Limits,
        read_timeout: Option<std::time::Duration>,
    ) -> Self {
        Self {
            ws: Some(ws),
            info,
            timers: Timers::new(&limits, read_timeout),
            limits,
            outbox: None,
            shutdown: None,
            peer_close: None,
            closing: false,
            slot: None,
        }
    }

    pub(crate) fn serving(mut self, shutdown: watch::Receiver<bool>, slot: ActiveSlot) -> Self {
        self.shutdown = Some(shutdown);
        self.slot = Some(slot);
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
        if message.is_text() || message.is_binary() {
            self.timers.sent_data();
        }
        let peer = self.info.peer.to_string();
        let write_timeout = self.limits.write_timeout;
        let ws = self
            .ws
            .as_mut()
            .ok_or(Error::WebSocket(Box::new(WsError::AlreadyClosed)))?;
        match write_timeout {
            Some(t) => match tokio::time::timeout(t, ws.send(message)).await {
                Ok(result) => result.map_err(Error::from),
                Err(_) => Err(Error::Timeout {
                    operation: "write",
                    addr: peer,
                    after: t,
                }),
            },
            None => ws.send(message).await.map_err(Error::from),
        }
    }

    /// Receive the next text or binary message; `Ok(None)` once closed.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        let started = Instant::now();
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return Ok(None);
            };
            let deadline = self.timers.next(started).map(|(at, _)| at);
            let shutdown = &mut self.shutdown;
            let overflow = self.outbox.as_ref().map(|o| o.overflow.clone());
            let outbox = &mut self.outbox;
            let can_send = !self.closing;
            let event = tokio::select! {
                biased;
                _ = wait_true(shutdown), if shutdown.is_some() => Event::Shutdown,
                _ = wait_overflow(&overflow), if overflow.is_some() => Event::Overflow,
                m = next_outgoing(outbox), if outbox.is_some() && can_send => Event::Outgoing(m),
                _ = sleep_until(deadline), if deadline.is_some() => Event::Deadline,
                m = ws.next() => Event::Incoming(m),
            };
            match event {
                Event::Shutdown => {
                    self.shutdown = None;
                    self.flush_outbox().await?;
                    self.start_close(CloseCode::Away, "server shutting down")
                        .await?;
                }
                Event::Overflow => {
                    if let Some(done) = self.close_slow_consumer().await {
                        return done;
                    }
                }
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
                        None => {
                            if let Some(done) = self.close_slow_consumer().await {
                                return done;
                            }
                        }
                    }
                }
                Event::Deadline => {
                    if let Some(done) = self.on_deadline(started).await? {
                        return Ok(done);
                    }
                }
                Event::Incoming(None) => {
                    self.finished();
                    return Ok(None);
                }
                Event::Incoming(Some(Ok(message))) => {
                    let data = message.is_text() || message.is_binary();
                    self.timers.heard(data);
                    if data {
                        return Ok(Some(message));
                    }
                    if let Message::Close(frame) = message {
                        self.peer_close = Some(PeerClose::from_frame(frame));
                        self.closing = true;
                        self.timers.closing();
                    }
                }
                Event::Incoming(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                    self.finished();
                    return Ok(None);
                }
                Event::Incoming(Some(Err(WsError::Io(_)))) if self.peer_close.is_some() => {
                    self.finished();
                    return Ok(None);
                }
                Event::Incoming(Some(Err(e))) => return Err(self.read_error(e).await),
            }
        }
    }

    /// Start the closing handshake with `code` and `reason` and wait (at most
    /// [`Limits::close_timeout`]) for the peer's answer. Data messages that
    /// arrive meanwhile are discarded.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.start_close(CloseCode::from(code), reason).await?;
        while self.recv().await?.is_some() {}
        Ok(())
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
        let Some(ws) = self.ws.as_mut() else {
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
        match self.timers.expired(started) {
            Some(Deadline::CloseTimeout) => {
                tracing::debug!(peer = %self.info.peer, "peer did not finish the closing handshake in time; dropping it");
                self.finished();
                Ok(Some(None))
            }
            Some(Deadline::PongTimeout) => {
                tracing::info!(peer = %self.info.peer, "peer did not answer a ping; closing");
                self.finished();
                Err(Error::KeepaliveTimeout {
                    after: self.timers.pong_timeout(),
                })
            }
            Some(Deadline::PingDue) => {
                self.timers.pinged();
                self.send(Message::Ping(Default::default())).await?;
                Ok(None)
            }
            Some(Deadline::Idle) => {
                tracing::info!(peer = %self.info.peer, "idle timeout; closing with 1001");
                self.start_close(CloseCode::Away, "idle timeout").await?;
                Ok(None)
            }
            Some(Deadline::ReadTimeout) => Err(Error::Timeout {
                operation: "read",
                addr: self.info.peer.to_string(),
                after: self.timers.read_timeout(),
            }),
            None => Ok(None),
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
        let _ = self.start_close(code, reason).await;
        error_after_close(e, code)
    }

    /// The connection is over: drop the socket now.
    fn finished(&mut self) {
        self.ws = None;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Finish the closing handshake without making the dropper wait; the
        // slot (if any) keeps the server's drain waiting for it.
        let slot = self.slot.take();
        let close_timeout = self.limits.close_timeout;
        let closing = self.closing;
        runtime.spawn(async move {
            let _slot = slot;
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
        });
    }
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
