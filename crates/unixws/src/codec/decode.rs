//! The frame decoder: turns bytes the connection owns (a `BytesMut` it
//! reads into) into tungstenite `Message`s, without I/O and without
//! copying single-frame payloads.
//!
//! Each call looks at what the buffer holds. A frame header is checked as
//! soon as it is complete (reserved bits, opcodes, masking direction,
//! control-frame rules, the 64-bit length's top bit, `max_frame` and
//! `max_message`), so an oversized frame is refused before its payload is
//! read. Payload bytes are unmasked in place as they arrive and, for text,
//! checked as UTF-8 at once; a complete frame's payload is split off the
//! buffer and frozen into the message (`Bytes`, no copy). Fragmented
//! messages are reassembled within `max_message`.
//!
//! A relay uses the forward mode instead ([`Decoder::forward`]): the same
//! checks, but data frames come out as the bytes they arrived as (masked,
//! fragmented), a large frame in pieces as it streams in, so that the
//! other side gets them without reassembly or re-masking.

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::Message;

use super::deflate::Deflate;
use super::utf8::Utf8Check;
use super::{mask, CodecError, OpCode};

/// The parsed header of the frame in progress.
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    /// RSV1 on the first frame of a message: permessage-deflate.
    compressed: bool,
    opcode: OpCode,
    key: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
    /// Payload bytes already unmasked (and checked, for text).
    seen: usize,
}

/// A data frame at the front of the buffer, when forwarding.
#[derive(Debug, Clone, Copy)]
struct Forwarding {
    /// Its header; `seen` counts the payload bytes checked.
    head: Head,
    /// Bytes of the frame (header included) handed out already.
    sent: usize,
}

/// A fragmented data message in progress.
#[derive(Debug)]
struct Fragments {
    text: bool,
    /// Its first frame had RSV1: the whole message is compressed.
    compressed: bool,
    /// The payload so far (empty when forwarding: nothing is kept).
    data: BytesMut,
    /// Payload bytes so far.
    len: usize,
}

/// Data frames at least this large pass a relay cut-through: their payload
/// is forwarded as it arrives instead of once the frame is whole.
pub(crate) const CUT_THROUGH_FROM: usize = 16 << 10;

/// What [`Decoder::forward`] found.
#[derive(Debug)]
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) enum Forward {
    /// Data frames as they arrived (headers, masking and all), checked:
    /// to pass on verbatim. `frame_done` is false when the bytes end in
    /// the middle of a frame (cut-through); `messages` counts the messages
    /// whose last frame ends in them (for the server's counts).
    Data {
        bytes: Bytes,
        frame_done: bool,
        messages: u32,
    },
    /// A control frame, decoded.
    Control(Message),
    /// A whole data message, decoded (and inflated): a relay that
    /// compresses on one side re-frames its messages
    /// (`Session::relay_messages`).
    Message(Message),
}

/// Decodes the frames of one direction of one connection.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Frames from a client must be masked, frames from a server must not.
    expect_masked: bool,
    max_frame: usize,
    max_message: usize,
    head: Option<Head>,
    /// The data frame at the front of the buffer, when forwarding.
    forwarding: Option<Forwarding>,
    /// Messages whose last frame was checked since the last piece went out.
    forwarded_messages: u32,
    /// An error found after whole frames that were handed out first.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pending_error: Option<CodecError>,
    fragments: Option<Box<Fragments>>,
    /// The text message in progress (single frame or fragmented).
    utf8: Utf8Check,
    /// permessage-deflate, when negotiated: RSV1 marks compressed
    /// messages, inflated here; the session compresses with it too.
    pub(crate) deflate: Option<Box<Deflate>>,
}

impl Decoder {
    /// A decoder for the frames that reach `role` (a server reads masked
    /// frames from its clients).
    pub(crate) fn new(role: Role, max_frame: usize, max_message: usize) -> Self {
        Self {
            expect_masked: role == Role::Server,
            max_frame,
            max_message,
            head: None,
            forwarding: None,
            forwarded_messages: 0,
            pending_error: None,
            fragments: None,
            utf8: Utf8Check::default(),
            deflate: None,
        }
    }

    #[cfg(test)]
    /// True when no frame is half-read and no fragmented message is open:
    /// the buffer may be dropped without losing anything.
    pub(crate) fn is_between_messages(&self) -> bool {
        self.head.is_none() && self.forwarding.is_none() && self.fragments.is_none()
    }

    /// How many more bytes the frame in progress needs (0 when unknown: a
    /// header is still incomplete). A reader sizes its next read with it,
    /// so that a large frame lands in one allocation.
    pub(crate) fn wanted(&self, buffered: usize) -> usize {
        if let Some(f) = self.forwarding {
            // A cut-through frame is never held whole.
            return if f.head.payload_len >= CUT_THROUGH_FROM {
                0
            } else {
                (f.head.header_len + f.head.payload_len).saturating_sub(f.sent + buffered)
            };
        }
        self.head.map_or(0, |h| {
            (h.header_len + h.payload_len).saturating_sub(buffered)
        })
    }

    /// The next message complete in `buf`, consuming its bytes; `None`
    /// when more bytes are needed.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        loop {
            let head = match self.head {
                Some(head) => head,
                None => match self.parse_head(buf)? {
                    Some(head) => {
                        self.head = Some(head);
                        head
                    }
                    None => return Ok(None),
                },
            };
            let available = buf
                .len()
                .saturating_sub(head.header_len)
                .min(head.payload_len);
            if available > head.seen {
                self.unmask_and_check(buf, head, available)?;
            }
            if available < head.payload_len {
                return Ok(None);
            }
            self.head = None;
            buf.advance(head.header_len);
            let payload = buf.split_to(head.payload_len).freeze();
            if let Some(message) = self.complete(head, payload)? {
                return Ok(Some(message));
            }
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Forward mode (relays): the next checked bytes of data frames, to
    /// pass on as they are, or the next control frame, decoded. The checks
    /// are `decode`'s (headers, sizes, sequencing, UTF-8 as it arrives);
    /// nothing is reassembled, and nothing passed on is unmasked: masked
    /// text is unmasked to be checked and masked again (the key stays
    /// valid for the next hop, whose frames must be masked too). Whole
    /// frames in a row come out as one piece; a frame of
    /// [`CUT_THROUGH_FROM`] bytes or more comes out as it arrives, so that
    /// a large message is never held whole and its latency is not doubled.
    pub(crate) fn forward(&mut self, buf: &mut BytesMut) -> Result<Option<Forward>, CodecError> {
        if self.head.is_some() {
            // A control frame in progress.
            return Ok(self.decode(buf)?.map(Forward::Control));
        }
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let mut end = 0;
        match self.scan(buf, &mut end) {
            // The whole frames before the error go first.
            Err(e) if end > 0 => self.pending_error = Some(e),
            Err(e) => return Err(e),
            Ok(Some(piece)) => return Ok(Some(piece)),
            Ok(None) => {}
        }
        if end == 0 {
            return Ok(None);
        }
        let bytes = buf.split_to(end).freeze();
        Ok(Some(Forward::Data {
            bytes,
            frame_done: true,
            messages: std::mem::take(&mut self.forwarded_messages),
        }))
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// `forward`'s walk over the buffer: whole checked data frames extend
    /// `end`; a frame that is not whole stops it (and is cut through if it
    /// is at the front and large); so does a control frame after data.
    fn scan(&mut self, buf: &mut BytesMut, end: &mut usize) -> Result<Option<Forward>, CodecError> {
        loop {
            let mut f = match self.forwarding {
                Some(f) if *end == 0 => f,
                _ => match self.parse_head(&buf[*end..])? {
                    Some(head) => Forwarding { head, sent: 0 },
                    None => return Ok(None),
                },
            };
            let head = f.head;
            if head.opcode.is_control() {
                if *end > 0 {
                    return Ok(None);
                }
                return Ok(self.decode(buf)?.map(Forward::Control));
            }
            let frame_left = head.header_len + head.payload_len - f.sent;
            let have = (buf.len() - *end).min(frame_left);
            if have < frame_left && *end > 0 {
                // The whole frames before it go first.
                return Ok(None);
            }
            // How much of the payload is here (an offset into it).
            let payload_have = (f.sent + have).saturating_sub(head.header_len);
            if payload_have > head.seen {
                if self.is_text(head.opcode) {
                    // The buffer starts `f.sent` bytes into the frame.
                    let from = *end + head.header_len + head.seen - f.sent;
                    let to = from + (payload_have - head.seen);
                    check_text(&mut self.utf8, &mut buf[from..to], head.key, head.seen)?;
                }
                f.head.seen = payload_have;
            }
            if have == frame_left {
                self.forwarding = None;
                self.forwarded(&head)?;
                *end += have;
                continue;
            }
            // A frame that is not whole yet, at the front.
            let checked = head.header_len + f.head.seen - f.sent;
            self.forwarding = Some(f);
            if head.payload_len >= CUT_THROUGH_FROM && f.head.seen > 0 && checked > 0 {
                if let Some(f) = &mut self.forwarding {
                    f.sent += checked;
                }
                let bytes = buf.split_to(checked).freeze();
                return Ok(Some(Forward::Data {
                    bytes,
                    frame_done: false,
                    messages: 0,
                }));
            }
            return Ok(None);
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// A data frame was forwarded whole: the message's sequencing, size
    /// and UTF-8 state move on.
    fn forwarded(&mut self, head: &Head) -> Result<(), CodecError> {
        let text = self.is_text(head.opcode);
        match head.opcode {
            OpCode::Text | OpCode::Binary if !head.fin => {
                self.fragments = Some(Box::new(Fragments {
                    text,
                    // A relay has no deflate: RSV1 never passes its checks.
                    compressed: false,
                    data: BytesMut::new(),
                    len: head.payload_len,
                }));
            }
            OpCode::Continue if head.fin => self.fragments = None,
            OpCode::Continue => {
                if let Some(f) = self.fragments.as_mut() {
                    f.len += head.payload_len;
                }
            }
            _ => {}
        }
        if head.fin && text {
            self.utf8.finish().map_err(|_| CodecError::InvalidUtf8)?;
        }
        self.forwarded_messages += u32::from(head.fin);
        Ok(())
    }

    /// Unmasks payload bytes `head.seen..available` in place and checks
    /// them if they are text.
    fn unmask_and_check(
        &mut self,
        buf: &mut BytesMut,
        mut head: Head,
        available: usize,
    ) -> Result<(), CodecError> {
        let start = head.header_len + head.seen;
        let piece = &mut buf[start..head.header_len + available];
        if let Some(key) = head.key {
            mask::apply(piece, key, head.seen);
        }
        // Compressed text is checked once inflated.
        if self.is_text(head.opcode) && !self.is_compressed(&head) {
            self.utf8.feed(piece).map_err(|_| CodecError::InvalidUtf8)?;
        }
        head.seen = available;
        self.head = Some(head);
        Ok(())
    }

    /// Whether the message `head` belongs to is compressed.
    fn is_compressed(&self, head: &Head) -> bool {
        match head.opcode {
            OpCode::Continue => self.fragments.as_ref().is_some_and(|f| f.compressed),
            _ => head.compressed,
        }
    }

    fn is_text(&self, opcode: OpCode) -> bool {
        match opcode {
            OpCode::Text => true,
            OpCode::Continue => self.fragments.as_ref().is_some_and(|f| f.text),
            _ => false,
        }
    }

    /// Parses and checks the header at the front of `buf`, if complete.
    fn parse_head(&self, buf: &[u8]) -> Result<Option<Head>, CodecError> {
        let [first, second, ..] = buf[..] else {
            return Ok(None);
        };
        let fin = first & 0x80 != 0;
        let masked = second & 0x80 != 0;
        let (len_bytes, short) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(None);
        }
        let length = match short {
            Some(n) => n,
            None if len_bytes == 2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            None => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                u64::from_be_bytes(b)
            }
        };
        // The checks come in tungstenite's order (opcode, size, then the
        // rest), so that a frame wrong in two ways gets the same close code
        // from both engines (the differential fuzz target holds them to it).
        let opcode = OpCode::from_u8(first & 0x0f).ok_or(CodecError::Protocol("unknown opcode"))?;
        if length > i64::MAX as u64 {
            // RFC 6455 5.2: the most significant bit must be 0.
            return Err(CodecError::Protocol("invalid frame length"));
        }
        let size = usize::try_from(length).unwrap_or(usize::MAX);
        if size > self.max_frame {
            return Err(CodecError::TooBig {
                size,
                max: self.max_frame,
            });
        }
        let compressed = first & 0x40 != 0;
        if first & 0x30 != 0 || (compressed && self.deflate.is_none()) {
            return Err(CodecError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        if compressed && !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(CodecError::Protocol(if opcode.is_control() {
                "RSV1 on a control frame"
            } else {
                "RSV1 on a continuation frame"
            }));
        }
        if masked != self.expect_masked {
            return Err(CodecError::Protocol(if masked {
                "masked frame from a server"
            } else {
                "unmasked frame from a client"
            }));
        }
        if opcode.is_control() {
            if !fin {
                return Err(CodecError::Protocol("fragmented control frame"));
            }
            if length > 125 {
                return Err(CodecError::Protocol("control frame longer than 125 bytes"));
            }
        }
        match (opcode, &self.fragments) {
            (OpCode::Continue, None) => {
                return Err(CodecError::Protocol(
                    "continuation frame without a message to continue",
                ))
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(CodecError::Protocol(
                    "new data frame inside a fragmented message",
                ))
            }
            (OpCode::Continue, Some(f)) => {
                let total = f.len.saturating_add(size);
                if total > self.max_message {
                    return Err(CodecError::TooBig {
                        size: total,
                        max: self.max_message,
                    });
                }
            }
            (OpCode::Text | OpCode::Binary, None) if size > self.max_message => {
                return Err(CodecError::TooBig {
                    size,
                    max: self.max_message,
                });
            }
            _ => {}
        }
        let key = masked.then(|| {
            let at = header_len - 4;
            [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
        });
        let head = Head {
            fin,
            compressed,
            opcode,
            key,
            header_len,
            payload_len: size,
            seen: 0,
        };
        Ok(Some(head))
    }

    /// A whole frame arrived: the message it completes, if any.
    fn complete(&mut self, head: Head, payload: Bytes) -> Result<Option<Message>, CodecError> {
        match head.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload))),
            OpCode::Pong => Ok(Some(Message::Pong(payload))),
            OpCode::Close => close_message(payload).map(Some),
            OpCode::Text | OpCode::Binary if head.fin => {
                let text = head.opcode == OpCode::Text;
                if head.compressed {
                    return self.finish_compressed(text, &payload).map(Some);
                }
                self.finish(text, payload).map(Some)
            }
            OpCode::Text | OpCode::Binary => {
                let mut data = BytesMut::with_capacity(payload.len().max(64));
                data.extend_from_slice(&payload);
                let text = head.opcode == OpCode::Text;
                let len = data.len();
                self.fragments = Some(Box::new(Fragments {
                    text,
                    compressed: head.compressed,
                    data,
                    len,
                }));
                Ok(None)
            }
            OpCode::Continue => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(CodecError::Protocol(
                        "continuation frame without a message to continue",
                    ));
                };
                fragments.data.extend_from_slice(&payload);
                fragments.len = fragments.data.len();
                if !head.fin {
                    return Ok(None);
                }
                let Some(done) = self.fragments.take() else {
                    return Ok(None);
                };
                let Fragments {
                    text,
                    compressed,
                    data,
                    ..
                } = *done;
                if compressed {
                    return self.finish_compressed(text, &data).map(Some);
                }
                self.finish(text, data.freeze()).map(Some)
            }
        }
    }

    /// A compressed message's payload, inflated within `max_message` and,
    /// for text, checked.
    fn finish_compressed(&mut self, text: bool, payload: &[u8]) -> Result<Message, CodecError> {
        let Some(deflate) = self.deflate.as_mut() else {
            return Err(CodecError::Protocol(
                "reserved bits set without an extension",
            ));
        };
        let data = deflate.decompress(payload, self.max_message)?;
        if text {
            self.utf8.feed(&data).map_err(|_| CodecError::InvalidUtf8)?;
        }
        self.finish(text, data.freeze())
    }

    fn finish(&mut self, text: bool, data: Bytes) -> Result<Message, CodecError> {
        if !text {
            return Ok(Message::Binary(data));
        }
        self.utf8.finish().map_err(|_| CodecError::InvalidUtf8)?;
        // SAFETY: every byte of `data` went through `Utf8Check` in order,
        // and `finish` confirmed that no code point was cut at its end.
        Ok(Message::Text(unsafe {
            Utf8Bytes::from_bytes_unchecked(data)
        }))
    }
}

/// Checks a piece of text that may be masked (`offset` into the payload
/// gives the key's phase), leaving it as it was.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
fn check_text(
    utf8: &mut Utf8Check,
    piece: &mut [u8],
    key: Option<[u8; 4]>,
    offset: usize,
) -> Result<(), CodecError> {
    let Some(key) = key else {
        return utf8.feed(piece).map_err(|_| CodecError::InvalidUtf8);
    };
    mask::apply(piece, key, offset);
    let checked = utf8.feed(piece);
    mask::apply(piece, key, offset);
    checked.map_err(|_| CodecError::InvalidUtf8)
}

/// May `code` appear in a close frame? RFC 6455's own codes but 1004-1006
/// and 1015, the ones IANA's registry added since (1012 service restart,
/// 1013 try again later, 1014 bad gateway: tungstenite refuses the last,
/// which Python `websockets`, Node `ws` and browsers accept), and the
/// 3000-4999 ranges for libraries and applications.
pub(crate) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's payload: none, or a code (2 bytes) and a UTF-8 reason.
fn close_message(payload: Bytes) -> Result<Message, CodecError> {
    match payload.len() {
        0 => return Ok(Message::Close(None)),
        1 => return Err(CodecError::Protocol("close frame with a one-byte payload")),
        _ => {}
    }
    // The reason is checked before the code, in tungstenite's order.
    let reason = Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| CodecError::InvalidUtf8)?;
    let raw = u16::from_be_bytes([payload[0], payload[1]]);
    let code = CloseCode::from(raw);
    if !close_code_allowed(raw) {
        return Err(CodecError::Protocol("close code not allowed on the wire"));
    }
    Ok(Message::Close(Some(CloseFrame { code, reason })))
}
