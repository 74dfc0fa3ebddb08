//! The sans-IO WebSocket codec (RFC 6455): frames in and out of buffers
//! that the connection owns, with no socket and no clock, in the manner of
//! quinn-proto. The blocking and the tokio connections both drive it.
//!
//! - [`Decoder`](decode::Decoder): bytes to `Message`s, checking every
//!   rule that has a close code (1002 protocol, 1007 invalid UTF-8, 1009
//!   too big), unmasking in place, checking text as it arrives and handing
//!   payloads out without a copy; or, for relays, hands data frames out
//!   as they arrived (still masked, cut through when large).
//! - [`Outgoing`](encode::Outgoing): frames to bytes, batching small ones
//!   and writing large payloads without a copy.
//! - `mask` and `utf8`: the wide in-place XOR and the incremental check.
//!
//! Why unixws owns this instead of driving tungstenite's frame engine:
//! tungstenite zero-fills its read chunk before every read, shifts its
//! output buffer after partial writes, and keeps its buffers for the life
//! of the connection; working around that took a shadow frame parser and
//! a park/rebuild dance per idle connection. tungstenite still does the
//! HTTP upgrade, and its `Message`/`CloseFrame` are the public types, so
//! code moves between the two unchanged.

pub(crate) mod decode;
pub(crate) mod deflate;
pub(crate) mod encode;
pub(crate) mod mask;
pub(crate) mod utf8;

pub(crate) use decode::Decoder;
pub(crate) use encode::Outgoing;

/// A frame's opcode (RFC 6455 5.2); the reserved ones are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum OpCode {
    Continue = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl OpCode {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => OpCode::Continue,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x08 != 0
    }
}

/// What the peer did wrong; each has the close code it is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CodecError {
    /// A protocol violation: 1002.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8: 1007.
    InvalidUtf8,
    /// A frame or message over its limit: 1009.
    TooBig {
        /// The size declared (a frame) or reached (a message).
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl CodecError {
    /// The close code owed to the peer.
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            CodecError::Protocol(_) => 1002,
            CodecError::InvalidUtf8 => 1007,
            CodecError::TooBig { .. } => 1009,
        }
    }

    /// The close reason sent with the code.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            CodecError::Protocol(_) => "protocol error",
            CodecError::InvalidUtf8 => "invalid UTF-8",
            CodecError::TooBig { .. } => "message too big",
        }
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Protocol(what) => f.write_str(what),
            CodecError::InvalidUtf8 => {
                f.write_str("invalid UTF-8 in a text message or close reason")
            }
            CodecError::TooBig { size, max } => {
                write!(f, "{size} bytes is over the limit of {max}")
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
