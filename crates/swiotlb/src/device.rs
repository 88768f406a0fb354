//! What the DMA layer knows of one device.

#![forbid(unsafe_code)]

use crate::addr::{DmaAddr, DmaMask, PhysAddr};
use crate::translate::{Identity, Limits, Translate};

/// Linux's default segment boundary (`dma_get_seg_boundary` without a
/// driver setting): no mapping crosses a 4 GiB line.
pub const DEFAULT_SEG_BOUNDARY_MASK: u64 = 0xffff_ffff;

/// Linux's default maximum scatter-gather segment size
/// (`dma_get_max_seg_size` without a driver setting): 64 KiB.
pub const DEFAULT_MAX_SEGMENT_SIZE: usize = 64 * 1024;

/// One device as the mapping layer sees it: its address limits, its
/// alignment needs, whether it must always bounce, and how its addresses
/// translate.
///
/// Built with [`Device::new`] and the `with_*` methods:
///
/// ```
/// use swiotlb::{Device, DmaMask, translate::Offset, PhysAddr, DmaAddr};
/// let nvme = Device::new(DmaMask::BITS_64).with_min_align_mask(0xfff);
/// let legacy = Device::new(DmaMask::BITS_32)
///     .with_translate(Offset::new(PhysAddr(0x8000_0000), DmaAddr(0)));
/// assert_eq!(nvme.min_align_mask(), 0xfff);
/// assert_eq!(legacy.dma_mask().bits(), 32);
/// ```
///
/// A device also carries the transient pools a growing tlb made for it
/// (Linux's `dev->dma_io_tlb_pools`), with the `alloc` feature: clones of
/// a device share them, as they describe the same device.
#[derive(Clone, Debug)]
pub struct Device<T = Identity> {
    mask: DmaMask,
    bus_limit: u64,
    min_align_mask: u64,
    seg_boundary_mask: u64,
    max_segment_size: usize,
    force_bounce: bool,
    restricted: Option<RestrictedTlb>,
    #[cfg(feature = "alloc")]
    tracking: Tracking,
    translate: T,
}

/// The transient pools of one device (Linux's `dev->dma_io_tlb_pools` and
/// `dev->dma_uses_io_tlb`).
#[cfg(feature = "alloc")]
pub(crate) struct Tracked {
    /// Set once the device had a transient pool: only then does an unmap
    /// that misses every shared pool look further.
    pub(crate) used: crate::sync::AtomicBool,
    /// `[start, end)` physical ranges of the device's live transient pools.
    pub(crate) ranges: crate::sync::Mutex<alloc::vec::Vec<(u64, u64)>>,
}

/// The last clone of the device is gone, and every transient pool it had:
/// the misuse checker reports the device's mappings still live.
#[cfg(feature = "checker")]
impl Drop for Tracked {
    fn drop(&mut self) {
        crate::checker::dropped(core::ptr::from_ref(self).addr());
    }
}

#[cfg(feature = "alloc")]
impl core::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tracked")
            .field("used", &self.used.load(crate::sync::Ordering::Relaxed))
            .field("ranges", &*self.ranges.lock())
            .finish()
    }
}

/// A device's [`Tracked`], made on first use so that [`Device::new`] stays
/// `const` (a kernel keeps its devices in statics); a clone makes it first,
/// so that the clones share it.
#[cfg(feature = "alloc")]
pub(crate) struct Tracking(spin::Once<alloc::sync::Arc<Tracked>>);

#[cfg(feature = "alloc")]
impl Tracking {
    const fn new() -> Self {
        Self(spin::Once::new())
    }

    /// The tracking, made now if it was not yet.
    pub(crate) fn get(&self) -> &alloc::sync::Arc<Tracked> {
        self.0.call_once(|| {
            alloc::sync::Arc::new(Tracked {
                used: crate::sync::AtomicBool::new(false),
                ranges: crate::sync::Mutex::new(alloc::vec::Vec::new()),
            })
        })
    }

    /// Whether the device ever had a transient pool, without making the
    /// tracking.
    pub(crate) fn used(&self) -> bool {
        self.0
            .get()
            .is_some_and(|t| t.used.load(crate::sync::Ordering::Acquire))
    }
}

#[cfg(feature = "alloc")]
impl Clone for Tracking {
    fn clone(&self) -> Self {
        Self(spin::Once::initialized(self.get().clone()))
    }
}

#[cfg(feature = "alloc")]
impl core::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0.get() {
            Some(t) => t.fmt(f),
            None => f.write_str("Tracked(none yet)"),
        }
    }
}

/// Which restricted tlb of a platform serves a device: an index into the
/// platform's restricted tlbs, or the name of the tlb (the reserved-memory
/// node's name in a device tree). Devices naming the same tlb share it, as
/// Linux devices whose `memory-region` points at the same
/// `restricted-dma-pool` node share one `io_tlb_mem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RestrictedTlb {
    /// The restricted tlb at this index, in the order they were added.
    Index(usize),
    /// The restricted tlb of this name.
    Name(&'static str),
}

impl From<usize> for RestrictedTlb {
    fn from(index: usize) -> Self {
        RestrictedTlb::Index(index)
    }
}

impl From<&'static str> for RestrictedTlb {
    fn from(name: &'static str) -> Self {
        RestrictedTlb::Name(name)
    }
}

impl Device<Identity> {
    /// A device with the given DMA mask, identity translation, no bus
    /// limit, no `min_align_mask`, Linux's default segment boundary and
    /// segment size, and bouncing only when needed.
    pub const fn new(mask: DmaMask) -> Self {
        Self {
            mask,
            bus_limit: 0,
            min_align_mask: 0,
            seg_boundary_mask: DEFAULT_SEG_BOUNDARY_MASK,
            max_segment_size: DEFAULT_MAX_SEGMENT_SIZE,
            force_bounce: false,
            restricted: None,
            #[cfg(feature = "alloc")]
            tracking: Tracking::new(),
            translate: Identity,
        }
    }
}

impl<T> Device<T> {
    /// The same device with another address translation.
    pub fn with_translate<U>(self, translate: U) -> Device<U> {
        Device {
            mask: self.mask,
            bus_limit: self.bus_limit,
            min_align_mask: self.min_align_mask,
            seg_boundary_mask: self.seg_boundary_mask,
            max_segment_size: self.max_segment_size,
            force_bounce: self.force_bounce,
            restricted: self.restricted,
            #[cfg(feature = "alloc")]
            tracking: self.tracking,
            translate,
        }
    }

    /// Binds the device to a restricted tlb (Linux's `restricted-dma-pool`
    /// reserved memory, `rmem_swiotlb_device_init`): every mapping of the
    /// device bounces through that tlb and no other, and its coherent
    /// allocations come from it. A device bound to a tlb the platform does
    /// not have gets [`Error::NoPool`](crate::Error::NoPool), never a
    /// global pool: the restriction is the point.
    pub fn with_restricted_tlb(mut self, pool: impl Into<RestrictedTlb>) -> Self {
        self.restricted = Some(pool.into());
        self
    }

    /// The restricted tlb the device is bound to, if any.
    pub const fn restricted_tlb(&self) -> Option<RestrictedTlb> {
        self.restricted
    }

    /// Transient pools a growing tlb holds for the device now.
    #[cfg(feature = "alloc")]
    pub fn transient_pools(&self) -> usize {
        self.tracking.0.get().map_or(0, |t| t.ranges.lock().len())
    }

    /// Whether a growing tlb ever made the device a transient pool.
    #[cfg(feature = "alloc")]
    pub fn used_transient(&self) -> bool {
        self.tracking.used()
    }

    /// The device's transient-pool tracking.
    #[cfg(feature = "alloc")]
    pub(crate) fn tracking(&self) -> &Tracking {
        &self.tracking
    }

    /// The device's identity for the misuse checker: the address of its
    /// tracking, which its clones share and which lives as long as one of
    /// them does.
    #[cfg(feature = "checker")]
    pub(crate) fn checker_id(&self) -> usize {
        alloc::sync::Arc::as_ptr(self.tracking.get()).addr()
    }

    /// Sets a bus limit (Linux `bus_dma_limit`): the highest device address
    /// the interconnect carries, whatever the device's own mask. `0` means
    /// none.
    pub const fn with_bus_limit(mut self, limit: u64) -> Self {
        self.bus_limit = limit;
        self
    }

    /// Sets the `min_align_mask` (Linux `dma_set_min_align_mask`): the
    /// bits of the original address under this mask reappear in the bounce
    /// address. NVMe sets `0xfff`.
    ///
    /// # Panics
    /// If the mask is not `2^n - 1`, as every Linux driver's is.
    pub const fn with_min_align_mask(mut self, mask: u64) -> Self {
        assert!(
            mask & mask.wrapping_add(1) == 0,
            "min_align_mask must be 2^n - 1"
        );
        self.min_align_mask = mask;
        self
    }

    /// Sets the segment boundary mask: no mapping crosses a multiple of
    /// `mask + 1` in device address space.
    ///
    /// # Panics
    /// If the mask is not `2^n - 1` or is smaller than a page minus one.
    pub const fn with_seg_boundary_mask(mut self, mask: u64) -> Self {
        assert!(
            mask & mask.wrapping_add(1) == 0 && mask >= 0xfff,
            "segment boundary mask must be 2^n - 1 and at least a page"
        );
        self.seg_boundary_mask = mask;
        self
    }

    /// Sets the largest scatter-gather segment the device takes.
    pub const fn with_max_segment_size(mut self, size: usize) -> Self {
        self.max_segment_size = size;
        self
    }

    /// Makes every mapping bounce, reachable or not (Linux `swiotlb=force`
    /// per device, as confidential VMs need: the host sees only the pool).
    pub const fn with_force_bounce(mut self) -> Self {
        self.force_bounce = true;
        self
    }

    /// The device's DMA mask.
    pub const fn dma_mask(&self) -> DmaMask {
        self.mask
    }

    /// The bus limit, `0` if none.
    pub const fn bus_limit(&self) -> u64 {
        self.bus_limit
    }

    /// The mask and the bus limit together.
    pub const fn limits(&self) -> Limits {
        Limits {
            dma_mask: self.mask.value(),
            bus_limit: self.bus_limit,
        }
    }

    /// The `min_align_mask`.
    pub const fn min_align_mask(&self) -> u64 {
        self.min_align_mask
    }

    /// The segment boundary mask.
    pub const fn seg_boundary_mask(&self) -> u64 {
        self.seg_boundary_mask
    }

    /// The largest scatter-gather segment.
    pub const fn max_segment_size(&self) -> usize {
        self.max_segment_size
    }

    /// Whether every mapping bounces.
    pub const fn force_bounce(&self) -> bool {
        self.force_bounce
    }

    /// The address translation.
    pub const fn translate(&self) -> &T {
        &self.translate
    }
}

impl<T: Translate> Device<T> {
    /// Whether the device reaches `size` bytes at `phys` directly, judged on
    /// both the physical and the device address.
    pub fn can_reach(&self, phys: PhysAddr, size: usize) -> bool {
        let dma = self.translate.phys_to_dma(phys);
        self.translate.dma_capable(&self.limits(), phys, dma, size)
    }

    /// Whether an unmap or sync of `size` bytes at `phys`, which no pool
    /// holds, can be of a direct mapping: the device is not forced to
    /// bounce and reaches them. If not, the address was never handed to
    /// this device (or belonged to a transient pool already given back):
    /// [`crate::Error::NotMapped`].
    #[inline]
    pub(crate) fn may_be_direct(&self, phys: PhysAddr, size: usize) -> bool {
        !self.force_bounce && self.can_reach(phys, size)
    }

    /// The device address of `phys`.
    #[inline]
    pub fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        self.translate.phys_to_dma(phys)
    }

    /// The physical address of `len` bytes at `cpu`, and whether they are
    /// mapped directly: the device reaches them and is not forced to
    /// bounce (Linux `dma_direct_map_page` before `swiotlb_map`).
    #[inline]
    pub(crate) fn direct(&self, cpu: *const u8, len: usize) -> (PhysAddr, bool) {
        let phys = self.translate.virt_to_phys(cpu);
        (phys, self.maps_directly(phys, len))
    }

    /// Whether `len` bytes at physical `phys` are mapped directly: the one
    /// rule behind every map, safe or raw, of a pool, a tlb or a platform
    /// (a restricted tlb adds that it never maps directly).
    #[inline]
    pub(crate) fn maps_directly(&self, phys: PhysAddr, len: usize) -> bool {
        !self.force_bounce && len != 0 && self.can_reach(phys, len)
    }
}
