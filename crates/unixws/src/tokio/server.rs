//! The tokio server: one task per connection, the same checks and
//! refusals as the blocking server (shared in `handshake.rs`), and graceful
//! shutdown: stop accepting, flush what each connection had queued, close
//! with 1001, wait at most the drain timeout, remove the socket file.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tungstenite::error::Error as WsError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::HeaderValue;

use crate::addr::Address;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::handshake::{
    check_request, refuse_bad_request, write_plain_response, Accepted, HandshakeRules,
};
use crate::handshake::{handshake_config, is_header_too_large, HeadBuffer};
use crate::listen::AcceptBackoff;
use crate::peer::Peer;
use crate::server::{ServerBuilder, ShutdownHandle};
use crate::session::Session;
use crate::stats::{Counter, ServerStats};
use crate::stream::ShutdownSignal;
use crate::tokio::io::{AsyncHeadReader, AsyncSocket};
use crate::tokio::listener::AsyncListener;
use crate::tokio::Connection;
use tungstenite::protocol::Role;

/// Connections beyond `max_connections` that may still be in their
/// handshake (to be answered 503) before new ones are dropped unanswered.
const REFUSAL_SLACK: usize = 256;

/// A bound tokio WebSocket server.
///
/// ```no_run
/// # async fn demo() -> unixws::Result<()> {
/// let server = unixws::Server::builder("/tmp/echo.sock")?.bind_async()?;
/// server.serve(|mut conn| async move {
///     while let Some(message) = conn.recv().await? {
///         conn.send(message).await?;
///     }
///     Ok(())
/// }).await
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: AsyncListener,
    ctx: Arc<Context>,
}

#[derive(Debug)]
struct Context {
    rules: HandshakeRules,
    limits: Arc<Limits>,
    shutdown: ShutdownSignal,
    /// Connection tasks still running (in handshake or in the handler).
    tasks: AtomicUsize,
}

impl ServerBuilder {
    /// Bind the socket for the tokio server (call inside a tokio runtime).
    pub fn bind_async(self) -> Result<Server> {
        let (listener, rules, limits) = self.bind_parts()?;
        let listener = AsyncListener::new(listener).map_err(|e| {
            Error::io(
                "registering the listener with tokio (is a runtime running?)",
                e,
            )
        })?;
        let shutdown =
            ShutdownSignal::new().map_err(|e| Error::io("creating the shutdown signal", e))?;
        Ok(Server {
            listener,
            ctx: Arc::new(Context {
                rules,
                limits: Arc::new(limits),
                shutdown,
                tasks: AtomicUsize::new(0),
            }),
        })
    }
}

impl Server {
    /// The address being served (for TCP, with the real port).
    pub fn local_addr(&self) -> &Address {
        self.listener.local_addr()
    }

    /// Live counters of what this server accepted, refused and closed.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.ctx.rules.stats.clone()
    }

    /// A handle that shuts the server down (the same type as the blocking server's).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.ctx.shutdown.clone())
    }

    /// Accept connections until shut down, running `handler` on its own task
    /// for each. A connection the handler drops while open is closed (1000).
    pub async fn serve<H, F>(self, handler: H) -> Result<()>
    where
        H: Fn(Connection) -> F + Send + Sync + 'static,
        F: Future<Output = Result<()>> + Send + 'static,
    {
        self.run::<(), _, _>(None, move |conn, _| handler(conn))
            .await
    }

    /// Like [`serve`](Server::serve), with an async `gate` that sees each
    /// upgrade request (after the access policy and connection limit) before
    /// the answer is sent: it may refuse with any HTTP response (the proxy
    /// answers 502 when its backend is down), or admit the connection with
    /// a value for the handler and the subprotocol to answer with.
    pub async fn serve_gated<G, GF, T, H, F>(self, gate: G, handler: H) -> Result<()>
    where
        G: Fn(Request, Peer) -> GF + Send + Sync + 'static,
        GF: Future<Output = std::result::Result<Admitted<T>, ErrorResponse>> + Send + 'static,
        T: Send + 'static,
        H: Fn(Connection, T) -> F + Send + Sync + 'static,
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let gate: Arc<GateFn<T>> = Arc::new(move |request, peer| Box::pin(gate(request, peer)));
        let handler = Arc::new(handler);
        self.run(Some(gate), move |conn, value: Option<T>| {
            let handling = value.map(|v| handler(conn, v));
            async move {
                match handling {
                    Some(handling) => handling.await,
                    None => Ok(()),
                }
            }
        })
        .await
    }

    async fn run<T, H, F>(self, gate: Option<Arc<GateFn<T>>>, handler: H) -> Result<()>
    where
        T: Send + 'static,
        H: Fn(Connection, Option<T>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let _trimming = crate::tokio::memory::start_trimming();
        let mut shutdown = self.ctx.shutdown.waiter();
        let mut backoff = AcceptBackoff::default();
        tracing::info!(addr = %self.local_addr(), "listening");
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => {
                    backoff.reset();
                    self.ctx.rules.stats.count(Counter::Accepted);
                    pair
                }
                Err(e) => {
                    if let Some(pause) = backoff.on_error(&e) {
                        // Wait out descriptor exhaustion, but wake for shutdown.
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                    continue;
                }
            };
            let ctx = self.ctx.clone();
            if ctx.tasks.load(Ordering::SeqCst) >= ctx.limits.max_connections + REFUSAL_SLACK {
                if let Some(suppressed) = ctx.rules.flood_log.allow() {
                    tracing::warn!(%peer, suppressed, "connection flood: dropping connections unanswered");
                }
                continue;
            }
            ctx.tasks.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(connection_task(ctx, socket, peer, gate.clone(), handler));
        }
        let Server { listener, ctx } = self;
        // Dropping the listener stops accepting and removes the socket file.
        drop(listener);
        let deadline = Instant::now() + ctx.limits.drain_timeout;
        let busy =
            || ctx.tasks.load(Ordering::SeqCst) + ctx.rules.stats.open.load(Ordering::SeqCst);
        while busy() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if busy() > 0 {
            tracing::warn!(
                left = busy(),
                "drain timeout passed with connections still open; leaving them"
            );
        }
        tracing::info!(stats = ?ctx.rules.stats.snapshot(), "server stopped");
        Ok(())
    }
}

/// One connection's task. Both phases run boxed, so that the task itself
/// stays a few words: the handshake's state is freed before the handler
/// runs, and the handler's state is only what it needs.
async fn connection_task<T, H, F>(
    ctx: Arc<Context>,
    socket: AsyncSocket,
    peer: Peer,
    gate: Option<Arc<GateFn<T>>>,
    handler: Arc<H>,
) where
    T: Send + 'static,
    H: Fn(Connection, Option<T>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<()>> + Send + 'static,
{
    let upgrading = boxed_upgrade(&ctx, socket, peer, gate);
    // No binding for the connection here: it would keep its room in the
    // task while the handler runs.
    let handling = upgrading
        .await
        .map(|(conn, value)| boxed_handler(&*handler, conn, value));
    if let Some(handling) = handling {
        if let Err(e) = handling.await {
            tracing::info!(error = %e, "connection ended with an error");
        }
    }
    ctx.tasks.fetch_sub(1, Ordering::SeqCst);
    crate::tokio::memory::freed();
}

type Upgrading<'a, T> = Pin<Box<dyn Future<Output = Option<(Connection, Option<T>)>> + Send + 'a>>;

// Plain functions, not `Box::pin(f(..)).await` in the task: a temporary in
// an awaited expression keeps its space in the task for the whole await.
fn boxed_upgrade<T: Send + 'static>(
    ctx: &Context,
    socket: AsyncSocket,
    peer: Peer,
    gate: Option<Arc<GateFn<T>>>,
) -> Upgrading<'_, T> {
    Box::pin(upgrade(ctx, socket, peer, gate))
}

fn boxed_handler<T, H, F>(handler: &H, conn: Connection, value: Option<T>) -> Pin<Box<F>>
where
    H: Fn(Connection, Option<T>) -> F,
{
    Box::pin(handler(conn, value))
}

/// The upgrade: checks, refusals, handshake timeout; the connection if it succeeded.
async fn upgrade<T: Send + 'static>(
    ctx: &Context,
    socket: AsyncSocket,
    peer: Peer,
    gate: Option<Arc<GateFn<T>>>,
) -> Option<(Connection, Option<T>)> {
    let limits = &*ctx.limits;
    let started = tokio::time::Instant::now();
    // A second descriptor to answer requests tungstenite refuses (400, 426, 431).
    // Without it (descriptors exhausted) a refused request is only dropped.
    let raw = socket.try_dup().ok();
    let mut reader = AsyncHeadReader::new(socket, HeadBuffer::new(limits.max_header_bytes));
    let mut admitted = None;
    if let Some(gate) = gate {
        let run_gate = ask_gate(ctx, &mut reader, &peer, &*gate);
        match tokio::time::timeout(limits.handshake_timeout, run_gate).await {
            Ok(Ok(a)) => admitted = a,
            Ok(Err(refusal)) => {
                let status = refusal.status().as_u16();
                tracing::info!(%peer, status, "refused before the upgrade");
                if let Some(raw) = raw {
                    let body = refusal.body().clone().unwrap_or_default();
                    write_plain_response(raw, status, body.trim_end(), &[]);
                }
                return None;
            }
            Err(_) => {
                ctx.rules.stats.count(Counter::BadHandshake);
                tracing::info!(%peer, timeout = ?limits.handshake_timeout, "handshake timeout; dropping the connection");
                return None;
            }
        }
    }
    let subprotocol = admitted
        .as_ref()
        .and_then(|a: &Admitted<T>| a.subprotocol.clone());
    let accepted: Mutex<Option<Accepted>> = Mutex::new(None);
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        check_request(&ctx.rules, &peer, request, response).map(|(mut response, mut a)| {
            if let Some(p) =
                subprotocol.and_then(|p| HeaderValue::from_str(&p).ok().map(|v| (p, v)))
            {
                response.headers_mut().insert("Sec-WebSocket-Protocol", p.1);
                a.subprotocol = Some(p.0);
            }
            *accepted.lock().unwrap_or_else(PoisonError::into_inner) = Some(a);
            response
        })
    };
    let mut shutdown = ctx.shutdown.waiter();
    // Boxed: the handshake's state is large and must not stay in the
    // connection task's memory for the life of the connection.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        reader,
        callback,
        Some(handshake_config()),
    ));
    let result = tokio::select! {
        biased;
        _ = &mut shutdown => {
            tracing::debug!(%peer, "shutdown during the handshake");
            return None;
        }
        result = tokio::time::timeout_at(started + limits.handshake_timeout, handshake) => result,
    };
    let ws = match result {
        Ok(Ok(ws)) => ws,
        Err(_) => {
            ctx.rules.stats.count(Counter::BadHandshake);
            tracing::info!(%peer, timeout = ?limits.handshake_timeout, "handshake timeout; dropping the connection");
            return None;
        }
        Ok(Err(WsError::Http(response))) => {
            tracing::debug!(%peer, status = %response.status(), "handshake refused");
            return None;
        }
        Ok(Err(WsError::Io(e))) if is_header_too_large(&e) => {
            ctx.rules.stats.count(Counter::BadHandshake);
            tracing::info!(%peer, limit = limits.max_header_bytes, "handshake request too large; answering 431");
            if let Some(raw) = raw {
                write_plain_response(raw, 431, "request header too large", &[]);
            }
            return None;
        }
        Ok(Err(e)) => {
            ctx.rules.stats.count(Counter::BadHandshake);
            refuse_bad_request(raw, &peer, &e);
            return None;
        }
    };
    drop(raw);
    let Some(accepted) = accepted
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    else {
        tracing::error!(%peer, "handshake finished without passing the callback; dropping");
        return None;
    };
    let AsyncHeadReader { socket, head } = ws.into_inner();
    let session =
        Session::new(Role::Server, limits, None, Instant::now()).with_initial(&head.into_tail());
    let (info, slot) = accepted.into_info(peer);
    ctx.rules.stats.count(Counter::Upgraded);
    let conn = Connection::new(socket, session, info, ctx.limits.clone()).serving(
        shutdown,
        slot,
        ctx.rules.stats.clone(),
    );
    Some((conn, admitted.map(|a| a.value)))
}

/// What a gate lets through: a value for the handler and, optionally, the
/// subprotocol to answer with (for example the one a backend chose).
#[derive(Debug)]
pub struct Admitted<T> {
    /// Handed to the handler with the connection.
    pub value: T,
    /// The `Sec-WebSocket-Protocol` to answer with, instead of the server's own choice.
    pub subprotocol: Option<String>,
}

type GateFuture<T> =
    Pin<Box<dyn Future<Output = std::result::Result<Admitted<T>, ErrorResponse>> + Send>>;
type GateFn<T> = dyn Fn(Request, Peer) -> GateFuture<T> + Send + Sync;

/// Reads the request head (tungstenite reads it again after the gate)
/// and asks the gate about it. A request that does not parse, or that the
/// policy or the connection limit will refuse anyway, skips the gate:
/// tungstenite and `check_request` answer it as for any server.
async fn ask_gate<T>(
    ctx: &Context,
    reader: &mut AsyncHeadReader,
    peer: &Peer,
    gate: &GateFn<T>,
) -> std::result::Result<Option<Admitted<T>>, ErrorResponse> {
    use tungstenite::handshake::machine::TryParse;
    let complete = reader.read_head().await;
    let request = match reader.head.head() {
        Some(head) if complete => match Request::try_parse(head) {
            Ok(Some((_, request))) => Some(request),
            _ => None,
        },
        _ => None,
    };
    reader.head.rewind();
    let Some(request) = request else {
        return Ok(None);
    };
    let busy = ctx.rules.stats.open.load(Ordering::SeqCst) >= ctx.rules.max_connections;
    if busy || !ctx.rules.policy.allows_peer(peer) {
        return Ok(None);
    }
    gate(request, peer.clone()).await.map(Some)
}
