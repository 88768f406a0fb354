//! The standard library's monotonic clock as a tlb's [`Clock`].

#![forbid(unsafe_code)]

use std::time::Instant;

use swiotlb::tlb::Clock;

/// The standard library's monotonic clock ([`Instant`]), in nanoseconds
/// since the clock was made.
///
/// A tlb given no clock already reads this clock under `std` (a private
/// fallback in the core); name this one to share one origin between tlbs
/// or to be explicit:
///
/// ```
/// use std::sync::Arc;
/// use swiotlb::{GrowConfig, Growth, IoTlb, TlbKind};
/// use swiotlb_host::{HeapProvider, StdClock};
///
/// let growth = Growth::new(HeapProvider::new(), GrowConfig::new(256 << 10, 1 << 20));
/// let tlb: IoTlb = IoTlb::growing(TlbKind::Default, growth)
///     .unwrap()
///     .with_clock(Arc::new(StdClock::default()));
/// assert_eq!(tlb.pool_count(), 1);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct StdClock(Instant);

impl StdClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for StdClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_near_zero_and_never_goes_back() {
        let c = StdClock::new();
        let a = c.now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = c.now_ns();
        assert!(b >= a + 2_000_000, "{a} then {b}");
    }
}
