//! A thread that maintains a tlb: background growth and shrinking.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use swiotlb::pool::Policy;
use swiotlb::provider::ProviderError;
use swiotlb::IoTlb;

/// A thread that calls [`IoTlb::maintain`] every period, and at once
/// whenever a request asks for growth it could not do itself
/// ([`IoTlb::growth_wanted`]; the tlb wakes the thread through the waker
/// it is given with [`IoTlb::set_growth_waker`]). Stops, and joins the
/// thread, when dropped.
///
/// It holds the tlb weakly: once the last other `Arc` is gone, the thread
/// ends by itself at its next wake-up.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use swiotlb::{GrowConfig, Growth, IoTlb, TlbKind};
/// use swiotlb_host::{HeapProvider, Maintainer};
///
/// let growth = Growth::new(HeapProvider::new(), GrowConfig::new(256 << 10, 4 << 20));
/// let tlb: Arc<IoTlb> = Arc::new(IoTlb::growing(TlbKind::Default, growth).unwrap());
/// let maintainer = Maintainer::spawn(&tlb, Duration::from_millis(10), |e| {
///     eprintln!("{e}");
/// });
/// drop(maintainer); // stops the thread
/// ```
pub struct Maintainer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Wakes the maintainer's thread: what the tlb's growth waker does.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl Maintainer {
    /// Starts a thread calling [`IoTlb::maintain`] on `tlb` every
    /// `period`, and also at once whenever a request asks for growth.
    /// Errors of `maintain` (a pool whose memory was leaked) go to
    /// `on_error`.
    ///
    /// It becomes the tlb's growth waker, replacing any earlier one.
    pub fn spawn<P: Policy + 'static>(
        tlb: &Arc<IoTlb<P>>,
        period: Duration,
        on_error: fn(ProviderError),
    ) -> Maintainer {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(tlb);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // A request for growth unparks this thread at once; the full
            // pass runs every `period`.
            let mut last = Instant::now();
            while !flag.load(Ordering::Acquire) {
                let Some(tlb) = weak.upgrade() else { return };
                if tlb.growth_wanted() || last.elapsed() >= period {
                    last = Instant::now();
                    if let Err(e) = tlb.maintain() {
                        on_error(e);
                    }
                }
                let wait = period.saturating_sub(last.elapsed());
                drop(tlb);
                std::thread::park_timeout(wait);
            }
        });
        tlb.set_growth_waker(Waker::from(Arc::new(Unpark(thread.thread().clone()))));
        Maintainer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Maintainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintainer").finish_non_exhaustive()
    }
}
