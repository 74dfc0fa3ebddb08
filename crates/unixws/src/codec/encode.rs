//! The frame encoder and the connection's outgoing bytes.
//!
//! [`Outgoing`] holds what is waiting to be written: small frames are
//! copied into one contiguous buffer, so that a burst of answers goes out
//! in one system call; a large unmasked payload is not copied at all: its
//! header ends the buffer, and the payload's `Bytes` (shared with the
//! message the caller gave) follows as its own slice of a vectored write.
//! Masked payloads (a client's) are copied once, masked on the way.
//!
//! A relay appends frames it forwards as they arrived
//! ([`Outgoing::push_forwarded`]), a large frame in pieces as it streams
//! through; frames the connection makes itself meanwhile (a pong, a close)
//! are held until the forwarded frame is whole, never written inside it.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

use super::{mask, OpCode};

/// Payloads at least this large are written from the caller's `Bytes`
/// instead of being copied into the buffer (unmasked frames only). Below
/// it, a copy is cheaper than an extra slice in the write.
///
/// Tried: 128 KiB. An echoed payload is a slice of the read buffer, and
/// while it waits to be written the next read cannot reuse that buffer;
/// copying removed the ~3,300 page faults a second of a 64 KiB stream and
/// moved it from 0.86× to 0.92× fastwebsockets, but the copies took
/// load_test 200 × 16 KiB from 1.01× to 0.81× and 500 × 16 KiB from 1.01×
/// to 0.88× (three alternating runs each, BENCHMARKS.md). 16 KiB stays.
pub(crate) const ZERO_COPY_FROM: usize = 16 << 10;

/// Most slices handed to one vectored write.
pub(crate) const MAX_SLICES: usize = 64;

/// Bytes waiting to be written, in order.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// Earlier segments: finished buffers and large payloads.
    queue: VecDeque<Bytes>,
    /// The segment being appended to.
    tail: Vec<u8>,
    /// How much of the first segment (the queue's front, or the tail when
    /// the queue is empty) has been written already.
    written: usize,
    /// A forwarded frame is not whole yet.
    mid_frame: bool,
    /// Frames made while `mid_frame`: they follow the forwarded frame.
    held: Option<Box<Outgoing>>,
}

impl Outgoing {
    /// True when nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.tail.len() == self.written
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Bytes waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.iter().map(Bytes::len).sum::<usize>() + self.tail.len() - self.written
    }

    /// The buffer to append to: the thread's spare (see `spare.rs`) if
    /// ours is empty.
    fn tail(&mut self) -> &mut Vec<u8> {
        if self.tail.is_empty() {
            crate::spare::lend_write(&mut self.tail);
        }
        &mut self.tail
    }

    /// Everything is written: the buffer goes back to the thread.
    fn all_written(&mut self) {
        self.tail.clear();
        self.written = 0;
        crate::spare::take_back_write(&mut self.tail);
    }

    /// Appends one frame. `key` masks it (a client's frames).
    pub(crate) fn push_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
        key: Option<[u8; 4]>,
    ) {
        if self.mid_frame {
            return self.held().push_frame(fin, opcode, payload, key);
        }
        self.push_head(fin, opcode, payload.len(), key);
        self.push_payload(payload, key);
    }

    /// Appends one frame whose payload is a `Bytes`: large unmasked ones
    /// are queued without a copy.
    pub(crate) fn push_shared(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &Bytes,
        key: Option<[u8; 4]>,
    ) {
        if self.mid_frame {
            return self.held().push_shared(fin, opcode, payload, key);
        }
        if key.is_some() || payload.len() < ZERO_COPY_FROM {
            return self.push_frame(fin, opcode, payload, key);
        }
        self.push_head(fin, opcode, payload.len(), None);
        self.seal_tail();
        self.queue.push_back(payload.clone());
    }

    /// Appends one whole message compressed by permessage-deflate: RSV1
    /// set, the payload queued without a copy when large and unmasked.
    pub(crate) fn push_compressed(&mut self, opcode: OpCode, payload: Bytes, key: Option<[u8; 4]>) {
        let first = 0x80 | 0x40 | opcode as u8;
        if self.mid_frame {
            return self.held().push_raw_frame(first, &payload, key);
        }
        if key.is_some() || payload.len() < ZERO_COPY_FROM {
            return self.push_raw_frame(first, &payload, key);
        }
        let mut head = [0u8; 14];
        let n = encode_head(&mut head, true, opcode as u8, payload.len(), None);
        head[0] = first;
        self.tail().extend_from_slice(&head[..n]);
        self.seal_tail();
        self.queue.push_back(payload);
    }

    /// Appends a frame whose first byte (FIN, RSV bits, opcode) is given
    /// as is, reserved bits and opcodes included: for tests and tools that
    /// craft frames.
    pub(crate) fn push_raw_frame(&mut self, first: u8, payload: &[u8], key: Option<[u8; 4]>) {
        if self.mid_frame {
            return self.held().push_raw_frame(first, payload, key);
        }
        let mut head = [0u8; 14];
        let n = encode_head(
            &mut head,
            first & 0x80 != 0,
            first & 0x0f,
            payload.len(),
            key,
        );
        head[0] = first;
        self.tail().extend_from_slice(&head[..n]);
        self.push_payload(payload, key);
    }

    /// Appends bytes of forwarded frames as they are (see the module
    /// doc); `frame_done` is false when they end inside a frame.
    pub(crate) fn push_forwarded(&mut self, bytes: Bytes, frame_done: bool) {
        if bytes.len() < ZERO_COPY_FROM {
            self.tail().extend_from_slice(&bytes);
        } else {
            self.seal_tail();
            self.queue.push_back(bytes);
        }
        self.mid_frame = !frame_done;
        if let Some(held) = self.held.take().filter(|_| frame_done) {
            let Outgoing { queue, tail, .. } = *held;
            for segment in queue {
                self.seal_tail();
                self.queue.push_back(segment);
            }
            self.tail().extend_from_slice(&tail);
        }
    }

    /// True while a forwarded frame is not whole: nothing else can be
    /// written to this connection until it is.
    pub(crate) fn is_mid_frame(&self) -> bool {
        self.mid_frame
    }

    fn held(&mut self) -> &mut Outgoing {
        self.held.get_or_insert_with(Box::default)
    }

    fn push_payload(&mut self, payload: &[u8], key: Option<[u8; 4]>) {
        let tail = self.tail();
        let start = tail.len();
        tail.extend_from_slice(payload);
        if let Some(key) = key {
            mask::apply(&mut tail[start..], key, 0);
        }
    }

    fn push_head(&mut self, fin: bool, opcode: OpCode, len: usize, key: Option<[u8; 4]>) {
        let mut head = [0u8; 14];
        let n = encode_head(&mut head, fin, opcode as u8, len, key);
        self.tail().extend_from_slice(&head[..n]);
    }

    /// Moves the tail into the queue (no copy: the `Vec` becomes the `Bytes`).
    fn seal_tail(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let mut tail = std::mem::take(&mut self.tail);
        if self.queue.is_empty() && self.written > 0 {
            tail.drain(..self.written);
            self.written = 0;
        }
        self.queue.push_back(Bytes::from(tail));
    }

    /// Fills `slices` with what to write next; returns how many.
    pub(crate) fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        let mut skip = self.written;
        for segment in self
            .queue
            .iter()
            .map(|b| &b[..])
            .chain(std::iter::once(&self.tail[..]))
        {
            if n == MAX_SLICES {
                break;
            }
            let part = &segment[skip.min(segment.len())..];
            skip = 0;
            if !part.is_empty() {
                slices[n] = IoSlice::new(part);
                n += 1;
            }
        }
        n
    }

    /// `n` bytes were written.
    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front() else {
                self.written += n;
                debug_assert!(self.written <= self.tail.len());
                if self.written == self.tail.len() {
                    self.all_written();
                }
                return;
            };
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.queue.pop_front();
        }
        if self.queue.is_empty() && self.written == self.tail.len() {
            self.all_written();
        }
    }
}

/// Writes a frame header into `out`; returns its length (2 to 14 bytes).
pub(crate) fn encode_head(
    out: &mut [u8; 14],
    fin: bool,
    opcode: u8,
    len: usize,
    key: Option<[u8; 4]>,
) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | (opcode & 0x0f);
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = key {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}
