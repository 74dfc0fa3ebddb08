//! Counters of what a server did: connections accepted and upgraded, peers
//! refused (403, 503, bad or slow handshakes), and connections closed for
//! cause (keepalive, slow consumer, protocol error). Shared by the blocking
//! and the tokio servers; cheap enough to update on every connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Live counters of one server (see [`Server::stats`](crate::Server::stats)).
#[derive(Debug, Default)]
pub struct ServerStats {
    counts: [AtomicU64; Counter::COUNT],
    /// Connections past their handshake right now (also the count the
    /// connection limit is checked against).
    pub(crate) open: AtomicUsize,
    /// What the server still runs; a shutting-down server waits on it.
    pub(crate) drain: crate::drain::Drain,
}

/// One thing a server counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    Accepted,
    Upgraded,
    RejectedByPolicy,
    RefusedBusy,
    BadHandshake,
    KeepaliveTimeout,
    SlowConsumer,
    ProtocolError,
}

impl Counter {
    const COUNT: usize = 8;
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Connections open right now (past their handshake, not yet closed).
    pub open: u64,
    /// Connections accepted from the socket.
    pub accepted: u64,
    /// Connections that completed the WebSocket upgrade.
    pub upgraded: u64,
    /// Peers answered 403 by the access policy.
    pub rejected_by_policy: u64,
    /// Peers answered 503 because `max_connections` were open.
    pub refused_busy: u64,
    /// Upgrades that failed: malformed (400, 426, 431), too slow (handshake
    /// timeout) or abandoned by the peer.
    pub bad_handshakes: u64,
    /// Connections dropped because the peer stopped answering pings.
    pub keepalive_timeouts: u64,
    /// Connections closed with 1013 because their send queue overflowed.
    pub slow_consumers: u64,
    /// Connections closed with 1002, 1007 or 1009 because of what the peer sent.
    pub protocol_errors: u64,
}

impl ServerStats {
    pub(crate) fn count(&self, counter: Counter) {
        self.counts[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: Counter| self.counts[c as usize].load(Ordering::Relaxed);
        StatsSnapshot {
            open: self.open.load(Ordering::SeqCst) as u64,
            accepted: get(Counter::Accepted),
            upgraded: get(Counter::Upgraded),
            rejected_by_policy: get(Counter::RejectedByPolicy),
            refused_busy: get(Counter::RefusedBusy),
            bad_handshakes: get(Counter::BadHandshake),
            keepalive_timeouts: get(Counter::KeepaliveTimeout),
            slow_consumers: get(Counter::SlowConsumer),
            protocol_errors: get(Counter::ProtocolError),
        }
    }
}
