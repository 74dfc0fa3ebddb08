//! Accept back-off: an accept loop that meets EMFILE (descriptors run
//! out) or another accept error must neither spin nor flood the log. Both
//! servers pause 10 ms, doubling to 1 s while errors continue, and log at
//! most once a second with the count of errors held back; a successful
//! accept resets the pause.

use std::io;
use std::time::{Duration, Instant};

/// Backs off on accept errors such as EMFILE so the loop never spins, and
/// logs at most once a second.
#[derive(Default)]
pub(crate) struct AcceptBackoff {
    pause: Option<Duration>,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    pub(crate) fn reset(&mut self) {
        self.pause = None;
    }

    pub(crate) fn on_error(&mut self, e: &io::Error) -> Option<Duration> {
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return None;
        }
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            tracing::warn!(error = %e, suppressed = self.suppressed, "accept failed; backing off (raise `ulimit -n` if descriptors run out)");
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let next = self.pause.map_or(Duration::from_millis(10), |p| {
            (p * 2).min(Duration::from_secs(1))
        });
        self.pause = Some(next);
        Some(next)
    }
}
