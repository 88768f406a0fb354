//! The engine behind every generated `Hal` type: a platform, a device and
//! the options, with `share`, `unshare`, `dma_alloc` and `dma_dealloc` as
//! methods.

use core::ptr::NonNull;

use swiotlb::translate::{Identity, Translate};
use swiotlb::{Attrs, Device, Direction, DmaAddr, Error, Fast, Platform, Policy};
use virtio_drivers::BufferDirection;

use crate::pages::{FreeError, PageSource};
use crate::PAGE_SIZE;

/// How a [`Engine`] shares buffers and where its coherent memory comes
/// from, beyond its platform and device.
#[derive(Debug)]
#[non_exhaustive]
pub struct HalOptions {
    /// The device's name in panic messages (the `Hal` type's name unless
    /// set).
    pub name: &'static str,
    /// Attributes of every `share`: [`Attrs::MAY_SLEEP`] by default, so
    /// that a full tlb grows or waits (see the crate documentation).
    pub attrs: Attrs,
    /// Coherent memory for a device with no restricted tlb; `None`: such a
    /// device's `dma_alloc` fails.
    pub pages: Option<PageSource>,
}

impl Default for HalOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl HalOptions {
    /// No name (the `Hal` type's is used), [`Attrs::MAY_SLEEP`], no page
    /// source.
    pub const fn new() -> Self {
        Self {
            name: "",
            attrs: Attrs::MAY_SLEEP,
            pages: None,
        }
    }

    /// The device's name in panic messages.
    pub fn with_name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The attributes of every `share` (drop [`Attrs::MAY_SLEEP`] for a
    /// driver that shares where it must not sleep: a growing tlb then
    /// makes a transient pool instead of growing, and nothing waits).
    pub fn with_attrs(mut self, attrs: Attrs) -> Self {
        self.attrs = attrs;
        self
    }

    /// Coherent memory for a device with no restricted tlb.
    pub fn with_pages(mut self, pages: PageSource) -> Self {
        self.pages = Some(pages);
        self
    }
}

/// A platform, one device and its options: what a generated `Hal` type
/// delegates to (see [`hal!`](crate::hal)). Usable on its own where a
/// value can be passed around.
#[derive(Debug)]
pub struct Engine<P: Policy + 'static = Fast, T: 'static = Identity> {
    platform: &'static Platform<P>,
    device: Device<T>,
    options: HalOptions,
}

/// The core's direction for a virtio one.
fn direction(dir: BufferDirection) -> Direction {
    match dir {
        BufferDirection::DriverToDevice => Direction::ToDevice,
        BufferDirection::DeviceToDriver => Direction::FromDevice,
        BufferDirection::Both => Direction::Bidirectional,
    }
}

/// What `dma_alloc` returns on failure (virtio-drivers checks the address).
fn failed() -> (u64, NonNull<u8>) {
    (0, NonNull::dangling())
}

/// `dma_dealloc`'s answer for an address and pointer that are not a live
/// allocation of this engine.
pub const DEALLOC_NOT_ALLOCATED: i32 = -1;
/// `dma_dealloc`'s answer when the page source's unshare hook failed: the
/// pages are leaked, never reused.
pub const DEALLOC_UNSHARE_FAILED: i32 = -2;

impl<P: Policy + 'static, T: Translate + Clone + Send + Sync + 'static> Engine<P, T> {
    /// An engine sharing buffers of `device` through `platform`.
    pub fn new(platform: &'static Platform<P>, device: Device<T>, options: HalOptions) -> Self {
        Self {
            platform,
            device,
            options,
        }
    }

    /// The platform (the one given to [`Engine::new`]). Freeing through
    /// it is `unsafe` (`Platform::free_coherent`), so handing it out lets
    /// no safe code take a driver's pages.
    pub fn platform(&self) -> &'static Platform<P> {
        self.platform
    }

    /// The device.
    pub fn device(&self) -> &Device<T> {
        &self.device
    }

    /// The options.
    pub fn options(&self) -> &HalOptions {
        &self.options
    }

    /// `pages` zeroed, page-aligned pages the device shares with the
    /// driver, as [`Hal::dma_alloc`](virtio_drivers::Hal::dma_alloc): from
    /// the device's restricted tlb if it has one (a coherent allocation of
    /// its first pool, at most one segment), else from the page source.
    /// `(0, NonNull::dangling())` on failure.
    pub fn dma_alloc(&self, pages: usize, dir: BufferDirection) -> (u64, NonNull<u8>) {
        let _ = dir;
        let Some(size) = pages.checked_mul(PAGE_SIZE).filter(|&s| s != 0) else {
            return failed();
        };
        if self.device.restricted_tlb().is_none() {
            return match &self.options.pages {
                Some(src) => src
                    .alloc(&self.device, pages)
                    .map_or_else(failed, |(dma, cpu)| (dma.0, cpu)),
                None => failed(),
            };
        }
        let Ok(c) = self.platform.alloc_coherent(&self.device, size) else {
            return failed();
        };
        // A pool's coherent allocations are page aligned in physical and
        // device space; the CPU address follows when the pool's memory is
        // page aligned, which virtio-drivers needs and is checked here.
        // Device address 0 never comes from a pool (swiotlb's rule).
        if c.cpu.as_ptr().addr() % PAGE_SIZE != 0 || c.dma.0 == 0 {
            // SAFETY: the allocation was just made and is handed to no
            // one: nothing points into it.
            let undo = unsafe { self.platform.free_coherent(&self.device, c.dma, c.size) };
            debug_assert!(undo.is_ok(), "freeing a fresh allocation failed");
            return failed();
        }
        (c.dma.0, c.cpu)
    }

    /// Gives back an allocation of [`Engine::dma_alloc`], as
    /// [`Hal::dma_dealloc`](virtio_drivers::Hal::dma_dealloc): 0 on
    /// success, [`DEALLOC_NOT_ALLOCATED`] if `paddr`, `vaddr` and `pages`
    /// are not a live allocation of this engine of exactly `pages` pages
    /// (nothing changes then), or [`DEALLOC_UNSHARE_FAILED`].
    ///
    /// It is `unsafe` because the pages go back to be handed out (zeroed)
    /// again: safe code must not be able to free pages a virtio driver
    /// still uses, which a generated `Hal`'s public `engine()` would
    /// otherwise allow:
    ///
    /// ```compile_fail,E0133
    /// # use virtio_drivers::{BufferDirection, Hal};
    /// swiotlb_virtio::hal!(struct H);
    /// // A driver's ring...
    /// let (paddr, vaddr) = H::dma_alloc(1, BufferDirection::Both);
    /// // ...cannot be freed from under it by safe code.
    /// H::engine().dma_dealloc(paddr, vaddr, 1);
    /// ```
    ///
    /// Nor through the platform:
    ///
    /// ```compile_fail,E0133
    /// # use virtio_drivers::{BufferDirection, Hal};
    /// swiotlb_virtio::hal!(struct H);
    /// let (paddr, vaddr) = H::dma_alloc(1, BufferDirection::Both);
    /// let e = H::engine();
    /// let _ = e.platform().free_coherent(e.device(), swiotlb::DmaAddr(paddr), 4096);
    /// ```
    ///
    /// # Safety
    /// If `paddr`, `vaddr` and `pages` are a live allocation of this
    /// engine, its memory is no longer used through any pointer (virtio-drivers'
    /// contract for `Hal::dma_dealloc`: the pages were its own, and it is
    /// done with them). Given anything else, the call only returns
    /// [`DEALLOC_NOT_ALLOCATED`].
    pub unsafe fn dma_dealloc(&self, paddr: u64, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Some(size) = pages.checked_mul(PAGE_SIZE) else {
            return DEALLOC_NOT_ALLOCATED;
        };
        let Some(id) = self.device.restricted_tlb() else {
            return match &self.options.pages {
                Some(src) => match src.free(paddr, vaddr, size) {
                    Ok(()) => 0,
                    Err(FreeError::NotAllocated) => DEALLOC_NOT_ALLOCATED,
                    Err(FreeError::Unshare) => DEALLOC_UNSHARE_FAILED,
                },
                None => DEALLOC_NOT_ALLOCATED,
            };
        };
        let Some(tlb) = self.platform.restricted_tlb(id) else {
            return DEALLOC_NOT_ALLOCATED;
        };
        // Coherent allocations come from the first pool only: check that
        // `vaddr` is where `paddr` lies in it before freeing by address.
        let pool = tlb.first_pool();
        let phys = self.device.translate().dma_to_phys(DmaAddr(paddr));
        let at = phys.0.wrapping_sub(pool.start().0) as usize;
        if !pool.contains(phys) || pool.vaddr().as_ptr().wrapping_add(at) != vaddr.as_ptr() {
            return DEALLOC_NOT_ALLOCATED;
        }
        // SAFETY: `paddr` is where `vaddr` lies in the pool, so if this is
        // a live coherent allocation it is the one at `vaddr`, whose
        // memory is no longer used (this function's contract); the pool
        // frees it only if `size` is its size too.
        match unsafe {
            self.platform
                .free_coherent(&self.device, DmaAddr(paddr), size)
        } {
            Ok(()) => 0,
            Err(_) => DEALLOC_NOT_ALLOCATED,
        }
    }

    /// Maps `buffer` for the device and returns the device address, as
    /// [`Hal::share`](virtio_drivers::Hal::share): a bounce through the
    /// tlb that serves the device (always, for a restricted device), or
    /// the buffer's own address when a device with no restricted tlb
    /// reaches it and is not forced to bounce. The buffer's physical
    /// address is the device translation's
    /// [`virt_to_phys`](Translate::virt_to_phys) of its CPU address.
    ///
    /// # Panics
    /// When the tlb is full and neither growth nor waiting (up to the
    /// tlb's wait timeout) found room, or the map fails for any other
    /// reason: the message names swiotlb, the device, the size, the free
    /// and total bytes of the tlb and the reason. The trait has no error
    /// return.
    ///
    /// # Safety
    /// - `buffer` is valid for reads of its length, and for writes too
    ///   unless `dir` is [`BufferDirection::DriverToDevice`] (this engine
    ///   never writes a to-device buffer);
    /// - from now until the [`Engine::unshare`] of the returned address,
    ///   the buffer is not moved or freed: unshare copies back into the
    ///   same memory (through the pointer it is given then).
    pub unsafe fn share(&self, buffer: NonNull<[u8]>, dir: BufferDirection) -> u64 {
        let len = buffer.len();
        let cpu = buffer.cast::<u8>().as_ptr();
        let phys = self.device.translate().virt_to_phys(cpu);
        // SAFETY:
        // - `cpu` is valid for reads of `len` bytes, read here only (the
        //   map-time copy): nothing is ever written through it, as
        //   `unshare` copies back through the pointer it is given then;
        // - the memory stays valid until the unmap in `unshare` (this
        //   function's contract);
        // - `phys` is its physical address, by the device's translation
        //   (the binding's promise, see the crate documentation).
        let r = unsafe {
            self.platform.map_raw_with_attrs(
                &self.device,
                phys,
                cpu,
                len,
                direction(dir),
                self.options.attrs,
            )
        };
        match r {
            Ok(dma) if dma.0 != 0 => dma.0,
            Ok(dma) => {
                // Only a direct mapping can get here (no pool hands out
                // device address 0): nothing to undo but the count.
                // SAFETY: the mapping was just made and the device has
                // not been told of it; the buffer is as at the map.
                let _ = unsafe {
                    self.platform.unmap_raw(
                        &self.device,
                        dma,
                        len,
                        direction(dir),
                        Attrs::SKIP_CPU_SYNC,
                    )
                };
                panic!(
                    "swiotlb-virtio: {}: a buffer of {len} bytes maps to device address 0, which virtio-drivers takes for failure",
                    self.options.name
                )
            }
            Err(e) => self.share_failed(len, dir, e),
        }
    }

    /// The panic of a `share` that failed with `e`.
    #[cold]
    fn share_failed(&self, len: usize, dir: BufferDirection, e: Error) -> ! {
        let name = self.options.name;
        let why = match e {
            Error::TimedOut { .. } => {
                "the tlb could not grow and no slot came free before its wait timeout"
            }
            Error::GrowFailed { .. } => {
                "the tlb is full and its memory provider failed to give it more"
            }
            Error::PoolFull { .. } if !self.options.attrs.contains(Attrs::MAY_SLEEP) => {
                "the tlb is full and could not grow, and the Hal may not sleep, so it did not wait"
            }
            Error::PoolFull { .. } if cfg!(feature = "std") => "the tlb is full and could not grow",
            Error::PoolFull { .. } => {
                "the tlb is full and could not grow, and without std nothing waits"
            }
            _ => "the mapping cannot be made",
        };
        match self.platform.select(&self.device) {
            Ok(tlb) => {
                let stats = tlb.stats();
                let slot = tlb.first_pool().slot_size() as u64;
                let total = stats.pool.io_tlb_nslabs * slot;
                let free = (stats.pool.io_tlb_nslabs - stats.pool.io_tlb_used) * slot;
                panic!(
                    "swiotlb-virtio: {name}: cannot share {len} bytes ({dir:?}) through tlb '{}': {why}: requested {len} bytes, free {free} of {total} bytes: {e}",
                    tlb.name()
                )
            }
            Err(_) => panic!(
                "swiotlb-virtio: {name}: cannot share {len} bytes ({dir:?}): {why}: no tlb serves the device: {e}"
            ),
        }
    }

    /// Undoes [`Engine::share`], as
    /// [`Hal::unshare`](virtio_drivers::Hal::unshare): for
    /// [`BufferDirection::DeviceToDriver`] and [`BufferDirection::Both`]
    /// the whole mapped length is copied back (the trait does not say how
    /// much the device wrote), for [`BufferDirection::DriverToDevice`]
    /// nothing is; then the slots are given back.
    ///
    /// The copy goes through `buffer` as given here, not through the
    /// pointer given to `share`: virtio-drivers derives the buffer's
    /// pointer anew for `unshare`, and writing through the old one would
    /// be undefined behaviour (Stacked Borrows). It must be the same
    /// memory ([`Platform::unmap_raw_into`](swiotlb::Platform::unmap_raw_into)
    /// checks the address).
    ///
    /// # Panics
    /// If `paddr`, the buffer's address and its length are not a live
    /// share of this engine's device (a bug in the caller): swiotlb's
    /// error says which.
    ///
    /// # Safety
    /// - `paddr` was returned by [`Engine::share`] of the same memory and
    ///   direction and not unshared since, and the device is done with it;
    /// - `buffer` is valid for writes of its length unless `dir` is
    ///   [`BufferDirection::DriverToDevice`] (nothing is written then), and
    ///   unreferenced for the call.
    pub unsafe fn unshare(&self, paddr: u64, buffer: NonNull<[u8]>, dir: BufferDirection) {
        let len = buffer.len();
        let cpu = buffer.cast::<u8>().as_ptr();
        // SAFETY:
        // - `cpu` is valid for writes of `len` bytes and unreferenced when
        //   it is copied into (a device-to-driver or bidirectional
        //   buffer); a to-device mapping is never copied back, so a
        //   read-only buffer is not written;
        // - the device is done with the mapping (this function's
        //   contract).
        let r = unsafe {
            self.platform.unmap_raw_into(
                &self.device,
                DmaAddr(paddr),
                cpu,
                len,
                direction(dir),
                Attrs::NONE,
            )
        };
        if let Err(e) = r {
            panic!(
                "swiotlb-virtio: {}: unshare of {len} bytes at device address {paddr:#x} failed: {e}",
                self.options.name
            );
        }
    }
}
