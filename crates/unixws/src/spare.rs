//! Spare buffers, one of each kind per thread, lent to whichever
//! connection on that thread has bytes to read or to write, and taken back
//! when it has none left. A connection that waits for input with nothing
//! unsent holds no buffer at all, and a worker's buffers stay warm in
//! cache across the connections it serves.
//!
//! Why not free a connection's buffers after a quiet spell (what the
//! tokio driver did before)? The allocator got the memory back, the
//! system did not: each freed buffer sat between the live state of other
//! connections, and nothing an idle server allocates reused it. With
//! `unixws serve --echo` and 10,000 idle connections that was about 1 KiB
//! per connection, on top of 2.2 KiB of live state; lending instead took
//! the whole from 3.66 to 2.5 KiB (`examples/idle_memory`, BENCHMARKS.md).
//!
//! Only empty buffers move: a connection keeps its buffer while it holds a
//! partial frame or unsent bytes. Of two buffers the larger is kept, up to
//! [`KEEP_UP_TO`]; a larger one goes back to the allocator. A read buffer
//! whose last bytes left as a message that is dropped by now takes its
//! whole allocation back first, so a stream of large messages reuses one
//! buffer instead of faulting in a fresh one per message.

use std::cell::Cell;
use std::thread::LocalKey;

use bytes::BytesMut;

/// Larger spare buffers are freed, not kept. Large enough that a stream
/// of 1 MiB messages reuses its buffers: a fresh buffer per message cost
/// a page fault per 4 KiB (480 per 1 MiB round trip, half the client's
/// time).
pub(crate) const KEEP_UP_TO: usize = 4 << 20;

type Slot<B> = LocalKey<Cell<Option<B>>>;

thread_local! {
    static READ: Cell<Option<BytesMut>> = const { Cell::new(None) };
    static WRITE: Cell<Option<Vec<u8>>> = const { Cell::new(None) };
}

/// A buffer that can be lent.
trait Buffer: Default {
    fn room(&self) -> usize;
    /// Makes `room` see all the memory the buffer can use.
    fn reclaim(&mut self) {}
}

impl Buffer for BytesMut {
    fn room(&self) -> usize {
        self.capacity()
    }

    fn reclaim(&mut self) {
        // An empty buffer whose last bytes went out as a message that is
        // dropped by now owns its whole allocation again: take it back
        // (no copy), so that its room counts in full.
        if self.capacity() < READ_ROOM {
            let _ = self.try_reclaim(READ_ROOM);
        }
    }
}

/// Below this room a read buffer tries to reclaim its allocation.
const READ_ROOM: usize = crate::session::READ_CHUNK;

impl Buffer for Vec<u8> {
    fn room(&self) -> usize {
        self.capacity()
    }
}

/// Lends the thread's spare to the empty `buf` if the spare is larger
/// (the smaller of the two becomes the spare).
fn lend<B: Buffer>(slot: &'static Slot<B>, buf: &mut B) {
    buf.reclaim();
    let _ = slot.try_with(|spare| {
        if let Some(lent) = spare.take() {
            let other = if lent.room() > buf.room() {
                std::mem::replace(buf, lent)
            } else {
                lent
            };
            keep(spare, other);
        }
    });
}

/// Takes the empty `buf` back as the thread's spare (the larger of it and
/// the spare in hand is kept); `buf` holds no memory afterwards.
fn take_back<B: Buffer>(slot: &'static Slot<B>, buf: &mut B) {
    buf.reclaim();
    if buf.room() == 0 {
        return;
    }
    let returned = std::mem::take(buf);
    let _ = slot.try_with(|spare| {
        let larger = match spare.take() {
            Some(held) if held.room() > returned.room() => held,
            _ => returned,
        };
        keep(spare, larger);
    });
}

fn keep<B: Buffer>(spare: &Cell<Option<B>>, buf: B) {
    if buf.room() > 0 && buf.room() <= KEEP_UP_TO {
        spare.set(Some(buf));
    }
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
/// Lends the thread's read buffer to an empty read buffer.
pub(crate) fn lend_read(read: &mut BytesMut) {
    debug_assert!(read.is_empty());
    lend(&READ, read);
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
/// Takes an empty read buffer back.
pub(crate) fn take_back_read(read: &mut BytesMut) {
    debug_assert!(read.is_empty());
    take_back(&READ, read);
}

/// Lends the thread's write buffer to an empty output buffer.
pub(crate) fn lend_write(out: &mut Vec<u8>) {
    debug_assert!(out.is_empty());
    lend(&WRITE, out);
}

/// Takes an empty output buffer back.
pub(crate) fn take_back_write(out: &mut Vec<u8>) {
    debug_assert!(out.is_empty());
    take_back(&WRITE, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests may share a thread (`--test-threads 1`): start with no spares.
    fn no_spares() {
        READ.with(|s| s.set(None));
        WRITE.with(|s| s.set(None));
    }

    #[test]
    fn a_buffer_goes_back_and_is_lent_to_the_next_connection() {
        no_spares();
        let mut first = Vec::with_capacity(4096);
        first.extend_from_slice(b"frame");
        first.clear();
        take_back_write(&mut first);
        assert_eq!(
            first.capacity(),
            0,
            "a returned buffer leaves nothing behind"
        );
        let mut second = Vec::new();
        lend_write(&mut second);
        assert!(second.capacity() >= 4096, "the next one borrows it");
        let mut third = Vec::new();
        lend_write(&mut third);
        assert_eq!(third.capacity(), 0, "one spare per thread");
    }

    #[test]
    fn the_larger_buffer_is_kept_and_a_huge_one_is_freed() {
        no_spares();
        let mut small = BytesMut::with_capacity(64);
        let mut large = BytesMut::with_capacity(8192);
        take_back_read(&mut small);
        take_back_read(&mut large);
        let mut read = BytesMut::new();
        lend_read(&mut read);
        assert!(read.capacity() >= 8192);
        let mut huge = BytesMut::with_capacity(KEEP_UP_TO + 1);
        take_back_read(&mut huge);
        let mut next = BytesMut::new();
        lend_read(&mut next);
        assert_eq!(next.capacity(), 0, "a huge buffer is not kept");
    }

    #[test]
    fn a_read_buffer_whose_message_is_gone_comes_back_whole() {
        no_spares();
        let mut read = BytesMut::with_capacity(1 << 20);
        read.resize(1 << 20, 7);
        let message = read.split_to(1 << 20).freeze();
        assert_eq!(read.capacity(), 0);
        drop(message);
        take_back_read(&mut read);
        let mut next = BytesMut::new();
        lend_read(&mut next);
        assert!(
            next.capacity() >= 1 << 20,
            "the whole allocation is reused, not a fresh one per message"
        );
    }

    #[test]
    fn a_read_buffer_whose_message_is_still_held_is_not_reused() {
        no_spares();
        let mut read = BytesMut::with_capacity(1 << 20);
        read.resize(1 << 20, 7);
        let message = read.split_to(1 << 20).freeze();
        take_back_read(&mut read);
        let mut next = BytesMut::new();
        lend_read(&mut next);
        assert_eq!(next.capacity(), 0, "the message still owns that memory");
        assert_eq!(message[0], 7);
    }

    #[test]
    fn a_spare_smaller_than_the_buffer_in_hand_stays_spare() {
        no_spares();
        let mut spare = Vec::with_capacity(16);
        take_back_write(&mut spare);
        let mut own = Vec::with_capacity(1024);
        lend_write(&mut own);
        assert!(
            own.capacity() >= 1024,
            "the connection keeps its larger buffer"
        );
        let mut next = Vec::new();
        lend_write(&mut next);
        assert!(next.capacity() >= 16, "the small spare is still there");
    }
}
