//! [`Connection::split`]: a read half and a write half that two tasks use
//! at once, over one shared connection (one codec, one session: the read
//! half keeps answering pings, running keepalive and the close handshake
//! while the write half sends). The halves take a lock only inside a
//! poll, never across an `.await`.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tungstenite::Message;

use crate::connection::{ConnectionInfo, PeerClose};
use crate::error::Result;
use crate::tokio::Connection;

#[derive(Debug)]
struct Shared {
    conn: Mutex<Connection>,
    /// The write half waiting for its output to go out: the read half
    /// flushes pending output too (answers to pings), and wakes it.
    writer: AtomicWaker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The receiving half of a split [`Connection`]: `recv`, or a `Stream`.
#[derive(Debug)]
pub struct ReadHalf {
    shared: Arc<Shared>,
}

/// The sending half of a split [`Connection`]: `send`, `close`, or a `Sink`.
#[derive(Debug)]
pub struct WriteHalf {
    shared: Arc<Shared>,
}

impl Connection {
    /// Splits the connection into halves that two tasks can use at once.
    ///
    /// ```no_run
    /// # async fn demo(conn: unixws::tokio::Connection) -> unixws::Result<()> {
    /// let (mut reader, mut writer) = conn.split();
    /// tokio::spawn(async move {
    ///     for i in 0.. {
    ///         if writer.send(unixws::Message::text(format!("tick {i}"))).await.is_err() {
    ///             break;
    ///         }
    ///         tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     }
    /// });
    /// while let Some(message) = reader.recv().await? {
    ///     println!("{message:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        let shared = Arc::new(Shared {
            conn: Mutex::new(self),
            writer: AtomicWaker::new(),
        });
        (
            ReadHalf {
                shared: shared.clone(),
            },
            WriteHalf { shared },
        )
    }
}

impl ReadHalf {
    /// The next text or binary message; `Ok(None)` once closed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>>> {
        let mut conn = self.shared.lock();
        let polled = conn.poll_next_message(cx);
        if conn.output_is_empty() {
            self.shared.writer.wake();
        }
        polled
    }

    /// What is known about the peer and the request.
    pub fn info(&self) -> ConnectionInfo {
        self.shared.lock().info().clone()
    }

    /// The peer's close code and reason, once it sent one.
    pub fn peer_close(&self) -> Option<PeerClose> {
        self.shared.lock().peer_close().cloned()
    }

    /// Puts the halves back together (`None` if `writer` belongs to
    /// another connection).
    pub fn unsplit(self, writer: WriteHalf) -> Option<Connection> {
        if !Arc::ptr_eq(&self.shared, &writer.shared) {
            return None;
        }
        drop(writer);
        let shared = Arc::into_inner(self.shared)?;
        Some(
            shared
                .conn
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl WriteHalf {
    /// Send one message and flush it.
    pub async fn send(&mut self, message: Message) -> Result<()> {
        self.shared.lock().queue(message)?;
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Start the closing handshake (the read half sees its end).
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.shared.lock().queue_close(code, reason);
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.writer.register(cx.waker());
        self.shared.lock().poll_flush(cx)
    }
}

impl futures_util::Stream for ReadHalf {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_recv(cx).map(Result::transpose)
    }
}

impl futures_util::Sink<Message> for WriteHalf {
    type Error = crate::Error;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<()> {
        self.shared.lock().queue(message)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        WriteHalf::poll_flush(&mut self, cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.lock().queue_close(1000, "");
        WriteHalf::poll_flush(&mut self, cx)
    }
}
