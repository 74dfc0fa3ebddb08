//! The platform seam: the few calls that std does not offer. Reading into
//! a buffer's spare capacity without zero-filling it first is the one
//! here so far: tungstenite zero-filled its whole read chunk before every
//! read, a third of a server's time on 16 KiB messages.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::{BufMut, BytesMut};

/// One `read(2)` into the spare capacity of `buf`; returns how many bytes
/// arrived (0: end of stream).
pub(crate) fn read_into(fd: BorrowedFd<'_>, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len();
    // SAFETY: `spare` is valid for writes of `len` bytes for the duration
    // of the call; the kernel writes at most `len` bytes into it.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.advance_mut(n) };
    Ok(n)
}
