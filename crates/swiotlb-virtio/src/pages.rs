//! Where coherent memory comes from for a device that has no restricted
//! tlb: [`PageSource`].
//!
//! Linux takes coherent memory (`dma_alloc_coherent`) from a swiotlb pool
//! only for restricted pools (`dma_direct_alloc` checks
//! `is_swiotlb_for_alloc`); every other device gets pages from the page
//! allocator, made visible to the device (`set_memory_decrypted` in a
//! confidential VM). A [`PageSource`] is that page allocator: whole pages
//! from a [`Provider`], made visible by the [`MemoryHooks`]' `share`, and
//! translated to device addresses by the device's translation.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::ptr::NonNull;

use swiotlb::provider::{MemoryHooks, NoHooks, Provider, Region};
use swiotlb::translate::Translate;
use swiotlb::{Device, DmaAddr, PhysAddr};

use crate::PAGE_SIZE;

/// Coherent memory for devices served by the default or high tlb: whole
/// pages from a [`Provider`], shared with the host by the
/// [`MemoryHooks`] ([`MemoryHooks::share`] after allocation,
/// [`MemoryHooks::unshare`] before the pages go back; `remap` is not run:
/// it is Xen's per-segment exchange for bounce pools), zeroed after
/// sharing (sharing may scramble memory), and given to the device at its
/// translation of the region's physical address.
///
/// One provider allocation per [`dma_alloc`](virtio_drivers::Hal::dma_alloc)
/// call, of exactly the pages asked for; the provider must give
/// page-aligned memory (a region that is not is given back and the
/// allocation fails). Regions live in a table keyed by device address
/// until [`dma_dealloc`](virtio_drivers::Hal::dma_dealloc) returns them.
pub struct PageSource {
    provider: Arc<dyn Provider>,
    hooks: Arc<dyn MemoryHooks>,
    below: PhysAddr,
    /// Live allocations, by device address: the provider's region and the
    /// bytes handed out (the pages asked for; the region may be larger).
    live: spin::Mutex<BTreeMap<u64, (Region, usize)>>,
}

impl core::fmt::Debug for PageSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageSource")
            .field("below", &self.below)
            .field("live", &self.live.lock().len())
            .finish_non_exhaustive()
    }
}

/// Why a [`PageSource`] could not give memory back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FreeError {
    /// No live allocation of this source starts at that device address
    /// with that CPU address and size.
    NotAllocated,
    /// The unshare hook failed: the region is leaked, never reused.
    Unshare,
}

impl PageSource {
    /// Pages from `provider`, used as it gives them (no hooks), anywhere
    /// in physical memory.
    pub fn new(provider: impl Provider + 'static) -> Self {
        Self {
            provider: Arc::new(provider),
            hooks: Arc::new(NoHooks),
            below: PhysAddr(u64::MAX),
            live: spin::Mutex::new(BTreeMap::new()),
        }
    }

    /// The hooks that make every allocation visible to the device and
    /// private again before it is freed.
    pub fn with_hooks(mut self, hooks: impl MemoryHooks + 'static) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// An exclusive physical limit for the pages (4 GiB for a 32-bit
    /// device).
    pub fn with_below(mut self, below: PhysAddr) -> Self {
        self.below = below;
        self
    }

    /// Allocations live now.
    pub fn live(&self) -> usize {
        self.live.lock().len()
    }

    /// `pages` zeroed pages for `dev`: their device address and CPU
    /// address, or `None` (the provider has none, a hook failed, the
    /// region is not page aligned, or the device cannot reach it or would
    /// see it at device address 0).
    pub(crate) fn alloc<T: Translate>(
        &self,
        dev: &Device<T>,
        pages: usize,
    ) -> Option<(DmaAddr, NonNull<u8>)> {
        let len = pages.checked_mul(PAGE_SIZE)?;
        let region = self.provider.alloc(len, self.below).ok()?;
        let dma = dev.phys_to_dma(region.phys);
        let usable = region.cpu.as_ptr().addr() % PAGE_SIZE == 0
            && region.len >= len
            && dma.0 != 0
            && dev
                .translate()
                .dma_capable(&dev.limits(), region.phys, dma, len);
        if !usable {
            // Never shared: nothing to undo.
            self.give_back(region);
            return None;
        }
        if self.hooks.share(&region).is_err() {
            // A failed share may have shared part of the region (a TDX
            // conversion stopped halfway; `MemoryHooks::share`: "unshare
            // is called before the region is freed"), so it is unshared
            // and freed only if that worked, else leaked: Linux's
            // `alloc_dma_pages` re-encrypts after a failed
            // `set_memory_decrypted` and frees only if that succeeds.
            let _ = self.unshare_and_give_back(region);
            return None;
        }
        // SAFETY:
        // - `region.cpu` is valid for writes of `region.len >= len` bytes
        //   until it is freed (the `Provider` implementation-safety
        //   contract), and the share hook left it so (the `MemoryHooks`
        //   contract);
        // - it is this source's alone until freed (the same contract), and
        //   no device has its address yet.
        unsafe { region.cpu.as_ptr().write_bytes(0, len) };
        self.live.lock().insert(dma.0, (region, len));
        Some((dma, region.cpu))
    }

    /// Gives back the allocation at device address `dma`, CPU address
    /// `cpu`, of exactly `len` bytes (its pages times [`PAGE_SIZE`]).
    pub(crate) fn free(&self, dma: u64, cpu: NonNull<u8>, len: usize) -> Result<(), FreeError> {
        let region = {
            let mut live = self.live.lock();
            match live.get(&dma) {
                Some(&(r, given)) if r.cpu == cpu && given == len => {}
                _ => return Err(FreeError::NotAllocated),
            }
            live.remove(&dma).ok_or(FreeError::NotAllocated)?.0
        };
        self.unshare_and_give_back(region)
    }

    /// Unshares `region`, on which the share hook ran (whether it
    /// succeeded or not), then frees it to the provider; if the unshare
    /// fails the region is leaked: memory the host may still see must
    /// never be reused.
    fn unshare_and_give_back(&self, region: Region) -> Result<(), FreeError> {
        if self.hooks.unshare(&region).is_err() {
            return Err(FreeError::Unshare);
        }
        self.give_back(region);
        Ok(())
    }

    /// Frees `region` to the provider: one the share hook never ran on, or
    /// one it ran on that was unshared since.
    fn give_back(&self, region: Region) {
        // SAFETY:
        // - `region` came from this provider's `alloc`, unchanged, and is
        //   freed once: it is out of the live table (or was never in it);
        // - nothing uses it any more (the caller gave it back, or it was
        //   never handed out), and the share hook never ran on it or was
        //   undone by a successful unshare (the callers).
        unsafe { self.provider.free(region) };
    }
}
