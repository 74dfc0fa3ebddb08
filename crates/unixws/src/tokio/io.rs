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
    frames: FrameTracker,
    /// Bytes already read (a request head a gate looked at), served first.
    replay: Option<Box<(Vec<u8>, usize)>>,
}

impl AsyncStream {
    pub(crate) fn new(socket: AsyncSocket, read_budget: Option<usize>) -> Self {
        Self {
            socket,
            read_budget,
            frames: FrameTracker::default(),
            replay: None,
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
            let polled = match &mut self.socket {
                AsyncSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
                AsyncSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            };
            if let Poll::Ready(Ok(())) = polled {
                self.frames.observe(&buf.filled()[before..]);
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

/// Follows frame boundaries in the bytes handed to tungstenite, without
/// interpreting them (tungstenite does that): enough to know when nothing
/// is half-read, so that an idle connection can drop tungstenite's buffers
/// and rebuild its state later without losing a byte.
#[derive(Debug, Default, Clone)]
pub(crate) struct FrameTracker {
    header: [u8; 14],
    have: usize,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
    in_payload: bool,
    /// A fragmented data message has started and not finished.
    in_fragments: bool,
    /// The largest frame payload seen since the last `take_largest`.
    largest: u64,
}

impl FrameTracker {
    /// True between frames and outside fragmented messages.
    pub(crate) fn is_clean(&self) -> bool {
        self.have == 0 && !self.in_payload && !self.in_fragments
    }

    /// The largest frame payload seen since the last call.
    pub(crate) fn take_largest(&mut self) -> u64 {
        std::mem::take(&mut self.largest)
    }

    pub(crate) fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.in_payload {
                let take = (bytes.len() as u64).min(self.remaining);
                self.remaining -= take;
                bytes = &bytes[take as usize..];
                if self.remaining == 0 {
                    self.in_payload = false;
                }
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some(len) = self.header_len() {
                if self.have == len {
                    self.finish_header();
                }
            }
        }
    }

    /// The full header length, once the first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + ext + if masked { 4 } else { 0 })
    }

    fn finish_header(&mut self) {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0f;
        let len = match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0xff; 8])),
            n => u64::from(n),
        };
        match (opcode, fin) {
            (1 | 2, false) => self.in_fragments = true,
            (0, true) => self.in_fragments = false,
            _ => {}
        }
        self.have = 0;
        self.remaining = len;
        self.in_payload = len > 0;
        self.largest = self.largest.max(len);
    }
}

#[cfg(test)]
mod tests {
    use super::FrameTracker;

    fn frame(fin: bool, opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(mask_bit | len as u8),
            126..=0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn whole_frames_in_any_split_leave_it_clean() {
        let bytes: Vec<u8> = [
            frame(true, 1, true, 5),
            frame(true, 2, true, 300),
            frame(true, 2, false, 70_000),
        ]
        .concat();
        for split in [1, 2, 3, 7, 100, bytes.len()] {
            let mut t = FrameTracker::default();
            for chunk in bytes.chunks(split) {
                t.observe(chunk);
            }
            assert!(t.is_clean(), "split {split}");
            assert_eq!(t.take_largest(), 70_000);
        }
    }

    #[test]
    fn half_frames_and_open_fragments_are_not_clean() {
        let f = frame(true, 1, true, 10);
        let mut t = FrameTracker::default();
        t.observe(&f[..1]);
        assert!(!t.is_clean(), "inside a header");
        t.observe(&f[1..8]);
        assert!(!t.is_clean(), "inside a payload");
        t.observe(&f[8..]);
        assert!(t.is_clean());

        t.observe(&frame(false, 2, true, 4)); // first fragment
        assert!(!t.is_clean(), "fragmented message open");
        t.observe(&frame(true, 9, true, 0)); // a ping in between
        assert!(!t.is_clean());
        t.observe(&frame(true, 0, true, 4)); // final continuation
        assert!(t.is_clean());
    }
}
