//! Pool sets: the default low tlb, a high tlb, restricted tlbs, and the
//! rule that picks the one serving a device.
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
//!    ([`Device::with_restricted_pool`]) is served by that tlb and no
//!    other: every mapping bounces through it, even one the device could
//!    reach directly, and when it is full the device gets
//!    [`Error::PoolFull`], never a global pool (one busy device must not
//!    starve the others, and the restriction is the point);
//! 2. otherwise the high tlb, if the device's DMA mask and bus limit reach
//!    all of it;
//! 3. otherwise the low tlb, if the device reaches its first slot (a map
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
//! and leaving the low tlb to the devices that can use nothing else is why
//! it exists (the RFC chose by `min_not_zero(dma_mask, bus_dma_limit)`).

use alloc::string::String;
use alloc::vec::Vec;

use crate::attrs::Attrs;
use crate::device::{Device, RestrictedPool};
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::map::{Bouncing, DmaBuffer, MapFailed, Mapping, RawBuffer, SgEntry};
use crate::pool::{Fast, Policy, Pool};
use crate::stats::Stats;
use crate::translate::Translate;
use crate::{DmaAddr, PhysAddr};

pub use crate::pool::Coherent;

/// What a tlb is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlbKind {
    /// The default tlb, in low memory (below 4 GiB unless the platform
    /// puts it elsewhere): serves every device nothing else serves.
    Default,
    /// The high tlb, anywhere: serves devices that reach all of it.
    High,
    /// A restricted tlb: serves only the devices bound to it, and always
    /// bounces.
    Restricted,
}

/// One tlb: a pool with a name and a purpose.
#[derive(Debug)]
pub struct IoTlb<P: Policy = Fast> {
    name: String,
    kind: TlbKind,
    pool: Pool<P>,
}

impl<P: Policy> IoTlb<P> {
    /// The name of the default tlb.
    pub const DEFAULT_NAME: &'static str = "default";
    /// The name of the high tlb, the RFC's debugfs directory.
    pub const HIGH_NAME: &'static str = "swiotlb-hi";

    /// A tlb of `kind` named `name` over `pool`.
    pub fn new(name: impl Into<String>, kind: TlbKind, pool: Pool<P>) -> Self {
        Self {
            name: name.into(),
            kind,
            pool,
        }
    }

    /// The default low tlb, named `default`.
    pub fn low(pool: Pool<P>) -> Self {
        Self::new(Self::DEFAULT_NAME, TlbKind::Default, pool)
    }

    /// The high tlb, named `swiotlb-hi`.
    pub fn high(pool: Pool<P>) -> Self {
        Self::new(Self::HIGH_NAME, TlbKind::High, pool)
    }

    /// A restricted tlb, named after its reserved-memory node.
    pub fn restricted(name: impl Into<String>, pool: Pool<P>) -> Self {
        Self::new(name, TlbKind::Restricted, pool)
    }

    /// The tlb's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the tlb is for.
    pub fn kind(&self) -> TlbKind {
        self.kind
    }

    /// The pool, for its geometry and statistics. Map through the tlb's
    /// own verbs: the pool's raw maps do not know that a restricted tlb
    /// always bounces.
    pub fn pool(&self) -> &Pool<P> {
        &self.pool
    }

    /// The pool's statistics.
    pub fn stats(&self) -> Stats {
        self.pool.stats()
    }

    /// Maps a buffer for `dev` through this tlb: as [`Pool::map`], except
    /// that a restricted tlb always bounces.
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn map<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_with_attrs(dev, buffer, dir, Attrs::NONE)
    }

    /// [`IoTlb::map`] with attributes.
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn map_with_attrs<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        if self.kind == TlbKind::Restricted {
            // Linux: `is_swiotlb_force_bounce` is true for a device with a
            // restricted pool (`mem->force_bounce` set at device init).
            let buffer = RawBuffer::new(buffer);
            let phys = dev.translate().virt_to_phys(buffer.ptr().as_ptr());
            self.pool
                .bounce_buffer(dev, phys, buffer, dir, attrs)
                .map_err(|(error, buffer)| MapFailed::new(error, buffer))
        } else {
            self.pool.map_with_attrs(dev, buffer, dir, attrs)
        }
    }

    /// How this tlb's maps bounce: a restricted tlb always bounces (Linux
    /// sets `force_bounce` on a device's restricted `io_tlb_mem`).
    fn bouncing(&self) -> Bouncing {
        match self.kind {
            TlbKind::Restricted => Bouncing::Always,
            TlbKind::Default | TlbKind::High => Bouncing::IfNeeded,
        }
    }

    /// Maps several buffers as one scatter-gather list, all or nothing,
    /// as [`Pool::map_sg`] does, except that a restricted tlb always
    /// bounces.
    ///
    /// # Errors
    /// As [`Pool::map_sg`].
    pub fn map_sg<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        self.pool.map_sg_buffers(dev, buffers, dir, self.bouncing())
    }

    /// Maps `size` bytes at physical address `orig` (CPU address `cpu`)
    /// for `dev`, as [`Pool::map_raw`] does, except that a restricted tlb
    /// always bounces.
    ///
    /// # Errors
    /// As [`Pool::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    pub unsafe fn map_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
    ) -> Result<DmaAddr> {
        // SAFETY: this function's contract is `map_raw_with_attrs`'s.
        unsafe { self.map_raw_with_attrs(dev, orig, cpu, size, dir, Attrs::NONE) }
    }

    /// [`IoTlb::map_raw`] with attributes.
    ///
    /// # Errors
    /// As [`Pool::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    pub unsafe fn map_raw_with_attrs<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        let _ = dir;
        // SAFETY: this function's contract is `Pool::map_raw`'s, which
        // `map_one` asks for.
        unsafe {
            self.pool
                .map_one(dev, orig, cpu, size, attrs, self.bouncing())
        }
    }

    /// Unmaps a raw mapping of this tlb ([`Pool::unmap_raw`]).
    ///
    /// # Errors
    /// As [`Pool::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`].
    pub unsafe fn unmap_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        // SAFETY: this function's contract is `Pool::unmap_raw`'s.
        unsafe { self.pool.unmap_raw(dev, dma, size, dir, attrs) }
    }

    /// [`Pool::sync_for_cpu_raw`] in this tlb.
    ///
    /// # Errors
    /// As [`Pool::sync_for_cpu_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`].
    pub unsafe fn sync_for_cpu_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        // SAFETY: this function's contract is `Pool::sync_for_cpu_raw`'s.
        unsafe { self.pool.sync_for_cpu_raw(dev, dma, size, dir) }
    }

    /// [`Pool::sync_for_device_raw`] in this tlb.
    ///
    /// # Errors
    /// As [`Pool::sync_for_device_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_device_raw`].
    pub unsafe fn sync_for_device_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        // SAFETY: this function's contract is `Pool::sync_for_device_raw`'s.
        unsafe { self.pool.sync_for_device_raw(dev, dma, size, dir) }
    }

    /// Maps a raw scatter-gather list, all or nothing, as
    /// [`Pool::map_sg_raw`] does, except that a restricted tlb always
    /// bounces.
    ///
    /// # Errors
    /// As [`Pool::map_sg_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_sg_raw`].
    pub unsafe fn map_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        // SAFETY: this function's contract is `Pool::map_sg_raw`'s.
        unsafe { self.pool.map_sg_with(dev, sg, dir, attrs, self.bouncing()) }
    }

    /// Unmaps a raw scatter-gather list ([`Pool::unmap_sg_raw`]).
    ///
    /// # Errors
    /// As [`Pool::unmap_sg_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_sg_raw`].
    pub unsafe fn unmap_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &[SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        // SAFETY: this function's contract is `Pool::unmap_sg_raw`'s.
        unsafe { self.pool.unmap_sg_raw(dev, sg, dir, attrs) }
    }

    /// A zeroed coherent allocation for `dev` ([`Pool::alloc_coherent`]).
    ///
    /// # Errors
    /// As [`Pool::alloc_coherent`].
    pub fn alloc_coherent<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        self.pool.alloc_coherent(dev, size)
    }

    /// Frees a coherent allocation by its device address
    /// ([`Pool::free_coherent`]).
    ///
    /// # Errors
    /// As [`Pool::free_coherent`].
    pub fn free_coherent<T: Translate>(&self, dev: &Device<T>, dma: DmaAddr) -> Result {
        self.pool.free_coherent(dev, dma)
    }
}

/// Every tlb of a platform, and the rule that picks one per device (see the
/// [module documentation](self)).
#[derive(Debug)]
pub struct Platform<P: Policy = Fast> {
    low: Option<IoTlb<P>>,
    high: Option<IoTlb<P>>,
    restricted: Vec<IoTlb<P>>,
}

impl<P: Policy> Default for Platform<P> {
    /// A platform with no tlb at all, for any policy.
    fn default() -> Self {
        Self {
            low: None,
            high: None,
            restricted: Vec::new(),
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
}

impl<P: Policy> Platform<P> {
    /// Sets the default low tlb over `pool`, named `default`.
    pub fn with_low(mut self, pool: Pool<P>) -> Self {
        self.low = Some(IoTlb::low(pool));
        self
    }

    /// Sets the high tlb over `pool`, named `swiotlb-hi`.
    pub fn with_high(mut self, pool: Pool<P>) -> Self {
        self.high = Some(IoTlb::high(pool));
        self
    }

    /// Adds a restricted tlb named `name` over `pool`; devices bind to it
    /// by that name or by its index, the number of restricted tlbs added
    /// before it.
    pub fn with_restricted(mut self, name: impl Into<String>, pool: Pool<P>) -> Self {
        self.restricted.push(IoTlb::restricted(name, pool));
        self
    }

    /// The default low tlb.
    pub fn low(&self) -> Option<&IoTlb<P>> {
        self.low.as_ref()
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
    pub fn restricted_tlb(&self, id: RestrictedPool) -> Option<&IoTlb<P>> {
        match id {
            RestrictedPool::Index(i) => self.restricted.get(i),
            RestrictedPool::Name(name) => self.restricted.iter().find(|t| t.name == name),
        }
    }

    /// The tlb that serves `dev`, by the rule in the [module
    /// documentation](self).
    ///
    /// # Errors
    /// [`Error::NoPool`] if the device is bound to a restricted tlb the
    /// platform does not have, or reaches neither the high tlb (all of it)
    /// nor the low one.
    pub fn select<T: Translate>(&self, dev: &Device<T>) -> Result<&IoTlb<P>> {
        if let Some(id) = dev.restricted_pool() {
            return self.restricted_tlb(id).ok_or(Error::NoPool);
        }
        if let Some(high) = &self.high {
            if dev.can_reach(high.pool.start(), high.pool.len()) {
                return Ok(high);
            }
        }
        if let Some(low) = &self.low {
            if dev.can_reach(low.pool.start(), low.pool.slot_size()) {
                return Ok(low);
            }
        }
        Err(Error::NoPool)
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
    pub fn map<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_with_attrs(dev, buffer, dir, Attrs::NONE)
    }

    /// [`Platform::map`] with attributes.
    ///
    /// # Errors
    /// As [`Platform::map`].
    pub fn map_with_attrs<B: DmaBuffer, T: Translate>(
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
    fn map_buffer<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffer: RawBuffer<B>,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, (Error, RawBuffer<B>)> {
        let (phys, direct) = dev.direct(buffer.ptr().as_ptr(), buffer.len());
        if direct && dev.restricted_pool().is_none() {
            // A direct map is counted under the tlb that serves the
            // device, else the low tlb or the high one, or nowhere on a
            // platform that has neither.
            let home = self
                .select(dev)
                .ok()
                .or(self.low.as_ref())
                .or(self.high.as_ref())
                .map(|t| &t.pool);
            return Ok(Mapping::direct(home, buffer, dev.phys_to_dma(phys), dir));
        }
        // Every tlb's bounce is the same once the choice is made: a
        // restricted tlb bounces whatever the device reaches, and the
        // others are reached here only for a buffer that must bounce.
        match self.select(dev) {
            Ok(tlb) => tlb.pool.bounce_buffer(dev, phys, buffer, dir, attrs),
            Err(error) => Err((error, buffer)),
        }
    }

    /// Maps several buffers as one scatter-gather list, all or nothing:
    /// each as [`Platform::map`] maps it.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error, with every
    /// buffer given back in order; nothing stays mapped.
    pub fn map_sg<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        crate::map::map_sg_buffers_by(buffers, dev.max_segment_size(), |b| {
            self.map_buffer(dev, b, dir, Attrs::NONE)
        })
    }

    /// Where a raw map of `size` bytes at `orig` goes for `dev`: `None`
    /// for a direct map (counted under the tlb that serves the device, if
    /// any), else the tlb to bounce through.
    fn raw_target<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        size: usize,
    ) -> Result<Option<&IoTlb<P>>> {
        if dev.restricted_pool().is_none()
            && !dev.force_bounce()
            && size != 0
            && dev.can_reach(orig, size)
        {
            if let Some(home) = self
                .select(dev)
                .ok()
                .or(self.low.as_ref())
                .or(self.high.as_ref())
            {
                home.pool.count_direct();
            }
            return Ok(None);
        }
        self.select(dev).map(Some)
    }

    /// The tlb holding device address `dma` of `dev`, and its physical
    /// address: the device's restricted tlb, else the low or high tlb
    /// whose pool contains it; `None` if none does.
    fn holder<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
    ) -> Result<(Option<&IoTlb<P>>, PhysAddr)> {
        let phys = dev.translate().dma_to_phys(dma);
        if dev.restricted_pool().is_some() {
            return self.restricted_of(dev).map(|t| (Some(t), phys));
        }
        let tlb = [self.low.as_ref(), self.high.as_ref()]
            .into_iter()
            .flatten()
            .find(|t| t.pool.contains(phys));
        Ok((tlb, phys))
    }

    /// Maps `size` bytes at physical address `orig` (CPU address `cpu`)
    /// for `dev`: directly when a device with no restricted tlb reaches
    /// them and is not forced to bounce, else through the tlb
    /// [`Platform::select`] picks (a restricted tlb always bounces).
    ///
    /// # Errors
    /// [`Error::NoPool`] when the original must bounce and no tlb serves
    /// the device, or as [`Pool::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    pub unsafe fn map_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
    ) -> Result<DmaAddr> {
        // SAFETY: this function's contract is `map_raw_with_attrs`'s.
        unsafe { self.map_raw_with_attrs(dev, orig, cpu, size, dir, Attrs::NONE) }
    }

    /// [`Platform::map_raw`] with attributes.
    ///
    /// # Errors
    /// As [`Platform::map_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    pub unsafe fn map_raw_with_attrs<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        let _ = dir;
        match self.raw_target(dev, orig, size)? {
            None => Ok(dev.phys_to_dma(orig)),
            Some(tlb) => {
                // SAFETY: `cpu` and `orig` carry `Pool::map_raw`'s
                // obligations (this function's contract): valid and
                // unreferenced until the unmap, `orig` its physical
                // address; `map_one` with `Always` is `bounce_raw`.
                unsafe {
                    tlb.pool
                        .map_one(dev, orig, cpu, size, attrs, Bouncing::Always)
                }
            }
        }
    }

    /// Unmaps a raw mapping of `dev` by its device address: in the tlb
    /// that holds it; an address no tlb holds is a direct mapping if the
    /// device could have been given it directly, else
    /// [`Error::NotMapped`].
    ///
    /// # Errors
    /// [`Error::NoPool`] for a device bound to a restricted tlb the
    /// platform lacks, or as [`Pool::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`].
    pub unsafe fn unmap_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        match self.holder(dev, dma)? {
            (None, phys) => crate::map::outside(dev, dma, phys, size),
            // SAFETY: this function's contract is `Pool::unmap_raw`'s.
            (Some(tlb), _) => unsafe { tlb.pool.unmap_raw(dev, dma, size, dir, attrs) },
        }
    }

    /// Copies device writes to the CPU for a raw mapping of `dev` (as
    /// [`Pool::sync_for_cpu_raw`]), in the tlb that holds it.
    ///
    /// # Errors
    /// As [`Platform::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`].
    pub unsafe fn sync_for_cpu_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        match self.holder(dev, dma)? {
            (None, phys) => crate::map::outside(dev, dma, phys, size),
            // SAFETY: this function's contract is `Pool::sync_for_cpu_raw`'s.
            (Some(tlb), _) => unsafe { tlb.pool.sync_for_cpu_raw(dev, dma, size, dir) },
        }
    }

    /// Copies CPU writes to the device for a raw mapping of `dev` (as
    /// [`Pool::sync_for_device_raw`]), in the tlb that holds it.
    ///
    /// # Errors
    /// As [`Platform::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_device_raw`].
    pub unsafe fn sync_for_device_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        match self.holder(dev, dma)? {
            (None, phys) => crate::map::outside(dev, dma, phys, size),
            // SAFETY: this function's contract is
            // `Pool::sync_for_device_raw`'s.
            (Some(tlb), _) => unsafe { tlb.pool.sync_for_device_raw(dev, dma, size, dir) },
        }
    }

    /// Maps a raw scatter-gather list for `dev`, all or nothing, each
    /// entry as [`Platform::map_raw`] maps it.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error; nothing stays
    /// mapped.
    ///
    /// # Safety
    /// As [`Pool::map_sg_raw`].
    pub unsafe fn map_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        crate::map::map_sg_by(
            sg,
            dev.max_segment_size(),
            &mut |e| {
                // SAFETY: the entry carries `Pool::map_raw`'s obligations
                // (this function's contract, per entry).
                unsafe { self.map_raw_with_attrs(dev, e.phys, e.cpu, e.len, dir, attrs) }
            },
            &mut |done| {
                // SAFETY: `done` was mapped by this call and the device has
                // not been told of it; its original is still valid.
                let undo = unsafe {
                    self.unmap_raw(dev, done.dma, done.len, dir, attrs | Attrs::SKIP_CPU_SYNC)
                };
                debug_assert!(undo.is_ok(), "rollback of a fresh mapping failed");
            },
        )
    }

    /// Unmaps every entry of a list mapped by [`Platform::map_sg_raw`];
    /// all entries are tried and the first error is returned.
    ///
    /// # Errors
    /// As [`Platform::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_sg_raw`].
    pub unsafe fn unmap_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &[SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        let mut first = Ok(());
        for e in sg {
            // SAFETY: this function's contract, for this entry.
            let r = unsafe { self.unmap_raw(dev, e.dma, e.len, dir, attrs) };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// A zeroed coherent allocation for `dev` from its restricted tlb
    /// (Linux `swiotlb_alloc`, used by `dma_direct_alloc` only when
    /// `is_swiotlb_for_alloc`, that is for restricted pools).
    ///
    /// # Errors
    /// [`Error::NoPool`] if the device has no restricted tlb (its coherent
    /// memory comes from the page allocator, not from here), or as
    /// [`Pool::alloc_coherent`].
    pub fn alloc_coherent<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        self.restricted_of(dev)?.alloc_coherent(dev, size)
    }

    /// Frees a coherent allocation of `dev` by its device address (Linux
    /// `swiotlb_free`).
    ///
    /// # Errors
    /// [`Error::NoPool`] if the device has no restricted tlb, or as
    /// [`Pool::free_coherent`].
    pub fn free_coherent<T: Translate>(&self, dev: &Device<T>, dma: DmaAddr) -> Result {
        self.restricted_of(dev)?.free_coherent(dev, dma)
    }

    fn restricted_of<T: Translate>(&self, dev: &Device<T>) -> Result<&IoTlb<P>> {
        dev.restricted_pool()
            .and_then(|id| self.restricted_tlb(id))
            .ok_or(Error::NoPool)
    }

    /// Every tlb's statistics under its name: low, high, then the
    /// restricted ones in order (one debugfs directory each, as Linux's
    /// `swiotlb` and the RFC's `swiotlb-hi`).
    pub fn stats(&self) -> Vec<(&str, Stats)> {
        self.tlbs().map(|t| (t.name(), t.stats())).collect()
    }

    /// Every tlb: low, high, then the restricted ones in order.
    pub fn tlbs(&self) -> impl Iterator<Item = &IoTlb<P>> {
        self.low
            .iter()
            .chain(self.high.iter())
            .chain(self.restricted.iter())
    }
}
