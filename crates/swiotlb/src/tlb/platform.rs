//! A platform: the default tlb, a high tlb, restricted tlbs, and the rule
//! that picks the one serving a device.
//!
//! Linux grew these one at a time: the default `io_tlb_mem` in low memory,
//! per-device restricted pools from `restricted-dma-pool` reserved memory
//! (`rmem_swiotlb_device_init`, Linux 5.15), and a proposed 64-bit pool for
//! devices that reach everything but must still bounce (Dongli Zhang's RFC
//! "swiotlb: extra 64-bit buffer for dev->dma_io_tlb_mem", whose debugfs
//! directory was `swiotlb-hi`). A [`Platform`] holds all three kinds and
//! [`Platform::select`] applies one rule:
//!
//! 1. a device bound to a restricted tlb
//!    ([`Device::with_restricted_tlb`], or [`Platform::bind`] by device
//!    tree node) is served by that tlb and no
//!    other: every mapping bounces through it, even one the device could
//!    reach directly, and when it is full the device gets
//!    [`Error::PoolFull`] (or, if the platform let the tlb grow, a grown
//!    pool), never a global pool (one busy device must not
//!    starve the others, and the restriction is the point);
//! 2. otherwise the high tlb, if the device's DMA mask and bus limit reach
//!    all of it;
//! 3. otherwise the default tlb, if the device reaches its first slot (a map
//!    whose slots turn out to lie beyond the device fails with
//!    [`Error::Unreachable`]);
//! 4. otherwise [`Error::NoPool`].
//!
//! The rule decides where a buffer bounces. [`Platform::map`] first asks
//! whether it must: a buffer that a device with no restricted tlb reaches
//! directly (and is not forced to bounce) is mapped directly, as Linux's
//! dma-direct maps it, whether or not the platform has any tlb at all.
//!
//! The high tlb comes first because a device that reaches it can use it,
//! and leaving the default tlb to the devices that can use nothing else is why
//! it exists (the RFC chose by `min_not_zero(dma_mask, bus_dma_limit)`).

use alloc::string::String;
use alloc::vec::Vec;

use super::{Coherent, IoTlb, SyncTo, TlbKind, TlbStats};
use crate::attrs::Attrs;
use crate::device::{Device, RestrictedTlb};
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::map::{DmaBuffer, MapFailed, Mapping, Owner, RawBuffer, SgEntry};
use crate::pool::{Fast, Policy};
use crate::translate::Translate;
use crate::{DmaAddr, PhysAddr};

#[cfg(feature = "checker")]
use crate::checker::MapKind::{Sg, Single};

/// Every tlb of a platform, and the rule that picks one per device (see the
/// [module documentation](self)).
#[derive(Debug)]
pub struct Platform<P: Policy = Fast> {
    default: Option<IoTlb<P>>,
    high: Option<IoTlb<P>>,
    restricted: Vec<IoTlb<P>>,
    /// Device tree nodes (full paths) bound to a restricted tlb, by index.
    bindings: Vec<(String, usize)>,
    /// Whether [`Platform::attach`] makes every device bounce.
    force: bool,
}

impl<P: Policy> Default for Platform<P> {
    /// A platform with no tlb at all, for any policy.
    fn default() -> Self {
        Self {
            default: None,
            high: None,
            restricted: Vec::new(),
            bindings: Vec::new(),
            force: false,
        }
    }
}

impl Platform {
    /// A platform of [`Fast`] pools with no tlb at all: every device that
    /// must bounce gets [`Error::NoPool`]. For another policy, start from
    /// [`Platform::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A platform whose default tlb is the `swiotlb.region=` of a kernel
    /// command line (`/proc/cmdline` form; other parameters are ignored),
    /// for a machine described by its command line alone (an x86 MicroVM).
    ///
    /// The line is read leniently ([`Cmdline::read`]; check it first with
    /// [`Cmdline::parse_strict`] to refuse what that adjusts). The pool
    /// takes the region in whole slots of 2 KiB, segments of 128 slots
    /// (Linux's geometry, which the grammar is in), and the area count of
    /// `swiotlb=` if given, else one area.
    /// `map(base, size)` is the caller's way to reach the region's memory:
    /// a guest maps that physical range, a test hands out a heap block
    /// and pretends it lies there. It must return at least `size` bytes
    /// that are the memory at `base`: the pool hands `base` to devices.
    ///
    /// With `force` (on the region or as `swiotlb=force`), every device
    /// [`Platform::attach`] attaches bounces through the region; without
    /// it, only the buffers a device cannot reach. A device VM whose
    /// devices see only the window needs `force`: nothing else tells the
    /// platform that the rest of memory is out of their reach.
    ///
    /// A line with no region gives a platform with no default tlb (and
    /// forced bouncing if `swiotlb=force`); the high pool of
    /// `swiotlb.high=` has no address on the line: add it with
    /// [`Platform::try_with_high`], which refuses one overlapping the
    /// region.
    ///
    /// The pool is a [`Fast`] one, as [`Platform::new`]'s.
    ///
    /// # Errors
    /// As [`Cmdline::read`]; [`Error::BadConfig`] with
    /// [`ConfigProblem::UnmappedRegion`] when `map` gives no memory or
    /// less than the region; as [`Pool::new`] otherwise.
    ///
    /// [`Cmdline::read`]: crate::cmdline::Cmdline::read
    /// [`Cmdline::parse_strict`]: crate::cmdline::Cmdline::parse_strict
    /// [`ConfigProblem::UnmappedRegion`]: crate::error::ConfigProblem::UnmappedRegion
    /// [`Pool::new`]: crate::Pool::new
    pub fn from_cmdline(line: &str, map: &mut MapRegion<'_>) -> Result<Self> {
        let cmdline = crate::cmdline::Cmdline::read(line)?.cmdline;
        Self::default().with_cmdline(&cmdline, map)
    }
}

/// `tlb`, made of `kind` (and renamed after it if it had its old kind's
/// name).
fn as_kind<P: Policy>(mut tlb: IoTlb<P>, kind: TlbKind) -> IoTlb<P> {
    if tlb.name == tlb.kind.default_name() {
        tlb.name = String::from(kind.default_name());
    }
    tlb.kind = kind;
    tlb
}

impl<P: Policy> Platform<P> {
    /// Sets the default tlb: a fixed one over a pool (`with_default(pool)`)
    /// or any [`IoTlb`], growing or not.
    pub fn with_default(mut self, tlb: impl Into<IoTlb<P>>) -> Self {
        self.default = Some(as_kind(tlb.into(), TlbKind::Default));
        self
    }

    /// Sets the high tlb, named `swiotlb-hi` unless it has a name.
    pub fn with_high(mut self, tlb: impl Into<IoTlb<P>>) -> Self {
        self.high = Some(as_kind(tlb.into(), TlbKind::High));
        self
    }

    /// Adds a restricted tlb ([`IoTlb::restricted`]); devices bind to it
    /// by its name or by its index, the number of restricted tlbs added
    /// before it. Linux never lets a restricted pool grow; give the tlb a
    /// [`Growth`](super::Growth) and it does.
    pub fn with_restricted(mut self, tlb: IoTlb<P>) -> Self {
        self.restricted.push(as_kind(tlb, TlbKind::Restricted));
        self
    }

    /// Sets the high tlb as [`Platform::with_high`] does, refusing one
    /// that shares memory with the default tlb (a `swiotlb.high=` pool
    /// beside a `swiotlb.region=` one).
    ///
    /// # Errors
    /// [`Error::RegionOverlap`], with the platform dropped.
    pub fn try_with_high(self, tlb: impl Into<IoTlb<P>>) -> Result<Self> {
        let tlb = tlb.into();
        if let Some(low) = &self.default {
            let (a, b) = (low.first_pool(), tlb.first_pool());
            check_overlap(a.start(), a.len() as u64, b.start(), b.len() as u64)?;
        }
        Ok(self.with_high(tlb))
    }

    /// Makes every device [`Platform::attach`] attaches bounce
    /// (`swiotlb=force`).
    pub fn with_force_bounce(mut self) -> Self {
        self.force = true;
        self
    }

    /// Whether every attached device bounces.
    pub fn forces_bounce(&self) -> bool {
        self.force
    }

    /// Makes `dev` ready for its first map on this platform: forced to
    /// bounce if the platform forces bouncing ([`Platform::from_cmdline`]
    /// with `force`), and checked against the pools that could serve it.
    ///
    /// Without a restricted tlb, a device must reach all of the high tlb
    /// or all of the default one (when the platform has either): one that
    /// reaches neither is refused here, not at its first map, where a
    /// buffer it cannot reach would have nowhere to bounce.
    ///
    /// # Errors
    /// [`Error::RegionUnreachable`] for a device that reaches no pool of
    /// the platform; [`Error::NoPool`] for a device bound to a restricted
    /// tlb the platform does not have.
    pub fn attach<T: Translate>(&self, dev: Device<T>) -> Result<Device<T>> {
        if let Some(id) = dev.restricted_tlb() {
            self.restricted_tlb(id).ok_or(Error::NoPool)?;
            return Ok(dev);
        }
        let reaches = |tlb: &IoTlb<P>| {
            let pool = tlb.first_pool();
            dev.can_reach(pool.start(), pool.len())
        };
        let candidates = [self.high.as_ref(), self.default.as_ref()];
        let mut any = false;
        for tlb in candidates.into_iter().flatten() {
            if reaches(tlb) {
                any = true;
            }
        }
        if !any {
            if let Some(tlb) = self.default.as_ref().or(self.high.as_ref()) {
                let pool = tlb.first_pool();
                return Err(Error::RegionUnreachable {
                    dma: dev.phys_to_dma(pool.start()),
                    size: pool.len() as u64,
                });
            }
        }
        Ok(if self.force {
            dev.with_force_bounce()
        } else {
            dev
        })
    }

    /// The default tlb.
    pub fn default_tlb(&self) -> Option<&IoTlb<P>> {
        self.default.as_ref()
    }

    /// The high tlb.
    pub fn high(&self) -> Option<&IoTlb<P>> {
        self.high.as_ref()
    }

    /// The restricted tlbs, in the order they were added.
    pub fn restricted(&self) -> &[IoTlb<P>] {
        &self.restricted
    }

    /// The restricted tlb `id` names. The first of that name wins.
    pub fn restricted_tlb(&self, id: RestrictedTlb) -> Option<&IoTlb<P>> {
        match id {
            RestrictedTlb::Index(i) => self.restricted.get(i),
            RestrictedTlb::Name(name) => self.restricted.iter().find(|t| t.name == name),
        }
    }

    /// The restricted tlb a device tree node uses, by the node's full path
    /// or its name (the last component of the path, unit address
    /// included), as [`Platform::from_dt`] read it; `None` for a node that
    /// names no restricted pool.
    pub fn restricted_of_node(&self, node: &str) -> Option<RestrictedTlb> {
        self.bindings
            .iter()
            .find(|(path, _)| {
                path == node || path.rsplit('/').next().is_some_and(|name| name == node)
            })
            .map(|&(_, i)| RestrictedTlb::Index(i))
    }

    /// `dev`, bound to the restricted tlb of device tree node `node` (by
    /// full path or name) if it uses one; unchanged otherwise, so that it
    /// is served by the default or high tlb.
    pub fn bind<T>(&self, dev: Device<T>, node: &str) -> Device<T> {
        match self.restricted_of_node(node) {
            Some(id) => dev.with_restricted_tlb(id),
            None => dev,
        }
    }

    /// The tlb that serves `dev`, by the rule in the [module
    /// documentation](self).
    ///
    /// # Errors
    /// [`Error::NoPool`] if the device is bound to a restricted tlb the
    /// platform does not have, or reaches neither the high tlb (all of its
    /// first pool) nor the default one.
    pub fn select<T: Translate>(&self, dev: &Device<T>) -> Result<&IoTlb<P>> {
        if let Some(id) = dev.restricted_tlb() {
            return self.restricted_tlb(id).ok_or(Error::NoPool);
        }
        if let Some(high) = &self.high {
            let pool = high.first_pool();
            if dev.can_reach(pool.start(), pool.len()) {
                return Ok(high);
            }
        }
        if let Some(low) = &self.default {
            let pool = low.first_pool();
            if dev.can_reach(pool.start(), pool.slot_size()) {
                return Ok(low);
            }
        }
        Err(Error::NoPool)
    }

    /// Where a direct mapping of `dev` is counted: the tlb that serves
    /// it, else the default tlb or the high one, or nowhere on a platform
    /// that has neither.
    fn home<T: Translate>(&self, dev: &Device<T>) -> Owner<'_, P> {
        match self
            .select(dev)
            .ok()
            .or(self.default.as_ref())
            .or(self.high.as_ref())
        {
            Some(tlb) => Owner::Tlb(tlb),
            None => Owner::Nothing,
        }
    }

    /// Maps a buffer for `dev`: through its restricted tlb if it has one
    /// (always bouncing); otherwise directly when the device reaches the
    /// buffer and is not forced to bounce (Linux's dma-direct, which needs
    /// no tlb at all: a platform with no default tlb still maps such a
    /// buffer), else through the tlb [`Platform::select`] picks.
    ///
    /// # Errors
    /// [`Error::NoPool`] when the buffer must bounce and no tlb serves the
    /// device, or the map's own error; the buffer comes back.
    pub fn map<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_with_attrs(dev, buffer, dir, Attrs::NONE)
    }

    /// [`Platform::map`] with attributes ([`IoTlb::map_with_attrs`] says
    /// what [`Attrs::MAY_SLEEP`] does in a growing tlb).
    ///
    /// # Errors
    /// As [`Platform::map`].
    pub fn map_with_attrs<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_buffer(dev, RawBuffer::new(buffer), dir, attrs)
            .map_err(|(error, buffer)| MapFailed::new(error, buffer))
    }

    /// [`Platform::map_with_attrs`] of a buffer taken apart.
    fn map_buffer<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: RawBuffer<B>,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, (Error, RawBuffer<B>)> {
        let (phys, direct) = dev.direct(buffer.ptr().as_ptr(), buffer.len());
        if direct && dev.restricted_tlb().is_none() {
            let home = self.home(dev);
            return Ok(Mapping::direct(home, buffer, dev.phys_to_dma(phys), dir));
        }
        // Every tlb's bounce is the same once the choice is made: a
        // restricted tlb bounces whatever the device reaches, and the
        // others are reached here only for a buffer that must bounce.
        match self.select(dev) {
            Ok(tlb) => tlb.bounce_buffer(dev, phys, buffer, dir, attrs),
            Err(error) => Err((error, buffer)),
        }
    }

    /// Maps several buffers as one scatter-gather list, all or nothing:
    /// each as [`Platform::map`] maps it.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error, with every
    /// buffer given back in order; nothing stays mapped.
    pub fn map_sg<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        crate::map::map_sg_buffers_by(buffers, dev.max_segment_size(), |b| {
            self.map_buffer(dev, b, dir, Attrs::NONE)
        })
    }

    /// Maps `size` bytes at physical address `orig` (CPU address `cpu`)
    /// for `dev`: directly when a device with no restricted tlb reaches
    /// them and is not forced to bounce, else through the tlb
    /// [`Platform::select`] picks (a restricted tlb always bounces).
    ///
    /// # Errors
    /// [`Error::NoPool`] when the original must bounce and no tlb serves
    /// the device, or as [`IoTlb::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`](crate::Pool::map_raw).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
    ) -> Result<DmaAddr> {
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract); the
        // direction does not change what a map may touch.
        unsafe { self.map_raw_with_attrs(dev, orig, cpu, size, dir, Attrs::NONE) }
    }

    /// [`Platform::map_raw`] with attributes.
    ///
    /// # Errors
    /// As [`Platform::map_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`](crate::Pool::map_raw).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_raw_with_attrs<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        let _ = dir;
        // SAFETY: this function's contract, passed on.
        let r = unsafe { self.map_raw_unchecked(dev, orig, cpu, size, attrs) };
        #[cfg(feature = "checker")]
        if let Ok(dma) = r {
            let caller = core::panic::Location::caller();
            // SAFETY: `cpu` is valid for reads of `size` bytes (this
            // function's contract).
            unsafe {
                self.hook(dev, caller)
                    .mapped(dma, cpu, size, Some(dir), Single, 1)
            };
        }
        r
    }

    /// [`Platform::map_raw_with_attrs`] without the checker's hook.
    ///
    /// # Safety
    /// As [`Pool::map_raw`](crate::Pool::map_raw).
    unsafe fn map_raw_unchecked<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        if dev.restricted_tlb().is_none() && dev.maps_directly(orig, size) {
            if let Some(pool) = self.home(dev).home() {
                pool.count_direct();
            }
            return Ok(dev.phys_to_dma(orig));
        }
        let tlb = self.select(dev)?;
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract, `Pool::map_raw`'s, which holds
        // `bounce_raw`'s).
        let b = unsafe {
            tlb.bounce_unchecked(
                dev,
                orig,
                cpu,
                size,
                attrs,
                crate::map::MapOptions::default(),
            )?
        };
        Ok(b.dma)
    }

    /// The tlbs that may hold a mapping of `dev`: its restricted tlb alone,
    /// else the default and the high one.
    fn holders<T: Translate>(&self, dev: &Device<T>) -> Result<[Option<&IoTlb<P>>; 2]> {
        Ok(if dev.restricted_tlb().is_some() {
            [Some(self.restricted_of(dev)?), None]
        } else {
            [self.default.as_ref(), self.high.as_ref()]
        })
    }

    /// Unmaps a raw mapping of `dev` by its device address: in the tlb
    /// that holds it (the address translated once, each pool looked up
    /// once); an address no tlb holds is a direct mapping if the device
    /// could have been given it directly, else [`Error::NotMapped`].
    ///
    /// # Errors
    /// [`Error::NoPool`] for a device bound to a restricted tlb the
    /// platform lacks, or as [`IoTlb::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`](crate::Pool::unmap_raw).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn unmap_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        #[cfg(feature = "checker")]
        let hook = self.hook(dev, core::panic::Location::caller());
        // SAFETY: the mapping's original is still valid (this function's
        // contract).
        #[cfg(feature = "checker")]
        unsafe {
            hook.release(dma, size, Some(dir), Single, 1);
        }
        // SAFETY: the mapping's original is still valid for writes and
        // unreferenced, and the device is done with it (this function's
        // contract); no other destination.
        let r = unsafe { self.unmap_raw_to(dev, dma, size, dir, attrs, None) };
        #[cfg(feature = "checker")]
        if r.is_ok() {
            hook.released(dma);
        }
        r
    }

    /// [`Platform::unmap_raw`] that copies back through `cpu`, the
    /// original's CPU address given again, rather than through the pointer
    /// recorded at map time: for callers that hold the original under a
    /// pointer derived anew since the map, as virtio-drivers' queues hand
    /// a `Hal` the buffer again at `unshare`. Writing through the pointer
    /// recorded at map time would then use a stale provenance (undefined
    /// behaviour under Stacked Borrows). The address must be the
    /// original's: the same memory.
    ///
    /// # Errors
    /// [`Error::NotMapped`] if `cpu` is not the address the mapping was
    /// made with (nothing is copied or freed), or as
    /// [`Platform::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`](crate::Pool::unmap_raw), with `cpu` valid
    /// for writes of `size` bytes and unreferenced (in place of the
    /// pointer given at map time).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn unmap_raw_into<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        #[cfg(feature = "checker")]
        let hook = self.hook(dev, core::panic::Location::caller());
        // SAFETY: the mapping's original is still valid (this function's
        // contract: `cpu` is it, given again).
        #[cfg(feature = "checker")]
        unsafe {
            hook.release(dma, size, Some(dir), Single, 1);
        }
        // SAFETY: `cpu` is valid for writes of `size` bytes and
        // unreferenced, and the device is done with the mapping (this
        // function's contract).
        let r = unsafe { self.unmap_raw_to(dev, dma, size, dir, attrs, Some(cpu)) };
        #[cfg(feature = "checker")]
        if r.is_ok() {
            hook.released(dma);
        }
        r
    }

    /// Both unmaps: in the tlb that holds `dma`, copying back through
    /// `into` if given, else through the original recorded at map time.
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`](crate::Pool::unmap_raw); `into`, if given,
    /// is valid for writes of `size` bytes and unreferenced.
    unsafe fn unmap_raw_to<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
        into: Option<*mut u8>,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        for tlb in self.holders(dev)?.into_iter().flatten() {
            // SAFETY: the mapping's original (or `into`) is still valid
            // for writes and unreferenced, and the device is done with it
            // (this function's contract); `phys` is `dma` translated for
            // `dev`.
            if let Some(r) = unsafe { tlb.unmap_held(dev, dma, phys, size, dir, attrs, into) } {
                return r;
            }
        }
        crate::map::outside(dev, dma, phys, size)
    }

    /// Copies device writes to the CPU for a raw mapping of `dev` (as
    /// [`IoTlb::sync_for_cpu_raw`]), in the tlb that holds it.
    ///
    /// # Errors
    /// As [`Platform::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`](crate::Pool::sync_for_cpu_raw).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn sync_for_cpu_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        #[cfg(feature = "checker")]
        {
            let caller = core::panic::Location::caller();
            // SAFETY: the mapping's original is valid (this function's
            // contract).
            unsafe { self.hook(dev, caller).sync(dma, size, dir, true) };
        }
        // SAFETY: the mapping's original is valid for writes of the synced
        // range and unreferenced (this function's contract).
        unsafe { self.sync_raw(dev, dma, size, SyncTo::Cpu, dir.copies_to_cpu()) }
    }

    /// Copies CPU writes to the device for a raw mapping of `dev` (as
    /// [`IoTlb::sync_for_device_raw`]), in the tlb that holds it.
    ///
    /// # Errors
    /// As [`Platform::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_device_raw`](crate::Pool::sync_for_device_raw).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn sync_for_device_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        #[cfg(feature = "checker")]
        {
            let caller = core::panic::Location::caller();
            // SAFETY: the mapping's original is valid (this function's
            // contract).
            unsafe { self.hook(dev, caller).sync(dma, size, dir, false) };
        }
        // SAFETY: the mapping's original is valid for reads of the synced
        // range and unreferenced (this function's contract).
        unsafe { self.sync_raw(dev, dma, size, SyncTo::Device, dir.copies_to_device()) }
    }

    /// Both syncs, in the tlb that holds `dma`.
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`](crate::Pool::sync_for_cpu_raw).
    unsafe fn sync_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        to: SyncTo,
        copy: bool,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        for tlb in self.holders(dev)?.into_iter().flatten() {
            // SAFETY: the mapping's original is valid and unreferenced for
            // the synced range (this function's contract); `phys` is `dma`
            // translated for `dev`.
            if let Some(r) = unsafe { tlb.sync_held(dev, dma, phys, size, to, copy) } {
                return r;
            }
        }
        crate::map::outside(dev, dma, phys, size)
    }

    /// Maps a raw scatter-gather list for `dev`, all or nothing, each
    /// entry as [`Platform::map_raw`] maps it.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error; nothing stays
    /// mapped.
    ///
    /// # Safety
    /// As [`Pool::map_sg_raw`](crate::Pool::map_sg_raw).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_sg_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        let r = crate::map::map_sg_by(
            sg,
            dev.max_segment_size(),
            &mut |e| {
                // SAFETY: the entry's `cpu` is valid and unreferenced for
                // `len` bytes until its unmap, and `phys` is its physical
                // address (this function's contract, per entry).
                unsafe { self.map_raw_unchecked(dev, e.phys, e.cpu, e.len, attrs) }
            },
            &mut |done| {
                let attrs = attrs | Attrs::SKIP_CPU_SYNC;
                // SAFETY: `done` was mapped by this call and the device has
                // not been told of it; its original is still valid and
                // unreferenced (this function's contract).
                let undo = unsafe { self.unmap_raw_to(dev, done.dma, done.len, dir, attrs, None) };
                debug_assert!(undo.is_ok(), "rollback of a fresh mapping failed");
            },
        );
        #[cfg(feature = "checker")]
        if r.is_ok() {
            let hook = self.hook(dev, core::panic::Location::caller());
            for e in sg.iter() {
                // SAFETY: each entry's original is valid for reads of its
                // length (this function's contract).
                unsafe { hook.mapped(e.dma, e.cpu, e.len, Some(dir), Sg, sg.len()) };
            }
        }
        r
    }

    /// Unmaps every entry of a list mapped by [`Platform::map_sg_raw`];
    /// all entries are tried and the first error is returned.
    ///
    /// # Errors
    /// As [`Platform::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_sg_raw`](crate::Pool::unmap_sg_raw).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn unmap_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &[SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        #[cfg(feature = "checker")]
        let hook = self.hook(dev, core::panic::Location::caller());
        crate::map::unmap_sg_by(sg, |e| {
            // SAFETY: this entry's original is still valid (this
            // function's contract, per entry).
            #[cfg(feature = "checker")]
            unsafe {
                hook.release(e.dma, e.len, Some(dir), Sg, sg.len());
            }
            // SAFETY: each entry's original is valid and unreferenced and
            // the device is done with it (this function's contract, per
            // entry).
            let r = unsafe { self.unmap_raw_to(dev, e.dma, e.len, dir, attrs, None) };
            #[cfg(feature = "checker")]
            if r.is_ok() {
                hook.released(e.dma);
            }
            r
        })
    }

    /// A zeroed coherent allocation for `dev` from its restricted tlb
    /// (Linux `swiotlb_alloc`, used by `dma_direct_alloc` only when
    /// `is_swiotlb_for_alloc`, that is for restricted pools).
    ///
    /// # Errors
    /// [`Error::NoPool`] if the device has no restricted tlb (its coherent
    /// memory comes from the page allocator, not from here), or as
    /// [`Pool::alloc_coherent`](crate::Pool::alloc_coherent).
    #[cfg_attr(feature = "checker", track_caller)]
    pub fn alloc_coherent<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        self.restricted_of(dev)?.alloc_coherent(dev, size)
    }

    /// Frees the coherent allocation of `size` bytes of `dev` at device
    /// address `dma` (Linux `dma_free_coherent`, then `swiotlb_free`).
    ///
    /// # Errors
    /// [`Error::NoPool`] if the device has no restricted tlb, or as
    /// [`Pool::free_coherent`](crate::Pool::free_coherent).
    ///
    /// # Safety
    /// As [`Pool::free_coherent`](crate::Pool::free_coherent): the memory
    /// of this coherent allocation is no longer used through any pointer.
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn free_coherent<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
    ) -> Result {
        let tlb = self.restricted_of(dev)?;
        // SAFETY: the memory of the allocation at `dma`, if there is one,
        // is no longer used through any pointer (this function's
        // contract).
        unsafe { tlb.free_coherent(dev, dma, size) }
    }

    /// The checker's view of a call on this platform for `dev`: the guard
    /// bytes of a mapping are in the tlb that holds it, among those that
    /// may serve the device.
    #[cfg(feature = "checker")]
    fn hook<'a, T: Translate>(
        &'a self,
        dev: &'a Device<T>,
        caller: crate::checker::Caller,
    ) -> crate::checker::Hook<impl Fn(DmaAddr, bool) -> Option<crate::checker::InPool> + 'a> {
        crate::checker::Hook {
            dev: dev.checker_id(),
            caller,
            guards: move |dma, check| {
                let phys = dev.translate().dma_to_phys(dma);
                self.holders(dev)
                    .ok()?
                    .into_iter()
                    .flatten()
                    .find_map(|tlb| tlb.guard_op(dev, phys, check))
            },
        }
    }

    fn restricted_of<T: Translate>(&self, dev: &Device<T>) -> Result<&IoTlb<P>> {
        dev.restricted_tlb()
            .and_then(|id| self.restricted_tlb(id))
            .ok_or(Error::NoPool)
    }

    /// Every tlb's statistics under its name: default, high, then the
    /// restricted ones in order (one debugfs directory each, as Linux's
    /// `swiotlb` and the RFC's `swiotlb-hi`).
    pub fn stats(&self) -> Vec<(&str, TlbStats)> {
        self.tlbs().map(|t| (t.name(), t.stats())).collect()
    }

    /// Every tlb: default, high, then the restricted ones in order.
    pub fn tlbs(&self) -> impl Iterator<Item = &IoTlb<P>> {
        self.default
            .iter()
            .chain(self.high.iter())
            .chain(self.restricted.iter())
    }

    /// Calls [`IoTlb::maintain`] on every tlb; the first error is
    /// returned after all have run.
    ///
    /// # Errors
    /// As [`IoTlb::maintain`].
    pub fn maintain(&self) -> core::result::Result<(), crate::provider::ProviderError> {
        let mut first = Ok(());
        for t in self.tlbs() {
            if let Err(e) = t.maintain() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

#[cfg(feature = "fdt")]
impl<P: Policy> Platform<P> {
    /// A platform with one fixed restricted tlb per `restricted-dma-pool`
    /// of a parsed device tree, named after its node and bound to the
    /// devices whose `memory-region` names it ([`Platform::bind`] finds a
    /// device's tlb by node path or name). Other pools (`shared-dma-pool`,
    /// coherent memory) are not bounce pools and are left out. The default
    /// tlb does not come from a device tree (Linux sizes it from `swiotlb=`
    /// on the command line): add it with [`Platform::with_default`], growing
    /// ([`IoTlb::growing`]) if the caller has a provider, fixed if not.
    ///
    /// `memory(phys, len)` gives the CPU address of each pool's region, as
    /// the caller mapped it.
    ///
    /// `config` is every restricted pool's geometry and its freed-slot
    /// setting: with [`PoolConfig::with_zero_on_free`] each restricted tlb
    /// zeroes the slots of every mapping it frees, so a device never finds
    /// an earlier mapping's bytes in its pool. Linux's binding has no
    /// property for this, and none is read: the caller chooses it here.
    ///
    /// # Errors
    /// [`Error::BadConfig`] with [`ConfigProblem::UnmappedRegion`] when
    /// `memory` has no address for a pool, or as [`Pool::new`] for a pool
    /// the geometry `config` does not fit.
    ///
    /// # Safety
    /// For every restricted pool of `dt`, the address `memory` returns
    /// meets [`Pool::new`]'s contract for the pool's physical base and
    /// size: valid for reads and writes of the whole region for as long as
    /// the platform lives, physically contiguous, and touched by nothing
    /// but the platform.
    ///
    /// [`ConfigProblem::UnmappedRegion`]: crate::error::ConfigProblem::UnmappedRegion
    /// [`Pool::new`]: crate::Pool::new
    /// [`PoolConfig::with_zero_on_free`]: crate::PoolConfig::with_zero_on_free
    pub unsafe fn from_dt(
        dt: &crate::dt::DtPools<'_>,
        config: crate::pool::PoolConfig,
        memory: &mut dyn FnMut(PhysAddr, usize) -> Option<core::ptr::NonNull<u8>>,
    ) -> Result<Self> {
        let mut platform = Self::default();
        let restricted = dt
            .pools
            .iter()
            .filter(|p| p.kind == crate::dt::DtPoolKind::Restricted);
        for p in restricted {
            let unmapped = Error::BadConfig {
                problem: crate::error::ConfigProblem::UnmappedRegion {
                    phys: p.base,
                    len: p.size,
                },
            };
            let len = usize::try_from(p.size).map_err(|_| unmapped)?;
            let cpu = memory(p.base, len).ok_or(unmapped)?;
            // SAFETY: `cpu` is the caller's mapping of this pool's region,
            // valid for reads and writes of `len` bytes for the platform's
            // life, physically contiguous at `p.base` and touched only
            // through the platform (this function's contract).
            let pool = unsafe { crate::pool::Pool::new(cpu, p.base, len, config) }?;
            let index = platform.restricted.len();
            platform
                .bindings
                .extend(p.devices.iter().map(|d| (d.clone(), index)));
            platform = platform.with_restricted(IoTlb::restricted(p.name, pool));
        }
        Ok(platform)
    }
}

/// Refuses two ranges that share a byte.
fn check_overlap(base: PhysAddr, size: u64, other: PhysAddr, other_size: u64) -> Result {
    let (a, b) = (u128::from(base.as_u64()), u128::from(other.as_u64()));
    if a < b + u128::from(other_size) && b < a + u128::from(size) {
        return Err(Error::RegionOverlap {
            base,
            size,
            other,
            other_size,
        });
    }
    Ok(())
}

/// Where a caller maps a physical range for [`Platform::from_cmdline`]:
/// the CPU memory of `size` bytes at physical address `base`, or `None`.
pub type MapRegion<'a> =
    dyn FnMut(PhysAddr, u64) -> Option<&'static mut [core::mem::MaybeUninit<u8>]> + 'a;

impl<P: Policy> Platform<P> {
    /// This platform with the default tlb and the force setting of
    /// `cmdline`.
    fn with_cmdline(
        mut self,
        cmdline: &crate::cmdline::Cmdline,
        map: &mut MapRegion<'_>,
    ) -> Result<Self> {
        self.force |= cmdline.force() == crate::config::Force::Force;
        let Some(region) = cmdline.region_pool(1) else {
            return Ok(self);
        };
        let unmapped = Error::BadConfig {
            problem: crate::error::ConfigProblem::UnmappedRegion {
                phys: region.base,
                len: region.size,
            },
        };
        let len = usize::try_from(region.size).map_err(|_| unmapped)?;
        let memory = map(region.base, region.size).ok_or(unmapped)?;
        if memory.len() < len {
            return Err(unmapped);
        }
        let cpu = core::ptr::NonNull::from(memory).cast::<u8>();
        let config = crate::pool::PoolConfig {
            nareas: region.nareas,
            ..crate::pool::PoolConfig::DEFAULT
        };
        // SAFETY: `cpu` comes from a `&'static mut` of at least `len`
        // bytes, given up here: valid for reads and writes for ever and
        // reached by nothing but the pool; `region.base` is its physical
        // address, which `map` promises (and which only devices use: the
        // pool never reaches memory through it).
        let pool = unsafe { crate::pool::Pool::new(cpu, region.base, len, config) }?;
        Ok(self.with_default(pool))
    }
}

#[cfg(feature = "fdt")]
impl<P: Policy> Platform<P> {
    /// [`Platform::from_dt`] and [`Platform::from_cmdline`] in one: the
    /// restricted tlbs of the device tree and the default tlb of the
    /// command line's region, which must not overlap any pool of the
    /// device tree (restricted, shared or coherent). `config` is the
    /// geometry of the device-tree pools, as for [`Platform::from_dt`].
    ///
    /// # Errors
    /// [`Error::RegionOverlap`] for a region that shares memory with a
    /// device-tree pool (checked before anything is mapped), or as the two
    /// constructors.
    ///
    /// # Safety
    /// As [`Platform::from_dt`], for `memory`.
    pub unsafe fn from_cmdline_and_dt(
        line: &str,
        dt: &crate::dt::DtPools<'_>,
        config: crate::pool::PoolConfig,
        memory: &mut dyn FnMut(PhysAddr, usize) -> Option<core::ptr::NonNull<u8>>,
        map: &mut MapRegion<'_>,
    ) -> Result<Self> {
        let cmdline = crate::cmdline::Cmdline::read(line)?.cmdline;
        if let Some(r) = cmdline.region {
            for p in &dt.pools {
                check_overlap(r.base, r.size, p.base, p.size)?;
            }
        }
        // SAFETY: `memory` meets `from_dt`'s contract (this function's).
        let platform = unsafe { Self::from_dt(dt, config, memory) }?;
        platform.with_cmdline(&cmdline, map)
    }
}

impl<P: Policy> From<crate::pool::Pool<P>> for IoTlb<P> {
    /// A fixed default tlb over `pool`.
    fn from(pool: crate::pool::Pool<P>) -> Self {
        IoTlb::new(TlbKind::Default, pool)
    }
}
