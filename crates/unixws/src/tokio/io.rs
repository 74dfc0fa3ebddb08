//! The async byte stream under a tokio WebSocket: a Unix or TCP socket,
//! with a read budget that caps the size of the upgrade request.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::Socket;

/// A connected tokio Unix or TCP socket.
#[derive(Debug)]
pub enum AsyncSocket {
    /// A Unix domain socket.
    Unix(tokio::net::UnixStream),
    /// A TCP socket.
    Tcp(tokio::net::TcpStream),
}

impl AsyncSocket {
    /// Moves a connected blocking socket onto the current tokio runtime.
    pub fn from_socket(socket: Socket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(match socket {
            Socket::Unix(s) => AsyncSocket::Unix(tokio::net::UnixStream::from_std(s)?),
            Socket::Tcp(s) => AsyncSocket::Tcp(tokio::net::TcpStream::from_std(s)?),
        })
    }
}

/// The marker inside the I/O error returned when the handshake budget runs out.
#[derive(Debug)]
pub(crate) struct HeaderTooLarge;

impl fmt::Display for HeaderTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("handshake larger than max_header_bytes")
    }
}

impl std::error::Error for HeaderTooLarge {}

/// True when `e` came from an exhausted handshake budget.
pub(crate) fn is_header_too_large(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<HeaderTooLarge>())
}

/// The `S` of every `WebSocketStream<S>` the tokio front end hands out.
#[derive(Debug)]
pub struct AsyncStream {
    socket: AsyncSocket,
    read_budget: Option<usize>,
}

impl AsyncStream {
    pub(crate) fn new(socket: AsyncSocket, read_budget: Option<usize>) -> Self {
        Self {
            socket,
            read_budget,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &AsyncSocket {
        &self.socket
    }

    pub(crate) fn end_budget(&mut self) {
        self.read_budget = None;
    }
}

impl AsyncRead for AsyncStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(budget) = self.read_budget else {
            return match &mut self.socket {
                AsyncSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
                AsyncSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            };
        };
        if budget == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                HeaderTooLarge,
            )));
        }
        let mut limited = buf.take(budget);
        let polled = match &mut self.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_read(cx, &mut limited),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_read(cx, &mut limited),
        };
        let n = limited.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            // SAFETY: `limited` filled these bytes of `buf`'s unfilled part.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            self.read_budget = Some(budget - n);
        }
        polled
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_write(cx, data),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_flush(cx),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
