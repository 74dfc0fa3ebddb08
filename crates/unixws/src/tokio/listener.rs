//! The listener of the tokio server: a bound [`Listener`](crate::Listener)
//! moved onto the runtime. It keeps the socket file's guard, so dropping
//! it removes the file just as dropping the blocking listener does.

use std::io;
use std::os::fd::AsFd;

use crate::addr::Address;
use crate::listen::{Listener, SocketFileGuard, StdListener};
use crate::peer::{Peer, PeerCredentials};
use crate::tokio::io::AsyncSocket;

#[derive(Debug)]
pub(crate) struct AsyncListener {
    // Declared before the guard: the socket closes before its file goes.
    kind: Kind,
    addr: Address,
    _file: SocketFileGuard,
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
                crate::sys::widen_send_buffer(s.as_fd());
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::time::Duration;

    use crate::addr::Address;
    use crate::listen::{BindOptions, Listener};
    use crate::sys::tests::{send_buffer, widened};

    #[tokio::test]
    async fn an_accepted_unix_socket_gets_the_wider_send_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::unix(dir.path().join("buf.sock")).unwrap();
        let listener = Listener::bind(&addr, &BindOptions::default()).unwrap();
        let listener = super::AsyncListener::new(listener).unwrap();
        let connect = addr.clone();
        let client = tokio::task::spawn_blocking(move || {
            crate::client::open_socket(&connect, Duration::from_secs(5))
        });
        let (server, _) = listener.accept().await.unwrap();
        let _client = client.await.unwrap().unwrap();
        let crate::tokio::io::AsyncSocket::Unix(server) = server else {
            panic!("a Unix listener accepted a TCP socket");
        };
        assert_eq!(send_buffer(server.as_fd()), widened());
    }
}
