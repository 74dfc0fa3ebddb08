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

use crate::config::Limits;
use crate::connection::ConnectionInfo;
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
        let now = std::time::Instant::now();
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

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the upgrade callback learned, handed out of tungstenite's `FnOnce`.
pub(crate) struct Accepted {
    slot: ActiveSlot,
    path: String,
    query: Option<String>,
    headers: tungstenite::http::HeaderMap,
    pub(crate) subprotocol: Option<String>,
}

impl Accepted {
    /// The connection's info, and the slot that counts it until dropped.
    pub(crate) fn into_info(self, peer: Peer) -> (ConnectionInfo, ActiveSlot) {
        let info = ConnectionInfo {
            peer,
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
    if !rules.policy.allows_peer(peer) {
        if let Some(suppressed) = rules.policy_log.allow() {
            tracing::warn!(%peer, suppressed, "peer rejected by the access policy (403)");
        }
        let body = match peer.credentials() {
            Some(c) => format!(
                "uid {} is not allowed by this server's access policy",
                c.uid
            ),
            None => "this peer is not allowed by this server's access policy".to_string(),
        };
        rules.stats.count(Counter::RejectedByPolicy);
        return Err(error_response(403, &body));
    }
    let slot = ActiveSlot(rules.stats.clone());
    if rules.stats.open.fetch_add(1, Ordering::SeqCst) >= rules.max_connections {
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
    let uri = request.uri();
    tracing::debug!(%peer, path = %uri.path(), "handshake accepted");
    Ok((
        response,
        Accepted {
            slot,
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: application_headers(request.headers()),
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

pub(crate) fn write_plain_response(
    mut raw: Socket,
    status: u16,
    body: &str,
    extra: &[(&str, &str)],
) {
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
fn application_headers(all: &tungstenite::http::HeaderMap) -> tungstenite::http::HeaderMap {
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
        assert_eq!(gate.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(gate.allow(), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(1010));
        assert_eq!(gate.allow(), Some(5));
    }
}
