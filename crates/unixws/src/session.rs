//! The protocol state of one open connection, shared by the blocking and
//! the tokio drivers: the codec's buffers, the close handshake, answers to
//! pings, close codes for peer errors, the slow-consumer close and the
//! keepalive clocks. It does no I/O: a driver reads into [`Session::read`],
//! asks [`Session::next_message`] for what arrived (a relay asks
//! [`Session::next_forward`] for frames to pass on as they are, and queues
//! them on the other side with [`Session::forward`]), writes out what
//! [`Session::out`] holds, and tells the session when a clock ran out.
//! Each decision is made here once, so the two drivers cannot drift
//! apart.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::Message;

use crate::codec::decode::Forward;
use crate::codec::deflate::{Agreed, Deflate};
use crate::codec::{CodecError, Decoder, OpCode, Outgoing};
use crate::config::Limits;
use crate::connection::{ConnectionInfo, PeerClose};
use crate::error::Error;
use crate::keepalive::{Expiry, Timers};
use crate::peer::Peer;
use crate::stats::{Counter, ServerStats, Tally};

/// Reads ask for at least this much room: small enough for an idle
/// connection's peak, large enough that a burst of small messages is one
/// system call.
pub(crate) const READ_CHUNK: usize = 1 << 10;

/// The most a read asks for beyond the frame in progress.
pub(crate) const MAX_READ_HINT: usize = 256 << 10;

/// Where the closing handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// We sent a close frame and wait for the peer's.
    Sent,
    /// The peer's close frame is in and ours is held back (see
    /// `hold_close_reply`): we may still send, and read nothing more.
    Received,
    /// Both close frames are out: nothing more to read or send.
    Done,
}

/// What a driver does after a clock ran out.
#[derive(Debug)]
pub(crate) enum AfterDeadline {
    /// Carry on (a ping or a close frame may now be queued).
    Go,
    /// Drop the socket and end `recv` with this.
    Drop(Result<(), Error>),
    /// Fail `recv` with this; the connection stays as it is.
    Fail(Error),
}

/// The protocol state of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    role: Role,
    decoder: Decoder,
    /// Bytes read and not yet decoded.
    pub(crate) read: BytesMut,
    /// How much the next read asks for at least (see `note_read`).
    read_hint: usize,
    /// Bytes waiting to be written.
    pub(crate) out: Outgoing,
    closing: Closing,
    pub(crate) timers: Timers,
    /// The time as of the driver's last wake-up (see [`Session::tick`]).
    now: Instant,
    /// Boxed: most connections are idle far longer than they close.
    peer_close: Option<Box<PeerClose>>,
    /// `next_message` returns pings and pongs too (relays).
    pub(crate) control_frames: bool,
    /// A peer error's close code waits for the caller (relays).
    pub(crate) defer_error_close: bool,
    /// The peer's close is not answered at once: the caller sends what it
    /// still has, then closes (`Closing::Received`).
    pub(crate) hold_close_reply: bool,
    pub(crate) deferred_close: Option<(u16, &'static str)>,
    /// A server connection's counts (boxed: clients have none).
    tally: Option<Box<Tally>>,
    /// `next_forward` hands out whole messages: a relay whose sides do not
    /// both speak the same framing (one compresses) re-frames them.
    pub(crate) relay_messages: bool,
    /// The peer broke the protocol: its input is discarded from now on.
    failed: bool,
    /// Our write side was shut down after the close frame of a failure.
    write_shut: bool,
}

impl Session {
    pub(crate) fn new(
        role: Role,
        limits: Arc<Limits>,
        read_timeout: Option<std::time::Duration>,
        now: Instant,
    ) -> Self {
        Self {
            role,
            decoder: Decoder::new(role, limits.max_frame_size, limits.max_message_size),
            read: BytesMut::new(),
            read_hint: READ_CHUNK,
            out: Outgoing::default(),
            closing: Closing::Open,
            timers: Timers::new(limits, read_timeout, now),
            now,
            peer_close: None,
            control_frames: false,
            defer_error_close: false,
            hold_close_reply: false,
            deferred_close: None,
            tally: None,
            relay_messages: false,
            failed: false,
            write_shut: false,
        }
    }

    /// The driver woke up at `now`: the clocks count from here. Once per
    /// wake-up, not per message (a burst of messages shares one reading).
    pub(crate) fn tick(&mut self, now: Instant) {
        self.now = now;
    }

    /// When a `recv` starts: only read if a read timeout needs it (a clock
    /// reading per message is what this design avoids).
    pub(crate) fn recv_started(&self) -> Instant {
        if self.timers.has_read_timeout() {
            Instant::now()
        } else {
            self.now
        }
    }

    /// True when permessage-deflate was agreed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn is_compressed(&self) -> bool {
        self.decoder.deflate.is_some()
    }

    /// permessage-deflate, as the handshake agreed (`None`: not used).
    pub(crate) fn with_compression(mut self, agreed: Option<Agreed>) -> Self {
        if let Some(agreed) = agreed {
            let threshold = self.limits().compression_threshold;
            self.decoder.deflate = Some(Box::new(Deflate::new(agreed, threshold)));
        }
        self
    }

    /// Bytes that came with the handshake, after its head: the first frames.
    pub(crate) fn with_initial(mut self, bytes: &[u8]) -> Self {
        self.read.extend_from_slice(bytes);
        self
    }

    pub(crate) fn count_into(&mut self, stats: Arc<ServerStats>) {
        self.tally = Some(Box::new(Tally::new(stats)));
    }

    fn count(&self, counter: Counter) {
        if let Some(tally) = &self.tally {
            tally.stats().count(counter);
        }
    }

    /// The first close frame either way: its code is how the connection
    /// ended, for the server's counts.
    fn note_close(&mut self, code: u16) {
        if let Some(tally) = &mut self.tally {
            tally.close.get_or_insert(code);
        }
    }

    /// `n` bytes of the output were written.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.out.advance(n);
        if let Some(tally) = &mut self.tally {
            tally.moved(Counter::BytesOut, n);
        }
    }

    /// The peer's close code and reason, once it sent one.
    pub(crate) fn peer_close(&self) -> Option<&PeerClose> {
        self.peer_close.as_deref()
    }

    /// True once we may send nothing more (a close frame is out).
    /// The connection's limits.
    pub(crate) fn limits(&self) -> &Limits {
        self.timers.limits()
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// The connection's limits, to share with another session.
    pub(crate) fn shared_limits(&self) -> Arc<Limits> {
        self.timers.limits().clone()
    }

    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.closing, Closing::Sent | Closing::Done)
    }

    /// True while frames may still come from the peer (it has not closed).
    fn reading(&self) -> bool {
        matches!(self.closing, Closing::Open | Closing::Sent)
    }

    /// True once the peer closed and our answer is held back: `recv` ends,
    /// sending goes on until the caller closes.
    pub(crate) fn reply_held(&self) -> bool {
        self.closing == Closing::Received
    }

    /// Closes normally, or, when the peer's close is held unanswered,
    /// answers it with its own code and reason (RFC 6455 5.5.1).
    pub(crate) fn close_normally(&mut self) {
        match self.peer_close.as_deref() {
            Some(c) if self.reply_held() => {
                let (code, reason) = (c.code, c.reason.clone());
                self.start_close(code, &reason);
            }
            _ => self.start_close(CloseCode::Normal, ""),
        }
    }

    /// True once both close frames are out: the driver flushes and ends.
    pub(crate) fn is_done(&self) -> bool {
        self.closing == Closing::Done
    }

    /// Room for the next read: the whole rest of the frame in progress
    /// (a large frame lands in one allocation, whose size `max_frame_size`
    /// bounds), and at least the read size that the last reads earned.
    /// Returns the room.
    pub(crate) fn reserve_read(&mut self) -> usize {
        let want = self.decoder.wanted(self.read.len()).max(self.read_hint);
        if self.read.capacity() - self.read.len() < want {
            self.read.reserve(want);
        }
        self.read.capacity() - self.read.len()
    }

    /// `got` bytes arrived where `room` was offered. A read that fills its
    /// room doubles the next one (up to [`MAX_READ_HINT`]): a stream of
    /// large messages moves to few large reads that take several frames
    /// at once. A read that used little of its room halves it again.
    pub(crate) fn note_read(&mut self, got: usize, room: usize) {
        if let Some(tally) = &mut self.tally {
            tally.moved(Counter::BytesIn, got);
        }
        if got == room {
            self.read_hint = (self.read_hint * 2).min(MAX_READ_HINT);
        } else if got < room / 4 {
            self.read_hint = (self.read_hint / 2).max(READ_CHUNK);
        }
    }

    /// The next message in the read buffer that the caller should see
    /// (data; pings and pongs too with `control_frames`). Pings are
    /// answered and close frames handled here.
    pub(crate) fn next_message(&mut self) -> Result<Option<Message>, CodecError> {
        if self.failed {
            // The stream is out of step: nothing after the error is read.
            self.read.clear();
            return Ok(None);
        }
        while self.reading() {
            let Some(message) = self.decoder.decode(&mut self.read)? else {
                return Ok(None);
            };
            if let Some(message) = self.take(message) {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Forward mode (relays): as `next_message`, but data comes out as the
    /// checked bytes of its frames, to pass on as they are (see
    /// `Decoder::forward`), a large frame in pieces as it arrives.
    pub(crate) fn next_forward(&mut self) -> Result<Option<Forward>, CodecError> {
        if self.relay_messages {
            return Ok(self.next_message()?.map(|m| match m {
                Message::Text(_) | Message::Binary(_) => Forward::Message(m),
                control => Forward::Control(control),
            }));
        }
        if self.failed {
            self.read.clear();
            return Ok(None);
        }
        while self.reading() {
            match self.decoder.forward(&mut self.read)? {
                None => return Ok(None),
                Some(Forward::Control(message)) => {
                    if let Some(message) = self.take(message) {
                        return Ok(Some(Forward::Control(message)));
                    }
                }
                Some(data) => {
                    self.timers.heard(true, self.now);
                    if let (Some(tally), Forward::Data { messages, .. }) = (&mut self.tally, &data)
                    {
                        tally.messages_in(*messages);
                    }
                    return Ok(Some(data));
                }
            }
        }
        Ok(None)
    }

    /// A decoded message: answers a ping, handles a close; returns what the
    /// caller should see.
    fn take(&mut self, message: Message) -> Option<Message> {
        let data = message.is_text() || message.is_binary();
        if data {
            if let Some(tally) = &mut self.tally {
                tally.message_in();
            }
        }
        self.timers.heard(data, self.now);
        match message {
            Message::Ping(ref payload) => {
                if self.closing == Closing::Open {
                    self.push(OpCode::Pong, payload);
                }
                self.control_frames.then_some(message)
            }
            Message::Pong(_) if self.control_frames => Some(message),
            Message::Close(frame) => {
                self.on_close_frame(frame);
                None
            }
            message if data => Some(message),
            _ => None,
        }
    }

    fn on_close_frame(&mut self, frame: Option<CloseFrame>) {
        if self.closing == Closing::Open && self.hold_close_reply {
            self.note_close(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
            self.peer_close = Some(Box::new(PeerClose::from_frame(frame)));
            self.closing = Closing::Received;
            return;
        }
        if self.closing == Closing::Open {
            self.note_close(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
            // Answer with the same code and reason (RFC 6455 5.5.1), as
            // tungstenite does.
            let mut payload = Vec::new();
            if let Some(f) = &frame {
                payload.extend_from_slice(&u16::from(f.code).to_be_bytes());
                payload.extend_from_slice(f.reason.as_bytes());
            }
            self.push(OpCode::Close, &payload);
        }
        self.peer_close = Some(Box::new(PeerClose::from_frame(frame)));
        self.timers.closing(self.now);
        self.closing = Closing::Done;
    }

    /// Whether queueing `message` needs the clock read first: a close
    /// starts the close timeout, which must count from now; data keeps the
    /// last wake-up's reading (at worst a keepalive ping goes out early),
    /// so that an echo reads the clock once per wake-up, not per message.
    pub(crate) fn wants_now(message: &Message) -> bool {
        matches!(message, Message::Close(_))
    }

    /// Queues `message` for sending. A `Close` starts the closing
    /// handshake; after that nothing more can be sent.
    pub(crate) fn send(&mut self, message: Message) -> Result<(), Error> {
        if self.is_closing() {
            return Err(Error::WebSocket(Box::new(WsError::Protocol(
                ProtocolError::SendAfterClosing,
            ))));
        }
        match message {
            Message::Text(text) => {
                self.sent_message();
                self.push_data(OpCode::Text, &text.into());
            }
            Message::Binary(data) => {
                self.sent_message();
                self.push_data(OpCode::Binary, &data);
            }
            Message::Ping(data) => self.push(OpCode::Ping, &data),
            Message::Pong(data) => self.push(OpCode::Pong, &data),
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((CloseCode::Normal, String::new()), |f| {
                    (f.code, f.reason.to_string())
                });
                self.start_close(code, &reason);
            }
            Message::Frame(frame) => {
                // A raw frame, as given: for tests and tools that craft frames.
                let h = frame.header();
                let first = u8::from(h.is_final) << 7
                    | u8::from(h.rsv1) << 6
                    | u8::from(h.rsv2) << 5
                    | u8::from(h.rsv3) << 4
                    | u8::from(h.opcode);
                let key = self.key();
                self.out.push_raw_frame(first, frame.payload(), key);
            }
        }
        Ok(())
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Queues bytes of frames another connection's `next_forward` checked
    /// (relays). Once a close frame is out, only the rest of a frame
    /// already begun may follow.
    pub(crate) fn forward(
        &mut self,
        bytes: bytes::Bytes,
        frame_done: bool,
        messages: u32,
    ) -> Result<(), Error> {
        if self.is_closing() && !self.out.is_mid_frame() {
            return Err(Error::WebSocket(Box::new(WsError::Protocol(
                ProtocolError::SendAfterClosing,
            ))));
        }
        self.timers.sent_data(self.now);
        if let Some(tally) = &mut self.tally {
            tally.messages_out(messages);
        }
        self.out.push_forwarded(bytes, frame_done);
        Ok(())
    }

    fn sent_message(&mut self) {
        self.timers.sent_data(self.now);
        if let Some(tally) = &mut self.tally {
            tally.message_out();
        }
    }

    /// Queues a close frame unless one is out already. When the peer's
    /// close is held unanswered, this is the answer, and the handshake is over.
    pub(crate) fn start_close(&mut self, code: CloseCode, reason: &str) {
        if self.is_closing() {
            return;
        }
        let code = u16::from(code);
        self.note_close(code);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        // A control frame carries at most 125 bytes: cut the reason at a
        // character boundary.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.push(OpCode::Close, &payload);
        self.closing = if self.reply_held() {
            Closing::Done
        } else {
            Closing::Sent
        };
        self.timers.closing(self.now);
    }

    /// Queues a ping (keepalive).
    pub(crate) fn ping(&mut self) {
        if self.closing == Closing::Open {
            self.push(OpCode::Ping, &[]);
        }
    }

    /// Acts on the clock that ran out (keepalive ping, pong timeout, idle
    /// close, close timeout, read timeout).
    pub(crate) fn on_deadline(
        &mut self,
        started: std::time::Instant,
        info: &ConnectionInfo,
    ) -> AfterDeadline {
        match self.timers.on_expiry(
            started,
            self.now,
            info,
            self.tally.as_deref().map(Tally::stats),
        ) {
            Expiry::Nothing => AfterDeadline::Go,
            Expiry::Drop => {
                self.abandon();
                AfterDeadline::Drop(Ok(()))
            }
            Expiry::DropWith(e) => {
                self.abandon();
                AfterDeadline::Drop(Err(e))
            }
            Expiry::Ping => {
                self.ping();
                AfterDeadline::Go
            }
            Expiry::Close(code, reason) => {
                self.start_close(code, reason);
                AfterDeadline::Go
            }
            Expiry::Fail(e) => AfterDeadline::Fail(e),
        }
    }

    /// The connection cannot go on (the socket failed or was dropped).
    pub(crate) fn abandon(&mut self) {
        self.closing = Closing::Done;
    }

    /// The peer broke the protocol: log, count, queue the close code it is
    /// owed (unless a relay defers it) and return the error to report.
    pub(crate) fn fail(&mut self, e: CodecError, peer: &Peer) -> Error {
        let code = e.close_code();
        tracing::info!(%peer, error = %e, code, "closing connection on a peer error");
        self.count(Counter::ProtocolError);
        self.failed = true;
        self.read.clear();
        if self.defer_error_close {
            // Nothing is sent yet: the relay may still deliver answers.
            self.deferred_close = Some((code, e.reason()));
        } else {
            self.start_close(code.into(), e.reason());
        }
        match e {
            CodecError::TooBig { size, max } => Error::MessageTooLarge { size, max },
            other => Error::Protocol {
                code: code.into(),
                detail: other.to_string(),
            },
        }
    }

    /// True once, when the close frame owed for a failure has been
    /// written: the driver then shuts its write side down (RFC 6455 7.1.7,
    /// "Fail the WebSocket Connection") and waits for the peer to hang up,
    /// at most the close timeout.
    pub(crate) fn take_write_shutdown(&mut self) -> bool {
        if self.failed && !self.write_shut && self.deferred_close.is_none() && self.out.is_empty() {
            self.write_shut = true;
            return true;
        }
        false
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Queues the close code a peer error left waiting (relays).
    pub(crate) fn close_deferred(&mut self) -> bool {
        match self.deferred_close.take() {
            Some((code, reason)) => {
                self.start_close(code.into(), reason);
                true
            }
            None => false,
        }
    }

    /// The send queue overflowed: close with 1013.
    pub(crate) fn close_slow_consumer(&mut self, peer: &Peer, queue: usize) {
        if self.is_closing() {
            return;
        }
        tracing::warn!(%peer, queue, "send queue full: closing slow consumer with 1013");
        self.count(Counter::SlowConsumer);
        self.start_close(CloseCode::Again, "send queue full: reading too slowly");
    }

    /// The peer closed the socket. `Ok` when that ends a close handshake
    /// that was under way; otherwise the error to report.
    pub(crate) fn on_eof(&mut self) -> Result<(), Error> {
        let was = self.closing;
        self.closing = Closing::Done;
        if was != Closing::Open || self.peer_close.is_some() {
            return Ok(());
        }
        Err(Error::ConnectionReset)
    }

    fn key(&self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(|| fastrand::u32(..).to_ne_bytes())
    }

    fn push(&mut self, opcode: OpCode, payload: &[u8]) {
        let key = self.key();
        self.out.push_frame(true, opcode, payload, key);
    }

    /// A data message, compressed when permessage-deflate was agreed and
    /// it is large enough to gain.
    fn push_data(&mut self, opcode: OpCode, payload: &bytes::Bytes) {
        if let Some(deflate) = self
            .decoder
            .deflate
            .as_mut()
            .filter(|d| d.wants(payload.len()))
        {
            let compressed = deflate.compress(payload);
            let key = self.key();
            return self.out.push_compressed(opcode, compressed, key);
        }
        self.push_shared(opcode, payload);
    }

    fn push_shared(&mut self, opcode: OpCode, payload: &bytes::Bytes) {
        let key = self.key();
        self.out.push_shared(true, opcode, payload, key);
    }
}

#[cfg(test)]
mod tests {
    //! The session driven in memory with made-up instants: no socket, no
    //! sleeping.

    use std::time::Duration;

    use super::*;
    use crate::codec::tests::{client_frame, drain};

    fn peer() -> Peer {
        Peer::Tcp("127.0.0.1:1".parse().expect("an address"))
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            peer: peer(),
            path: "/".into(),
            query: None,
            headers: Default::default(),
            subprotocol: None,
            address: None,
        }
    }

    fn limits() -> Limits {
        Limits::default()
            .ping_interval(Some(Duration::from_secs(30)))
            .pong_timeout(Duration::from_secs(10))
            .close_timeout(Duration::from_secs(5))
            .idle_timeout(Some(Duration::from_secs(60)))
            .max_message_size(1000)
    }

    /// A server session and the instant it started.
    fn server() -> (Session, Instant) {
        let t0 = Instant::now();
        (Session::new(Role::Server, Arc::new(limits()), None, t0), t0)
    }

    fn from_client(opcode: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(true, opcode, payload)
    }

    fn written(session: &mut Session) -> Vec<u8> {
        drain(&mut session.out)
    }

    #[test]
    fn a_ping_is_answered_with_its_payload_and_data_comes_out() {
        let (mut s, _) = server();
        s.read.extend_from_slice(&from_client(9, b"are you there"));
        s.read.extend_from_slice(&from_client(1, b"hello"));
        assert_eq!(s.next_message(), Ok(Some(Message::text("hello"))));
        assert_eq!(
            written(&mut s),
            [&[0x8a, 13][..], b"are you there"].concat()
        );
    }

    #[test]
    fn a_server_session_counts_messages_bytes_and_its_close_code_into_the_stats() {
        let stats = Arc::new(ServerStats::default());
        let (mut s, _) = server();
        s.count_into(stats.clone());
        let input = [
            from_client(1, b"one"),
            from_client(2, b"two"),
            from_client(9, b""),
        ]
        .concat();
        s.read.extend_from_slice(&input);
        s.note_read(input.len(), 4096);
        assert_eq!(s.next_message(), Ok(Some(Message::text("one"))));
        assert_eq!(s.next_message(), Ok(Some(Message::binary(&b"two"[..]))));
        assert_eq!(
            s.next_message(),
            Ok(None),
            "the ping is answered, not counted"
        );
        s.send(Message::text("back")).expect("send");
        // As a driver does: write what the slices hold, then say so.
        let mut slices = [std::io::IoSlice::new(&[]); crate::codec::encode::MAX_SLICES];
        let n = s.out.slices(&mut slices);
        let out: usize = slices[..n].iter().map(|x| x.len()).sum();
        s.wrote(out);
        assert!(s.out.is_empty());
        s.start_close(CloseCode::Again, "later");
        drop(s);
        let snap = stats.snapshot();
        assert_eq!((snap.messages_in, snap.messages_out), (2, 1));
        assert_eq!(snap.bytes_in, input.len() as u64);
        assert_eq!(snap.bytes_out, out as u64);
        assert_eq!(stats.closes_by_code(), [(1013, 1)]);
    }

    #[test]
    fn a_connection_that_ends_without_a_close_frame_counts_as_1006_and_the_peers_code_wins() {
        let stats = Arc::new(ServerStats::default());
        let (mut a, _) = server();
        a.count_into(stats.clone());
        drop(a);
        let (mut b, _) = server();
        b.count_into(stats.clone());
        b.read
            .extend_from_slice(&from_client(8, &4001u16.to_be_bytes()));
        assert_eq!(b.next_message(), Ok(None));
        b.start_close(CloseCode::Normal, "");
        drop(b);
        assert_eq!(stats.closes_by_code(), [(1006, 1), (4001, 1)]);
    }

    #[test]
    fn keepalive_pings_after_silence_and_drops_a_peer_that_never_answers() {
        let (mut s, t0) = server();
        s.tick(t0 + Duration::from_secs(29));
        assert!(matches!(s.on_deadline(t0, &info()), AfterDeadline::Go));
        assert!(written(&mut s).is_empty(), "no ping before the interval");
        s.tick(t0 + Duration::from_secs(30));
        assert!(matches!(s.on_deadline(t0, &info()), AfterDeadline::Go));
        assert_eq!(
            written(&mut s),
            [0x89, 0x00],
            "a ping after 30 s of silence"
        );
        s.tick(t0 + Duration::from_secs(40));
        match s.on_deadline(t0, &info()) {
            AfterDeadline::Drop(Err(Error::KeepaliveTimeout { after })) => {
                assert_eq!(after, Duration::from_secs(10));
            }
            other => panic!("expected a keepalive drop, got {other:?}"),
        }
        assert!(s.is_done());
    }

    #[test]
    fn any_frame_answers_a_ping_and_moves_the_next_one() {
        let (mut s, t0) = server();
        let mut no_idle = limits();
        no_idle.idle_timeout = None;
        s.timers = Timers::new(Arc::new(no_idle), None, t0);
        s.tick(t0 + Duration::from_secs(30));
        let _ = s.on_deadline(t0, &info());
        let _ = written(&mut s);
        s.tick(t0 + Duration::from_secs(35));
        s.read.extend_from_slice(&from_client(10, b""));
        assert_eq!(s.next_message(), Ok(None));
        s.tick(t0 + Duration::from_secs(45));
        assert!(matches!(s.on_deadline(t0, &info()), AfterDeadline::Go));
        assert!(!s.is_closing(), "the pong kept the peer");
        assert_eq!(
            s.timers.next(t0).map(|(at, _)| at),
            Some(t0 + Duration::from_secs(65)),
            "next ping 30 s after the pong"
        );
    }

    #[test]
    fn our_close_waits_for_the_answer_at_most_the_close_timeout() {
        let (mut s, t0) = server();
        s.tick(t0 + Duration::from_secs(1));
        s.start_close(CloseCode::Away, "going");
        assert_eq!(
            written(&mut s),
            [&[0x88, 7, 0x03, 0xe9][..], b"going"].concat()
        );
        assert!(
            s.send(Message::text("late")).is_err(),
            "nothing after a close"
        );
        s.tick(t0 + Duration::from_secs(5));
        assert!(matches!(s.on_deadline(t0, &info()), AfterDeadline::Go));
        s.tick(t0 + Duration::from_secs(6));
        assert!(matches!(
            s.on_deadline(t0, &info()),
            AfterDeadline::Drop(Ok(()))
        ));
    }

    #[test]
    fn the_peers_close_is_echoed_with_its_code_and_reason_and_ends_the_session() {
        let (mut s, _) = server();
        s.read
            .extend_from_slice(&from_client(8, &[0x0f, 0xa1, b'b', b'y', b'e']));
        assert_eq!(s.next_message(), Ok(None));
        assert!(s.is_done());
        assert_eq!(
            s.peer_close().map(|c| (c.code, c.reason.as_str())),
            Some((CloseCode::from(4001), "bye"))
        );
        assert_eq!(written(&mut s), [0x88, 5, 0x0f, 0xa1, b'b', b'y', b'e']);
        assert!(s.on_eof().is_ok(), "a hang-up after the handshake is fine");
    }

    #[test]
    fn a_held_close_reply_lets_data_out_first_and_then_answers() {
        for answer in [Some((CloseCode::Error, "exit 3")), None] {
            let (mut s, _) = server();
            s.hold_close_reply = true;
            s.read.extend_from_slice(&from_client(8, &[0x03, 0xe8]));
            s.read
                .extend_from_slice(&from_client(1, b"after the close"));
            assert_eq!(s.next_message(), Ok(None));
            assert!(s.reply_held() && !s.is_closing() && !s.is_done());
            assert_eq!(written(&mut s), [] as [u8; 0], "no answer yet");
            assert_eq!(
                s.next_message(),
                Ok(None),
                "nothing is read after the peer's close"
            );
            s.send(Message::text("late answer"))
                .expect("sending goes on");
            match answer {
                Some((code, reason)) => s.start_close(code, reason),
                None => s.close_normally(),
            }
            assert!(s.is_done());
            let mut expected = vec![0x81, 11];
            expected.extend_from_slice(b"late answer");
            match answer {
                Some(_) => expected
                    .extend_from_slice(&[0x88, 8, 0x03, 0xf3, b'e', b'x', b'i', b't', b' ', b'3']),
                None => expected.extend_from_slice(&[0x88, 2, 0x03, 0xe8]),
            }
            assert_eq!(written(&mut s), expected);
            assert!(
                s.send(Message::text("x")).is_err(),
                "nothing after our close"
            );
        }
    }

    #[test]
    fn a_hang_up_without_a_close_is_an_error() {
        let (mut s, _) = server();
        assert!(s.on_eof().is_err());
    }

    #[test]
    fn idle_closes_with_1001_unless_data_moves_either_way() {
        let (mut s, t0) = server();
        let mut l = limits();
        l.ping_interval = None;
        s.timers = Timers::new(Arc::new(l), None, t0);
        s.tick(t0 + Duration::from_secs(50));
        s.send(Message::text("out")).expect("sent");
        let _ = written(&mut s);
        s.tick(t0 + Duration::from_secs(100));
        assert!(matches!(s.on_deadline(t0, &info()), AfterDeadline::Go));
        assert!(
            !s.is_closing(),
            "data sent 50 s ago holds the idle timeout off"
        );
        s.tick(t0 + Duration::from_secs(110));
        assert!(matches!(s.on_deadline(t0, &info()), AfterDeadline::Go));
        assert_eq!(
            &written(&mut s)[..4],
            [0x88, 14, 0x03, 0xe9],
            "1001 idle timeout"
        );
    }

    #[test]
    fn a_peer_error_queues_its_close_code_then_input_is_ignored_and_the_write_side_shuts() {
        let (mut s, _) = server();
        s.read.extend_from_slice(&from_client(2, &[0u8; 1001]));
        let error = match s.next_message() {
            Err(e) => s.fail(e, &peer()),
            other => panic!("expected an error, got {other:?}"),
        };
        assert!(matches!(
            error,
            Error::MessageTooLarge {
                size: 1001,
                max: 1000
            }
        ));
        assert_eq!(&written(&mut s)[..4], [0x88, 17, 0x03, 0xf1], "1009");
        s.read
            .extend_from_slice(&from_client(1, b"after the error"));
        assert_eq!(s.next_message(), Ok(None), "nothing more is read");
        assert!(s.take_write_shutdown());
        assert!(!s.take_write_shutdown(), "once");
    }

    #[test]
    fn a_relay_defers_the_close_code_of_a_peer_error() {
        let (mut s, _) = server();
        s.defer_error_close = true;
        s.read.extend_from_slice(&from_client(1, &[0xff]));
        let Err(e) = s.next_message() else {
            panic!("invalid UTF-8 must fail");
        };
        let _ = s.fail(e, &peer());
        assert!(written(&mut s).is_empty(), "nothing sent yet");
        s.send(Message::text("an answer still owed"))
            .expect("sending still works");
        let _ = written(&mut s);
        assert!(s.close_deferred());
        assert_eq!(&written(&mut s)[..4], [0x88, 15, 0x03, 0xef], "1007");
    }

    #[test]
    fn a_slow_consumer_is_closed_with_1013_once() {
        let (mut s, _) = server();
        s.close_slow_consumer(&peer(), 8);
        s.close_slow_consumer(&peer(), 8);
        let out = written(&mut s);
        assert_eq!(&out[2..4], [0x03, 0xf5], "1013");
        assert_eq!(
            out.len(),
            2 + 2 + "send queue full: reading too slowly".len()
        );
    }
}
