//! The listener of the tokio server: a bound [`Listener`](crate::Listener)
//! moved onto the runtime. It keeps the socket file's guard, so dropping
//! it removes the file just as dropping the blocking listener does.

use std::io;

use crate::addr::Address;
use crate::listen::{FileGuard, Listener, StdListener};
use crate::peer::{Peer, PeerCredentials};
use crate::tokio::io::AsyncSocket;

#[derive(Debug)]
pub(crate) struct AsyncListener {
    // Declared before the guard: the socket closes before its file goes.
    kind: Kind,
    addr: Address,
    _file: FileGuard,
}

#[derive(Debug)]
enum Kind {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

impl AsyncListener {
    /// Moves `listener` onto the current tokio runtime.
    pub(crate) fn new(listener: Listener) -> io::Result<Self> {
        let (socket, addr, file) = listener.into_parts()?;
        let kind = match socket {
            StdListener::Unix(l) => Kind::Unix(tokio::net::UnixListener::from_std(l)?),
            StdListener::Tcp(l) => Kind::Tcp(tokio::net::TcpListener::from_std(l)?),
        };
        Ok(Self {
            kind,
            addr,
            _file: file,
        })
    }

    pub(crate) fn local_addr(&self) -> &Address {
        &self.addr
    }

    /// Accept one connection and find out who it is.
    pub(crate) async fn accept(&self) -> io::Result<(AsyncSocket, Peer)> {
        match &self.kind {
            Kind::Unix(l) => {
                let (s, _) = l.accept().await?;
                let peer = Peer::Unix(PeerCredentials::of(&s)?);
                Ok((AsyncSocket::Unix(s), peer))
            }
            Kind::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((AsyncSocket::Tcp(s), Peer::Tcp(addr)))
            }
        }
    }
}
