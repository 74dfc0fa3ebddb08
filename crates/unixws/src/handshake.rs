//! The parts of the WebSocket upgrade that do not depend on how bytes move:
//! the server's checks before the upgrade (header count, access policy,
//! connection limit, subprotocol choice) and its refusals (403, 431, 426,
//! 400, 503), shared by the blocking and the tokio servers.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode};

use crate::addr::Address;
use crate::codec::deflate::Agreed;
use crate::config::Limits;
use crate::connection::ConnectionInfo;
use crate::forwarded;
use crate::peer::Peer;
use crate::policy::AccessPolicy;
use crate::stats::{Counter, ServerStats};
use crate::stream::Socket;

/// What a server checks before it upgrades a connection.
#[derive(Debug)]
pub(crate) struct HandshakeRules {
    pub(crate) max_headers: usize,
    pub(crate) max_connections: usize,
    pub(crate) policy: AccessPolicy,
    pub(crate) subprotocols: Vec<String>,
    /// The uid whose forwarded client identity is believed (see `forwarded`).
    pub(crate) trusted_proxy: Option<u32>,
    /// The path of plain `GET` health checks (see `ServerBuilder::health_path`).
    pub(crate) health_path: Option<String>,
    /// Accept permessage-deflate offers (`Limits::compression`).
    pub(crate) compression: bool,
    /// The server's address, for the connections' messages (`None` where
    /// there is no listener: the fuzzing entry point).
    pub(crate) address: Option<Arc<Address>>,
    /// Counters, and the number of open connections.
    pub(crate) stats: Arc<ServerStats>,
    /// A flood of refused peers must not flood the log.
    pub(crate) policy_log: LogGate,
    pub(crate) busy_log: LogGate,
    pub(crate) flood_log: LogGate,
}

/// Lets a warning through at most once a second and counts the ones it
/// holds back, so that a flood of bad peers shows up as a few lines.
#[derive(Debug, Default)]
pub(crate) struct LogGate {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogGate {
    /// `Some(n)`: log now, mentioning the `n` held back since the last line.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    /// [`allow`](Self::allow) at `now` (tests pass made-up instants).
    fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl HandshakeRules {
    pub(crate) fn new(limits: &Limits, policy: AccessPolicy, subprotocols: Vec<String>) -> Self {
        Self {
            max_headers: limits.max_headers,
            max_connections: limits.max_connections,
            policy,
            subprotocols,
            trusted_proxy: None,
            health_path: None,
            compression: limits.compression,
            address: None,
            stats: Arc::default(),
            policy_log: LogGate::default(),
            busy_log: LogGate::default(),
            flood_log: LogGate::default(),
        }
    }
}

/// Decrements the active-connection count when the connection ends.
#[derive(Debug)]
pub(crate) struct ActiveSlot(Arc<ServerStats>);

impl ActiveSlot {
    /// Counts one more open connection (and one more for the drain), and
    /// says how many were open before it.
    pub(crate) fn enter(stats: Arc<ServerStats>) -> (Self, usize) {
        stats.drain.enter();
        let before = stats.open.fetch_add(1, Ordering::SeqCst);
        (Self(stats), before)
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.drain.leave();
    }
}

/// What the upgrade callback learned, handed out of tungstenite's `FnOnce`.
pub(crate) struct Accepted {
    slot: ActiveSlot,
    path: String,
    query: Option<String>,
    headers: tungstenite::http::HeaderMap,
    pub(crate) subprotocol: Option<String>,
    /// The client a trusted proxy forwarded, who stands for the socket's peer.
    forwarded: Option<Peer>,
    /// permessage-deflate, if an offer was accepted.
    pub(crate) compression: Option<Agreed>,
}

impl Accepted {
    /// The connection's info, and the slot that counts it until dropped.
    pub(crate) fn into_info(
        self,
        peer: Peer,
        address: Option<Arc<Address>>,
    ) -> (ConnectionInfo, ActiveSlot) {
        let info = ConnectionInfo {
            address,
            peer: self.forwarded.unwrap_or(peer),
            path: self.path,
            query: self.query,
            headers: self.headers,
            subprotocol: self.subprotocol,
        };
        (info, self.slot)
    }
}

// The error type is fixed by tungstenite's `Callback`.
#[allow(clippy::result_large_err)]
pub(crate) fn check_request(
    rules: &HandshakeRules,
    peer: &Peer,
    request: &Request,
    mut response: Response,
) -> std::result::Result<(Response, Accepted), ErrorResponse> {
    if request.headers().len() > rules.max_headers {
        return Err(error_response(431, "too many header lines"));
    }
    let forwarded = forwarded::forwarded_peer(rules.trusted_proxy, peer, request.headers());
    let peer = forwarded.as_ref().unwrap_or(peer);
    if !rules.policy.allows_peer(peer) {
        if let Some(suppressed) = rules.policy_log.allow() {
            tracing::warn!(%peer, suppressed, "peer rejected by the access policy (403)");
        }
        rules.stats.count(Counter::RejectedByPolicy);
        let mut refusal = error_response(403, &policy_refusal(peer));
        refusal
            .headers_mut()
            .insert(REFUSED_BY, HeaderValue::from_static(ACCESS_POLICY));
        return Err(refusal);
    }
    let (slot, open_before) = ActiveSlot::enter(rules.stats.clone());
    if open_before >= rules.max_connections {
        drop(slot);
        if let Some(suppressed) = rules.busy_log.allow() {
            tracing::warn!(%peer, max = rules.max_connections, suppressed, "max connections reached (503)");
        }
        rules.stats.count(Counter::RefusedBusy);
        let mut r = error_response(503, "too many connections; try again later");
        r.headers_mut()
            .insert("Retry-After", HeaderValue::from_static("1"));
        return Err(r);
    }
    let subprotocol = choose_subprotocol(&rules.subprotocols, request);
    if let Some(p) = &subprotocol {
        if let Ok(v) = HeaderValue::from_str(p) {
            response.headers_mut().insert("Sec-WebSocket-Protocol", v);
        }
    }
    let compression = if rules.compression {
        accept_compression(request, &mut response)
    } else {
        None
    };
    let uri = request.uri();
    tracing::debug!(%peer, path = %uri.path(), "handshake accepted");
    let mut headers = application_headers(request.headers());
    if forwarded.is_none() {
        forwarded::strip(&mut headers);
    }
    Ok((
        response,
        Accepted {
            slot,
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers,
            subprotocol,
            forwarded,
            compression,
        },
    ))
}

/// Accepts the request's first acceptable permessage-deflate offer, if
/// any, answering it in `response` (RFC 7692: offers that cannot be taken
/// are declined, and the connection goes on uncompressed).
pub(crate) fn accept_compression(request: &Request, response: &mut Response) -> Option<Agreed> {
    let offers = request
        .headers()
        .get_all("Sec-WebSocket-Extensions")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (agreed, answer) = crate::codec::deflate::server_accept(offers)?;
    let value = HeaderValue::from_str(&answer).ok()?;
    response
        .headers_mut()
        .insert("Sec-WebSocket-Extensions", value);
    Some(agreed)
}

/// Why the access policy refused `peer`, in one line for the 403's body.
pub(crate) fn policy_refusal(peer: &Peer) -> String {
    match peer.credentials() {
        Some(c) => format!(
            "uid {} is not allowed by this server's access policy",
            c.uid
        ),
        None => "this peer is not allowed by this server's access policy".to_string(),
    }
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

/// The response header that says which rule refused an upgrade, so that a
/// unixws client hints at the access policy only when that refused it (not
/// when the application's own check did).
pub(crate) const REFUSED_BY: &str = "x-unixws-refused-by";
/// [`REFUSED_BY`]'s value for the access policy.
pub(crate) const ACCESS_POLICY: &str = "access-policy";

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
pub(crate) fn refuse_bad_request(raw: Option<Socket>, peer: &Peer, e: &WsError) {
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
    if let Some(raw) = raw {
        write_plain_response(raw, status, &e.to_string(), extra);
    }
}

pub(crate) fn write_plain_response(raw: Socket, status: u16, body: &str, extra: &[(&str, &str)]) {
    write_response(raw, status, "text/plain; charset=utf-8", body, extra);
}

/// Answers a request that is not upgraded with `body` and a newline, and
/// closes (the write side: the peer reads it all).
pub(crate) fn write_response(
    mut raw: Socket,
    status: u16,
    content_type: &str,
    body: &str,
    extra: &[(&str, &str)],
) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len() + 1
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // One write: a client (tungstenite's among them) may read only what
    // arrives with the head.
    head.push_str(body);
    head.push('\n');
    let _ = raw.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = raw.write_all(head.as_bytes());
    let _ = raw.shutdown(std::net::Shutdown::Write);
}

/// The request headers an application may care about: all but the
/// mechanics of the upgrade itself (`Upgrade`, `Connection`,
/// `Sec-WebSocket-Key`, `-Version`, `-Extensions`). Every open connection
/// keeps these, so they are copied into a map of exactly their size.
pub(crate) fn application_headers(
    all: &tungstenite::http::HeaderMap,
) -> tungstenite::http::HeaderMap {
    use tungstenite::http::header;
    let mechanics = [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ];
    let keep = |name: &header::HeaderName| !mechanics.contains(name);
    let count = all.iter().filter(|(name, _)| keep(name)).count();
    let mut headers = tungstenite::http::HeaderMap::with_capacity(count);
    for (name, value) in all.iter().filter(|(name, _)| keep(name)) {
        headers.append(name.clone(), value.clone());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::LogGate;

    #[test]
    fn a_log_gate_lets_one_line_a_second_through_and_counts_the_rest() {
        let gate = LogGate::default();
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        assert_eq!(gate.allow_at(at(0)), Some(0));
        for ms in [1, 200, 500, 900, 999] {
            assert_eq!(gate.allow_at(at(ms)), None, "{ms} ms after a line");
        }
        assert_eq!(
            gate.allow_at(at(1000)),
            Some(5),
            "a second later: one line, five held back"
        );
        assert_eq!(gate.allow_at(at(1001)), None);
        assert_eq!(gate.allow_at(at(5000)), Some(1));
    }
}

/// The bytes of an HTTP upgrade head (request or response) as they are
/// read, with whatever followed the head in the same reads kept apart:
/// those are the first frames, and belong to the codec, not to
/// tungstenite's handshake. tungstenite is served the head only, through
/// [`HeadReader`] (blocking) or its tokio twin, so it never reads a frame
/// byte; the budget caps the head at `max_header_bytes`.
#[derive(Debug)]
pub(crate) struct HeadBuffer {
    bytes: Vec<u8>,
    served: usize,
    end: Option<usize>,
    budget: usize,
    /// A response that refuses the upgrade: its body is served too
    /// (tungstenite reports it with the status).
    refusal: bool,
    is_response: bool,
}

/// The marker inside the I/O error returned when a head outgrows its budget.
#[derive(Debug)]
pub(crate) struct HeaderTooLarge;

impl std::fmt::Display for HeaderTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("handshake larger than max_header_bytes")
    }
}

impl std::error::Error for HeaderTooLarge {}

/// True when `e` came from an exhausted head budget.
pub(crate) fn is_header_too_large(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<HeaderTooLarge>())
}

/// Bytes read from the socket at a time during the handshake.
pub(crate) const HEAD_CHUNK: usize = 1024;

impl HeadBuffer {
    /// For a request (a server reading its client).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            bytes: Vec::new(),
            served: 0,
            end: None,
            budget,
            refusal: false,
            is_response: false,
        }
    }

    /// For a response (a client reading its server).
    pub(crate) fn response(budget: usize) -> Self {
        Self {
            is_response: true,
            ..Self::new(budget)
        }
    }

    fn visible(&self) -> usize {
        match self.end {
            Some(end) if !self.refusal => end,
            _ => self.bytes.len(),
        }
    }

    /// True when everything readable has been served: read more first.
    pub(crate) fn needs_input(&self) -> bool {
        self.served == self.visible()
    }

    /// How much the next read from the socket may take, or the error when
    /// the head has used its budget up.
    pub(crate) fn room(&self) -> std::io::Result<usize> {
        match self.budget.saturating_sub(self.bytes.len()) {
            0 => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                HeaderTooLarge,
            )),
            n => Ok(n.min(HEAD_CHUNK)),
        }
    }

    /// Takes bytes read from the socket.
    pub(crate) fn push(&mut self, input: &[u8]) {
        let from = self.bytes.len().saturating_sub(3);
        self.bytes.extend_from_slice(input);
        if self.end.is_none() {
            self.end = self.bytes[from..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|at| from + at + 4);
            self.refusal = self.is_response
                && self.end.is_some()
                && self.bytes.get(8..13) != Some(&b" 101 "[..]);
        }
    }

    /// Copies head bytes not served yet into `out`; returns how many.
    pub(crate) fn serve(&mut self, out: &mut [u8]) -> usize {
        let visible = &self.bytes[self.served..self.visible()];
        let n = visible.len().min(out.len());
        out[..n].copy_from_slice(&visible[..n]);
        self.served += n;
        n
    }

    /// The whole head, once it has arrived.
    pub(crate) fn head(&self) -> Option<&[u8]> {
        self.end.map(|end| &self.bytes[..end])
    }

    /// Serve the head again from its start (after a gate or the health
    /// check looked at it).
    pub(crate) fn rewind(&mut self) {
        self.served = 0;
    }

    /// What came after the head: the first frames.
    pub(crate) fn into_tail(mut self) -> Vec<u8> {
        match self.end {
            Some(end) => self.bytes.split_off(end),
            None => Vec::new(),
        }
    }
}

/// A blocking stream that serves tungstenite's handshake the head only
/// (see [`HeadBuffer`]); writes go straight to the stream.
#[derive(Debug)]
pub(crate) struct HeadReader<S> {
    pub(crate) inner: S,
    pub(crate) head: HeadBuffer,
}

impl<S> HeadReader<S> {
    pub(crate) fn new(inner: S, head: HeadBuffer) -> Self {
        Self { inner, head }
    }
}

impl<S: std::io::Read> HeadReader<S> {
    /// Reads once from the stream into the head buffer; 0 at its end.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; HEAD_CHUNK];
        let room = self.head.room()?;
        let n = self.inner.read(&mut chunk[..room])?;
        self.head.push(&chunk[..n]);
        Ok(n)
    }

    /// Reads until the whole request head is here (true), or the peer
    /// ended, failed or outgrew the budget first (false: the handshake
    /// that follows meets the same end and answers it).
    pub(crate) fn read_head(&mut self) -> bool {
        while self.head.head().is_none() {
            if !matches!(self.fill(), Ok(n) if n > 0) {
                return false;
            }
        }
        true
    }
}

impl<S: std::io::Read> std::io::Read for HeadReader<S> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.head.needs_input() && self.fill()? == 0 {
            return Ok(0);
        }
        Ok(self.head.serve(out))
    }
}

impl<S: std::io::Write> std::io::Write for HeadReader<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// tungstenite's configuration for a handshake whose `WebSocket` is only
/// taken apart again: no buffers worth allocating.
pub(crate) fn handshake_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(64)
        .write_buffer_size(0)
}

#[cfg(test)]
mod head_tests {
    use super::HeadBuffer;

    #[test]
    fn the_head_ends_at_the_blank_line_and_the_rest_is_kept_for_frames() {
        let mut head = HeadBuffer::new(1024);
        head.push(b"GET / HTTP/1.1\r\nHost: x\r");
        assert!(head.head().is_none());
        head.push(b"\n\r\n\x81\x00");
        assert_eq!(head.head(), Some(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]));
        let mut out = [0u8; 64];
        let n = head.serve(&mut out);
        assert_eq!(&out[..n], head.head().unwrap_or_default());
        assert!(head.needs_input());
        assert_eq!(head.into_tail(), b"\x81\x00");
    }

    #[test]
    fn a_head_over_its_budget_is_an_error() {
        let mut head = HeadBuffer::new(10);
        head.push(b"0123456789");
        let e = head.room().unwrap_err();
        assert!(super::is_header_too_large(&e));
    }
}
