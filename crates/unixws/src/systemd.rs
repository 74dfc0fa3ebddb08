//! systemd socket activation (`sd_listen_fds(3)`) and readiness
//! (`sd_notify(3)`), without libsystemd: a `.socket` unit binds the socket
//! with its own `SocketMode=`, `SocketUser=` and `SocketGroup=`, and the
//! service takes descriptor 3 over ([`from_systemd`]) and says when it is
//! ready ([`notify_ready`]). The file belongs to systemd, so unixws never
//! removes it.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener};
use std::path::Path;

use crate::addr::{Address, Endpoint};
use crate::error::{Error, Result};
use crate::listen::{Listener, ListenerKind};

/// The listening socket systemd passed (socket activation), if any.
///
/// Follows `sd_listen_fds(3)`: when `LISTEN_PID` is this process and
/// `LISTEN_FDS` is at least 1, descriptor 3 is the socket. Its file belongs
/// to systemd (`SocketMode=`, `SocketUser=`, `SocketGroup=` set its
/// permissions), so this listener never removes it. Call this once, early:
/// it takes ownership of descriptor 3.
pub fn from_systemd() -> Result<Option<Listener>> {
    const FIRST: std::os::fd::RawFd = 3;
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count: u32 = fds.trim().parse().map_err(|_| Error::Activation {
        problem: format!("LISTEN_FDS=`{fds}` is not a number; is this started by systemd?"),
    })?;
    if count == 0 {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!(
            count,
            "systemd passed several sockets; serving the first (fd 3)"
        );
    }
    let not_listening = || {
        Error::Activation {
            problem: "descriptor 3 from systemd is not a listening stream socket; use ListenStream= in the .socket unit"
                .to_string(),
        }
    };
    // SAFETY: sd_listen_fds(3) hands descriptor 3 to this process; nothing
    // else in it owns descriptor 3, and this function takes it once.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(FIRST) };
    match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn) {
        Ok(true) => {}
        _ => return Err(not_listening()),
    }
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let local: nix::sys::socket::SockaddrStorage =
        nix::sys::socket::getsockname(fd.as_raw_fd()).map_err(|_| not_listening())?;
    let (kind, endpoint) = if let Some(unix) = local.as_unix_addr() {
        let endpoint = match (unix.path(), unix.as_abstract()) {
            (Some(path), _) => Endpoint::Path(path.to_path_buf()),
            (None, Some(name)) => Endpoint::Abstract(String::from_utf8_lossy(name).into_owned()),
            (None, None) => return Err(not_listening()),
        };
        (ListenerKind::Unix(UnixListener::from(fd)), endpoint)
    } else {
        let listener = TcpListener::from(fd);
        let local = listener.local_addr().map_err(|_| not_listening())?;
        let endpoint = Endpoint::Tcp {
            host: local.ip().to_string(),
            port: local.port(),
        };
        (ListenerKind::Tcp(listener), endpoint)
    };
    Ok(Some(Listener::adopted(kind, Address::new(endpoint, "/")?)))
}

/// Tells systemd the service is ready (`READY=1` to `$NOTIFY_SOCKET`, see
/// `sd_notify(3)`). Returns false when there is no `NOTIFY_SOCKET`.
pub fn notify_ready() -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => crate::sys::abstract_address(name)?,
        None => UnixSocketAddr::from_pathname(Path::new(&target))?,
    };
    socket.send_to_addr(b"READY=1", &addr)?;
    Ok(true)
}
