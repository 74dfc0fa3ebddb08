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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use tungstenite::error::Error as WsError;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::handshake::HandshakeError;

use crate::addr::{Address, Endpoint, ToAddress};
use crate::config::Limits;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::handshake::{
    check_request, handshake_config, is_header_too_large, refuse_bad_request, write_plain_response,
    Accepted, HandshakeRules, HeadBuffer, HeadReader,
};
use crate::listen::{AcceptBackoff, BindOptions, Listener};
use crate::peer::Peer;
use crate::policy::AccessPolicy;
use crate::session::Session;
use crate::stats::{Counter, ServerStats};
use crate::stream::{Interrupt, ShutdownSignal, Socket, Stream};
use tungstenite::protocol::Role;

/// Connections beyond `max_connections` that may still be in their
/// handshake (to be answered 503) before new ones are dropped unanswered:
/// this caps the threads a connection flood can start.
const REFUSAL_SLACK: usize = 64;

/// Everything a server needs besides the handler.
#[derive(Debug)]
pub struct ServerBuilder {
    addr: Address,
    listener: Option<Listener>,
    bind: BindOptions,
    limits: Limits,
    policy: AccessPolicy,
    subprotocols: Vec<String>,
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
        })
    }

    /// Options for a server on a socket that is already listening, such as
    /// the one systemd passes ([`listen::from_systemd`](crate::listen::from_systemd)).
    pub fn from_listener(listener: Listener) -> Self {
        Self {
            addr: listener.local_addr().clone(),
            listener: Some(listener),
            bind: BindOptions::default(),
            limits: Limits::default(),
            policy: AccessPolicy::default(),
            subprotocols: Vec::new(),
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
        let shutdown =
            ShutdownSignal::new().map_err(|e| Error::io("creating the shutdown signal", e))?;
        Ok(Server {
            listener,
            ctx: Arc::new(ServerContext {
                rules,
                limits,
                shutdown,
            }),
        })
    }

    /// Checks the settings, binds, and splits into what every server front
    /// end (blocking or tokio) needs.
    pub(crate) fn bind_parts(self) -> Result<(Listener, HandshakeRules, Limits)> {
        if !self.addr.is_unix() && !self.policy.is_open() {
            return Err(Error::Config(format!(
                "an access policy (--allow-uid/--allow-gid) needs a Unix socket: TCP peers on {} have no credentials",
                self.addr.endpoint_display()
            )));
        }
        let listener = match self.listener {
            Some(listener) => listener,
            None => Listener::bind(&self.addr, &self.bind)?,
        };
        if matches!(self.addr.endpoint(), Endpoint::Abstract(_)) && self.policy.is_open() {
            tracing::warn!(addr = %self.addr, "abstract socket without an access policy: any local process can connect; add --allow-uid/--allow-gid");
        }
        let rules = HandshakeRules::new(&self.limits, self.policy, self.subprotocols);
        Ok((listener, rules, self.limits))
    }
}

#[derive(Debug)]
struct ServerContext {
    rules: HandshakeRules,
    limits: Limits,
    shutdown: ShutdownSignal,
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
    ctx: Arc<ServerContext>,
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
        self.ctx.rules.stats.clone()
    }

    /// A handle that shuts the server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.ctx.shutdown.clone())
    }

    /// Accept connections until shut down, running `handler` for each on
    /// its own thread. When the handler returns, the connection is closed
    /// (1000) if it is still open.
    pub fn serve<H>(self, handler: H) -> Result<()>
    where
        H: Fn(&mut Connection) -> Result<()> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut accept_backoff = AcceptBackoff::default();
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the listener non-blocking", e))?;
        tracing::info!(addr = %self.local_addr(), "listening");
        loop {
            if !self.wait_for_accept(None) {
                break;
            }
            let (socket, peer) = match self.listener.accept() {
                Ok(pair) => {
                    accept_backoff.reset();
                    self.ctx.rules.stats.count(Counter::Accepted);
                    pair
                }
                Err(e) => {
                    if let Some(pause) = accept_backoff.on_error(&e) {
                        // Wait out descriptor exhaustion, but wake for shutdown.
                        if !self.wait_for_accept(Some(pause)) && self.ctx.shutdown.is_raised() {
                            break;
                        }
                    }
                    continue;
                }
            };
            if in_flight.load(Ordering::SeqCst) >= self.ctx.limits.max_connections + REFUSAL_SLACK {
                if let Some(suppressed) = self.ctx.rules.flood_log.allow() {
                    tracing::warn!(%peer, suppressed, "connection flood: dropping connections unanswered");
                }
                continue;
            }
            threads.retain(|t| !t.is_finished());
            in_flight.fetch_add(1, Ordering::SeqCst);
            let ctx = self.ctx.clone();
            let handler = handler.clone();
            let in_flight_done = in_flight.clone();
            let spawned = thread::Builder::new()
                .name("unixws-conn".into())
                .stack_size(256 << 10)
                .spawn(move || {
                    serve_connection(&ctx, socket, peer, &*handler);
                    in_flight_done.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!(error = %e, "cannot start a connection thread; dropping the connection");
                }
            }
        }
        let Server { listener, ctx } = self;
        // Dropping the listener stops accepting and removes the socket file.
        drop(listener);
        let deadline = Instant::now() + ctx.limits.drain_timeout;
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let left = threads.iter().filter(|t| !t.is_finished()).count();
        if left > 0 {
            tracing::warn!(
                left,
                "drain timeout passed with connections still open; leaving them"
            );
        }
        tracing::info!(stats = ?ctx.rules.stats.snapshot(), "server stopped");
        Ok(())
    }

    /// Waits until the listener is readable (true) or shutdown/timeout (false).
    fn wait_for_accept(&self, timeout: Option<Duration>) -> bool {
        loop {
            if self.ctx.shutdown.is_raised() {
                return false;
            }
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.ctx.shutdown.fd(), PollFlags::POLLIN),
            ];
            let t = timeout.map_or(PollTimeout::NONE, |d| {
                PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX)
            });
            match poll(&mut fds, t) {
                Ok(0) => return false,
                Ok(_) => return !self.ctx.shutdown.is_raised(),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll on the listener failed");
                    thread::sleep(Duration::from_millis(100));
                    return !self.ctx.shutdown.is_raised();
                }
            }
        }
    }
}

fn serve_connection<H>(ctx: &ServerContext, socket: Socket, peer: Peer, handler: &H)
where
    H: Fn(&mut Connection) -> Result<()>,
{
    let limits = &ctx.limits;
    // Without it (descriptors exhausted) a refused request is only dropped.
    let raw = socket.try_clone().ok();
    let _ = socket.set_write_timeout(limits.write_timeout.or(Some(limits.handshake_timeout)));
    let mut stream = Stream::new(socket);
    stream.set_deadline(Some(Instant::now() + limits.handshake_timeout));
    stream.set_shutdown(Some(ctx.shutdown.clone()));
    let reader = HeadReader::new(stream, HeadBuffer::new(limits.max_header_bytes));

    let accepted: RefCell<Option<Accepted>> = RefCell::new(None);
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        check_request(&ctx.rules, &peer, request, response).map(|(response, a)| {
            *accepted.borrow_mut() = Some(a);
            response
        })
    };
    let result = tungstenite::accept_hdr_with_config(reader, callback, Some(handshake_config()));
    let ws = match result {
        Ok(ws) => ws,
        Err(HandshakeError::Interrupted(mut mid)) => {
            let why = mid.get_mut().get_mut().inner.take_interrupt();
            if why == Some(Interrupt::Deadline) {
                ctx.rules.stats.count(Counter::BadHandshake);
                tracing::info!(%peer, timeout = ?limits.handshake_timeout, "handshake timeout; dropping the connection");
            } else {
                tracing::debug!(%peer, "shutdown during the handshake");
            }
            return;
        }
        Err(HandshakeError::Failure(WsError::Http(response))) => {
            tracing::debug!(%peer, status = %response.status(), "handshake refused");
            return;
        }
        Err(HandshakeError::Failure(WsError::Io(e))) if is_header_too_large(&e) => {
            ctx.rules.stats.count(Counter::BadHandshake);
            tracing::info!(%peer, limit = limits.max_header_bytes, "handshake request too large; answering 431");
            if let Some(raw) = raw {
                write_plain_response(raw, 431, "request header too large", &[]);
            }
            return;
        }
        Err(HandshakeError::Failure(e)) => {
            ctx.rules.stats.count(Counter::BadHandshake);
            refuse_bad_request(raw, &peer, &e);
            return;
        }
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
    let session =
        Session::new(Role::Server, limits, None, Instant::now()).with_initial(&head.into_tail());
    let (info, _slot) = accepted.into_info(peer);
    ctx.rules.stats.count(Counter::Upgraded);
    let mut conn =
        Connection::new(stream, session, info, limits.clone()).counting(ctx.rules.stats.clone());
    if let Err(e) = handler(&mut conn) {
        tracing::info!(peer = %conn.info().peer, error = %e, "connection ended with an error");
    }
    if let Err(e) = conn.finish() {
        tracing::debug!(peer = %conn.info().peer, error = %e, "error while closing");
    }
}

/// Drives the server's per-connection path (handshake checks, upgrade,
/// echo handler, close codes, closing) over an in-memory socket pair: the
/// fuzz targets and their corpus replay feed it arbitrary bytes. `first` is
/// written at once; `then`, once the server has answered (as a client
/// sends frames only after the 101); the server's output is returned.
#[doc(hidden)]
pub fn serve_bytes_for_fuzzing(first: &[u8], then: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return Vec::new();
    };
    let limits = Limits {
        handshake_timeout: Duration::from_millis(200),
        close_timeout: Duration::from_millis(200),
        max_message_size: 1 << 20,
        max_frame_size: 1 << 20,
        write_timeout: Some(Duration::from_secs(1)),
        ..Limits::default()
    };
    let Ok(shutdown) = ShutdownSignal::new() else {
        return Vec::new();
    };
    let ctx = ServerContext {
        rules: HandshakeRules::new(&limits, AccessPolicy::default(), vec!["fuzz".into()]),
        limits,
        shutdown,
    };
    let Ok(credentials) = crate::peer::PeerCredentials::of(&ours) else {
        return Vec::new();
    };
    let Ok(mut their_writer) = theirs.try_clone() else {
        return Vec::new();
    };
    let (first, then) = (first.to_vec(), then.to_vec());
    let (answered_tx, answered_rx) = std::sync::mpsc::channel();
    // Writing and reading on separate threads: the echo can fill our side
    // while we are still writing.
    let writer = std::thread::spawn(move || {
        let _ = their_writer.write_all(&first);
        if !then.is_empty() && answered_rx.recv_timeout(Duration::from_secs(1)).is_ok() {
            let _ = their_writer.write_all(&then);
        }
        let _ = their_writer.shutdown(std::net::Shutdown::Write);
    });
    let reader = std::thread::spawn(move || {
        let mut theirs = theirs;
        let mut output = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = theirs.read(&mut chunk) {
            if n == 0 {
                break;
            }
            output.extend_from_slice(&chunk[..n]);
            if !told && output.windows(4).any(|w| w == b"\r\n\r\n") {
                told = answered_tx.send(()).is_ok();
            }
        }
        output
    });
    serve_connection(
        &ctx,
        Socket::Unix(ours),
        Peer::Unix(credentials),
        &|conn: &mut Connection| {
            while let Some(message) = conn.recv()? {
                conn.send(message)?;
            }
            Ok(())
        },
    );
    let _ = writer.join();
    reader.join().unwrap_or_default()
}
