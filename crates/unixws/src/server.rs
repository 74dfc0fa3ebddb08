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
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, StatusCode};

use crate::addr::{Address, Endpoint, ToAddress};
use crate::config::Limits;
use crate::connection::{Connection, ConnectionInfo};
use crate::error::{Error, Result};
use crate::listen::{BindOptions, Listener};
use crate::peer::Peer;
use crate::policy::AccessPolicy;
use crate::stream::{Interrupt, ShutdownSignal, Socket, Stream};

/// Connections beyond `max_connections` that may still be in their
/// handshake (to be answered 503) before new ones are dropped unanswered:
/// this caps the threads a connection flood can start.
const REFUSAL_SLACK: usize = 64;

/// Everything a server needs besides the handler.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    addr: Address,
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
            bind: BindOptions::default(),
            limits: Limits::default(),
            policy: AccessPolicy::default(),
            subprotocols: Vec::new(),
        })
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
        let ctx = ServerContext {
            limits: self.limits,
            policy: self.policy,
            subprotocols: self.subprotocols,
            shutdown: ShutdownSignal::new()
                .map_err(|e| Error::io("creating the shutdown signal", e))?,
            active: Arc::new(AtomicUsize::new(0)),
        };
        if !self.addr.is_unix() && !ctx.policy.is_open() {
            return Err(Error::Config(format!(
                "an access policy (--allow-uid/--allow-gid) needs a Unix socket: TCP peers on {} have no credentials",
                self.addr.endpoint_display()
            )));
        }
        let listener = Listener::bind(&self.addr, &self.bind)?;
        if matches!(self.addr.endpoint(), Endpoint::Abstract(_)) && ctx.policy.is_open() {
            tracing::warn!(addr = %self.addr, "abstract socket without an access policy: any local process can connect; add --allow-uid/--allow-gid");
        }
        Ok(Server {
            listener,
            ctx: Arc::new(ctx),
        })
    }
}

#[derive(Debug)]
struct ServerContext {
    limits: Limits,
    policy: AccessPolicy,
    subprotocols: Vec<String>,
    shutdown: ShutdownSignal,
    active: Arc<AtomicUsize>,
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

    /// A handle that shuts the server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            signal: self.ctx.shutdown.clone(),
        }
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
                tracing::warn!(%peer, "connection flood: dropping a connection unanswered");
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
        tracing::info!("server stopped");
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

/// Backs off on accept errors such as EMFILE so the loop never spins, and
/// logs at most once a second.
#[derive(Default)]
struct AcceptBackoff {
    pause: Option<Duration>,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.pause = None;
    }

    fn on_error(&mut self, e: &io::Error) -> Option<Duration> {
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return None;
        }
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            tracing::warn!(error = %e, suppressed = self.suppressed, "accept failed; backing off (raise `ulimit -n` if descriptors run out)");
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let next = self.pause.map_or(Duration::from_millis(10), |p| {
            (p * 2).min(Duration::from_secs(1))
        });
        self.pause = Some(next);
        Some(next)
    }
}

/// Decrements the active-connection count when the connection ends.
struct ActiveSlot(Arc<AtomicUsize>);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the upgrade callback learned, handed out of tungstenite's `FnOnce`.
struct Accepted {
    slot: ActiveSlot,
    path: String,
    query: Option<String>,
    headers: tungstenite::http::HeaderMap,
    subprotocol: Option<String>,
}

fn serve_connection<H>(ctx: &ServerContext, socket: Socket, peer: Peer, handler: &H)
where
    H: Fn(&mut Connection) -> Result<()>,
{
    let limits = &ctx.limits;
    let raw = match socket.try_clone() {
        Ok(raw) => raw,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot duplicate the socket; dropping the connection");
            return;
        }
    };
    let _ = socket.set_write_timeout(limits.write_timeout.or(Some(limits.handshake_timeout)));
    let mut stream = Stream::new(socket);
    stream.set_deadline(Some(Instant::now() + limits.handshake_timeout));
    stream.set_read_budget(Some(limits.max_header_bytes));
    stream.set_shutdown(Some(ctx.shutdown.clone()));

    let accepted: RefCell<Option<Accepted>> = RefCell::new(None);
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        let result = check_request(ctx, &peer, request, response);
        if let Ok((_, a)) = &result {
            tracing::debug!(%peer, path = %a.path, "handshake accepted");
        }
        result.map(|(response, a)| {
            *accepted.borrow_mut() = Some(a);
            response
        })
    };
    let result =
        tungstenite::accept_hdr_with_config(stream, callback, Some(limits.websocket_config()));
    let mut ws = match result {
        Ok(ws) => ws,
        Err(HandshakeError::Interrupted(mut mid)) => {
            match mid.get_mut().get_mut().take_interrupt() {
                Some(Interrupt::BudgetExhausted) => {
                    tracing::info!(%peer, limit = limits.max_header_bytes, "handshake request too large; answering 431");
                    write_plain_response(raw, 431, "request header too large", &[]);
                }
                Some(Interrupt::Deadline) => {
                    tracing::info!(%peer, timeout = ?limits.handshake_timeout, "handshake timeout; dropping the connection");
                }
                _ => tracing::debug!(%peer, "shutdown during the handshake"),
            }
            return;
        }
        Err(HandshakeError::Failure(WsError::Http(response))) => {
            tracing::debug!(%peer, status = %response.status(), "handshake refused");
            return;
        }
        Err(HandshakeError::Failure(e)) => {
            refuse_bad_request(raw, &peer, &e);
            return;
        }
    };
    let Some(accepted) = accepted.into_inner() else {
        tracing::error!(%peer, "handshake finished without passing the callback; dropping");
        return;
    };
    ws.get_mut().set_deadline(None);
    ws.get_mut().set_read_budget(None);
    let info = ConnectionInfo {
        peer,
        path: accepted.path,
        query: accepted.query,
        headers: accepted.headers,
        subprotocol: accepted.subprotocol,
    };
    let mut conn = Connection::new(ws, info, limits.clone(), None);
    let _slot = accepted.slot;
    if let Err(e) = handler(&mut conn) {
        tracing::info!(peer = %conn.info().peer, error = %e, "connection ended with an error");
    }
    if let Err(e) = conn.finish() {
        tracing::debug!(peer = %conn.info().peer, error = %e, "error while closing");
    }
}

// The error type is fixed by tungstenite's `Callback`.
#[allow(clippy::result_large_err)]
fn check_request(
    ctx: &ServerContext,
    peer: &Peer,
    request: &Request,
    mut response: Response,
) -> std::result::Result<(Response, Accepted), ErrorResponse> {
    if request.headers().len() > ctx.limits.max_headers {
        return Err(error_response(431, "too many header lines"));
    }
    if !ctx.policy.allows_peer(peer) {
        match peer.credentials() {
            Some(c) => tracing::warn!(
                uid = c.uid,
                gid = c.gid,
                pid = c.pid,
                "peer rejected by the access policy (403)"
            ),
            None => tracing::warn!(%peer, "peer rejected by the access policy (403)"),
        }
        let body = match peer.credentials() {
            Some(c) => format!(
                "uid {} is not allowed by this server's access policy",
                c.uid
            ),
            None => "this peer is not allowed by this server's access policy".to_string(),
        };
        return Err(error_response(403, &body));
    }
    let slot = ActiveSlot(ctx.active.clone());
    if ctx.active.fetch_add(1, Ordering::SeqCst) >= ctx.limits.max_connections {
        drop(slot);
        tracing::warn!(%peer, max = ctx.limits.max_connections, "max connections reached (503)");
        let mut r = error_response(503, "too many connections; try again later");
        r.headers_mut()
            .insert("Retry-After", HeaderValue::from_static("1"));
        return Err(r);
    }
    let subprotocol = choose_subprotocol(&ctx.subprotocols, request);
    if let Some(p) = &subprotocol {
        if let Ok(v) = HeaderValue::from_str(p) {
            response.headers_mut().insert("Sec-WebSocket-Protocol", v);
        }
    }
    let uri = request.uri();
    Ok((
        response,
        Accepted {
            slot,
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: request.headers().clone(),
            subprotocol,
        },
    ))
}

fn choose_subprotocol(ours: &[String], request: &Request) -> Option<String> {
    let offered: Vec<&str> = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    ours.iter().find(|p| offered.contains(&p.as_str())).cloned()
}

fn error_response(status: u16, body: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(format!("{body}\n")));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = r.headers_mut();
    headers.insert(
        "Content-Type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("Connection", HeaderValue::from_static("close"));
    if let Ok(len) = HeaderValue::from_str(&(body.len() + 1).to_string()) {
        headers.insert("Content-Length", len);
    }
    r
}

/// Answers a request tungstenite could not accept: 426 for a wrong version,
/// 431 for too many headers, 400 otherwise; nothing for I/O errors.
fn refuse_bad_request(raw: Socket, peer: &Peer, e: &WsError) {
    let (status, extra): (u16, &[(&str, &str)]) = match e {
        WsError::Protocol(ProtocolError::MissingSecWebSocketVersionHeader) => {
            (426, &[("Sec-WebSocket-Version", "13")])
        }
        WsError::Capacity(CapacityError::TooManyHeaders) => (431, &[]),
        WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => {
            tracing::debug!(%peer, error = %e, "connection lost during the handshake");
            return;
        }
        WsError::Protocol(ProtocolError::HandshakeIncomplete) => {
            tracing::debug!(%peer, "peer closed before completing the handshake");
            return;
        }
        _ => (400, &[]),
    };
    tracing::info!(%peer, error = %e, status, "bad handshake request");
    write_plain_response(raw, status, &e.to_string(), extra);
}

fn write_plain_response(mut raw: Socket, status: u16, body: &str, extra: &[(&str, &str)]) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len() + 1
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = raw.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = raw
        .write_all(head.as_bytes())
        .and_then(|_| raw.write_all(body.as_bytes()))
        .and_then(|_| raw.write_all(b"\n"));
    let _ = raw.shutdown(std::net::Shutdown::Write);
}
