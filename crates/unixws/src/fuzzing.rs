//! Entry points for the fuzz targets (feature `fuzzing`; not part of the
//! API). The differential check feeds the same bytes to unixws's codec and
//! to tungstenite's frame engine, split at the same (fuzzer-chosen)
//! points, and compares the messages each produces and the class of the
//! error each ends with: any disagreement is a finding. The relay's
//! forward mode runs over the same pieces too: what it passes on must
//! decode to the same messages, and it must end the same way.

use std::io::{self, Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

use crate::codec::decode::Forward;
use crate::codec::Decoder;

/// The upgrade request the frame targets send before their frames.
pub const UPGRADE: &[u8] = b"GET /fuzz HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// How one side's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The input ran out (no error, or tungstenite's end-of-stream error).
    Input,
    /// A close frame arrived: nothing after it is read.
    Closed,
    /// The peer broke the protocol: the close code it is owed.
    Error(u16),
}

/// Reads served in the given pieces, then end of stream; writes vanish.
struct Pieces<'a> {
    data: &'a [u8],
    cuts: Vec<usize>,
    at: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let next = self
            .cuts
            .iter()
            .copied()
            .find(|&c| c > self.at)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let n = (next - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Pieces<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The close code tungstenite's error stands for (what unixws sends for
/// it), or `None` for the end of the input.
fn tungstenite_class(e: &WsError) -> Option<u16> {
    match e {
        // RFC 6455 5.2: a 64-bit length with its top bit set is a protocol
        // error; tungstenite calls it a size error.
        WsError::Capacity(CapacityError::MessageTooLong { size, .. })
            if *size > i64::MAX as usize =>
        {
            Some(1002)
        }
        WsError::Capacity(_) => Some(1009),
        WsError::Utf8(_) => Some(1007),
        WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(1002),
        _ => None,
    }
}

/// tungstenite's messages from `stream` cut at `cuts`, and how it ended.
fn tungstenite_reads(
    stream: &[u8],
    cuts: Vec<usize>,
    role: Role,
    max: usize,
) -> (Vec<Message>, End) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let pieces = Pieces {
        data: stream,
        cuts,
        at: 0,
    };
    let mut ws = WebSocket::from_raw_socket(pieces, role, Some(config));
    let mut messages = Vec::new();
    loop {
        match ws.read() {
            Ok(message) => {
                let close = matches!(message, Message::Close(_));
                messages.push(message);
                if close {
                    return (messages, End::Closed);
                }
            }
            Err(e) => {
                return (
                    messages,
                    tungstenite_class(&e).map_or(End::Input, End::Error),
                )
            }
        }
    }
}

/// The close code a server owes a client that sent `frames` (after the
/// upgrade), by tungstenite's reading with [`serve_bytes`]'s limits:
/// `Some(code)` for a protocol, UTF-8 or size error, `None` when the
/// frames are valid (the server then echoes them, and a close if there is
/// one). The corpus test holds the server's answer to it.
pub fn expected_close(frames: &[u8]) -> Option<u16> {
    match tungstenite_reads(frames, Vec::new(), Role::Server, SERVE_MAX).1 {
        End::Error(code) => Some(code),
        End::Input | End::Closed => None,
    }
}

/// The message and frame limit of [`serve_bytes`].
const SERVE_MAX: usize = 1 << 20;

/// Runs both decoders over `input` (first byte: role and limits; next
/// two: where to cut; the rest: the byte stream). `Err` describes a
/// disagreement.
pub fn codec_vs_tungstenite(input: &[u8]) -> Result<(), String> {
    let [mode, seed_a, seed_b, stream @ ..] = input else {
        return Ok(());
    };
    let role = if mode & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = if mode & 2 == 0 { 1 << 20 } else { 300 };
    let mut cuts = Vec::new();
    let mut state = u32::from(*seed_a) << 8 | u32::from(*seed_b);
    let mut at = 0usize;
    while at < stream.len() && state != 0 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        at += 1 + (state >> 16) as usize % 64;
        cuts.push(at);
    }

    // unixws: the same pieces, decoded after each arrives.
    let mut ours = Vec::new();
    let mut our_end = End::Input;
    let mut decoder = Decoder::new(role, max, max);
    in_pieces(stream, &cuts, |buf| loop {
        match decoder.decode(buf) {
            Ok(Some(message)) => {
                let close = matches!(message, Message::Close(_));
                ours.push(message);
                if close {
                    our_end = End::Closed;
                    return true;
                }
            }
            Ok(None) => return false,
            Err(e) => {
                our_end = End::Error(e.close_code());
                return true;
            }
        }
    });

    forward_agrees(stream, &cuts, role, max, &ours, our_end)?;

    // tungstenite: its own engine over the same pieces.
    let (theirs, their_end) = tungstenite_reads(stream, cuts.clone(), role, max);

    let agree = match (our_end, their_end) {
        // 1014 (bad gateway) came after tungstenite's list of codes: it
        // answers the close with a 1002 of its own making; unixws accepts it.
        (End::Closed, End::Closed) if closes_with_1014(&ours) => {
            ours.split_last().zip(theirs.split_last()).is_some_and(|((_, a), (last, b))| {
                a == b && matches!(last, Message::Close(Some(f)) if u16::from(f.code) == 1002)
            })
        }
        (a, b) if a == b => ours == theirs,
        // A close frame with a code that may not be sent: tungstenite
        // hands out a 1002 close of its own making; unixws fails with 1002.
        (End::Error(1002), End::Closed) => {
            theirs.split_last().is_some_and(|(last, before)| {
                before == ours.as_slice()
                    && matches!(last, Message::Close(Some(f)) if u16::from(f.code) == 1002 && f.reason == "Protocol violation")
            })
        }
        // unixws refuses a frame as soon as its header (or a bad UTF-8
        // byte) shows it is wrong; tungstenite only once the frame is
        // whole, which a cut-off input never gives it. Completed (with
        // zeros), the same frame must fail the same way in tungstenite.
        (End::Error(code), End::Input) if ours == theirs => {
            let padded = [stream, &vec![0u8; max + 14][..]].concat();
            let (again, end) = tungstenite_reads(&padded, cuts, role, max);
            again == ours && end == End::Error(code)
        }
        _ => false,
    };
    if agree {
        Ok(())
    } else {
        Err(format!(
            "codec and tungstenite disagree ({role:?}, max {max}):\n  unixws: {ours:?} then {our_end:?}\n  tungstenite: {theirs:?} then {their_end:?}"
        ))
    }
}

/// Do these messages end with a close frame that carries 1014?
fn closes_with_1014(messages: &[Message]) -> bool {
    matches!(messages.last(), Some(Message::Close(Some(f))) if u16::from(f.code) == 1014)
}

/// Feeds `stream`, cut at `cuts`, into a buffer, calling `take` after
/// each piece arrives, until it returns true (the stream ended).
fn in_pieces(stream: &[u8], cuts: &[usize], mut take: impl FnMut(&mut BytesMut) -> bool) {
    let mut buf = BytesMut::new();
    let mut from = 0;
    for cut in cuts.iter().copied().chain(std::iter::once(stream.len())) {
        let cut = cut.min(stream.len());
        if cut <= from {
            continue;
        }
        buf.extend_from_slice(&stream[from..cut]);
        from = cut;
        if take(&mut buf) {
            return;
        }
    }
}

/// The forward mode over the same pieces: the data bytes it passes on,
/// decoded whole, and its control frames must be `ours` (in order), and it
/// must end as `decode` did.
fn forward_agrees(
    stream: &[u8],
    cuts: &[usize],
    role: Role,
    max: usize,
    ours: &[Message],
    our_end: End,
) -> Result<(), String> {
    let mut decoder = Decoder::new(role, max, max);
    let mut passed = BytesMut::new();
    let mut controls = Vec::new();
    let mut end = End::Input;
    in_pieces(stream, cuts, |buf| loop {
        match decoder.forward(buf) {
            Ok(Some(Forward::Data { bytes, .. })) => passed.extend_from_slice(&bytes),
            // Only a relay that re-frames hands out messages; this one does not.
            Ok(Some(Forward::Message(_))) => unreachable!("the decoder forwards frames"),
            Ok(Some(Forward::Control(message))) => {
                let close = matches!(message, Message::Close(_));
                controls.push(message);
                if close {
                    end = End::Closed;
                    return true;
                }
            }
            Ok(None) => return false,
            Err(e) => {
                end = End::Error(e.close_code());
                return true;
            }
        }
    });
    // What was passed on, decoded by a fresh decoder in one piece.
    let mut data = Vec::new();
    let mut again = Decoder::new(role, max, max);
    loop {
        match again.decode(&mut passed) {
            Ok(Some(message)) => data.push(message),
            Ok(None) => break,
            Err(e) => return Err(format!("forward mode passed on bytes that fail: {e}")),
        }
    }
    let is_data = |m: &&Message| m.is_text() || m.is_binary();
    let our_data: Vec<&Message> = ours.iter().filter(is_data).collect();
    let our_controls: Vec<&Message> = ours.iter().filter(|m| !is_data(m)).collect();
    if end != our_end
        || data.iter().collect::<Vec<_>>() != our_data
        || controls.iter().collect::<Vec<_>>() != our_controls
    {
        return Err(format!(
            "forward mode and decode disagree ({role:?}, max {max}):\n  decode: {ours:?} then {our_end:?}\n  forward: data {data:?}, control {controls:?} then {end:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::codec_vs_tungstenite;

    #[test]
    fn the_differential_check_agrees_on_ordinary_and_broken_streams() {
        let key = [1u8, 2, 3, 4];
        let masked = |first: u8, payload: &[u8]| {
            let mut f = vec![first, 0x80 | payload.len() as u8];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            f
        };
        let streams = [
            [
                masked(0x81, b"hello"),
                masked(0x89, b"p"),
                masked(0x82, &[0, 1, 2]),
            ]
            .concat(),
            [
                masked(0x01, b"fra"),
                masked(0x80, b"gment"),
                masked(0x88, &[3, 232]),
            ]
            .concat(),
            masked(0x81, &[0xce, 0xff]),
            masked(0xc1, b"rsv"),
            vec![0x81, 0x02, b'h', b'i'],
        ];
        for stream in streams {
            for seed in [[0u8, 0], [0, 7], [1, 3]] {
                let input = [&[0u8, seed[0], seed[1]][..], &stream].concat();
                codec_vs_tungstenite(&input).unwrap();
            }
        }
    }
}

/// Drives the server's per-connection path (handshake checks, upgrade,
/// echo handler, close codes, closing) over an in-memory socket pair: the
/// fuzz targets and their corpus replay feed it arbitrary bytes. `first` is
/// written at once; `then`, once the server has answered (as a client
/// sends frames only after the 101); the server's output is returned.
pub fn serve_bytes(first: &[u8], then: &[u8]) -> Vec<u8> {
    use std::os::unix::net::UnixStream;
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return Vec::new();
    };
    let limits = crate::Limits {
        handshake_timeout: Duration::from_millis(200),
        close_timeout: Duration::from_millis(200),
        max_message_size: SERVE_MAX,
        max_frame_size: SERVE_MAX,
        write_timeout: Some(Duration::from_secs(1)),
        ..crate::Limits::default()
    };
    let rules = crate::handshake::HandshakeRules::new(
        &limits,
        crate::AccessPolicy::default(),
        vec!["fuzz".into()],
    );
    let Ok(core) = crate::server_core::ServerCore::new(rules, limits) else {
        return Vec::new();
    };
    let Ok(credentials) = crate::peer::PeerCredentials::of(&ours) else {
        return Vec::new();
    };
    let Ok(mut their_writer) = theirs.try_clone() else {
        return Vec::new();
    };
    let (first, then) = (first.to_vec(), then.to_vec());
    let (answered_tx, answered_rx) = std::sync::mpsc::channel();
    // Writing and reading on separate threads: the echo can fill our side
    // while we are still writing.
    let writer = std::thread::spawn(move || {
        let _ = their_writer.write_all(&first);
        if !then.is_empty() && answered_rx.recv_timeout(Duration::from_secs(1)).is_ok() {
            let _ = their_writer.write_all(&then);
        }
        let _ = their_writer.shutdown(std::net::Shutdown::Write);
    });
    let reader = std::thread::spawn(move || {
        let mut theirs = theirs;
        let mut output = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = theirs.read(&mut chunk) {
            if n == 0 {
                break;
            }
            output.extend_from_slice(&chunk[..n]);
            if !told && output.windows(4).any(|w| w == b"\r\n\r\n") {
                told = answered_tx.send(()).is_ok();
            }
        }
        output
    });
    crate::server::serve_connection(
        &core,
        crate::stream::Socket::Unix(ours),
        crate::peer::Peer::Unix(credentials),
        &|conn: &mut crate::Connection| {
            while let Some(message) = conn.recv()? {
                conn.send(message)?;
            }
            Ok(())
        },
    );
    let _ = writer.join();
    reader.join().unwrap_or_default()
}

/// The inflate path (permessage-deflate), three ways over one input: its
/// first byte picks the agreement (context takeover each way, our window),
/// the rest is
///
/// 1. a compressed payload from a peer: inflating it must not panic and
///    must stay within the limit;
/// 2. a message: compressed and inflated again, twice on the same
///    contexts (takeover), it must come back unchanged;
/// 3. frames from a client that negotiated compression: the decoder must
///    not panic, and no message it hands out may pass `max_message`.
pub fn inflate(input: &[u8]) -> Result<(), String> {
    use crate::codec::deflate::{Agreed, Deflate};
    const MAX: usize = 64 << 10;
    let Some((&flags, rest)) = input.split_first() else {
        return Ok(());
    };
    let agreed = Agreed {
        we_reset: flags & 1 != 0,
        our_window: 9 + (flags >> 1) % 7,
        peer_resets: flags & 0x10 != 0,
    };
    if let Ok(out) = Deflate::new(agreed, 0).decompress(rest, MAX) {
        if out.len() > MAX {
            return Err(format!(
                "inflated {} bytes past the limit of {MAX}",
                out.len()
            ));
        }
    }
    // The peer's view of the same agreement: what we reset, it sees reset.
    let mirrored = Agreed {
        we_reset: agreed.peer_resets,
        our_window: 15,
        peer_resets: agreed.we_reset,
    };
    let (mut tx, mut rx) = (Deflate::new(agreed, 0), Deflate::new(mirrored, 0));
    for round in 0..2 {
        let wire = tx.compress(rest);
        match rx.decompress(&wire, rest.len()) {
            Ok(back) if back[..] == *rest => {}
            Ok(back) => {
                return Err(format!(
                    "round {round}: {} bytes came back as {} different ones",
                    rest.len(),
                    back.len()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "round {round}: our own deflate did not inflate: {e}"
                ))
            }
        }
    }
    let mut decoder = Decoder::new(Role::Server, 1 << 20, MAX);
    decoder.deflate = Some(Box::new(Deflate::new(agreed, 0)));
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(message)) = decoder.decode(&mut buf) {
        if message.len() > MAX {
            return Err(format!(
                "a {}-byte message passed the limit of {MAX}",
                message.len()
            ));
        }
    }
    Ok(())
}
