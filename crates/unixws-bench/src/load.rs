//! The load generator: WebSocket frames masked once in advance (a fixed,
//! non-zero key, so no server can skip unmasking) written straight to the
//! socket, and echoes counted by reading frame headers only. The client's
//! cost per message is a header parse, so what is measured is the server.
//! Against the raw echo server the same bytes come back unchanged, which
//! measures this client and the kernel: the baseline.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use unixws::frame;

use super::target::Conn;

/// The mask key of every frame the load client sends.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The payload of every bench message of `size` bytes (not all zeros, so
/// that unmasking cannot be skipped by accident).
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_mul(31)).collect()
}

/// One binary message of `size` bytes as a masked frame, built once with
/// the library's own encoder.
pub fn masked_frame(size: usize) -> Vec<u8> {
    frame::encode(frame::FIN | frame::OP_BINARY, &payload(size), Some(MASK))
}

/// Reads frames and reports each complete data message, skipping payloads
/// (and any control frames) without looking at them.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `message_size` sizes the buffer: 1,000 connections of small
    /// messages should not each zero a large one.
    pub fn new(inner: R, message_size: usize) -> Self {
        Self {
            inner,
            buf: vec![0; (message_size + 14).clamp(4 << 10, 256 << 10)],
            start: 0,
            end: 0,
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.inner.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Waits for the next data message; returns its payload length.
    pub async fn next_message(&mut self) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let (header, len, b0) = loop {
                if let Some(head) = parse_header(&self.buf[self.start..self.end]) {
                    break head;
                }
                self.fill().await?;
            };
            self.start += header;
            let mut left = len;
            while left > 0 {
                if self.start == self.end {
                    self.fill().await?;
                }
                let take = left.min((self.end - self.start) as u64);
                self.start += take as usize;
                left -= take;
            }
            if let Some(done) = count_frame(b0, len, &mut total)? {
                return Ok(done);
            }
        }
    }
}

/// A frame header at the front of `buf`: its length, the payload length
/// and the first byte; `None` while incomplete.
fn parse_header(buf: &[u8]) -> Option<(usize, u64, u8)> {
    frame::Head::parse(buf).map(|head| (head.len, head.payload_len, head.first))
}

/// Adds a skipped frame to the message in progress: the message's length
/// once a final data frame ends it; an error for a close frame.
fn count_frame(b0: u8, len: u64, total: &mut u64) -> io::Result<Option<u64>> {
    let opcode = b0 & 0x0f;
    if opcode == 8 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server sent a close frame",
        ));
    }
    if opcode < 8 {
        *total += len;
        if b0 & 0x80 != 0 {
            return Ok(Some(*total));
        }
    }
    Ok(None)
}

/// The blocking twin of [`FrameReader`], for the thread-per-connection
/// client: the same header-only reading over a blocking socket.
struct BlockingFrames<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: std::io::Read> BlockingFrames<R> {
    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        match self.inner.read(&mut self.buf[self.end..])? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }

    fn next_message(&mut self) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let (header, len, b0) = loop {
                if let Some(head) = parse_header(&self.buf[self.start..self.end]) {
                    break head;
                }
                self.fill()?;
            };
            self.start += header;
            let mut left = len;
            while left > 0 {
                if self.start == self.end {
                    self.fill()?;
                }
                let take = left.min((self.end - self.start) as u64);
                self.start += take as usize;
                left -= take;
            }
            if let Some(done) = count_frame(b0, len, &mut total)? {
                return Ok(done);
            }
        }
    }
}

/// The second, independent load client: one OS thread per connection,
/// blocking reads and writes (what a thread-per-connection program does),
/// the same pre-masked frames and header-only reading.
pub fn ping_pong_threads(
    address: &unixws::Address,
    websocket: bool,
    connections: usize,
    size: usize,
    duration: Duration,
) -> io::Result<Measured> {
    use std::io::Write;
    let frame = std::sync::Arc::new(masked_frame(size));
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(super::target::open_blocking(address, websocket)?);
    }
    let started = Instant::now();
    let until = started + duration;
    let threads: Vec<_> = sockets
        .into_iter()
        .map(|(mut write, read)| {
            let frame = frame.clone();
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let mut frames = BlockingFrames {
                        inner: read,
                        buf: vec![0; (size + 14).clamp(4 << 10, 256 << 10)],
                        start: 0,
                        end: 0,
                    };
                    let mut m = Measured::new();
                    while Instant::now() < until {
                        let sent = Instant::now();
                        write.write_all(&frame)?;
                        let n = frames.next_message()?;
                        let _ = m.latency.record(sent.elapsed().as_nanos() as u64);
                        m.messages += 1;
                        m.bytes += n;
                    }
                    Ok::<_, io::Error>(m)
                })
        })
        .collect::<io::Result<_>>()?;
    let mut total = Measured::new();
    for t in threads {
        let m = t
            .join()
            .map_err(|_| io::Error::other("a load thread panicked"))??;
        total.merge(&m);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// What one workload measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Measured {
    /// Nothing measured yet.
    pub fn new() -> Self {
        Self {
            messages: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram(),
        }
    }

    pub fn merge(&mut self, other: &Measured) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.elapsed = self.elapsed.max(other.elapsed);
        let _ = self.latency.add(&other.latency);
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// `connections` clients, each sending one message and waiting for its
/// echo before the next (uWebSockets' load_test pattern; with one
/// connection, a latency measurement).
pub async fn ping_pong<F, Fut>(
    connect: F,
    connections: usize,
    size: usize,
    duration: Duration,
) -> io::Result<Measured>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = io::Result<Conn>>,
{
    let frame = std::sync::Arc::new(masked_frame(size));
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(connect().await?);
    }
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let frame = frame.clone();
        tasks.spawn(async move {
            let (read, mut write) = conn.split();
            let mut reader = FrameReader::new(read, size);
            let mut m = Measured::new();
            while Instant::now() < until {
                let sent = Instant::now();
                write.write_all(&frame).await?;
                let n = reader.next_message().await?;
                let _ = m.latency.record(sent.elapsed().as_nanos() as u64);
                m.messages += 1;
                m.bytes += n;
            }
            Ok::<_, io::Error>(m)
        });
    }
    let mut total = Measured::new();
    while let Some(done) = tasks.join_next().await {
        let m = done.map_err(io::Error::other)??;
        total.merge(&m);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// One connection; a writer sends messages back to back while a reader
/// takes the echoes: throughput, with each message's time from send to
/// echo (which includes queueing behind the ones before it).
pub async fn stream(conn: Conn, size: usize, duration: Duration) -> io::Result<Measured> {
    let frame = masked_frame(size);
    let (read, mut write) = conn.split();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let started = Instant::now();
    let until = started + duration;
    let writer = tokio::spawn(async move {
        let mut count = 0u64;
        while Instant::now() < until {
            let _ = sent_tx.send(Instant::now());
            write.write_all(&frame).await?;
            count += 1;
        }
        write.flush().await?;
        Ok::<_, io::Error>((count, write))
    });
    let mut reader = FrameReader::new(read, size);
    let mut m = Measured::new();
    loop {
        let Some(sent) = sent_rx.recv().await else {
            break;
        };
        let n = reader.next_message().await?;
        let _ = m.latency.record(sent.elapsed().as_nanos() as u64);
        m.messages += 1;
        m.bytes += n;
    }
    let (_count, _write) = writer.await.map_err(io::Error::other)??;
    m.elapsed = started.elapsed();
    Ok(m)
}
