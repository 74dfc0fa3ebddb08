//! The drain: a server that shuts down waits for its connections to end,
//! and the last one to end says so (mini-redis's shape: the drain
//! completes when the last sender drops, with nothing polling).
//!
//! [`Drain`] counts what a server still runs: connection threads or tasks
//! (from accept to the end of the handler) and open connections (which, on
//! tokio, may outlive their handler while their close handshake runs).
//! Each guard that ends calls [`Drain::leave`]; the one that brings the
//! count to zero wakes the waiting server, blocking
//! ([`wait_until`](Drain::wait_until)) or async ([`idle`](Drain::idle)).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// What a server still runs, and who waits for it to be nothing.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    busy: AtomicUsize,
    /// Taken to wait and to signal, so that a wake-up is never lost
    /// between a waiter's look at `busy` and its sleep.
    lock: Mutex<Option<Waker>>,
    idle: Condvar,
}

impl Drain {
    /// One more thread, task or connection.
    pub(crate) fn enter(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    /// One fewer; the last one wakes whoever waits.
    pub(crate) fn leave(&self) {
        if self.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            let waker = self.waiting().take();
            self.idle.notify_all();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// How many are still busy.
    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    fn waiting(&self) -> MutexGuard<'_, Option<Waker>> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until nothing is busy (true) or `deadline` passes (false).
    pub(crate) fn wait_until(&self, deadline: Instant) -> bool {
        let mut guard = self.waiting();
        while self.busy() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self
                .idle
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Completes when nothing is busy (one waiter at a time: the server).
    pub(crate) fn idle(&self) -> Idle<'_> {
        Idle { drain: self }
    }
}

/// See [`Drain::idle`].
#[derive(Debug)]
pub(crate) struct Idle<'a> {
    drain: &'a Drain,
}

impl Future for Idle<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut waiting = self.drain.waiting();
        if self.drain.busy() == 0 {
            return Poll::Ready(());
        }
        *waiting = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_last_leave_ends_the_wait() {
        let drain = Arc::new(Drain::default());
        drain.enter();
        drain.enter();
        let waiter = {
            let drain = drain.clone();
            std::thread::spawn(move || drain.wait_until(Instant::now() + Duration::from_secs(30)))
        };
        drain.leave();
        assert_eq!(drain.busy(), 1);
        drain.leave();
        assert!(
            waiter.join().unwrap(),
            "woken by the last leave, not the deadline"
        );
    }

    #[test]
    fn a_wait_with_work_left_ends_at_its_deadline() {
        let drain = Drain::default();
        drain.enter();
        assert!(!drain.wait_until(Instant::now()));
        drain.leave();
        assert!(drain.wait_until(Instant::now()), "nothing busy: at once");
    }

    #[test]
    fn the_future_is_woken_by_the_last_leave() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let drain = Drain::default();
        drain.enter();
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut idle = drain.idle();
        assert!(Pin::new(&mut idle).poll(&mut cx).is_pending());
        drain.leave();
        assert!(flag.0.load(Ordering::SeqCst), "woken");
        assert!(Pin::new(&mut idle).poll(&mut cx).is_ready());
    }
}
