//! Who is on the other end of a connection: the kernel-verified credentials
//! of a Unix-socket peer (`SO_PEERCRED` and `SO_PEERGROUPS`), or the
//! address of a TCP peer.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// The user, groups and process of a Unix-socket peer, as the kernel
/// recorded them when the peer connected. They cannot be forged by the peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// Effective user id of the peer process.
    pub uid: u32,
    /// Effective (primary) group id of the peer process.
    pub gid: u32,
    /// Process id of the peer at connect time.
    pub pid: i32,
    /// Supplementary groups of the peer process (what `id -G` lists besides
    /// the primary group; systemd's `SupplementaryGroups=`, a Kubernetes
    /// `fsGroup`). Empty when the peer has none.
    pub groups: Vec<u32>,
}

impl PeerCredentials {
    /// The credentials of the process at the other end of a connected Unix
    /// socket (a std or tokio `UnixStream`, or any descriptor of one).
    pub fn of(stream: &impl AsFd) -> io::Result<Self> {
        let (uid, gid, pid) = crate::sys::peer_credentials(stream.as_fd())?;
        let groups = crate::sys::peer_groups(stream.as_fd())?;
        Ok(Self {
            uid,
            gid,
            pid,
            groups,
        })
    }

    /// Credentials with no supplementary groups (for tests and policies
    /// written by hand).
    pub fn new(uid: u32, gid: u32, pid: i32) -> Self {
        Self {
            uid,
            gid,
            pid,
            groups: Vec::new(),
        }
    }

    /// The same credentials with these supplementary groups.
    pub fn with_groups(mut self, groups: impl IntoIterator<Item = u32>) -> Self {
        self.groups = groups.into_iter().collect();
        self
    }

    /// The supplementary groups as text, `sep` between them (log lines,
    /// forwarded headers, `--exec`'s environment).
    pub(crate) fn groups_joined(&self, sep: &str) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        groups.join(sep)
    }

    /// Is the peer a member of `gid`, as its primary group or a
    /// supplementary one?
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

impl fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={} pid={}", self.uid, self.gid, self.pid)?;
        if !self.groups.is_empty() {
            write!(f, " groups={}", self.groups_joined(","))?;
        }
        Ok(())
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
