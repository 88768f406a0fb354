//! A thread that maintains a tlb: background growth and shrinking.

#![forbid(unsafe_code)]

use alloc::sync::Arc;

use super::IoTlb;
use crate::pool::Policy;
use crate::provider::ProviderError;
use crate::sync::Ordering;

/// A thread that calls [`IoTlb::maintain`] periodically: background
/// growth for callers that could not grow themselves, and shrinking.
/// Stops (and joins the thread) when dropped.
pub struct Maintainer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<P: Policy + 'static> IoTlb<P> {
    /// Starts a [`Maintainer`] calling [`IoTlb::maintain`] every
    /// `period`, and also at once whenever a request asks for growth.
    /// Errors of `maintain` (a leaked pool) go to `on_error`.
    pub fn spawn_maintainer(
        self: &Arc<Self>,
        period: std::time::Duration,
        on_error: fn(ProviderError),
    ) -> Maintainer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tlb = Arc::downgrade(self);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // A request for growth unparks this thread at once; the full
            // pass runs every `period`.
            let mut last = std::time::Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                let Some(tlb) = tlb.upgrade() else { return };
                let wanted = tlb
                    .grower()
                    .is_some_and(|g| g.grow_wanted.load(Ordering::Relaxed));
                if wanted || last.elapsed() >= period {
                    last = std::time::Instant::now();
                    if let Err(e) = tlb.maintain() {
                        on_error(e);
                    }
                }
                let wait = period.saturating_sub(last.elapsed());
                drop(tlb);
                std::thread::park_timeout(wait);
            }
        });
        if let Some(g) = self.grower() {
            *g.maintainer.lock() = Some(thread.thread().clone());
        }
        Maintainer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Maintainer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl core::fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Maintainer").finish_non_exhaustive()
    }
}
