//! The async sockets under a tokio WebSocket, and the handshake's reader.
//!
//! [`AsyncSocket`] is a tokio Unix or TCP socket with the few operations
//! the connection driver uses: readiness, one non-blocking read into a
//! buffer's spare capacity, one vectored write. [`AsyncHeadReader`] serves
//! tokio-tungstenite's upgrade the HTTP head only, so that the frames that
//! follow it in the same reads stay with unixws's codec (see
//! `handshake::HeadBuffer`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::handshake::{HeadBuffer, HEAD_CHUNK};
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

    /// A blocking handle to the same socket (a second descriptor).
    pub(crate) fn try_dup(&self) -> io::Result<Socket> {
        use std::os::fd::AsFd;
        Ok(match self {
            AsyncSocket::Unix(s) => Socket::Unix(std::os::unix::net::UnixStream::from(
                s.as_fd().try_clone_to_owned()?,
            )),
            AsyncSocket::Tcp(s) => {
                Socket::Tcp(std::net::TcpStream::from(s.as_fd().try_clone_to_owned()?))
            }
        })
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AsyncSocket::Unix(s) => s.poll_write_ready(cx),
            AsyncSocket::Tcp(s) => s.poll_write_ready(cx),
        }
    }

    /// One read into the spare capacity of `buf` (no zero-fill). Through
    /// tokio's `poll_read`, which forgets the socket's readiness after a
    /// read that got less than it asked for: the next read waits for the
    /// reactor instead of trying the socket and getting `EAGAIN`, one
    /// system call per message less on a ping-pong.
    pub(crate) fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let spare = buf.spare_capacity_mut();
        let mut read = ReadBuf::uninit(spare);
        let polled = match self {
            AsyncSocket::Unix(s) => Pin::new(s).poll_read(cx, &mut read),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_read(cx, &mut read),
        };
        ready!(polled)?;
        let n = read.filled().len();
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare
        // capacity (`ReadBuf` tracks what it filled).
        unsafe { bytes::BufMut::advance_mut(buf, n) };
        Poll::Ready(Ok(n))
    }

    /// One non-blocking vectored write.
    pub(crate) fn try_write_vectored(&self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            AsyncSocket::Unix(s) => s.try_write_vectored(slices),
            AsyncSocket::Tcp(s) => s.try_write_vectored(slices),
        }
    }

    /// Shuts the write side down (after a failure's close frame).
    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            AsyncSocket::Unix(s) => socket_shutdown(s),
            AsyncSocket::Tcp(s) => socket_shutdown(s),
        };
    }
}

fn socket_shutdown(fd: &impl std::os::fd::AsFd) -> nix::Result<()> {
    nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
        nix::sys::socket::Shutdown::Write,
    )
}

/// The stream tokio-tungstenite's upgrade runs on: reads serve the HTTP
/// head only, writes go to the socket.
#[derive(Debug)]
pub(crate) struct AsyncHeadReader {
    pub(crate) socket: AsyncSocket,
    pub(crate) head: HeadBuffer,
}

impl AsyncHeadReader {
    pub(crate) fn new(socket: AsyncSocket, head: HeadBuffer) -> Self {
        Self { socket, head }
    }

    /// Reads until the whole head has arrived; `false` at end of stream or
    /// on an error (tungstenite then reports it, typed, when it reads).
    pub(crate) async fn read_head(&mut self) -> bool {
        while self.head.head().is_none() {
            let got = std::future::poll_fn(|cx| self.poll_fill(cx)).await;
            if !matches!(got, Ok(n) if n > 0) {
                return false;
            }
        }
        true
    }

    /// Reads once from the socket into the head buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = self.head.room()?;
        let mut chunk = [0u8; HEAD_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk[..room]);
        let polled = match &mut self.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_read(cx, &mut buf),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_read(cx, &mut buf),
        };
        ready!(polled)?;
        let n = buf.filled().len();
        self.head.push(buf.filled());
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for AsyncHeadReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.head.needs_input() && ready!(this.poll_fill(cx))? == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = this.head.serve(buf.initialize_unfilled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for AsyncHeadReader {
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

impl AsyncSocket {
    /// Who is at the other end.
    pub fn peer(&self) -> io::Result<crate::peer::Peer> {
        use crate::peer::{Peer, PeerCredentials};
        match self {
            AsyncSocket::Unix(s) => PeerCredentials::of(s).map(Peer::Unix),
            AsyncSocket::Tcp(s) => s.peer_addr().map(Peer::Tcp),
        }
    }
}

impl From<tokio::net::UnixStream> for AsyncSocket {
    fn from(s: tokio::net::UnixStream) -> Self {
        AsyncSocket::Unix(s)
    }
}

impl From<tokio::net::TcpStream> for AsyncSocket {
    fn from(s: tokio::net::TcpStream) -> Self {
        AsyncSocket::Tcp(s)
    }
}
