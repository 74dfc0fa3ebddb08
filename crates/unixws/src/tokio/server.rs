//! The tokio server: one task per connection, the same checks and
//! refusals as the blocking server (shared in `handshake.rs`), and graceful
//! shutdown: stop accepting, flush what each connection had queued, close
//! with 1001, wait at most the drain timeout, remove the socket file.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::HeaderValue;
use tungstenite::protocol::Role;

use crate::addr::{Address, ToAddress};
use crate::backoff::AcceptBackoff;
use crate::error::{Error, Result};
use crate::handshake::{
    check_request, handshake_config, write_plain_response, write_response, Accepted, HeadBuffer,
};
use crate::peer::Peer;
use crate::server::{ServerBuilder, ShutdownHandle};
use crate::server_core::{Admission, HandlerResult, InFlight, Outcome, ServerCore};
use crate::session::Session;
use crate::stats::ServerStats;
use crate::tokio::io::{AsyncHeadReader, AsyncSocket};
use crate::tokio::listener::AsyncListener;
use crate::tokio::verdict::Judged;
use crate::tokio::Connection;

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
    core: Arc<ServerCore>,
}

impl ServerBuilder {
    /// Bind the socket for the tokio server. Call it inside a tokio
    /// runtime with I/O enabled; outside any runtime it fails with
    /// [`Error::NoRuntime`] before anything is bound.
    pub fn bind_async(self) -> Result<Server> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime {
                call: "ServerBuilder::bind_async",
            });
        }
        let (listener, rules, limits) = self.bind_parts()?;
        let listener = AsyncListener::new(listener).map_err(|e| {
            Error::io(
                "registering the listener with tokio (is a runtime running?)",
                e,
            )
        })?;
        Ok(Server {
            listener,
            core: ServerCore::new(rules, limits)?,
        })
    }
}

impl Server {
    /// Bind `addr` with default options (inside a tokio runtime).
    pub fn bind(addr: impl ToAddress) -> Result<Self> {
        ServerBuilder::new(addr)?.bind_async()
    }

    /// Options for a server on `addr`; finish with
    /// [`bind_async`](ServerBuilder::bind_async). The same builder as
    /// [`unixws::Server::builder`](crate::Server::builder).
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

    /// A handle that shuts the server down (the same type as the blocking server's).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.core.shutdown_handle()
    }

    /// Accept connections until shut down, running `handler` on its own task
    /// for each. A connection the handler drops while open is closed (1000).
    pub async fn serve<H, F>(self, handler: H) -> Result<()>
    where
        H: Fn(Connection) -> F + Send + Sync + 'static,
        F: Future<Output = HandlerResult> + Send + 'static,
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
        F: Future<Output = HandlerResult> + Send + 'static,
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
        F: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let _trimming = crate::tokio::memory::start_trimming();
        let mut shutdown = self.core.shutdown.waiter();
        let mut backoff = AcceptBackoff::default();
        tracing::info!(addr = %self.local_addr(), "listening");
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            match self.core.admit(accepted, &mut backoff) {
                Admission::Serve(socket, peer, in_flight) => {
                    let task = connection_task(
                        self.core.clone(),
                        socket,
                        peer,
                        gate.clone(),
                        handler.clone(),
                        in_flight,
                    );
                    tokio::spawn(task);
                }
                Admission::Again(None) => {}
                Admission::Again(Some(pause)) => {
                    // Wait out descriptor exhaustion, but wake for shutdown.
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        let Server { listener, core } = self;
        // Dropping the listener stops accepting and removes the socket file.
        drop(listener);
        let _ = tokio::time::timeout(core.limits.drain_timeout, core.drained()).await;
        core.stopped();
        Ok(())
    }
}

/// One connection's upgrade task. The handshake runs boxed, so that its
/// state is freed when it ends; the handler then runs as a task of its own
/// (its future inside the task's cell, with no box and no upgrade state
/// beside it: with the other savings, 1.85 KiB per idle `unixws serve
/// --echo` connection; boxed inside this task, the handler cost 0.1 KiB
/// more).
async fn connection_task<T, H, F>(
    core: Arc<ServerCore>,
    socket: AsyncSocket,
    peer: Peer,
    gate: Option<Arc<GateFn<T>>>,
    handler: Arc<H>,
    in_flight: InFlight,
) where
    T: Send + 'static,
    H: Fn(Connection, Option<T>) -> F + Send + Sync + 'static,
    F: Future<Output = HandlerResult> + Send + 'static,
{
    let upgrading = boxed_upgrade(&core, socket, peer, gate);
    // No binding for the connection here: it would keep its room in the
    // task while the handler runs.
    let Some(handling) = upgrading.await.map(|(conn, value)| handler(conn, value)) else {
        drop(in_flight);
        crate::tokio::memory::freed();
        return;
    };
    // `map`, not an `async fn` that awaits `handling`: such a future keeps
    // room for `handling` twice (the argument and the awaited future).
    // `Judged` closes a connection its failed handler dropped with 1011
    // (and logs the error).
    tokio::spawn(futures_util::FutureExt::map(
        Judged::new(handling),
        move |()| {
            drop(in_flight);
            crate::tokio::memory::freed();
        },
    ));
}

type Upgrading<'a, T> = Pin<Box<dyn Future<Output = Option<(Connection, Option<T>)>> + Send + 'a>>;

// A plain function, not `Box::pin(f(..)).await` in the task: a temporary
// in an awaited expression keeps its space in the task for the whole await.
fn boxed_upgrade<T: Send + 'static>(
    core: &ServerCore,
    socket: AsyncSocket,
    peer: Peer,
    gate: Option<Arc<GateFn<T>>>,
) -> Upgrading<'_, T> {
    Box::pin(upgrade(core, socket, peer, gate))
}

/// The upgrade: checks, refusals, handshake timeout; the connection if it succeeded.
async fn upgrade<T: Send + 'static>(
    core: &ServerCore,
    socket: AsyncSocket,
    peer: Peer,
    gate: Option<Arc<GateFn<T>>>,
) -> Option<(Connection, Option<T>)> {
    let limits = &*core.limits;
    let started = tokio::time::Instant::now();
    // A second descriptor to answer requests tungstenite refuses (400, 426, 431).
    // Without it (descriptors exhausted) a refused request is only dropped.
    let raw = socket.try_dup().ok();
    let mut reader = AsyncHeadReader::new(socket, HeadBuffer::new(limits.max_header_bytes));
    if core.rules.health_path.is_some() {
        let deadline = started + limits.handshake_timeout;
        if let Ok(true) = tokio::time::timeout_at(deadline, reader.read_head()).await {
            if let Some((status, body)) = reader.head.head().and_then(|h| core.health(h, &peer)) {
                if let Some(raw) = raw {
                    write_response(raw, status, "application/json", &body, &[]);
                }
                return None;
            }
        }
        reader.head.rewind();
    }
    let mut admitted = None;
    if let Some(gate) = gate {
        let run_gate = ask_gate(core, &mut reader, &peer, &*gate);
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
                core.not_upgraded(&peer, Outcome::TimedOut, None);
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
        check_request(&core.rules, &peer, request, response).map(|(mut response, mut a)| {
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
    let mut shutdown = core.shutdown.waiter();
    // Boxed: the handshake's state is large and must not stay in the
    // connection task's memory for the life of the connection.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        reader,
        callback,
        Some(handshake_config()),
    ));
    // The handshake is polled first: one whose 101 is out completes even if
    // the shutdown came meanwhile (its client is upgraded and gets a 1001
    // close from the handler's connection, not a dropped socket).
    let result = tokio::select! {
        biased;
        result = tokio::time::timeout_at(started + limits.handshake_timeout, handshake) => result,
        _ = &mut shutdown => {
            core.not_upgraded(&peer, Outcome::ShutDown, None);
            return None;
        }
    };
    let ws = match result {
        Ok(Ok(ws)) => ws,
        Err(_) => {
            core.not_upgraded(&peer, Outcome::TimedOut, None);
            return None;
        }
        Ok(Err(e)) => {
            core.not_upgraded(&peer, Outcome::of(e), raw);
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
    let session = Session::new(Role::Server, core.limits.clone(), None, Instant::now())
        .with_compression(accepted.compression)
        .with_initial(&head.into_tail());
    let (info, slot) = accepted.into_info(peer, core.rules.address.clone());
    core.upgraded(started.into_std());
    let conn =
        Connection::new(socket, session, info).serving(shutdown, slot, core.rules.stats.clone());
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
    core: &ServerCore,
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
    let busy = core.rules.stats.open.load(Ordering::SeqCst) >= core.rules.max_connections;
    let forwarded =
        crate::forwarded::forwarded_peer(core.rules.trusted_proxy, peer, request.headers());
    if busy
        || !core
            .rules
            .policy
            .allows_peer(forwarded.as_ref().unwrap_or(peer))
    {
        return Ok(None);
    }
    gate(request, peer.clone()).await.map(Some)
}
