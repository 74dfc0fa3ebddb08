//! axum on a unixws socket (feature `axum`): most Rust services are axum
//! routers, and this module lets one serve on a Unix socket with what
//! unixws gives its own servers.
//!
//! - [`Listener`] is axum's `serve::Listener` over a socket bound by
//!   [`unixws::Listener`](crate::Listener): mode, owner and group set with
//!   no window, the stale-socket probe, and the file removed when the
//!   listener is dropped. Its address type is [`Peer`], so handlers take
//!   `ConnectInfo<Peer>` (uid, gid, pid, groups) when the router is served
//!   with `into_make_service_with_connect_info::<Peer>()`.
//! - [`AccessPolicyLayer`] is an [`AccessPolicy`] as a tower layer: a peer
//!   it refuses gets 403 (with `X-Unixws-Refused-By: access-policy`, as
//!   unixws's own servers answer) before the router sees the request.
//! - [`WebSocketUpgrade`] is an extractor like axum's own, whose upgrade
//!   gives a unixws [`Connection`]: unixws's
//!   codec, [`Limits`] and keepalive, and its close rules.
//! - [`Shutdown`] keeps graceful shutdown whole. `axum::serve` with
//!   `with_graceful_shutdown` returns once its HTTP connections are done,
//!   but an upgraded connection is no longer HTTP: without this, a program
//!   that returns from `main` resets every open WebSocket ("connection
//!   reset without closing handshake"). With it, each open connection
//!   sends what was queued, closes with 1001, and
//!   [`Shutdown::drain`] waits for the last one.
//!
//! ```no_run
//! use axum::{extract::ConnectInfo, response::Response, routing::get, Extension, Router};
//! use unixws::axum::{AccessPolicyLayer, Listener, Shutdown, WebSocketUpgrade};
//! use unixws::{AccessPolicy, BindOptions, Message, Peer};
//!
//! async fn ws(upgrade: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
//!     upgrade.on_upgrade(move |mut conn| async move {
//!         conn.send(Message::text(format!("hello, {peer}"))).await?;
//!         while let Some(message) = conn.recv().await? {
//!             conn.send(message).await?;
//!         }
//!         Ok(())
//!     })
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::new()?;
//! let app = Router::new()
//!     .route("/ws", get(ws))
//!     .layer(AccessPolicyLayer::new(AccessPolicy::new().allow_current_user()))
//!     .layer(Extension(shutdown.clone()));
//! let listener = Listener::bind("/run/app.sock", &BindOptions::new().mode(0o660))?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
//!     .with_graceful_shutdown(shutdown.on(async { tokio::signal::ctrl_c().await.ok(); }))
//!     .await?;
//! shutdown.drain(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

use std::future::{Future, Ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::axum::body::Body;
use ::axum::extract::connect_info::Connected;
use ::axum::extract::{ConnectInfo, FromRequestParts};
use ::axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, Request, StatusCode};
use ::axum::response::{IntoResponse, Response};
use ::axum::serve::IncomingStream;
use futures_util::future::Either;
use hyper_util::rt::TokioIo;
use tungstenite::protocol::Role;

use crate::addr::{Address, ToAddress};
use crate::backoff::AcceptBackoff;
use crate::codec::deflate::Agreed;
use crate::config::Limits;
use crate::connection::ConnectionInfo;
use crate::error::{Error, Result};
use crate::handshake::{
    application_headers, policy_refusal, ActiveSlot, ACCESS_POLICY, REFUSED_BY,
};
use crate::listen::{BindOptions, SocketFileGuard};
use crate::peer::{Peer, PeerCredentials};
use crate::policy::AccessPolicy;
use crate::server_core::HandlerResult;
use crate::session::Session;
use crate::stats::{ServerStats, StatsSnapshot};
use crate::stream::ShutdownSignal;
use crate::tokio::verdict::Judged;
use crate::tokio::{AsyncSocket, Connection};

/// A safely bound Unix socket as axum's listener (see the module doc).
/// Dropping it (when `axum::serve` returns) removes the socket file.
#[derive(Debug)]
pub struct Listener {
    socket: tokio::net::UnixListener,
    address: Address,
    _file: SocketFileGuard,
    backoff: AcceptBackoff,
}

impl Listener {
    /// Binds `addr` (a path, `unix:PATH` or `@abstract`) with `options`, on
    /// the current tokio runtime ([`Error::NoRuntime`] outside one).
    pub fn bind(addr: impl ToAddress, options: &BindOptions) -> Result<Self> {
        let addr = addr.to_address()?;
        Self::from_listener(crate::Listener::bind(&addr, options)?)
    }

    /// A listener [`unixws::Listener::bind`](crate::Listener::bind) made
    /// (or one from systemd's socket activation). Fails on a TCP listener:
    /// axum serves those with `tokio::net::TcpListener`.
    pub fn from_listener(listener: crate::Listener) -> Result<Self> {
        let address = listener.local_addr().clone();
        let (socket, file) = listener.into_tokio_unix()?;
        Ok(Self {
            socket,
            address,
            _file: file,
            backoff: AcceptBackoff::default(),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> &Address {
        &self.address
    }
}

impl ::axum::serve::Listener for Listener {
    type Io = tokio::net::UnixStream;
    type Addr = Peer;

    /// The next connection and its peer's credentials. Accept errors
    /// (EMFILE: descriptors ran out) pause 10 ms, doubling to 1 s, as
    /// unixws's servers do, and are logged at most once a second.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.socket.accept().await {
                Ok((socket, _)) => {
                    self.backoff.reset();
                    match PeerCredentials::of(&socket) {
                        Ok(credentials) => return (socket, Peer::Unix(credentials)),
                        // The peer is gone already (or the socket is not
                        // a Unix stream, which a Unix listener never gives).
                        Err(e) => {
                            tracing::debug!(error = %e, "no credentials for a new connection; dropped")
                        }
                    }
                }
                Err(e) => {
                    if let Some(pause) = self.backoff.on_error(&e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// This server's own credentials: what its peers read as theirs.
    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer::Unix(PeerCredentials::new(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
            std::process::id().try_into().unwrap_or(i32::MAX),
        )))
    }
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// An [`AccessPolicy`] as a tower layer (see the module doc). It reads the
/// peer from `ConnectInfo<Peer>`; a router served without it has no peer,
/// and a policy with rules then refuses everyone (the body says so).
#[derive(Debug, Clone)]
pub struct AccessPolicyLayer {
    policy: Arc<AccessPolicy>,
}

impl AccessPolicyLayer {
    /// The layer of `policy`.
    pub fn new(policy: AccessPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower_layer::Layer<S> for AccessPolicyLayer {
    type Service = AccessPolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessPolicyService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service [`AccessPolicyLayer`] wraps around a router or handler.
#[derive(Debug, Clone)]
pub struct AccessPolicyService<S> {
    inner: S,
    policy: Arc<AccessPolicy>,
}

impl<S, B> tower_service::Service<Request<B>> for AccessPolicyService<S>
where
    S: tower_service::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<std::result::Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if self.policy.is_open() {
            return Either::Left(self.inner.call(request));
        }
        let body = match request.extensions().get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(peer)) if self.policy.allows_peer(peer) => {
                return Either::Left(self.inner.call(request));
            }
            Some(ConnectInfo(peer)) => {
                tracing::warn!(%peer, "peer rejected by the access policy (403)");
                policy_refusal(peer)
            }
            None => {
                tracing::error!("AccessPolicyLayer found no ConnectInfo<Peer>; refusing (403)");
                "no peer credentials: serve the router with \
                 into_make_service_with_connect_info::<unixws::Peer>()"
                    .to_string()
            }
        };
        let mut refusal = (StatusCode::FORBIDDEN, format!("{body}\n")).into_response();
        refusal
            .headers_mut()
            .insert(REFUSED_BY, HeaderValue::from_static(ACCESS_POLICY));
        Either::Right(std::future::ready(Ok(refusal)))
    }
}

/// Graceful shutdown for the WebSockets of an axum server (see the module
/// doc). Clones share one signal. Add it to the router as an
/// `Extension(shutdown.clone())`: each [`WebSocketUpgrade`] then closes
/// its connection with 1001 when it is raised, and counts it for
/// [`drain`](Shutdown::drain).
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: ShutdownSignal,
    stats: Arc<ServerStats>,
}

impl Shutdown {
    /// A shutdown not raised yet.
    pub fn new() -> Result<Self> {
        let signal = ShutdownSignal::new()
            .map_err(|e| Error::io("creating the shutdown signal (a socket pair)", e))?;
        Ok(Self {
            signal,
            stats: Arc::default(),
        })
    }

    /// Raises it: every open connection sends what was queued and closes
    /// with 1001 ("going away").
    pub fn raise(&self) {
        self.signal.raise();
    }

    /// A future for axum's `with_graceful_shutdown`: it completes, and
    /// raises the shutdown, when `signal` completes (Ctrl-C, SIGTERM) or
    /// when [`raise`](Shutdown::raise) is called.
    pub fn on<F>(&self, signal: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future + Send + 'static,
    {
        let this = self.clone();
        async move {
            tokio::select! {
                _ = signal => {}
                () = this.signal.waiter() => {}
            }
            this.raise();
        }
    }

    /// Waits until every connection upgraded under this shutdown has
    /// ended, at most `within`; false if some were still open then (their
    /// peers did not answer the close). Call it from one task.
    pub async fn drain(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.stats.drain.idle())
            .await
            .is_ok()
    }

    /// The connections this shutdown counts: open now, and upgraded in all.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

/// Why a request could not be upgraded: the status it is answered with,
/// and one line that says what was wrong.
#[derive(Debug)]
pub struct WebSocketUpgradeRejection {
    status: StatusCode,
    message: &'static str,
}

impl std::fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message)
    }
}

impl std::error::Error for WebSocketUpgradeRejection {}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.message)).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

fn reject(status: StatusCode, message: &'static str) -> WebSocketUpgradeRejection {
    WebSocketUpgradeRejection { status, message }
}

/// An axum extractor for a WebSocket upgrade whose connection is unixws's
/// (see the module doc). It works under `axum::serve` with [`Listener`] or
/// a `tokio::net::TcpListener`.
pub struct WebSocketUpgrade {
    accept: HeaderValue,
    upgrade: hyper::upgrade::OnUpgrade,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    offered: Vec<String>,
    subprotocol: Option<String>,
    /// The request's `Sec-WebSocket-Extensions` values (permessage-deflate
    /// offers, answered when the limits ask for compression).
    extensions: Vec<String>,
    compression: Option<Agreed>,
    limits: Limits,
    shutdown: Option<Shutdown>,
}

impl std::fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("path", &self.path)
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

/// True when the comma-separated `name` header lists `token`.
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(reject(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET request",
            ));
        }
        let headers = &parts.headers;
        if !lists(headers, header::CONNECTION, "upgrade")
            || !lists(headers, header::UPGRADE, "websocket")
        {
            return Err(reject(
                StatusCode::UPGRADE_REQUIRED,
                "this is a WebSocket endpoint: send Connection: upgrade and Upgrade: websocket",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v != "13")
        {
            return Err(reject(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version: this server speaks 13",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "missing Sec-WebSocket-Key header",
            ));
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept)
            .map_err(|_| reject(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key header"))?;
        let offered = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let extensions = headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let headers = application_headers(headers);
        let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(reject(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded (serve with axum::serve over HTTP/1.1)",
            ));
        };
        Ok(Self {
            accept,
            upgrade,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers,
            offered,
            subprotocol: None,
            extensions,
            compression: None,
            limits: Limits::default(),
            shutdown: parts.extensions.get::<Shutdown>().cloned(),
        })
    }
}

impl WebSocketUpgrade {
    /// The limits and timeouts of the connection (default:
    /// [`Limits::default`]); with [`Limits::compression`], a
    /// permessage-deflate offer is accepted.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The subprotocols this server speaks, in order of preference: the
    /// first the client offered is answered in `Sec-WebSocket-Protocol`
    /// (and is the connection's [`ConnectionInfo::subprotocol`]).
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.subprotocol = protocols
            .into_iter()
            .map(Into::into)
            .find(|p| self.offered.contains(p));
        self
    }

    /// Answers 101 and runs `handler` on the connection in a task of its
    /// own. A handler that fails closes its connection with 1011, as
    /// unixws's servers do; one that returns leaves it to close with 1000.
    pub fn on_upgrade<H, F>(mut self, handler: H) -> Response
    where
        H: FnOnce(Connection) -> F + Send + 'static,
        F: Future<Output = HandlerResult> + Send + 'static,
    {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept.clone());
        if let Some(v) = self
            .subprotocol
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
        if self.limits.compression {
            let offers = self.extensions.iter().map(String::as_str);
            if let Some((agreed, answer)) = crate::codec::deflate::server_accept(offers) {
                if let Ok(v) = HeaderValue::from_str(&answer) {
                    headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
                    self.compression = Some(agreed);
                }
            }
        }
        // Counted from the 101 on, so a drain that starts meanwhile waits.
        let slot = self
            .shutdown
            .as_ref()
            .map(|s| ActiveSlot::enter(s.stats.clone()).0);
        let running: Pin<Box<dyn Future<Output = HandlerResult> + Send>> = Box::pin(async move {
            let Some(conn) = self.into_connection(slot).await else {
                return Ok(());
            };
            handler(conn).await
        });
        tokio::spawn(Judged::new(running));
        response
    }

    /// The upgraded socket as a unixws connection (`None`, logged, when
    /// the client went away or the server is not one axum runs on a Unix
    /// or TCP socket).
    async fn into_connection(self, slot: Option<ActiveSlot>) -> Option<Connection> {
        let upgraded = match self.upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "the upgrade did not complete");
                return None;
            }
        };
        let (socket, read_ahead) = match unwrap_socket(upgraded) {
            Ok(parts) => parts,
            Err(()) => {
                tracing::error!(
                    "the upgraded connection is neither a Unix nor a TCP socket; \
                     serve with axum::serve on unixws::axum::Listener or a TcpListener"
                );
                return None;
            }
        };
        let peer = match socket.peer() {
            Ok(peer) => peer,
            Err(e) => {
                tracing::debug!(error = %e, "the peer left during the upgrade");
                return None;
            }
        };
        let info = ConnectionInfo {
            address: None,
            peer,
            path: self.path,
            query: self.query,
            headers: self.headers,
            subprotocol: self.subprotocol,
        };
        let session = Session::new(Role::Server, Arc::new(self.limits), None, Instant::now())
            .with_compression(self.compression)
            .with_initial(&read_ahead);
        let conn = Connection::new(socket, session, info);
        Some(match (self.shutdown, slot) {
            (Some(shutdown), Some(slot)) => {
                shutdown.stats.count(crate::stats::Counter::Upgraded);
                conn.serving(shutdown.signal.waiter(), slot, shutdown.stats)
            }
            _ => conn,
        })
    }
}

/// The socket under a hyper upgrade, with the bytes hyper read past the
/// request (the client's first frames, if it sent them at once).
fn unwrap_socket(
    upgraded: hyper::upgrade::Upgraded,
) -> std::result::Result<(AsyncSocket, bytes::Bytes), ()> {
    use hyper_util::server::conn::auto::upgrade::downcast;
    let upgraded = match downcast::<TokioIo<tokio::net::UnixStream>>(upgraded) {
        Ok(p) => return Ok((AsyncSocket::Unix(p.io.into_inner()), p.read_buf)),
        Err(u) => u,
    };
    let upgraded = match downcast::<TokioIo<tokio::net::TcpStream>>(upgraded) {
        Ok(p) => return Ok((AsyncSocket::Tcp(p.io.into_inner()), p.read_buf)),
        Err(u) => u,
    };
    // hyper's own http1 server, without hyper-util's auto builder.
    let upgraded = match upgraded.downcast::<TokioIo<tokio::net::UnixStream>>() {
        Ok(p) => return Ok((AsyncSocket::Unix(p.io.into_inner()), p.read_buf)),
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(p) => Ok((AsyncSocket::Tcp(p.io.into_inner()), p.read_buf)),
        Err(_) => Err(()),
    }
}
