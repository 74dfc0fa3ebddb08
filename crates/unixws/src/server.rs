//! The blocking server: one thread per connection, for programs that want no
//! async runtime.
//!
//! Before a connection reaches the handler, the server checks, in order: the
//! handshake deadline and header byte cap (a slow or oversized request is
//! dropped, or answered 431), the access policy (403, logged with the peer's
//! uid and pid) and the connection limit (503). A [`ShutdownHandle`] stops
//! accepting, closes every open connection with 1001, waits at most the drain
//! timeout and removes the socket file.

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::Role;

use crate::addr::{Address, Endpoint, ToAddress};
use crate::backoff::AcceptBackoff;
use crate::config::Limits;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::handshake::{
    check_request, handshake_config, write_response, Accepted, HandshakeRules, HeadBuffer,
    HeadReader,
};
use crate::listen::{BindOptions, Listener};
use crate::peer::Peer;
use crate::policy::AccessPolicy;
use crate::server_core::{
    handler_failed, Admission, HandlerResult, Outcome, ServerCore, HANDLER_FAILED,
};
use crate::session::Session;
use crate::stats::ServerStats;
use crate::stream::{Interrupt, ShutdownSignal, Socket, Stream};
use crate::CloseCode;

/// Everything a server needs besides the handler.
#[derive(Debug)]
pub struct ServerBuilder {
    addr: Address,
    listener: Option<Listener>,
    bind: BindOptions,
    limits: Limits,
    policy: AccessPolicy,
    subprotocols: Vec<String>,
    trusted_proxy: Option<u32>,
    health_path: Option<String>,
}

impl ServerBuilder {
    /// Options for a server on `addr`.
    pub fn new(addr: impl ToAddress) -> Result<Self> {
        Ok(Self {
            addr: addr.to_address()?,
            listener: None,
            bind: BindOptions::default(),
            limits: Limits::default(),
            policy: AccessPolicy::default(),
            subprotocols: Vec::new(),
            trusted_proxy: None,
            health_path: None,
        })
    }

    /// Options for a server on a socket that is already listening, such as
    /// the one systemd passes ([`systemd::from_systemd`](crate::systemd::from_systemd)).
    pub fn from_listener(listener: Listener) -> Self {
        Self {
            addr: listener.local_addr().clone(),
            listener: Some(listener),
            bind: BindOptions::default(),
            limits: Limits::default(),
            policy: AccessPolicy::default(),
            subprotocols: Vec::new(),
            trusted_proxy: None,
            health_path: None,
        }
    }

    /// Mode, owner and group of the socket file.
    pub fn bind_options(mut self, bind: BindOptions) -> Self {
        self.bind = bind;
        self
    }

    /// Limits and timeouts.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Who may connect (checked before the upgrade; others get 403).
    pub fn policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Believe the client identity that a proxy running as `uid` forwards
    /// (`unixws proxy` sends `X-Unixws-Peer-Uid`, `-Gid`, `-Pid`,
    /// `-Groups` for a Unix-socket client, `X-Forwarded-For` for a TCP
    /// one). From a peer with that uid, the forwarded client stands for
    /// the peer: the access policy judges it, and
    /// [`ConnectionInfo::peer`](crate::ConnectionInfo::peer) is it. From
    /// any other peer those headers are dropped, so a local process that
    /// forges them fools nobody. Unix sockets only.
    ///
    /// ```no_run
    /// # fn main() -> unixws::Result<()> {
    /// let proxy_uid = 990; // the user `unixws proxy` runs as
    /// let server = unixws::Server::builder("/run/app/backend.sock")?
    ///     .trust_proxy_uid(proxy_uid)
    ///     .policy(unixws::AccessPolicy::new().allow_uid(1000))
    ///     .bind()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn trust_proxy_uid(mut self, uid: u32) -> Self {
        self.trusted_proxy = Some(uid);
        self
    }

    /// Answer a plain (non-upgrade) `GET` of `path` with 200 and a small
    /// JSON body, for load balancers and Kubernetes probes:
    /// `{"status":"ok","open":2,"accepted":7,"upgraded":5}`. The access
    /// policy applies (403 otherwise). Without it, such a request gets 426
    /// as any non-upgrade request does; an upgrade to `path` is a WebSocket
    /// as usual.
    ///
    /// ```no_run
    /// let server = unixws::Server::builder("/run/app.sock")?
    ///     .health_path("/healthz")
    ///     .bind()?;
    /// // curl --unix-socket /run/app.sock http://localhost/healthz
    /// # Ok::<(), unixws::Error>(())
    /// ```
    pub fn health_path(mut self, path: impl Into<String>) -> Self {
        self.health_path = Some(path.into());
        self
    }

    /// Subprotocols this server speaks, in order of preference.
    pub fn subprotocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Bind the socket. The server does not accept until [`Server::serve`].
    pub fn bind(self) -> Result<Server> {
        let (listener, rules, limits) = self.bind_parts()?;
        Ok(Server {
            listener,
            core: ServerCore::new(rules, limits)?,
        })
    }

    /// Checks the settings, binds, and splits into what every server front
    /// end (blocking or tokio) needs.
    pub(crate) fn bind_parts(self) -> Result<(Listener, HandshakeRules, Limits)> {
        if !self.addr.is_unix() && !self.policy.is_open() {
            return Err(Error::invalid(
                "ServerBuilder::policy",
                format!(
                    "an access policy needs a Unix socket: TCP peers on {} have no credentials",
                    self.addr.endpoint_display()
                ),
            ));
        }
        if !self.addr.is_unix() && self.trusted_proxy.is_some() {
            return Err(Error::invalid(
                "ServerBuilder::trust_proxy_uid",
                format!(
                    "a trusted proxy is known by its uid, which only a Unix socket tells: {} is TCP",
                    self.addr.endpoint_display()
                ),
            ));
        }
        if let Some(path) = &self.health_path {
            if !path.starts_with('/') {
                return Err(Error::invalid(
                    "ServerBuilder::health_path",
                    format!(
                        "`{path}` is not a path: write it with its leading slash, e.g. /healthz"
                    ),
                ));
            }
        }
        let listener = match self.listener {
            Some(listener) => listener,
            None => Listener::bind(&self.addr, &self.bind)?,
        };
        if matches!(self.addr.endpoint(), Endpoint::Abstract(_)) && self.policy.is_open() {
            tracing::warn!(addr = %self.addr, "abstract socket without an access policy: any local process can connect; give the server an AccessPolicy");
        }
        let mut rules = HandshakeRules::new(&self.limits, self.policy, self.subprotocols);
        rules.address = Some(Arc::new(listener.local_addr().clone()));
        rules.trusted_proxy = self.trusted_proxy;
        rules.health_path = self.health_path;
        Ok((listener, rules, self.limits))
    }
}

/// A bound blocking WebSocket server.
///
/// ```no_run
/// let server = unixws::Server::bind("/tmp/echo.sock")?;
/// server.serve(|conn| {
///     while let Some(message) = conn.recv()? {
///         conn.send(message)?;
///     }
///     Ok(())
/// })?;
/// # Ok::<(), unixws::Error>(())
/// ```
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    core: Arc<ServerCore>,
}

/// Stops a running server from any thread (cheap to clone).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    signal: ShutdownSignal,
}

impl ShutdownHandle {
    pub(crate) fn new(signal: ShutdownSignal) -> Self {
        Self { signal }
    }

    /// Stop accepting, close every connection with 1001, remove the socket
    /// file; [`Server::serve`] returns once connections have drained.
    pub fn shutdown(&self) {
        self.signal.raise();
    }
}

impl Server {
    /// Bind `addr` with default options.
    pub fn bind(addr: impl ToAddress) -> Result<Self> {
        ServerBuilder::new(addr)?.bind()
    }

    /// Options for a server on `addr`.
    pub fn builder(addr: impl ToAddress) -> Result<ServerBuilder> {
        ServerBuilder::new(addr)
    }

    /// The address being served (for TCP, with the real port).
    pub fn local_addr(&self) -> &Address {
        self.listener.local_addr()
    }

    /// Live counters of what this server accepted, refused and closed.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.core.stats()
    }

    /// A handle that shuts the server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.core.shutdown_handle()
    }

    /// Accept connections until shut down, running `handler` for each on
    /// its own thread. When the handler returns, the connection is closed
    /// if it is still open: with 1000, or with 1011 when the handler
    /// failed (its error is logged at WARN, or at INFO when the peer
    /// caused it). The handler may fail with any error: `?` works on the
    /// application's errors as on unixws's.
    pub fn serve<H>(self, handler: H) -> Result<()>
    where
        H: Fn(&mut Connection) -> HandlerResult + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let mut backoff = AcceptBackoff::default();
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        tracing::info!(addr = %self.local_addr(), "listening");
        while self.wait_for_accept(None) {
            let (socket, peer, in_flight) =
                match self.core.admit(self.listener.accept(), &mut backoff) {
                    Admission::Serve(socket, peer, in_flight) => (socket, peer, in_flight),
                    Admission::Again(None) => continue,
                    Admission::Again(Some(pause)) => {
                        // Wait out descriptor exhaustion, but wake for shutdown.
                        if !self.wait_for_accept(Some(pause)) && self.core.shutdown.is_raised() {
                            break;
                        }
                        continue;
                    }
                };
            let core = self.core.clone();
            let handler = handler.clone();
            let spawned = thread::Builder::new()
                .name("unixws-conn".into())
                .stack_size(256 << 10)
                .spawn(move || {
                    let _in_flight = in_flight;
                    serve_connection(&core, socket, peer, &*handler);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a connection thread; dropping the connection");
            }
        }
        let Server { listener, core } = self;
        // Dropping the listener stops accepting and removes the socket file.
        drop(listener);
        core.drain_blocking();
        core.stopped();
        Ok(())
    }

    /// Waits until the listener is readable (true) or shutdown/timeout (false).
    fn wait_for_accept(&self, timeout: Option<Duration>) -> bool {
        loop {
            if self.core.shutdown.is_raised() {
                return false;
            }
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.core.shutdown.fd(), PollFlags::POLLIN),
            ];
            let t = timeout.map_or(PollTimeout::NONE, |d| {
                PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX)
            });
            match poll(&mut fds, t) {
                Ok(0) => return false,
                Ok(_) => return !self.core.shutdown.is_raised(),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll on the listener failed");
                    thread::sleep(Duration::from_millis(100));
                    return !self.core.shutdown.is_raised();
                }
            }
        }
    }
}

pub(crate) fn serve_connection<H>(core: &ServerCore, socket: Socket, peer: Peer, handler: &H)
where
    H: Fn(&mut Connection) -> HandlerResult,
{
    let started = Instant::now();
    let limits = &*core.limits;
    // Without it (descriptors exhausted) a refused request is only dropped.
    let raw = socket.try_clone().ok();
    let _ = socket.set_write_timeout(limits.write_timeout.or(Some(limits.handshake_timeout)));
    let mut stream = Stream::new(socket);
    stream.set_deadline(Some(Instant::now() + limits.handshake_timeout));
    stream.set_shutdown(Some(core.shutdown.clone()));
    let mut reader = HeadReader::new(stream, HeadBuffer::new(limits.max_header_bytes));
    if core.rules.health_path.is_some() && reader.read_head() {
        if let Some((status, body)) = reader.head.head().and_then(|h| core.health(h, &peer)) {
            if let Some(raw) = raw {
                write_response(raw, status, "application/json", &body, &[]);
            }
            return;
        }
        reader.head.rewind();
    }

    let accepted: RefCell<Option<Accepted>> = RefCell::new(None);
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        check_request(&core.rules, &peer, request, response).map(|(response, a)| {
            *accepted.borrow_mut() = Some(a);
            response
        })
    };
    let result = tungstenite::accept_hdr_with_config(reader, callback, Some(handshake_config()));
    let ws = match result {
        Ok(ws) => ws,
        Err(HandshakeError::Interrupted(mut mid)) => {
            let outcome = match mid.get_mut().get_mut().inner.take_interrupt() {
                Some(Interrupt::Deadline) => Outcome::TimedOut,
                _ => Outcome::ShutDown,
            };
            return core.not_upgraded(&peer, outcome, raw);
        }
        Err(HandshakeError::Failure(e)) => return core.not_upgraded(&peer, Outcome::of(e), raw),
    };
    let Some(accepted) = accepted.into_inner() else {
        tracing::error!(%peer, "handshake finished without passing the callback; dropping");
        return;
    };
    let HeadReader {
        inner: mut stream,
        head,
    } = ws.into_inner();
    stream.set_deadline(None);
    let session = Session::new(Role::Server, core.limits.clone(), None, Instant::now())
        .with_compression(accepted.compression)
        .with_initial(&head.into_tail());
    let (info, _slot) = accepted.into_info(peer, core.rules.address.clone());
    core.upgraded(started);
    let mut conn = Connection::new(stream, session, info).serving(core.rules.stats.clone());
    let result = handler(&mut conn);
    let closed = if handler_failed(Some(&conn.info().peer), &result) {
        conn.close(CloseCode::Error, HANDLER_FAILED)
    } else {
        conn.close_normally()
    };
    if let Err(e) = closed {
        tracing::debug!(peer = %conn.info().peer, error = %e, "error while closing");
    }
}
