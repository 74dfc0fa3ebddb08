//! [`Connection::split`]: a read half and a write half that two tasks use
//! at once, over one shared connection (one codec, one session: the read
//! half keeps answering pings, running keepalive and the close handshake
//! while the write half sends). Each half is a handle on the shared core
//! (see `connection.rs`), which takes its lock only inside a poll, never
//! across an `.await`; both halves wait for room to write on one waker
//! that the socket wakes for both.

use std::pin::Pin;
use std::task::{Context, Poll};

use tungstenite::Message;

use crate::connection::{ConnectionInfo, PeerClose};
use crate::error::Result;
use crate::tokio::connection::Party;
use crate::tokio::Connection;
use crate::CloseCode;

/// The receiving half of a split [`Connection`]: `recv`, or a `Stream`.
#[derive(Debug)]
pub struct ReadHalf {
    conn: Connection,
}

/// The sending half of a split [`Connection`]: `send`, `close`, or a `Sink`.
#[derive(Debug)]
pub struct WriteHalf {
    conn: Connection,
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
    pub fn split(mut self) -> (ReadHalf, WriteHalf) {
        let writer = self.handle(Party::Writer);
        (ReadHalf { conn: self }, WriteHalf { conn: writer })
    }
}

impl ReadHalf {
    /// The next text or binary message; `Ok(None)` once closed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Message>> {
        self.conn.recv().await
    }

    /// What is known about the peer and the request.
    pub fn info(&self) -> &ConnectionInfo {
        self.conn.info()
    }

    /// The peer's close code and reason, once it sent one.
    pub fn peer_close(&self) -> Option<&PeerClose> {
        self.conn.peer_close()
    }

    /// Puts the halves back together (`None` if `writer` belongs to
    /// another connection).
    pub fn unsplit(self, writer: WriteHalf) -> Option<Connection> {
        if !self.conn.same_as(&writer.conn) {
            return None;
        }
        drop(writer);
        Some(self.conn)
    }
}

impl WriteHalf {
    /// Send one message and flush it.
    pub async fn send(&mut self, message: Message) -> Result<()> {
        self.conn.send(message).await
    }

    /// Start the closing handshake (the read half sees its end).
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<()> {
        self.conn.begin_close(code.into(), reason).await
    }
}

impl futures_util::Stream for ReadHalf {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.conn).poll_next(cx)
    }
}

impl futures_util::Sink<Message> for WriteHalf {
    type Error = crate::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.conn).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<()> {
        Pin::new(&mut self.conn).start_send(message)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.conn).poll_close(cx)
    }
}
