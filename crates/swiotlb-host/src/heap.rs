//! Pool memory from the heap: a growth provider whose regions are zeroed
//! heap allocations at identity ("physical" address = CPU address), for
//! tests, simulations and user-space stacks whose device sees this
//! process's memory.
//!
//! Beside [`memfd`](crate::memfd), the only module of this crate that
//! touches raw memory. Unlike memfd and mmap, plain heap memory is
//! something miri can run: `ci/miri.sh` runs this module's tests and the
//! core's heap-backed integration tests through it.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use swiotlb::provider::{Provider, ProviderError, Region};
use swiotlb::PhysAddr;

/// A provider of zeroed heap memory whose "physical" address is its CPU
/// address (identity), for tests, simulations and user-space stacks. It
/// refuses with [`ProviderError::NoMemory`] when the memory the heap gave
/// does not lie below the limit, as a real provider with no low memory
/// left would.
///
/// Regions cost no time until touched: an aligned zeroed allocation from
/// the global allocator is a `memalign` plus a `memset` of every page
/// (milliseconds for a few MiB), so the provider asks for an unaligned
/// zeroed one (`calloc`, which maps fresh zero pages for large sizes), a
/// little larger, and aligns inside it.
///
/// # Invariants
/// Every entry of `bases` maps the aligned address of a live region to
/// the base of the allocation behind it, made with
/// `HeapProvider::layout` of the region's length, and not yet
/// deallocated; `live` is the number of entries.
#[derive(Debug)]
pub struct HeapProvider {
    align: usize,
    live: AtomicUsize,
    /// Aligned address of each live region -> its allocation's base.
    bases: Mutex<BTreeMap<usize, NonNull<u8>>>,
}

// SAFETY: the map only records addresses of allocations the provider owns;
// they are dereferenced by nothing but `dealloc`, under the caller's `free`
// contract, whichever thread calls it.
unsafe impl Send for HeapProvider {}
// SAFETY: as for `Send`; the map is behind a mutex.
unsafe impl Sync for HeapProvider {}

impl Default for HeapProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl HeapProvider {
    /// Page-aligned (4 KiB) regions, enough for any slot size up to a
    /// page.
    pub const fn new() -> Self {
        Self::with_align(4096)
    }

    /// Regions aligned to `align` bytes (rounded up to a power of two),
    /// for slots larger than a page.
    pub const fn with_align(align: usize) -> Self {
        let align = match align.checked_next_power_of_two() {
            Some(a) => a,
            None => 4096,
        };
        Self {
            align,
            live: AtomicUsize::new(0),
            bases: Mutex::new(BTreeMap::new()),
        }
    }

    /// Regions handed out and not yet freed.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The layout of the allocation behind a region of `len` bytes.
    fn layout(&self, len: usize) -> Option<Layout> {
        Layout::from_size_align(len.checked_add(self.align)?, 16).ok()
    }

    /// The map of live regions. A panic elsewhere while it was held
    /// (poisoning) left it consistent: every update is one insert or
    /// remove.
    fn bases(&self) -> MutexGuard<'_, BTreeMap<usize, NonNull<u8>>> {
        self.bases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// SAFETY: a region is a fresh allocation of at least `len` bytes from the
// global allocator, aligned inside it: valid until deallocated in `free`,
// contiguous in the identity "physical" space (one allocation is one range
// of addresses), below the limit (checked before it is returned), and
// reachable from nowhere else.
unsafe impl Provider for HeapProvider {
    /// Heap memory needs no sleeping in the sense of a kernel path that
    /// must not sleep, so the no-wait variant is the same allocation.
    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.alloc(len, below)
    }

    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        let no_memory = ProviderError::NoMemory { len, below };
        if len == 0 {
            return Err(no_memory);
        }
        let layout = self.layout(len).ok_or(no_memory)?;
        // SAFETY: the layout has a non-zero size (`len + align`, `len > 0`).
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(no_memory)?;
        let skip = base.as_ptr().align_offset(self.align);
        // SAFETY: `skip < align` (an address can always be aligned by
        // moving forward less than the alignment), and the allocation
        // holds `len + align` bytes, so `len` bytes from `base + skip`
        // stay inside it.
        let cpu = unsafe { base.add(skip) };
        let region = Region {
            cpu,
            phys: PhysAddr(cpu.as_ptr() as usize as u64),
            len,
        };
        if !region.is_below(below) {
            // SAFETY: allocated just above with `layout`, freed once, and
            // nothing was handed out from it.
            unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
            return Err(no_memory);
        }
        // INVARIANT: `base` is a live allocation made with
        // `layout(len)`, recorded under the region's aligned address.
        self.bases().insert(cpu.as_ptr() as usize, base);
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(region)
    }

    unsafe fn free(&self, region: Region) {
        let base = self
            .bases()
            .remove(&(region.cpu.as_ptr() as usize))
            .expect("a region from `alloc` is recorded until freed");
        // The layout `alloc` used: the length is the one it returned.
        let layout = self
            .layout(region.len)
            .expect("a region from `alloc` has a valid layout");
        self.live.fetch_sub(1, Ordering::Relaxed);
        // SAFETY:
        // - the caller guarantees `region` came from `alloc` unchanged,
        //   so `base` (recorded under its address) is the start of an
        //   allocation made with `layout`;
        // - the caller guarantees it is freed once and no longer used, and
        //   its entry is gone from `bases`, so nothing frees it again.
        unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swiotlb::provider::{pool_from_provider, NoHooks, XEN_DMA_BITS};
    use swiotlb::{Device, Direction, DmaMask, Fast, PoolConfig};

    #[test]
    fn regions_are_aligned_zeroed_and_counted() {
        let heap = HeapProvider::with_align(8192);
        let r = heap.alloc(10_000, PhysAddr(u64::MAX)).unwrap();
        assert_eq!(r.len, 10_000);
        assert_eq!(r.cpu.as_ptr() as usize % 8192, 0);
        assert_eq!(r.phys.0, r.cpu.as_ptr() as usize as u64);
        assert_eq!(heap.live(), 1);
        // SAFETY: the region is valid for reads of `len` bytes until
        // freed, and nothing else touches it.
        let bytes = unsafe { std::slice::from_raw_parts(r.cpu.as_ptr(), r.len) };
        assert!(bytes.iter().all(|&b| b == 0));
        // SAFETY: from `alloc` of this provider, unchanged, freed once,
        // and `bytes` is no longer used.
        unsafe { heap.free(r) };
        assert_eq!(heap.live(), 0);
    }

    #[test]
    fn a_region_not_below_the_limit_or_empty_is_refused() {
        let heap = HeapProvider::new();
        let low = PhysAddr(4096);
        assert_eq!(
            heap.alloc(4096, low),
            Err(ProviderError::NoMemory {
                len: 4096,
                below: low
            })
        );
        assert!(heap.alloc(0, PhysAddr(u64::MAX)).is_err());
        assert_eq!(heap.live(), 0, "a refused region is given back");
    }

    #[test]
    fn a_pool_over_heap_memory_bounces_and_gives_it_back() {
        let heap = HeapProvider::new();
        let pool = pool_from_provider::<Fast, _, _>(
            &heap,
            NoHooks,
            256 << 10,
            PhysAddr(u64::MAX),
            PoolConfig::default(),
            XEN_DMA_BITS.0,
            XEN_DMA_BITS.1,
        )
        .unwrap();
        assert_eq!(heap.live(), 1);
        let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
        let m = pool
            .map(&dev, vec![3u8; 1500], Direction::Bidirectional)
            .unwrap();
        assert!(m.is_bounced());
        assert_eq!(m.unmap(), vec![3u8; 1500]);
        pool.release().unwrap();
        assert_eq!(heap.live(), 0);
    }
}
