//! Accept back-off: an accept loop that meets EMFILE (descriptors run
//! out) or another accept error must neither spin nor flood the log. Both
//! servers pause 10 ms, doubling to 1 s while errors continue, and log at
//! most once a second with the count of errors held back; a successful
//! accept resets the pause.

use std::io;
use std::time::{Duration, Instant};

/// Backs off on accept errors such as EMFILE so the loop never spins, and
/// logs at most once a second.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    pause: Option<Duration>,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    pub(crate) fn reset(&mut self) {
        self.pause = None;
    }

    /// The pause after accept failed with `e` (`None`: accept again now).
    pub(crate) fn on_error(&mut self, e: &io::Error) -> Option<Duration> {
        self.on_error_at(e, Instant::now())
    }

    fn on_error_at(&mut self, e: &io::Error, now: Instant) -> Option<Duration> {
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return None;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_a_second_and_reset_after_an_accept() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let mut backoff = AcceptBackoff::default();
        let t0 = Instant::now();
        let pauses: Vec<u64> = (0..9)
            .map(|i| {
                let at = t0 + Duration::from_millis(i * 10);
                backoff.on_error_at(&emfile, at).unwrap().as_millis() as u64
            })
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // Logged once in that second; the other eight were held back.
        assert_eq!(backoff.suppressed, 8);
        backoff.reset();
        assert_eq!(
            backoff.on_error_at(&emfile, t0 + Duration::from_secs(2)),
            Some(Duration::from_millis(10))
        );
        assert_eq!(backoff.suppressed, 0, "a second later the count was logged");
        let again = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(backoff.on_error_at(&again, t0), None, "no pause for EAGAIN");
    }
}
