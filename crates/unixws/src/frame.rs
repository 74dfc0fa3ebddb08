//! Single frames as bytes on the wire, for tools and tests that speak the
//! protocol below the connection API: a load generator that writes
//! pre-masked frames and reads only headers (`unixws bench`), conformance
//! tests that craft frames a connection would never send. [`encode`] is
//! the connections' own encoder (header forms, in-place masking); [`Head`]
//! reads a header as the connections' decoder does, without checking any
//! rule, so that a tool can skip payloads it does not need.
//!
//! ```
//! use unixws::frame::{encode, Head, OP_BINARY, FIN};
//!
//! let bytes = encode(FIN | OP_BINARY, b"hello", Some([1, 2, 3, 4]));
//! let head = Head::parse(&bytes).expect("a whole header");
//! assert_eq!((head.first, head.masked, head.len, head.payload_len), (0x82, true, 6, 5));
//! ```

use crate::codec::encode::encode_head;
use crate::codec::mask;

/// The FIN bit of a frame's first byte: the last frame of a message.
pub const FIN: u8 = 0x80;
/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xa;

/// One frame: `first` is its first byte as is (FIN, the RSV bits and the
/// opcode, reserved values included), the length takes its shortest form,
/// and the payload is masked with `key` when one is given (a client's
/// frames must be).
pub fn encode(first: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mut head = [0u8; 14];
    let n = encode_head(
        &mut head,
        first & FIN != 0,
        first & 0x0f,
        payload.len(),
        key,
    );
    head[0] = first;
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&head[..n]);
    frame.extend_from_slice(payload);
    if let Some(key) = key {
        apply_mask(&mut frame[n..], key);
    }
    frame
}

/// Masks or unmasks `payload` in place with `key` (the same operation),
/// eight bytes at a time: the connections' own masking.
pub fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    mask::apply(payload, key, 0);
}

/// A frame header, as read from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Head {
    /// The first byte: FIN, RSV bits, opcode.
    pub first: u8,
    /// Whether a mask key follows the length.
    pub masked: bool,
    /// The header's length in bytes (2 to 14).
    pub len: usize,
    /// The payload's length as the header states it.
    pub payload_len: u64,
}

impl Head {
    /// The header at the front of `buf`; `None` while it is incomplete.
    pub fn parse(buf: &[u8]) -> Option<Head> {
        let [first, second, ..] = *buf else {
            return None;
        };
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = second & 0x80 != 0;
        let len = 2 + extended + if masked { 4 } else { 0 };
        let head = buf.get(..len)?;
        let payload_len = match extended {
            2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            8 => u64::from_be_bytes([
                head[2], head[3], head[4], head[5], head[6], head[7], head[8], head[9],
            ]),
            _ => u64::from(second & 0x7f),
        };
        Some(Head {
            first,
            masked,
            len,
            payload_len,
        })
    }

    /// The opcode (the low four bits of the first byte).
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    /// Whether this is the last frame of its message.
    pub fn is_final(&self) -> bool {
        self.first & FIN != 0
    }

    /// The mask key, when the frame is masked and the header is whole in
    /// `buf` (the buffer [`parse`](Head::parse) read it from).
    pub fn key(&self, buf: &[u8]) -> Option<[u8; 4]> {
        if !self.masked {
            return None;
        }
        let key = buf.get(self.len - 4..self.len)?;
        Some([key[0], key[1], key[2], key[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_form_round_trips() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for size in [0, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some(key)] {
                let frame = encode(FIN | OP_BINARY, &payload, mask);
                let head = Head::parse(&frame).unwrap();
                assert_eq!(head.payload_len, size as u64);
                assert_eq!(head.len + size, frame.len());
                assert_eq!(head.key(&frame), mask);
                let mut body = frame[head.len..].to_vec();
                if let Some(key) = mask {
                    // A byte-by-byte reference, independent of `apply_mask`.
                    body.iter_mut()
                        .enumerate()
                        .for_each(|(i, b)| *b ^= key[i % 4]);
                }
                assert_eq!(body, payload, "{size} bytes, masked: {}", mask.is_some());
            }
        }
    }

    #[test]
    fn a_partial_header_is_none_and_the_first_byte_is_kept_as_is() {
        let frame = encode(0x40 | OP_TEXT, &[b'x'; 300], Some([1, 2, 3, 4]));
        for cut in 0..8 {
            assert_eq!(Head::parse(&frame[..cut]), None, "{cut} bytes");
        }
        let head = Head::parse(&frame).unwrap();
        assert_eq!(
            (head.first, head.is_final(), head.opcode()),
            (0x41, false, OP_TEXT)
        );
    }
}
