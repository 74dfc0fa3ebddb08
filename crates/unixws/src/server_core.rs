//! What both servers decide the same way, whatever moves their bytes:
//! accept admission (the flood slack beyond `max_connections`, descriptor
//! exhaustion back-off), the classification of every handshake that did
//! not end in an upgrade (logged, counted, answered 431/426/400 where a
//! peer is owed an answer), what a handler's error means for its
//! connection (1011, logged at WARN unless the peer caused it), and the
//! drain on shutdown. The blocking server runs a thread per connection and
//! the tokio server a task; each only calls in here.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::error::Error as WsError;

use crate::backoff::AcceptBackoff;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::handshake::{
    is_header_too_large, refuse_bad_request, write_plain_response, HandshakeRules,
};
use crate::peer::Peer;
use crate::stats::Counter;
use crate::stream::{ShutdownSignal, Socket};

/// What a connection handler may fail with: any error, so that `?` works
/// on the application's own errors as on unixws's.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a connection handler returns.
pub type HandlerResult = std::result::Result<(), HandlerError>;

/// The reason sent with 1011 when a handler fails. The error itself stays
/// in the server's log: its text may say more than a peer should read.
pub(crate) const HANDLER_FAILED: &str = "the server's handler failed";

/// Logs how a handler ended and says whether its connection, if still
/// open, is to be closed with 1011 instead of 1000. An error the peer
/// caused (a hang-up, a protocol error: the connection is over anyway) is
/// logged at INFO; any other at WARN.
pub(crate) fn handler_failed(peer: Option<&Peer>, result: &HandlerResult) -> bool {
    let Err(e) = result else {
        return false;
    };
    let shown = peer.map_or_else(String::new, ToString::to_string);
    if e.downcast_ref::<Error>().is_some_and(Error::is_peer_caused) {
        tracing::info!(peer = %shown, error = %e, "connection ended with a peer error");
    } else {
        tracing::warn!(peer = %shown, error = %e, "handler failed; closing with 1011");
    }
    true
}

/// Connections beyond `max_connections` that may still be in their
/// handshake (to be answered 503) before new ones are dropped unanswered:
/// this caps the threads or tasks a connection flood can start.
pub(crate) const REFUSAL_SLACK: usize = 256;

/// The state both servers share.
#[derive(Debug)]
pub(crate) struct ServerCore {
    pub(crate) rules: HandshakeRules,
    pub(crate) limits: Arc<Limits>,
    pub(crate) shutdown: ShutdownSignal,
    /// Connection threads or tasks still running (handshake or handler).
    in_flight: AtomicUsize,
}

/// One admitted connection's place in the server, given back on drop.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ServerCore>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.rules.stats.drain.leave();
    }
}

/// What to do with the result of one `accept`.
#[derive(Debug)]
pub(crate) enum Admission<S> {
    /// Serve this connection; the guard counts it until dropped.
    Serve(S, Peer, InFlight),
    /// Nothing to serve now; accept again after this pause (if any).
    Again(Option<Duration>),
}

/// How a handshake that did not upgrade ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The handshake timeout passed.
    TimedOut,
    /// The server shut down meanwhile.
    ShutDown,
    /// The access policy, the connection limit or a gate answered with
    /// this status (the answer is already written).
    Refused(u16),
    /// The request head outgrew `max_header_bytes`: answered 431.
    TooLarge,
    /// tungstenite refused the request (400, 426, 431) or the peer left.
    Failed(WsError),
}

impl Outcome {
    /// The outcome of a handshake that tungstenite ended with `e`.
    pub(crate) fn of(e: WsError) -> Self {
        match e {
            WsError::Http(response) => Outcome::Refused(response.status().as_u16()),
            WsError::Io(io) if is_header_too_large(&io) => Outcome::TooLarge,
            other => Outcome::Failed(other),
        }
    }
}

impl ServerCore {
    pub(crate) fn new(rules: HandshakeRules, limits: Limits) -> Result<Arc<Self>> {
        let shutdown =
            ShutdownSignal::new().map_err(|e| Error::io("creating the shutdown signal", e))?;
        Ok(Arc::new(Self {
            rules,
            limits: Arc::new(limits),
            shutdown,
            in_flight: AtomicUsize::new(0),
        }))
    }

    /// Admits what `accept` returned, or says why not: a flood beyond the
    /// slack is dropped unanswered; an accept error (descriptors exhausted)
    /// pauses the loop.
    pub(crate) fn admit<S>(
        self: &Arc<Self>,
        accepted: io::Result<(S, Peer)>,
        backoff: &mut AcceptBackoff,
    ) -> Admission<S> {
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => return Admission::Again(backoff.on_error(&e)),
        };
        backoff.reset();
        self.rules.stats.count(Counter::Accepted);
        if self.in_flight.load(Ordering::SeqCst) >= self.limits.max_connections + REFUSAL_SLACK {
            if let Some(suppressed) = self.rules.flood_log.allow() {
                tracing::warn!(%peer, suppressed, "connection flood: dropping connections unanswered");
            }
            return Admission::Again(None);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.rules.stats.drain.enter();
        Admission::Serve(socket, peer, InFlight(self.clone()))
    }

    /// Logs, counts and answers a handshake that did not upgrade. `raw` is
    /// a second handle to the socket for the answer (none when descriptors
    /// ran out: then the peer is only dropped).
    pub(crate) fn not_upgraded(&self, peer: &Peer, outcome: Outcome, raw: Option<Socket>) {
        match outcome {
            Outcome::TimedOut => {
                self.rules.stats.count(Counter::BadHandshake);
                self.rules.stats.count(Counter::HandshakeTimeout);
                tracing::info!(%peer, timeout = ?self.limits.handshake_timeout, "handshake timeout; dropping the connection");
            }
            Outcome::ShutDown => tracing::debug!(%peer, "shutdown during the handshake"),
            Outcome::Refused(status) => tracing::debug!(%peer, status, "handshake refused"),
            Outcome::TooLarge => {
                self.rules.stats.count(Counter::BadHandshake);
                self.rules.stats.count(Counter::HeaderTooLarge);
                tracing::info!(%peer, limit = self.limits.max_header_bytes, "handshake request too large; answering 431");
                if let Some(raw) = raw {
                    write_plain_response(raw, 431, "request header too large", &[]);
                }
            }
            Outcome::Failed(e) => {
                self.rules.stats.count(Counter::BadHandshake);
                refuse_bad_request(raw, peer, &e);
            }
        }
    }

    /// The answer to a health check (`ServerBuilder::health_path`): `head`
    /// is a plain `GET` of the health path, with no `Upgrade`.
    pub(crate) fn health(&self, head: &[u8], peer: &Peer) -> Option<(u16, String)> {
        use tungstenite::handshake::machine::TryParse;
        let path = self.rules.health_path.as_deref()?;
        let (_, request) = tungstenite::handshake::server::Request::try_parse(head).ok()??;
        if request.method() != tungstenite::http::Method::GET
            || request.uri().path() != path
            || request.headers().contains_key("upgrade")
        {
            return None;
        }
        if !self.rules.policy.allows_peer(peer) {
            self.rules.stats.count(Counter::RejectedByPolicy);
            let reason = crate::handshake::policy_refusal(peer).replace('"', "'");
            return Some((
                403,
                format!(r#"{{"status":"forbidden","reason":"{reason}"}}"#),
            ));
        }
        let s = self.rules.stats.snapshot();
        tracing::debug!(%peer, "health check");
        Some((
            200,
            format!(
                r#"{{"status":"ok","open":{},"accepted":{},"upgraded":{}}}"#,
                s.open, s.accepted, s.upgraded
            ),
        ))
    }

    /// The counters both servers hand out (`Server::stats`).
    pub(crate) fn stats(&self) -> Arc<crate::stats::ServerStats> {
        self.rules.stats.clone()
    }

    /// The handle both servers hand out (`Server::shutdown_handle`).
    pub(crate) fn shutdown_handle(&self) -> crate::server::ShutdownHandle {
        crate::server::ShutdownHandle::new(self.shutdown.clone())
    }

    /// The handshake of a connection accepted at `started` upgraded.
    pub(crate) fn upgraded(&self, started: Instant) {
        self.rules.stats.count(Counter::Upgraded);
        self.rules.stats.handshake_took(started.elapsed());
    }

    /// Connections still running: threads or tasks, and open connections.
    fn busy(&self) -> usize {
        self.rules.stats.drain.busy()
    }

    /// Blocks until every connection has ended, at most the drain timeout.
    pub(crate) fn drain_blocking(&self) {
        self.rules
            .stats
            .drain
            .wait_until(Instant::now() + self.limits.drain_timeout);
    }

    /// What the tokio server awaits (with the drain timeout) until every
    /// connection has ended.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn drained(&self) -> crate::drain::Idle<'_> {
        self.rules.stats.drain.idle()
    }

    /// The drain is over: say what was left behind, and the counters.
    pub(crate) fn stopped(&self) {
        let left = self.busy();
        if left > 0 {
            tracing::warn!(
                left,
                "drain timeout passed with connections still open; leaving them"
            );
        }
        tracing::info!(stats = ?self.rules.stats.snapshot(), "server stopped");
    }
}
