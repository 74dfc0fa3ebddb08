//! The async byte stream under a tokio WebSocket: a Unix or TCP socket,
//! with a read budget that caps the size of the upgrade request.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frames::FrameTracker;
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
    frames: FrameTracker,
    /// Bytes already read (a request head a gate looked at, or a frame in
    /// progress), served first.
    replay: Option<Box<(Vec<u8>, usize)>>,
    /// While a move to large reads waits: a copy of the frame in progress
    /// (all that tungstenite holds unparsed), valid once a frame has ended.
    partial: Option<Box<PartialFrame>>,
    /// The last read filled the buffer it was given: more may be waiting.
    last_read_full: bool,
    /// What the socket did not take of a large write, and how much of it
    /// has gone out since (see the `AsyncWrite` impl).
    unsent: Option<Box<(Vec<u8>, usize)>>,
}

#[derive(Debug, Default)]
struct PartialFrame {
    bytes: Vec<u8>,
    valid: bool,
}

impl AsyncStream {
    pub(crate) fn new(socket: AsyncSocket, read_budget: Option<usize>) -> Self {
        Self {
            socket,
            read_budget,
            frames: FrameTracker::after_http_head(),
            replay: None,
            partial: None,
            last_read_full: false,
            unsent: None,
        }
    }

    /// Serve `bytes` to the next reads, before the socket's own.
    pub(crate) fn replay(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.replay = Some(Box::new((bytes, 0)));
        }
    }

    /// True when every byte handed to tungstenite belongs to a whole frame
    /// and no fragmented message is open.
    pub(crate) fn at_message_boundary(&self) -> bool {
        self.frames.is_clean()
    }

    /// False when the last read from the socket got less than it asked
    /// for and held at most one frame: then the socket is most likely
    /// drained and tungstenite holds nothing more, and trying another read
    /// before writing would cost a system call for nothing.
    pub(crate) fn more_may_be_waiting(&self) -> bool {
        self.last_read_full || self.frames.ended_in_last() > 1 || self.replay.is_some()
    }

    /// Start keeping a copy of the frame in progress, for
    /// [`take_partial_frame`](Self::take_partial_frame).
    pub(crate) fn record_partial_frames(&mut self) {
        self.partial.get_or_insert_with(Default::default);
    }

    /// The bytes of the frame in progress, if they are known whole and no
    /// fragmented message is open: what a fresh tungstenite must be given
    /// (by `replay`) to carry on where the old one stopped. Ends recording.
    pub(crate) fn take_partial_frame(&mut self) -> Option<Vec<u8>> {
        let partial = self.partial.take()?;
        (partial.valid && !self.frames.in_fragmented_message()).then_some(partial.bytes)
    }

    /// The largest frame payload read since the last call.
    pub(crate) fn take_largest_frame(&mut self) -> u64 {
        self.frames.take_largest()
    }

    /// Waits until the socket has something to read (or is closed). Polls
    /// readiness directly: `readable()` would keep a waiter node in every
    /// parked connection's future.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| match &self.socket {
            AsyncSocket::Unix(s) => s.poll_read_ready(cx),
            AsyncSocket::Tcp(s) => s.poll_read_ready(cx),
        })
        .await
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
        if let Some(e) = self.frames.take_error() {
            return Poll::Ready(Err(e));
        }
        if let Some(replay) = &mut self.replay {
            let (bytes, at) = &mut **replay;
            let n = buf.remaining().min(bytes.len() - *at);
            buf.put_slice(&bytes[*at..*at + n]);
            *at += n;
            if *at == bytes.len() {
                self.replay = None;
            }
            // Replayed bytes were counted against the budget when first read.
            return Poll::Ready(Ok(()));
        }
        let Some(budget) = self.read_budget else {
            let before = buf.filled().len();
            let asked = buf.remaining();
            let polled = match &mut self.socket {
                AsyncSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
                AsyncSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            };
            if let Poll::Ready(Ok(())) = polled {
                let this = &mut *self;
                let chunk = &buf.filled()[before..];
                this.last_read_full = chunk.len() == asked;
                let last_end = this.frames.observe(chunk);
                if let Some(partial) = &mut this.partial {
                    match last_end {
                        Some(at) => {
                            partial.bytes.clear();
                            partial.bytes.extend_from_slice(&chunk[at..]);
                            partial.valid = true;
                        }
                        None => partial.bytes.extend_from_slice(chunk),
                    }
                }
            }
            return polled;
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
            self.frames.observe(limited.filled());
            // SAFETY: `limited` filled these bytes of `buf`'s unfilled part.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            self.read_budget = Some(budget - n);
        }
        polled
    }
}

/// A partial write leaves at least this much for [`AsyncStream::unsent`]
/// to keep; smaller remainders are cheap for tungstenite to shift.
const KEEP_UNSENT_FROM: usize = 4 << 10;

impl AsyncStream {
    fn poll_socket_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_write(cx, data),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    /// Writes out what an earlier partial write left in `unsent`.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(unsent) = self.unsent.take() {
            let (bytes, at) = *unsent;
            match self.poll_socket_write(cx, &bytes[at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) if at + n < bytes.len() => {
                    self.unsent = Some(Box::new((bytes, at + n)));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.unsent = Some(Box::new((bytes, at)));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes take the socket's pace, except for one thing: when the socket
/// takes only part of a large write, the rest is kept here (`unsent`) and
/// the whole write is reported done. tungstenite 0.30 shifts the rest of
/// its out buffer to the front after every partial write
/// (`FrameCodec::write_out_buffer` does `out_buffer.drain(0..n)`); with
/// large messages on a Unix socket, which takes about 200 KiB per write,
/// that memmove was 40% of a server's time. Nothing more is accepted until
/// `unsent` has gone out, so the buffering stays bounded; flush and
/// shutdown wait for it too.
impl AsyncWrite for AsyncStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_unsent(cx))?;
        match this.poll_socket_write(cx, data) {
            Poll::Ready(Ok(n)) if n > 0 && data.len() - n >= KEEP_UNSENT_FROM => {
                this.unsent = Some(Box::new((data[n..].to_vec(), 0)));
                Poll::Ready(Ok(data.len()))
            }
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_unsent(cx))?;
        match &mut this.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_unsent(cx))?;
        match &mut this.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_flush(cx),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_unsent(cx))?;
        match &mut this.socket {
            AsyncSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            AsyncSocket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
