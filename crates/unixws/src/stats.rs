//! Counters of what a server did: connections accepted and upgraded, peers
//! refused (403, 503, bad or slow handshakes), messages and bytes each way,
//! connections closed by code and for cause (keepalive, slow consumer,
//! protocol error), and how long handshakes took. Shared by the blocking
//! and the tokio servers, and what `unixws serve --metrics` exports.
//!
//! Cheap enough for every message: a connection tallies its messages and
//! bytes in plain integers and adds them to these shared counters once
//! per read or write call on its socket (which costs a system call
//! anyway), not once per message; a close and a handshake are counted once
//! per connection. The counters are kept in 16 copies (`SHARDS`), each on
//! cache lines of its own, and a thread adds to its own copy: with one
//! shared copy, the tokio workers' atomic adds pulled the same cache line
//! back and forth between CPUs on every read and write. `perf annotate` of
//! `unixws serve --echo` under 10 connections sending 1 KiB showed that
//! bounce as about a third of the write step's own time (about 20 ns a
//! message on two vCPUs; with more workers, more CPUs contend for it). A
//! snapshot sums the copies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Live counters of one server (see [`Server::stats`](crate::Server::stats)).
#[derive(Debug, Default)]
pub struct ServerStats {
    counts: [Shard; SHARDS],
    /// Connections past their handshake right now (also the count the
    /// connection limit is checked against).
    pub(crate) open: AtomicUsize,
    /// What the server still runs; a shutting-down server waits on it.
    pub(crate) drain: crate::drain::Drain,
    /// Connections closed, by the code of the first close frame either
    /// side sent (1006 when none was).
    closes: Mutex<BTreeMap<u16, u64>>,
    /// Handshake durations, from accept to the upgrade.
    handshakes: [AtomicU64; HANDSHAKE_BUCKETS.len() + 1],
    handshake_nanos: AtomicU64,
}

/// How many copies of the counters a server keeps (see the module doc);
/// threads beyond this many share copies.
const SHARDS: usize = 16;

/// One copy of the counters, alone on its cache lines (128 bytes: two
/// lines, as the adjacent-line prefetcher fetches them in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard([AtomicU64; Counter::COUNT]);

impl Shard {
    fn add(&self, counter: Counter, n: u64) {
        if n > 0 {
            self.0[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// This thread's copy of the counters: threads take copies in turn, as
/// they first count. A count made while the thread's locals are torn down
/// (a connection dropped by a runtime that is shutting down) goes to the
/// first copy instead of panicking.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.try_with(|s| *s).unwrap_or(0)
}

/// The upper bounds of the handshake-latency buckets, in seconds.
pub const HANDSHAKE_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How long handshakes took (see [`ServerStats::handshake_latency`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HandshakeLatency {
    /// For each bound of [`HANDSHAKE_BUCKETS`], how many took at most that
    /// long (cumulative, as Prometheus histograms count).
    pub buckets: Vec<(f64, u64)>,
    /// How many there were.
    pub count: u64,
    /// Their total duration.
    pub sum: Duration,
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
    /// Also counted as `BadHandshake`.
    HandshakeTimeout,
    /// Also counted as `BadHandshake`.
    HeaderTooLarge,
    MessagesIn,
    MessagesOut,
    BytesIn,
    BytesOut,
}

impl Counter {
    const COUNT: usize = 14;
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
    /// Of `bad_handshakes`: peers that did not finish in the handshake timeout.
    pub handshake_timeouts: u64,
    /// Of `bad_handshakes`: requests larger than `max_header_bytes` (431).
    pub headers_too_large: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent.
    pub messages_out: u64,
    /// Bytes read from sockets after the handshake (frames, headers and all).
    pub bytes_in: u64,
    /// Bytes written to sockets after the handshake.
    pub bytes_out: u64,
}

impl ServerStats {
    pub(crate) fn count(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.local().add(counter, n);
    }

    /// This thread's copy of the counters.
    fn local(&self) -> &Shard {
        &self.counts[shard()]
    }

    /// A connection ended with `code` (see [`closes_by_code`](Self::closes_by_code)).
    pub(crate) fn closed(&self, code: u16) {
        *self
            .closes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
    }

    /// A handshake took `took`.
    pub(crate) fn handshake_took(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = HANDSHAKE_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(HANDSHAKE_BUCKETS.len());
        self.handshakes[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.handshake_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Connections closed so far, by close code: the code of the first
    /// close frame either side sent, 1005 for a close frame without a
    /// code, 1006 when the connection ended without any.
    pub fn closes_by_code(&self) -> Vec<(u16, u64)> {
        let closes = self.closes.lock().unwrap_or_else(PoisonError::into_inner);
        closes.iter().map(|(code, n)| (*code, *n)).collect()
    }

    /// How long upgrades took, from accept to the 101, in
    /// [`HANDSHAKE_BUCKETS`].
    pub fn handshake_latency(&self) -> HandshakeLatency {
        let mut total = 0;
        let buckets = HANDSHAKE_BUCKETS
            .iter()
            .zip(&self.handshakes)
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (*bound, total)
            })
            .collect();
        let over = self.handshakes[HANDSHAKE_BUCKETS.len()].load(Ordering::Relaxed);
        HandshakeLatency {
            buckets,
            count: total + over,
            sum: Duration::from_nanos(self.handshake_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: Counter| {
            self.counts
                .iter()
                .map(|shard| shard.0[c as usize].load(Ordering::Relaxed))
                .sum()
        };
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
            handshake_timeouts: get(Counter::HandshakeTimeout),
            headers_too_large: get(Counter::HeaderTooLarge),
            messages_in: get(Counter::MessagesIn),
            messages_out: get(Counter::MessagesOut),
            bytes_in: get(Counter::BytesIn),
            bytes_out: get(Counter::BytesOut),
        }
    }
}

/// What one connection counts before it adds it to its server's
/// [`ServerStats`] (see the module doc).
#[derive(Debug)]
pub(crate) struct Tally {
    stats: Arc<ServerStats>,
    messages_in: u64,
    messages_out: u64,
    /// The first close frame's code, either way.
    pub(crate) close: Option<u16>,
}

impl Tally {
    pub(crate) fn new(stats: Arc<ServerStats>) -> Self {
        Self {
            stats,
            messages_in: 0,
            messages_out: 0,
            close: None,
        }
    }

    pub(crate) fn stats(&self) -> &ServerStats {
        &self.stats
    }

    pub(crate) fn message_in(&mut self) {
        self.messages_in += 1;
    }

    pub(crate) fn message_out(&mut self) {
        self.messages_out += 1;
    }

    /// A relay passed on `n` messages whole (see `Forward::Data`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn messages_in(&mut self, n: u32) {
        self.messages_in += u64::from(n);
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn messages_out(&mut self, n: u32) {
        self.messages_out += u64::from(n);
    }

    /// A read or write call moved `bytes`: the tally goes to the server.
    pub(crate) fn moved(&mut self, bytes: Counter, n: usize) {
        // One look-up of this thread's copy for the three adds.
        let shard = self.stats.local();
        shard.add(bytes, n as u64);
        shard.add(Counter::MessagesIn, std::mem::take(&mut self.messages_in));
        shard.add(Counter::MessagesOut, std::mem::take(&mut self.messages_out));
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.moved(Counter::BytesIn, 0);
        self.stats.closed(self.close.unwrap_or(1006));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_more_threads_than_shards_add_up_in_the_snapshot() {
        let stats = Arc::new(ServerStats::default());
        let threads: Vec<_> = (0..SHARDS * 2 + 3)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        stats.count(Counter::MessagesIn);
                        stats.add(Counter::BytesOut, 7);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a counting thread panicked");
        }
        let total = (SHARDS * 2 + 3) as u64 * 1_000;
        let snap = stats.snapshot();
        assert_eq!(snap.messages_in, total);
        assert_eq!(snap.bytes_out, total * 7);
        assert_eq!(snap.messages_out, 0);
    }

    #[test]
    fn handshake_latency_buckets_are_cumulative_with_the_slow_ones_only_in_the_count() {
        let stats = ServerStats::default();
        for micros in [50, 80, 700, 3_000, 20_000_000] {
            stats.handshake_took(Duration::from_micros(micros));
        }
        let h = stats.handshake_latency();
        let at = |bound: f64| h.buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.0001), Some(2));
        assert_eq!(at(0.001), Some(3));
        assert_eq!(at(0.005), Some(4));
        assert_eq!(at(10.0), Some(4), "20 s is beyond the last bound");
        assert_eq!(h.count, 5);
        assert_eq!(
            h.sum,
            Duration::from_micros(50 + 80 + 700 + 3_000 + 20_000_000)
        );
    }
}
