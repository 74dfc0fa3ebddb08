//! A follower of the bytes read from a socket, beside tungstenite: it knows
//! where frames begin and end (so that an idle connection can drop its
//! buffers without losing a half-read frame) and checks text payloads as
//! they arrive (so that invalid UTF-8 fails the connection at the first bad
//! byte, not after the rest of a large frame: Autobahn case 6.4.3).
//!
//! It does not interpret frames beyond that; tungstenite does.

use std::fmt;
use std::io;

/// The marker inside the I/O error a stream returns once a text message
/// turned out not to be UTF-8.
#[derive(Debug)]
pub(crate) struct InvalidUtf8;

impl fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8 in a text message")
    }
}

impl std::error::Error for InvalidUtf8 {}

/// True when `e` is the error of [`FrameTracker::take_error`].
pub(crate) fn is_invalid_utf8(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<InvalidUtf8>())
}

/// Where the follower is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not following (a stream built by the caller, whose start is unknown).
    Off,
    /// In the HTTP head; counts the bytes of the final `\r\n\r\n` seen so far.
    HttpHead(u8),
    /// In the frames.
    Frames,
    /// Gave up after reporting an error: tungstenite has the last word.
    Stopped,
}

/// Follows frame boundaries and checks text payloads.
#[derive(Debug, Clone)]
pub(crate) struct FrameTracker {
    phase: Phase,
    header: [u8; 14],
    have: usize,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
    in_payload: bool,
    /// A fragmented data message has started and not finished.
    in_fragments: bool,
    /// The largest frame payload seen since the last `take_largest`.
    largest: u64,
    /// The check of the text message in progress, while its payload is
    /// arriving in pieces (boxed: idle connections carry only the pointer).
    text: Option<Box<TextCheck>>,
    /// The current frame's payload is text that must be checked.
    checking: bool,
    /// The open fragmented message is text.
    text_fragments: bool,
    failed: bool,
    /// Frames that ended in the bytes of the last `observe`.
    ended_in_last: usize,
}

impl Default for FrameTracker {
    fn default() -> Self {
        Self::starting(Phase::Frames)
    }
}

impl FrameTracker {
    fn starting(phase: Phase) -> Self {
        Self {
            phase,
            header: [0; 14],
            have: 0,
            remaining: 0,
            in_payload: false,
            in_fragments: false,
            largest: 0,
            text: None,
            checking: false,
            text_fragments: false,
            failed: false,
            ended_in_last: 0,
        }
    }

    /// A follower that ignores everything.
    pub(crate) fn off() -> Self {
        Self::starting(Phase::Off)
    }

    /// A follower for a stream that starts with an HTTP upgrade request or
    /// response: frames begin after its blank line.
    pub(crate) fn after_http_head() -> Self {
        Self::starting(Phase::HttpHead(0))
    }

    /// True between frames and outside fragmented messages.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn is_clean(&self) -> bool {
        self.phase == Phase::Frames && self.have == 0 && !self.in_payload && !self.in_fragments
    }

    /// The largest frame payload seen since the last call.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn take_largest(&mut self) -> u64 {
        std::mem::take(&mut self.largest)
    }

    /// The error to return instead of the next read, once: a text message
    /// was not UTF-8. The bytes before it were handed over, so messages
    /// that preceded the bad one are still delivered.
    pub(crate) fn take_error(&mut self) -> Option<io::Error> {
        if !std::mem::take(&mut self.failed) {
            return None;
        }
        Some(io::Error::new(io::ErrorKind::InvalidData, InvalidUtf8))
    }

    /// How many frames ended in the bytes of the last `observe`.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn ended_in_last(&self) -> usize {
        self.ended_in_last
    }

    /// True inside a fragmented data message.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn in_fragmented_message(&self) -> bool {
        self.in_fragments
    }

    /// Follows `bytes`; returns the offset in `bytes` just past the last
    /// frame that ended in it, if one did.
    pub(crate) fn observe(&mut self, bytes: &[u8]) -> Option<usize> {
        let total = bytes.len();
        let mut last_end = None;
        self.ended_in_last = 0;
        let mut bytes = bytes;
        while !bytes.is_empty() {
            match self.phase {
                Phase::Off | Phase::Stopped => return None,
                Phase::HttpHead(matched) => {
                    bytes = self.skip_head(matched, bytes);
                    continue;
                }
                Phase::Frames => {}
            }
            if self.in_payload {
                let take = (bytes.len() as u64).min(self.remaining);
                let (payload, rest) = bytes.split_at(take as usize);
                if self.checking {
                    self.check_text(payload);
                }
                self.remaining -= take;
                bytes = rest;
                if self.remaining == 0 {
                    self.in_payload = false;
                    self.end_of_payload();
                    last_end = Some(total - bytes.len());
                    self.ended_in_last += 1;
                }
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some(len) = self.header_len() {
                if self.have == len {
                    self.finish_header(bytes.len());
                    if !self.in_payload {
                        last_end = Some(total - bytes.len());
                        self.ended_in_last += 1;
                    }
                }
            }
        }
        last_end
    }

    fn skip_head<'b>(&mut self, mut matched: u8, bytes: &'b [u8]) -> &'b [u8] {
        const END: &[u8; 4] = b"\r\n\r\n";
        for (i, &b) in bytes.iter().enumerate() {
            matched = if b == END[matched as usize] {
                matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if matched == 4 {
                self.phase = Phase::Frames;
                return &bytes[i + 1..];
            }
        }
        self.phase = Phase::HttpHead(matched);
        &[]
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

    /// `available` is how many bytes of this read follow the header.
    fn finish_header(&mut self, available: usize) {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0f;
        let len = match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0xff; 8])),
            n => u64::from(n),
        };
        let text = match (opcode, fin) {
            (1, false) => {
                self.in_fragments = true;
                self.text_fragments = true;
                true
            }
            (2, false) => {
                self.in_fragments = true;
                self.text_fragments = false;
                false
            }
            (0, _) => {
                let text = self.text_fragments;
                if fin {
                    self.in_fragments = false;
                    self.text_fragments = false;
                }
                text
            }
            (1, true) => true,
            _ => false,
        };
        // A whole single-frame message in this read is left to tungstenite,
        // which checks it as soon as the read returns anyway.
        let arrives_whole = fin && opcode == 1 && len <= available as u64;
        self.checking = text && !arrives_whole;
        if self.checking {
            let mask = (self.header[1] & 0x80 != 0).then(|| {
                let at = self.have - 4;
                [
                    self.header[at],
                    self.header[at + 1],
                    self.header[at + 2],
                    self.header[at + 3],
                ]
            });
            let check = self.text.get_or_insert_with(Default::default);
            check.mask = mask;
            check.offset = 0;
        }
        self.have = 0;
        self.remaining = len;
        self.in_payload = len > 0;
        self.largest = self.largest.max(len);
        if !self.in_payload {
            self.end_of_payload();
        }
    }

    fn end_of_payload(&mut self) {
        // A message's text check lives until its last fragment is through;
        // an incomplete character at the very end is tungstenite's to report.
        if !self.in_fragments || !self.text_fragments {
            self.text = None;
        }
        self.checking = false;
    }

    fn check_text(&mut self, payload: &[u8]) {
        let Some(check) = self.text.as_deref_mut() else {
            return;
        };
        if !check.feed(payload) {
            self.failed = true;
            self.phase = Phase::Stopped;
            self.text = None;
        }
    }
}

/// An incremental UTF-8 check over masked or plain payload bytes.
#[derive(Debug, Default, Clone)]
struct TextCheck {
    mask: Option<[u8; 4]>,
    /// Position in the current frame's payload, for the mask.
    offset: usize,
    /// The start of a character cut by the end of the last piece.
    pending: [u8; 4],
    pending_len: usize,
}

impl TextCheck {
    /// False at the first byte that cannot be UTF-8.
    fn feed(&mut self, payload: &[u8]) -> bool {
        let mut plain = [0u8; 1024];
        for piece in payload.chunks(plain.len()) {
            let piece = match self.mask {
                Some(mask) => {
                    for (i, (out, byte)) in plain.iter_mut().zip(piece).enumerate() {
                        *out = byte ^ mask[(self.offset + i) % 4];
                    }
                    &plain[..piece.len()]
                }
                None => piece,
            };
            self.offset = (self.offset + piece.len()) % 4;
            if !self.feed_plain(piece) {
                return false;
            }
        }
        true
    }

    fn feed_plain(&mut self, mut bytes: &[u8]) -> bool {
        while self.pending_len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return true;
            };
            self.pending[self.pending_len] = b;
            self.pending_len += 1;
            bytes = rest;
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return false,
                Err(_) if self.pending_len == 4 => return false,
                Err(_) => {}
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameTracker;

    fn frame_with(fin: bool, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
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
        let key = [1, 2, 3, 4];
        if masked {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    fn frame(fin: bool, opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        frame_with(fin, opcode, masked, &vec![0xAA; len])
    }

    #[test]
    fn whole_frames_in_any_split_leave_it_clean() {
        let bytes: Vec<u8> = [
            frame(true, 2, true, 5),
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
        let f = frame(true, 2, true, 10);
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

    #[test]
    fn observe_reports_where_the_last_frame_ended() {
        let a = frame(true, 2, true, 3);
        let b = frame(true, 2, true, 10);
        let bytes = [a.clone(), b[..5].to_vec()].concat();
        let mut t = FrameTracker::default();
        assert_eq!(t.observe(&bytes), Some(a.len()));
        assert_eq!(t.observe(&b[5..8]), None);
        assert_eq!(t.observe(&b[8..]), Some(b.len() - 8));
    }

    #[test]
    fn the_http_head_is_skipped_even_split_across_reads() {
        let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r".to_vec();
        bytes.extend_from_slice(b"\n");
        bytes.extend(frame(true, 2, true, 5));
        for split in [1, 3, bytes.len()] {
            let mut t = FrameTracker::after_http_head();
            for chunk in bytes.chunks(split) {
                t.observe(chunk);
            }
            assert!(t.is_clean(), "split {split}");
            assert_eq!(t.take_largest(), 5);
        }
        let mut off = FrameTracker::off();
        off.observe(&frame(true, 2, true, 5));
        assert!(!off.is_clean(), "an unknown stream is never called clean");
    }

    /// Splits every way into pieces of `split` bytes and reports whether
    /// the follower found invalid UTF-8.
    fn fails(bytes: &[u8], split: usize) -> bool {
        let mut t = FrameTracker::default();
        let mut failed = false;
        for chunk in bytes.chunks(split) {
            t.observe(chunk);
            failed |= t.take_error().is_some();
        }
        failed
    }

    #[test]
    fn valid_text_passes_in_any_split_and_fragmentation() {
        let text = "héllo wörld €𝄞 ".repeat(50);
        let b = text.as_bytes();
        let fragmented: Vec<u8> = [
            frame_with(false, 1, true, &b[..7]), // cuts 'é' .. within chars
            frame_with(true, 9, true, b"ping"),
            frame_with(false, 0, true, &b[7..301]),
            frame_with(true, 0, true, &b[301..]),
        ]
        .concat();
        for masked in [true, false] {
            let single = frame_with(true, 1, masked, b);
            for split in [1, 2, 5, 64, 2000] {
                assert!(!fails(&single, split), "single, split {split}");
                assert!(!fails(&fragmented, split), "fragmented, split {split}");
            }
        }
    }

    #[test]
    fn invalid_text_fails_at_the_bad_byte_before_the_frame_ends() {
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5,
        ]);
        payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]); // above U+10FFFF
        payload.extend(std::iter::repeat_n(b'a', 1000));
        let f = frame_with(true, 1, true, &payload);
        let bad_at = f.len() - 1000; // header + valid part + the bad sequence
        let mut t = FrameTracker::default();
        t.observe(&f[..bad_at]);
        assert!(t.take_error().is_some(), "reported before the rest arrives");
        assert!(t.take_error().is_none(), "reported once");
        // Split across fragments: the second fragment completes a bad sequence.
        let split = [
            frame_with(false, 1, true, &[b'a', 0xed]),
            frame_with(true, 0, true, &[0xa0, 0x80]), // a surrogate
        ]
        .concat();
        assert!(fails(&split, 1));
        // Binary messages are never checked.
        assert!(!fails(&frame_with(true, 2, true, &[0xff; 10]), 3));
    }
}
