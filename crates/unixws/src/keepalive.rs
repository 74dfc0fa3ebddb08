//! The clocks of an open connection — keepalive ping and pong, idle time,
//! close handshake, read timeout — as plain state with no I/O and no clock
//! of its own: every call takes `now` from the caller (the session, which
//! a driver ticks once per wake-up, not per message), so that tests drive
//! it with made-up instants and never sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Limits;
use crate::connection::ConnectionInfo;
use crate::error::Error;
use crate::stats::{Counter, ServerStats};

/// Which clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// The peer did not answer our close frame in time: drop it.
    CloseTimeout,
    /// The peer did not answer our ping in time: drop it.
    PongTimeout,
    /// Time to ping a silent peer.
    PingDue,
    /// No data message for the idle timeout: close with 1001.
    Idle,
    /// The caller's read timeout passed.
    ReadTimeout,
}

/// What a connection must do because a clock ran out.
#[derive(Debug)]
pub(crate) enum Expiry {
    /// Nothing ran out after all (an early wake-up).
    Nothing,
    /// Drop the socket; the connection is over.
    Drop,
    /// Drop the socket and report this error.
    DropWith(Error),
    /// Send a ping.
    Ping,
    /// Start the closing handshake with this code and reason.
    Close(CloseCode, &'static str),
    /// Report this error; the connection stays as it is.
    Fail(Error),
}

/// When each clock runs out, from what has happened so far.
#[derive(Debug, Clone)]
pub(crate) struct Timers {
    /// The durations (shared, not copied: this lives as long as the
    /// connection, and every byte of it counts per idle connection).
    limits: Arc<Limits>,
    read_timeout: Option<Duration>,
    last_heard: Instant,
    last_data: Instant,
    ping_sent: Option<Instant>,
    closing_since: Option<Instant>,
}

impl Timers {
    pub(crate) fn new(limits: Arc<Limits>, read_timeout: Option<Duration>, now: Instant) -> Self {
        Self {
            limits,
            read_timeout,
            last_heard: now,
            last_data: now,
            ping_sent: None,
            closing_since: None,
        }
    }

    /// The limits the clocks run by.
    pub(crate) fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// True when `recv` calls have a deadline of their own.
    pub(crate) fn has_read_timeout(&self) -> bool {
        self.read_timeout.is_some()
    }

    /// A frame arrived (any frame proves the peer alive); `data` for text or binary.
    pub(crate) fn heard(&mut self, data: bool, now: Instant) {
        self.last_heard = now;
        self.ping_sent = None;
        if data {
            self.last_data = now;
        }
    }

    /// We sent a data message (it counts against the idle timeout).
    pub(crate) fn sent_data(&mut self, now: Instant) {
        self.last_data = now;
    }

    /// We sent a ping and now wait for any frame.
    pub(crate) fn pinged(&mut self, now: Instant) {
        self.ping_sent = Some(now);
    }

    /// The closing handshake started (by either side); the first call counts.
    pub(crate) fn closing(&mut self, now: Instant) {
        self.closing_since.get_or_insert(now);
    }

    /// The earliest clock to run out for a read that started at `started`.
    pub(crate) fn next(&self, started: Instant) -> Option<(Instant, Deadline)> {
        if let Some(since) = self.closing_since {
            // While closing, only the close timeout matters.
            return Some((since + self.limits.close_timeout, Deadline::CloseTimeout));
        }
        let candidates = [
            self.ping_sent
                .map(|sent| (sent + self.limits.pong_timeout, Deadline::PongTimeout)),
            match (self.ping_sent, self.limits.ping_interval) {
                (None, Some(every)) => Some((self.last_heard + every, Deadline::PingDue)),
                _ => None,
            },
            self.limits
                .idle_timeout
                .map(|idle| (self.last_data + idle, Deadline::Idle)),
            self.read_timeout
                .map(|t| (started + t, Deadline::ReadTimeout)),
        ];
        candidates.into_iter().flatten().min_by_key(|(at, _)| *at)
    }

    /// The clock that has run out by now, if any.
    pub(crate) fn expired(&self, started: Instant, now: Instant) -> Option<Deadline> {
        self.next(started)
            .filter(|(at, _)| *at <= now)
            .map(|(_, which)| which)
    }

    /// Decides, logs and counts what the clock that ran out means for the
    /// connection.
    pub(crate) fn on_expiry(
        &mut self,
        started: Instant,
        now: Instant,
        info: &ConnectionInfo,
        stats: Option<&ServerStats>,
    ) -> Expiry {
        let peer = &info.peer;
        match self.expired(started, now) {
            None => Expiry::Nothing,
            Some(Deadline::CloseTimeout) => {
                tracing::debug!(%peer, "peer did not finish the closing handshake in time; dropping it");
                Expiry::Drop
            }
            Some(Deadline::PongTimeout) => {
                tracing::info!(%peer, "peer did not answer a ping; closing");
                if let Some(stats) = stats {
                    stats.count(Counter::KeepaliveTimeout);
                }
                Expiry::DropWith(Error::KeepaliveTimeout {
                    after: self.limits.pong_timeout,
                })
            }
            Some(Deadline::PingDue) => {
                self.pinged(now);
                Expiry::Ping
            }
            Some(Deadline::Idle) => {
                tracing::info!(%peer, "idle timeout; closing with 1001");
                Expiry::Close(CloseCode::Away, "idle timeout")
            }
            Some(Deadline::ReadTimeout) => Expiry::Fail(Error::Timeout {
                operation: crate::error::Operation::Read,
                addr: info.shown(),
                after: self.read_timeout.unwrap_or_default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
            .ping_interval(Some(Duration::from_secs(30)))
            .pong_timeout(Duration::from_secs(10))
            .idle_timeout(Some(Duration::from_secs(60)))
    }

    #[test]
    fn ping_then_pong_then_close_take_turns() {
        let t0 = Instant::now();
        let mut no_idle = limits();
        no_idle.idle_timeout = None;
        let mut t = Timers::new(Arc::new(no_idle), None, t0);
        assert_eq!(
            t.next(t0),
            Some((t0 + Duration::from_secs(30), Deadline::PingDue))
        );
        t.pinged(t0 + Duration::from_secs(30));
        assert_eq!(t.next(t0).map(|d| d.1), Some(Deadline::PongTimeout));
        t.heard(false, t0 + Duration::from_secs(31));
        assert_eq!(
            t.next(t0),
            Some((t0 + Duration::from_secs(61), Deadline::PingDue))
        );
        t.closing(t0 + Duration::from_secs(40));
        assert_eq!(t.next(t0).map(|d| d.1), Some(Deadline::CloseTimeout));
        assert_eq!(t.expired(t0, t0 + Duration::from_secs(44)), None);
        assert_eq!(
            t.expired(t0, t0 + Duration::from_secs(45)),
            Some(Deadline::CloseTimeout)
        );
    }

    #[test]
    fn read_timeout_and_idle_compete_by_time() {
        let t0 = Instant::now();
        let t = Timers::new(Arc::new(limits()), Some(Duration::from_millis(1)), t0);
        assert_eq!(t.next(t0).map(|d| d.1), Some(Deadline::ReadTimeout));
        assert_eq!(t.expired(t0, t0), None);
        assert_eq!(
            t.expired(t0, t0 + Duration::from_millis(2)),
            Some(Deadline::ReadTimeout)
        );
        let no_ping = Limits::default().ping_interval(None);
        assert_eq!(Timers::new(Arc::new(no_ping), None, t0).next(t0), None);
    }

    #[test]
    fn data_either_way_holds_the_idle_timeout_off() {
        let t0 = Instant::now();
        let mut l = limits();
        l.ping_interval = None;
        let mut t = Timers::new(Arc::new(l), None, t0);
        t.sent_data(t0 + Duration::from_secs(50));
        assert_eq!(t.expired(t0, t0 + Duration::from_secs(60)), None);
        t.heard(true, t0 + Duration::from_secs(100));
        assert_eq!(t.expired(t0, t0 + Duration::from_secs(150)), None);
        assert_eq!(
            t.expired(t0, t0 + Duration::from_secs(160)),
            Some(Deadline::Idle)
        );
    }
}
