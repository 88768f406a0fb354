//! Time sources for idle times, waits and deferral times.

#![forbid(unsafe_code)]

use alloc::sync::Arc;

/// A monotonic time source, in nanoseconds, for idle times and deferral
/// times. Kernels pass their clock; tests pass a [`ManualClock`]; hosted
/// programs may pass `swiotlb_host::StdClock` (a tlb given no clock uses
/// the standard library's monotonic clock under `std` anyway).
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary fixed origin; never decreases.
    fn now_ns(&self) -> u64;
}

/// A clock that moves only when told to, for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(core::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at zero.
    pub const fn new() -> Self {
        Self(core::sync::atomic::AtomicU64::new(0))
    }

    /// Moves the clock `ns` nanoseconds forward.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, core::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// The clock of a tlb given none: under `std`, the standard library's
/// monotonic clock ([`Monotonic`]), so that a hosted program that sets no
/// clock still sees pools idle and shrinks them, and deferral times read
/// real time; without `std`, one that stands still (idle times and
/// deferral times then read zero, so nothing is ever idle long enough to
/// be given back: a kernel passes its own clock with
/// [`IoTlb::with_clock`](super::IoTlb::with_clock)).
pub(crate) fn default_clock() -> Arc<dyn Clock> {
    #[cfg(feature = "std")]
    {
        Arc::new(Monotonic(std::time::Instant::now()))
    }
    #[cfg(not(feature = "std"))]
    {
        Arc::new(ManualClock::new())
    }
}

/// The standard library's monotonic clock, from the tlb's creation: the
/// fallback of [`default_clock`] under `std`. Private on purpose: the one
/// public clock of this kind is `swiotlb_host::StdClock`, for users who
/// want to name it or share one between tlbs; this one only keeps a tlb
/// given no clock behaving as before the std parts moved out.
#[cfg(feature = "std")]
struct Monotonic(std::time::Instant);

#[cfg(feature = "std")]
impl Clock for Monotonic {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}
