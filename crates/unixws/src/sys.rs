//! The platform seam: every call that is specific to Linux, or that std
//! does not offer, is here, so that a port (macOS and the BSDs have
//! `getpeereid`, `LOCAL_PEERCRED` and `LOCAL_PEERPID` for credentials, no
//! abstract namespace, and no `malloc_trim`) is this one file:
//!
//! - [`peer_credentials`]: the uid, gid and pid of a Unix-socket peer
//!   (`SO_PEERCRED`), and [`peer_groups`], its supplementary groups
//!   (`SO_PEERGROUPS`, Linux 4.13; BSD's `LOCAL_PEERCRED` reports both in
//!   one `xucred`);
//! - [`abstract_address`] and [`abstract_connect_address`]: the Linux
//!   abstract namespace (`@name`), for binding and for connecting;
//! - [`release_free_memory`]: glibc's `malloc_trim`, which gives the
//!   arenas' free pages back after a burst;
//! - [`read_into`]: reading into a buffer's spare capacity without
//!   zero-filling it first (tungstenite zero-filled its whole read chunk
//!   before every read, a third of a server's time on 16 KiB messages);
//! - [`widen_send_buffer`]: a larger Unix-socket send buffer;
//! - [`try_lock_exclusive`]: `flock(2)` (BSD has it too), which std offers
//!   only from Rust 1.89, past this crate's minimum.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::{BufMut, BytesMut};

/// `(uid, gid, pid)` of the process at the other end of a connected Unix
/// socket, as the kernel recorded them at connect time.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, i32)> {
    use nix::sys::socket::{getsockopt, sockopt};
    let cred = getsockopt(&fd, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok((cred.uid(), cred.gid(), cred.pid()))
}

/// The supplementary groups of the process at the other end of a connected
/// Unix socket, as the kernel recorded them at connect time
/// (`SO_PEERGROUPS`). The primary group is not necessarily among them; see
/// [`peer_credentials`].
pub(crate) fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // Most processes have a handful of groups; the kernel says how many
    // bytes it needs (ERANGE) when the guess is short, and the list is
    // fixed for the socket's life, so one retry at that size suffices.
    let mut groups: Vec<libc::gid_t> = vec![0; 16];
    loop {
        let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`,
        // which holds exactly `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(err);
        }
        groups.resize(needed, 0);
    }
}

/// An abstract-namespace address (`@name`), for `bind`.
pub(crate) fn abstract_address(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

/// An abstract-namespace address (`@name`), for a non-blocking `connect`.
pub(crate) fn abstract_connect_address(name: &[u8]) -> io::Result<nix::sys::socket::UnixAddr> {
    nix::sys::socket::UnixAddr::new_abstract(name).map_err(io::Error::from)
}

/// Gives the allocator's free pages back to the system (glibc only; a
/// no-op elsewhere). Walks every arena: call it off the async workers.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

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

/// What a Unix socket's send buffer is raised to: the kernel doubles it
/// for its bookkeeping (1 MiB in flight) and caps it at
/// `net.core.wmem_max`.
pub(crate) const UNIX_SEND_BUFFER: usize = 512 << 10;

/// Raises a Unix socket's send buffer from the kernel default (208 KiB),
/// which bounds how much is in flight: a 1 MiB message took five
/// wake-ups of each side to cross, while TCP on loopback autotunes its
/// buffers to several MiB, so a 1 MiB ping-pong was faster over TCP
/// (1,170 MB/s over UDS against 1,300 over TCP with the blocking client;
/// 2,100 against 1,300 with this). Larger did not pay: 1 MiB in flight
/// already streams 64 KiB messages 1.4 times faster than the default,
/// and pipelined 1 MiB messages lose from a larger window (what is in
/// flight no longer stays in cache). Best effort: a failure leaves the
/// default.
pub(crate) fn widen_send_buffer(fd: BorrowedFd<'_>) {
    let size = UNIX_SEND_BUFFER as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Takes an exclusive advisory lock on `file` if nobody holds one:
/// `Ok(false)` when another open file description holds it. The lock goes
/// with the descriptor: closing it (or the process dying) releases it.
pub(crate) fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: flock takes a descriptor that `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        Some(libc::EINTR) => try_lock_exclusive(file),
        _ => Err(err),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// The send buffer the kernel reports for `fd`.
    pub(crate) fn send_buffer(fd: BorrowedFd<'_>) -> usize {
        let mut size: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a live local.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut size as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(SO_SNDBUF)");
        size as usize
    }

    #[test]
    fn both_ends_of_a_unix_connection_get_the_wider_send_buffer() {
        use std::os::fd::AsFd;
        use std::time::Duration;

        use crate::addr::Address;
        use crate::listen::{BindOptions, Listener};

        let dir = tempfile::tempdir().unwrap();
        let addr = Address::unix(dir.path().join("buf.sock")).unwrap();
        let listener = Listener::bind(&addr, &BindOptions::default()).unwrap();
        let client = crate::client::open_socket(&addr, Duration::from_secs(5)).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(send_buffer(client.as_fd()), widened(), "client end");
        assert_eq!(send_buffer(server.as_fd()), widened(), "server end");
    }

    /// What `widen_send_buffer` can reach on this kernel.
    pub(crate) fn widened() -> usize {
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .expect("/proc/sys/net/core/wmem_max")
            .trim()
            .parse()
            .expect("a number in wmem_max");
        2 * super::UNIX_SEND_BUFFER.min(max)
    }
}
