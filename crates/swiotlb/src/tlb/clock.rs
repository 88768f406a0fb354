//! Time sources for idle times, waits and deferral times.

#![forbid(unsafe_code)]

use alloc::sync::Arc;

/// A monotonic time source, in nanoseconds, for idle times and deferral
/// times. Kernels pass their clock; tests pass a [`ManualClock`].
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

/// The standard library's monotonic clock.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct StdClock(std::time::Instant);

#[cfg(feature = "std")]
impl Default for StdClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

#[cfg(feature = "std")]
impl Clock for StdClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// The clock of a tlb given none: the standard library's under `std`, else
/// one that stands still (deferral times then read zero).
pub(crate) fn default_clock() -> Arc<dyn Clock> {
    #[cfg(feature = "std")]
    {
        Arc::new(StdClock::default())
    }
    #[cfg(not(feature = "std"))]
    {
        Arc::new(ManualClock::new())
    }
}
