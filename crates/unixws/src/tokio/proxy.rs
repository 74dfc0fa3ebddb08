//! A WebSocket-aware relay: accepts WebSocket connections on one address
//! (TCP or Unix) and relays each to a backend (Unix or TCP), completing the
//! handshake on both sides.
//!
//! - The backend is reached before the client is answered: a backend that
//!   refuses or is missing gives the client a 502 with a one-line reason.
//! - The request path and query are appended to the `--to` URL's path
//!   (its prefix); `Sec-WebSocket-Protocol`, `Authorization`, `Cookie` and
//!   `Origin` are forwarded, and the backend's subprotocol is answered.
//! - `X-Forwarded-For` carries a TCP client's address; for a Unix-socket
//!   client, `X-Unixws-Peer-Uid`, `-Gid`, `-Pid` and `-Groups` carry its
//!   kernel-verified credentials (any such headers sent by the client are
//!   replaced, never passed on). A backend believes them only from the
//!   proxy's uid (`ServerBuilder::trust_proxy_uid`).
//! - Text, binary, ping and pong messages are relayed both ways in order; a
//!   close code and reason from either side reach the other, and what the
//!   other side still sends before it answers (a one-shot pipe's answer)
//!   is delivered before that answer. Each hop
//!   answers pings itself, so the pong that answers a relayed ping is
//!   dropped rather than sent a second time; each side keeps its own
//!   keepalive.
//! - Data frames are not re-framed: the relay checks each header, size and
//!   text (UTF-8, as it arrives) and passes the frame on as it came, still
//!   masked from the client (the key is valid for the backend hop too),
//!   fragments as fragments. A frame of 16 KiB or more is passed on as it
//!   streams in (cut-through): a large message is never held whole, and
//!   its latency is not doubled. The cost: if such a frame turns out bad
//!   halfway (invalid UTF-8, a hang-up), the side that got its first half
//!   cannot be sent a close frame inside it, and is dropped instead.
//! - A side that breaks the protocol first gets the other side's answers to
//!   its earlier messages, then its close code (1002, 1007, 1009). The other
//!   side is closed with 1014 (bad gateway, registered for exactly this)
//!   when the backend broke it, and with 1001 (going away: the proxy, the
//!   backend's client, leaves) when the client did.
//! - The listening side has the server's limits, access policy and
//!   backpressure; `allow_origin` restricts browsers by `Origin`.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use tungstenite::handshake::server::{ErrorResponse, Request};
use tungstenite::http::StatusCode;

use crate::addr::{Address, ToAddress};
use crate::client::ClientBuilder;
use crate::codec::decode::Forward;
use crate::config::Limits;
use crate::error::Result;
use crate::peer::Peer;
use crate::server_core::HandlerError;
use crate::tokio::{Admitted, Connection, Server};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// Headers passed from the client's request to the backend's.
const FORWARDED: [&str; 3] = ["authorization", "cookie", "origin"];

/// Relays WebSocket connections to one backend.
///
/// ```no_run
/// # async fn demo() -> unixws::Result<()> {
/// let server = unixws::Server::builder("127.0.0.1:8080")?.bind_async()?;
/// unixws::tokio::Proxy::new("ws+unix:///run/app.sock")?.serve(server).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Proxy {
    to: Address,
    allow_origins: Vec<String>,
    backend_limits: Limits,
}

impl Proxy {
    /// A proxy to `to`; its request path is a prefix for the clients' paths.
    pub fn new(to: impl ToAddress) -> Result<Self> {
        Ok(Self {
            to: to.to_address()?,
            allow_origins: Vec::new(),
            backend_limits: Limits::default(),
        })
    }

    /// Admit only requests with this `Origin` (may be called several
    /// times); others get 403. Without any, every origin is admitted.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allow_origins.push(origin.into());
        self
    }

    /// Limits and timeouts for the backend connections (connect and
    /// handshake timeouts bound how long a client waits for its 502).
    pub fn backend_limits(mut self, limits: Limits) -> Self {
        self.backend_limits = limits;
        self
    }

    /// Relays every connection `server` accepts until it shuts down.
    pub async fn serve(self, server: Server) -> Result<()> {
        let proxy = Arc::new(self);
        server
            .serve_gated(
                move |request, peer| {
                    let proxy = proxy.clone();
                    async move { proxy.admit(request, peer).await }
                },
                |client, backend| {
                    futures_util::FutureExt::map(relay(client, backend), |relayed| {
                        relayed.map_err(HandlerError::from)
                    })
                },
            )
            .await
    }

    /// Connects to the backend for this request, or says why not.
    async fn admit(
        &self,
        request: Request,
        peer: Peer,
    ) -> std::result::Result<Admitted<Connection>, ErrorResponse> {
        let headers = request.headers();
        if !self.allow_origins.is_empty() {
            let origin = headers
                .get("origin")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !self.allow_origins.iter().any(|o| o == origin) {
                tracing::warn!(%peer, origin, "origin not allowed (403)");
                return Err(refusal(
                    StatusCode::FORBIDDEN,
                    &format!("origin `{origin}` is not allowed by this proxy"),
                ));
            }
        }
        let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let target = self
            .to
            .with_resource(&join_paths(self.to.resource(), path_and_query))
            .map_err(|e| refusal(StatusCode::BAD_REQUEST, &e.to_string()))?;
        let mut backend = ClientBuilder::new(&target)
            .map_err(|e| refusal(StatusCode::BAD_REQUEST, &e.to_string()))?
            .limits(self.backend_limits.clone());
        for name in FORWARDED {
            for value in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
                backend = backend.header(name, value);
            }
        }
        let offered = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty());
        for protocol in offered {
            backend = backend.subprotocol(protocol);
        }
        match &peer {
            Peer::Unix(c) => {
                backend = backend
                    .header("X-Unixws-Peer-Uid", c.uid.to_string())
                    .header("X-Unixws-Peer-Gid", c.gid.to_string())
                    .header("X-Unixws-Peer-Pid", c.pid.to_string())
                    .header("X-Unixws-Peer-Groups", c.groups_joined(","));
            }
            Peer::Tcp(addr) => {
                let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                    Some(earlier) => format!("{earlier}, {}", addr.ip()),
                    None => addr.ip().to_string(),
                };
                backend = backend.header("X-Forwarded-For", forwarded);
            }
        }
        match backend.connect_async().await {
            Ok(conn) => Ok(Admitted {
                subprotocol: conn.info().subprotocol.clone(),
                value: conn,
            }),
            Err(e) => {
                tracing::warn!(%peer, backend = %target, error = %e, "backend unavailable (502)");
                Err(refusal(
                    StatusCode::BAD_GATEWAY,
                    &format!("backend {target} unavailable: {e}"),
                ))
            }
        }
    }
}

/// `/base` + `/chat?x=1` → `/base/chat?x=1`; `/` + `/chat` → `/chat`.
fn join_paths(prefix: &str, path_and_query: &str) -> String {
    let prefix = prefix.split('?').next().unwrap_or("").trim_end_matches('/');
    format!("{prefix}{path_and_query}")
}

fn refusal(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{reason}\n")));
    *response.status_mut() = status;
    response
}

/// Output a side may have waiting before the relay stops reading from
/// the other side: a peer that does not read slows its sender down instead
/// of growing the relay's memory.
const RELAY_WINDOW: usize = 256 << 10;

/// The side a step read from.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Backend,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// `(from, to)` for what is read on `side`: connections, or ping ledgers.
fn by_side<'a, T>(side: Side, client: &'a mut T, backend: &'a mut T) -> (&'a mut T, &'a mut T) {
    match side {
        Side::Client => (client, backend),
        Side::Backend => (backend, client),
    }
}

/// One step: for each direction, the receiving side is flushed first if
/// its output is over [`RELAY_WINDOW`], and the sending side is read only
/// while it is under (so a flush that made room is followed by a read in
/// this same step: nothing else would wake it). Frames are queued, not
/// written one by one: a burst goes out in one write. A failed flush is
/// the receiving side's error.
fn poll_step(
    cx: &mut Context<'_>,
    client: &mut Connection,
    backend: &mut Connection,
) -> Poll<(Side, Result<Option<Forward>>)> {
    for side in [Side::Client, Side::Backend] {
        let (from, to) = by_side(side, &mut *client, &mut *backend);
        if to.pending_output() >= RELAY_WINDOW {
            if let Poll::Ready(Err(e)) = to.poll_flush(cx) {
                return Poll::Ready((side.other(), Err(e)));
            }
        }
        if to.pending_output() < RELAY_WINDOW {
            if let Poll::Ready(r) = from.poll_next_forward(cx) {
                return Poll::Ready((side, r));
            }
        }
    }
    Poll::Pending
}

/// Relays frames both ways until either side closes, then passes its
/// close code and reason to the other. Data frames pass as they arrived
/// (checked, still masked from the client, never reassembled; a large one
/// as it streams in); pings and pongs are relayed as messages, so that
/// each hop answers its own.
async fn relay(mut client: Connection, mut backend: Connection) -> Result<()> {
    // A side that compresses cannot take the other's frames as they came:
    // both then relay whole messages, each framed (and compressed) anew.
    let reframe = client.is_compressed() || backend.is_compressed();
    for side in [&mut client, &mut backend] {
        if reframe {
            side.relay_messages();
        }
        side.receive_control_frames(true);
        side.defer_error_close();
        side.read_past_output();
        // A side's close is answered with the other side's, after what
        // the other side still sends (a one-shot pipe's answer).
        side.hold_close_reply(true);
    }
    // The pings relayed from each side.
    let (mut from_client, mut from_backend) = (PingLedger::default(), PingLedger::default());
    loop {
        let (side, relayed) = poll_fn(|cx| poll_step(cx, &mut client, &mut backend)).await;
        let relayed = match (relayed, side) {
            (Ok(relayed), _) => relayed,
            (Err(e), Side::Client) => {
                return fail(
                    client,
                    backend,
                    e,
                    CloseCode::Away,
                    "the client broke the protocol",
                )
                .await
            }
            (Err(e), Side::Backend) => {
                let code = CloseCode::from(BAD_GATEWAY);
                return fail(backend, client, e, code, "the backend broke the protocol").await;
            }
        };
        let (from, to) = by_side(side, &mut client, &mut backend);
        match relayed {
            Some(Forward::Data {
                bytes,
                frame_done,
                messages,
            }) => to.forward(bytes, frame_done, messages)?,
            Some(Forward::Message(message)) => to.queue(message)?,
            Some(Forward::Control(message)) => {
                let (ours, theirs) = by_side(side, &mut from_client, &mut from_backend);
                if let Some(message) = ours.pass(message, theirs) {
                    to.queue(message)?;
                }
            }
            None => {
                to.flush().await?;
                return pass_close(from, to).await;
            }
        }
    }
}

/// The close code a client gets when the backend broke the protocol: 1014,
/// "bad gateway" in IANA's WebSocket close code registry. (tungstenite's
/// `CloseCode` has no name for it; it is `CloseCode::Bad(1014)` there.)
pub(crate) const BAD_GATEWAY: u16 = 1014;

/// One side broke the protocol: the other is closed (`code`) and what it
/// still sends (answers to messages the broken side sent before its error)
/// is delivered first; then the broken side gets its close code (1002,
/// 1007, 1009), in the order an endpoint without the proxy would answer.
/// A side that was left inside a frame forwarded cut-through cannot be
/// sent a close frame: it is dropped.
async fn fail(
    mut broken: Connection,
    mut other: Connection,
    error: crate::Error,
    code: CloseCode,
    reason: &str,
) -> Result<()> {
    if other.output_mid_frame() {
        other.drop_socket();
    } else if other.begin_close(code, reason).await.is_ok() {
        let _ = deliver_rest(&mut other, &mut broken).await;
    }
    if broken.output_mid_frame() {
        broken.drop_socket();
    } else {
        let _ = broken.close_deferred().await;
    }
    Err(error)
}

/// The pings relayed in one direction, so that the relayed answer can be
/// dropped: the hop that received the ping already answered it (tungstenite
/// always does), and a second pong would confuse a peer that counts them.
#[derive(Debug, Default)]
struct PingLedger {
    relayed: std::collections::VecDeque<tungstenite::Bytes>,
}

impl PingLedger {
    /// Most pings remembered; older ones are forgotten (their late pongs
    /// are then relayed, which RFC 6455 allows).
    const LIMIT: usize = 16;

    /// The message to relay in this ledger's direction, if any: a pong that
    /// answers a ping relayed the other way is dropped.
    fn pass(&mut self, message: Message, answered: &mut PingLedger) -> Option<Message> {
        match &message {
            Message::Ping(data) => {
                if self.relayed.len() == Self::LIMIT {
                    self.relayed.pop_front();
                }
                self.relayed.push_back(data.clone());
            }
            Message::Pong(data) => {
                if let Some(at) = answered.relayed.iter().position(|p| p == data) {
                    answered.relayed.drain(..=at);
                    return None;
                }
            }
            _ => {}
        }
        Some(message)
    }
}

/// Closes `to` the way `from` was closed; what `to` still sends until its
/// close answers is relayed to `from` (RFC 6455 lets it send until then:
/// the answer to a request sent just before a close), and its close code
/// then answers `from`'s close. Data is forwarded as it comes (possibly
/// inside a frame); pings and pongs are no longer relayed.
async fn pass_close(from: &mut Connection, to: &mut Connection) -> Result<()> {
    let (code, reason) = close_to_pass(from.peer_close());
    to.queue_close(code, &reason);
    // `from` may be gone already (it hung up): then what `to` sends is dropped.
    if deliver_rest(to, from).await? {
        let (code, reason) = close_to_pass(to.peer_close());
        let _ = from.close(code, &reason).await;
    }
    Ok(())
}

/// Reads `source` until its close (which it was sent), passing the data it
/// still sends to `dest` for as long as `dest` takes it; returns whether
/// `dest` took it all. Pings and pongs are no longer relayed.
async fn deliver_rest(source: &mut Connection, dest: &mut Connection) -> Result<bool> {
    let mut taking = true;
    while let Some(relayed) = source.recv_forward().await? {
        if !taking {
            continue;
        }
        taking = match relayed {
            Forward::Data {
                bytes,
                frame_done,
                messages,
            } => dest.forward(bytes, frame_done, messages).is_ok(),
            Forward::Message(message) => dest.queue(message).is_ok(),
            Forward::Control(_) => continue,
        } && dest.flush().await.is_ok();
    }
    Ok(taking)
}

/// The close to pass on for the one a side sent. Codes that must not
/// appear in a close frame (1005 none given, 1006 dropped, 1015 TLS)
/// become 1000 or 1011.
fn close_to_pass(close: Option<&crate::PeerClose>) -> (CloseCode, String) {
    match close {
        Some(c) if c.code == CloseCode::Status => (CloseCode::Normal, String::new()),
        Some(c) if matches!(c.code, CloseCode::Abnormal | CloseCode::Tls) => {
            (CloseCode::Error, "the other side went away".to_string())
        }
        Some(c) => (c.code, c.reason.clone()),
        None => (CloseCode::Error, "the other side went away".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::join_paths;

    #[test]
    fn paths_join_under_the_prefix() {
        assert_eq!(join_paths("/", "/chat?x=1"), "/chat?x=1");
        assert_eq!(join_paths("/base", "/chat"), "/base/chat");
        assert_eq!(join_paths("/base/", "/"), "/base/");
        assert_eq!(join_paths("/base?ignored=1", "/a?b=2"), "/base/a?b=2");
    }
}
