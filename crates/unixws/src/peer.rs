//! Who is on the other end of a connection: the kernel-verified credentials
//! of a Unix-socket peer (`SO_PEERCRED`), or the address of a TCP peer.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// The user, group and process of a Unix-socket peer, as the kernel recorded
/// them when the peer connected. They cannot be forged by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// Effective user id of the peer process.
    pub uid: u32,
    /// Effective (primary) group id of the peer process.
    pub gid: u32,
    /// Process id of the peer at connect time.
    pub pid: i32,
}

impl PeerCredentials {
    /// The credentials of the process at the other end of a connected Unix
    /// socket (a std or tokio `UnixStream`, or any descriptor of one).
    pub fn of(stream: &impl AsFd) -> io::Result<Self> {
        let (uid, gid, pid) = crate::sys::peer_credentials(stream.as_fd())?;
        Ok(Self { uid, gid, pid })
    }
}

impl fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={} pid={}", self.uid, self.gid, self.pid)
    }
}

/// The other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A Unix-socket peer, with its credentials.
    Unix(PeerCredentials),
    /// A TCP peer, with its address (no credentials: anyone who can reach the port).
    Tcp(SocketAddr),
}

impl Peer {
    /// The credentials, for a Unix-socket peer.
    pub fn credentials(&self) -> Option<&PeerCredentials> {
        match self {
            Peer::Unix(c) => Some(c),
            Peer::Tcp(_) => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix(c) => c.fmt(f),
            Peer::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}
