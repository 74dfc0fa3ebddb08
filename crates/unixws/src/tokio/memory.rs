//! Handing memory that connections freed back to the system.
//!
//! glibc keeps what large buffers free inside its arenas (its mmap threshold
//! rises to the largest block freed), so after a burst of large messages,
//! or of bad peers that left half-sent messages behind, a server's resident
//! memory would stay at the burst's peak. Connections mark memory freed when
//! they end; the tokio server's ticker then asks glibc to return free pages
//! (`malloc_trim`), at most once a second and only after something was freed.

use std::sync::atomic::{AtomicBool, Ordering};

static FREED: AtomicBool = AtomicBool::new(false);

/// A connection ended, or let go of large buffers.
pub(crate) fn freed() {
    FREED.store(true, Ordering::Relaxed);
}

/// Returns free memory to the system if connections freed some since the
/// last call. Walks the allocator's arenas: call it off the async workers.
pub(crate) fn trim_if_freed() {
    if !FREED.swap(false, Ordering::Relaxed) {
        return;
    }
    crate::sys::release_free_memory();
}

/// Trims once a second while the returned guard lives.
pub(crate) fn start_trimming() -> TrimTask {
    TrimTask(tokio::spawn(async {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if FREED.load(Ordering::Relaxed) {
                let _ = tokio::task::spawn_blocking(trim_if_freed).await;
            }
        }
    }))
}

/// Stops the ticker on drop.
pub(crate) struct TrimTask(tokio::task::JoinHandle<()>);

impl Drop for TrimTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
