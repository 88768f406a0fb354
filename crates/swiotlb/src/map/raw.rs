//! The raw API on [`Pool`]: bounce, map, unmap and sync of physical
//! addresses and CPU pointers, for kernels that manage their own memory.
//! Every entry point is `unsafe`, with its contract written on it.

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::Attrs;
use crate::copy::bounce_copy;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::pool::{Bounce, Policy, Pool};
use crate::translate::Translate;

#[cfg(doc)]
use super::Mapping;
use super::{outside, thread_hint, Bouncing, MapOptions};
#[cfg(feature = "checker")]
use crate::checker::{Caller, Hook, InPool, MapKind, MapKind::Single};

impl<P: Policy> Pool<P> {
    /// Bounces `size` bytes of the original at `orig` (CPU address `cpu`)
    /// through the pool, whatever the device could reach: Linux's
    /// `swiotlb_tbl_map_single` followed by `swiotlb_map`'s check that the
    /// bounce address is reachable. The original is copied into the slots
    /// whatever the direction.
    ///
    /// # Errors
    /// [`Error::ZeroSize`], [`Error::TooLarge`], [`Error::PoolFull`],
    /// [`Error::AlignmentImpossible`], [`Error::Unreachable`]; each is
    /// counted in the pool's statistics.
    ///
    /// # Safety
    /// - `cpu` is valid for reads and writes of `size` bytes from this call
    ///   until the mapping is unmapped, and is not accessed through Rust
    ///   references meanwhile (the pool copies into it on sync and unmap);
    /// - `orig` is the physical address of `cpu` (it decides alignment
    ///   only; a wrong value gives a wrongly aligned but still sound
    ///   bounce).
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn bounce_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<Bounce> {
        // SAFETY: this function's contract, passed on.
        let r = unsafe { self.bounce_counted(dev, orig, cpu, size, attrs, opts) };
        #[cfg(feature = "checker")]
        if let Ok(b) = &r {
            let caller = core::panic::Location::caller();
            // SAFETY: `cpu` is valid for reads of `size` bytes (this
            // function's contract).
            unsafe { self.check_mapped(dev, b.dma, cpu, size, None, Single, 1, caller) };
        }
        r
    }

    /// [`Pool::bounce_raw`] without the checker's hook: failures counted.
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    unsafe fn bounce_counted<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<Bounce> {
        let _ = attrs;
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract).
        let r = unsafe { self.bounce_inner(dev, orig, cpu, size, opts) };
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }

    /// # Safety
    /// As [`Pool::bounce_raw`].
    #[inline]
    pub(crate) unsafe fn bounce_inner<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        opts: MapOptions,
    ) -> Result<Bounce> {
        let b = self.bounce_alloc(dev, orig, cpu, size, opts)?;
        // SAFETY: `b` was just allocated for `cpu`/`size`; the caller's
        // obligations cover the original.
        unsafe { self.copy_in(&b, cpu, size) };
        Ok(b)
    }

    /// The allocation half of a bounce: slots for `size` bytes of the
    /// original at `orig`, recorded with `cpu` for the copies of later
    /// syncs and the unmap, and checked reachable; nothing is copied.
    /// [`Pool::copy_in`] completes it. A growing tlb allocates under its
    /// pool-set lock and copies after dropping it.
    pub(crate) fn bounce_alloc<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        opts: MapOptions,
    ) -> Result<Bounce> {
        let min_align = dev.min_align_mask();
        let (req, pad) = self.request(dev, orig.0, size, opts.alloc_align_mask)?;
        let hint = opts.area_hint.unwrap_or_else(thread_hint);
        let start = self
            .alloc(&req, hint, cpu, size, pad)
            .ok_or_else(|| self.full_error(&req, min_align))?;
        let off = self.slot_offset(start) + pad;
        let phys = self.start() + off as u64;
        let dma = dev.phys_to_dma(phys);
        if !dev.translate().dma_capable(&dev.limits(), phys, dma, size) {
            self.release(start, req.nslots, dma, 0, size)?;
            return Err(Error::Unreachable { dma, size });
        }
        Ok(Bounce {
            phys,
            dma,
            slot: start + (pad >> self.slot_shift()) as u32,
            start,
            nslots: req.nslots,
        })
    }

    /// The copy half of a bounce: the original into the slots of `b`.
    ///
    /// # Safety
    /// - `b` is a live allocation of this pool from
    ///   [`Pool::bounce_alloc`] for `cpu` and `size`, not yet unmapped;
    /// - `cpu` is valid for reads of `size` bytes and not referenced, as
    ///   for [`Pool::bounce_raw`].
    pub(crate) unsafe fn copy_in(&self, b: &Bounce, cpu: *const u8, size: usize) {
        let off = (b.phys - self.start()) as usize;
        // SAFETY:
        // - `cpu` is valid for reads of `size` bytes (caller); the slots at
        //   `off` hold at least `size` bytes from the bounce address
        //   (`request` sized the allocation so), inside the pool;
        // - pool memory and the original never overlap (the original is not
        //   in the pool: the caller's buffer is not pool memory, which only
        //   the pool touches);
        // - the slots belong to this live allocation alone, and the caller
        //   holds no reference to the original.
        unsafe { bounce_copy(self.slot_ptr(off), cpu, size) };
    }

    /// Maps `size` bytes at physical address `orig` (CPU address `cpu`) for
    /// `dev`: directly when the device reaches them and is not forced to
    /// bounce, else through the pool. Linux `dma_map_page` over
    /// `dma-direct` with swiotlb.
    ///
    /// # Errors
    /// As [`Pool::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`]; for a direct mapping the device accesses the
    /// original itself until unmap.
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
    ) -> Result<DmaAddr> {
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract);
        // for a direct mapping the device may use the original until then.
        unsafe { self.map_raw_with_attrs(dev, orig, cpu, size, dir, Attrs::NONE) }
    }

    /// [`Pool::map_raw`] with attributes.
    ///
    /// # Errors
    /// As [`Pool::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
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
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract);
        // for a direct mapping the device may use the original until then.
        let r = unsafe { self.map_one(dev, orig, cpu, size, attrs, Bouncing::IfNeeded) };
        #[cfg(feature = "checker")]
        if let Ok(dma) = r {
            let caller = core::panic::Location::caller();
            // SAFETY: `cpu` is valid for reads of `size` bytes (this
            // function's contract).
            unsafe { self.check_mapped(dev, dma, cpu, size, Some(dir), Single, 1, caller) };
        }
        r
    }

    /// One raw map: directly when `bouncing` allows it and the device
    /// reaches the original, else through the pool.
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`]; for a direct mapping the device accesses
    /// the original itself until unmap.
    pub(crate) unsafe fn map_one<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        bouncing: Bouncing,
    ) -> Result<DmaAddr> {
        let direct = bouncing == Bouncing::IfNeeded && dev.maps_directly(orig, size);
        if direct {
            self.count_direct();
            return Ok(dev.phys_to_dma(orig));
        }
        // SAFETY: `cpu` and `orig` come with `bounce_raw`'s obligations
        // (this function's contract): `cpu` stays valid for `size` bytes
        // and unreferenced until the unmap, and `orig` is its physical
        // address.
        let b = unsafe { self.bounce_counted(dev, orig, cpu, size, attrs, MapOptions::default())? };
        Ok(b.dma)
    }

    /// Unmaps a mapping made by [`Pool::map_raw`] or [`Pool::bounce_raw`]:
    /// copies the slots back into the original for from-device and
    /// bidirectional mappings (unless `SKIP_CPU_SYNC`), then frees them. A
    /// device address outside the pool that the device reaches directly
    /// (and is not forced to bounce) is a direct mapping: nothing to do.
    ///
    /// # Errors
    /// [`Error::NotMapped`] if `dma` is in the pool but is not the start of
    /// a live mapping (a double unmap), or is outside it where the device
    /// could not have been given it directly; [`Error::OutOfBounds`] if `size` is
    /// larger than the mapping. Nothing is copied or freed then.
    ///
    /// # Safety
    /// - the mapping's original (given at map time) is still valid for
    ///   writes and not referenced, as for [`Pool::bounce_raw`];
    /// - the device no longer accesses the mapping.
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
        {
            let caller = core::panic::Location::caller();
            // SAFETY: the mapping's original is still valid (this
            // function's contract).
            unsafe { self.check_release(dev, dma, size, Some(dir), Single, 1, caller) };
        }
        // SAFETY: this function's contract, passed on.
        let r = unsafe { self.unmap_unchecked(dev, dma, size, dir, attrs) };
        #[cfg(feature = "checker")]
        if r.is_ok() {
            crate::checker::released(dev.checker_id(), dma);
        }
        r
    }

    /// [`Pool::unmap_raw`] without the checker's hooks.
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`].
    pub(crate) unsafe fn unmap_unchecked<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        if !self.contains(phys) {
            return outside(dev, dma, phys, size);
        }
        // SAFETY: the mapping's original is valid for writes and
        // unreferenced, and the device is done with the mapping (this
        // function's contract); `phys` is `dma` translated for `dev`.
        unsafe { self.unmap_at(dma, phys, size, dir, attrs, None) }
    }

    /// [`Pool::unmap_raw`] of device address `dma`, already translated to
    /// `phys` (a growing tlb translates once to find the pool). With
    /// `into`, the copy back goes through that pointer, which must have
    /// the original's address (else [`Error::NotMapped`], nothing done):
    /// the same memory, reached with the caller's current provenance.
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`], with `phys` the CPU physical address of
    /// `dma` for the device; `into`, if given, is valid for writes of
    /// `size` bytes and unreferenced.
    pub(crate) unsafe fn unmap_at(
        &self,
        dma: DmaAddr,
        phys: PhysAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
        into: Option<*mut u8>,
    ) -> Result {
        if !self.contains(phys) {
            return Ok(());
        }
        let r = (|| {
            let loc = self.locate(phys).ok_or(Error::NotMapped { dma })?;
            // A null original marks a coherent allocation: it is freed by
            // `free_coherent`, never unmapped, and nothing is copied to it.
            if loc.offset != 0 || loc.orig.is_null() {
                return Err(Error::NotMapped { dma });
            }
            if into.is_some_and(|p| p.addr() != loc.orig.addr()) {
                return Err(Error::NotMapped { dma });
            }
            if size > loc.len {
                return Err(Error::OutOfBounds {
                    offset: 0,
                    len: size,
                    mapping_len: loc.len,
                });
            }
            let copy_back = dir.copies_to_cpu() && !attrs.contains(Attrs::SKIP_CPU_SYNC);
            if copy_back {
                let src = self.slot_ptr(self.slot_offset(loc.start) + loc.pad);
                // SAFETY:
                // - the slots hold `loc.len >= size` bytes from `src`; the
                //   original at `loc.orig` is valid for `size <= len` writes
                //   (the caller's contract at map time, still in force);
                // - pool and original do not overlap;
                // - the mapping is live and owned by the caller, who holds no
                //   reference to the original.
                // With `into`, the same address (checked above), valid for
                // those writes and unreferenced (this function's contract).
                unsafe { bounce_copy(into.unwrap_or(loc.orig), src, size) };
            }
            let copied = if copy_back { size } else { 0 };
            self.release(loc.start, loc.nslots, dma, copied, 0)
        })();
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }

    /// Makes device writes in `[dma, dma + size)` visible to the CPU:
    /// copies them into the original for from-device and bidirectional
    /// mappings (Linux `swiotlb_sync_single_for_cpu`). `dma` may be any
    /// address inside a mapping. Outside the pool: nothing to do for an
    /// address the device reaches directly, else [`Error::NotMapped`].
    ///
    /// # Errors
    /// [`Error::NotMapped`], [`Error::OutOfBounds`], whatever the
    /// direction; nothing is copied.
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`], except that the device may go on using other
    /// parts of the mapping.
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
            unsafe { self.check_sync(dev, dma, size, dir, true, caller) };
        }
        // SAFETY: the mapping's original is valid for writes of the synced
        // range and unreferenced (this function's contract).
        unsafe { self.sync_raw(dev, dma, size, false, dir.copies_to_cpu()) }
    }

    /// Makes CPU writes to the original in `[dma, dma + size)` visible to
    /// the device: copies them into the slots for to-device and
    /// bidirectional mappings (Linux `swiotlb_sync_single_for_device`).
    ///
    /// # Errors
    /// [`Error::NotMapped`], [`Error::OutOfBounds`], whatever the
    /// direction; nothing is copied.
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`].
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
            unsafe { self.check_sync(dev, dma, size, dir, false, caller) };
        }
        // SAFETY: the mapping's original is valid for reads of the synced
        // range and unreferenced (this function's contract).
        unsafe { self.sync_raw(dev, dma, size, true, dir.copies_to_device()) }
    }

    /// Checks `[dma, dma + size)` against its mapping whatever the
    /// direction, as the safe [`Mapping`] syncs do (and Linux's DMA-API
    /// debugging `check_sync`): a sync outside a live mapping is an error
    /// even when its direction copies nothing. Copies only if `copy`.
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`].
    unsafe fn sync_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        to_device: bool,
        copy: bool,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        if !self.contains(phys) {
            return outside(dev, dma, phys, size);
        }
        // SAFETY: the mapping's original is valid for the synced range and
        // unreferenced (this function's contract); `phys` is `dma`
        // translated for `dev`.
        unsafe { self.sync_at(dma, phys, size, to_device, copy) }
    }

    /// [`Pool::sync_raw`] of device address `dma`, already translated to
    /// `phys`.
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`], with `phys` the CPU physical address
    /// of `dma` for the device.
    pub(crate) unsafe fn sync_at(
        &self,
        dma: DmaAddr,
        phys: PhysAddr,
        size: usize,
        to_device: bool,
        copy: bool,
    ) -> Result {
        if !self.contains(phys) {
            return Ok(());
        }
        let r = (|| {
            let loc = self.locate(phys).ok_or(Error::NotMapped { dma })?;
            // A coherent allocation (null original) is never synced.
            if loc.orig.is_null() {
                return Err(Error::NotMapped { dma });
            }
            let offset = usize::try_from(loc.offset).map_err(|_| Error::OutOfBounds {
                offset: usize::MAX,
                len: size,
                mapping_len: loc.len,
            })?;
            if offset.checked_add(size).is_none_or(|end| end > loc.len) {
                return Err(Error::OutOfBounds {
                    offset,
                    len: size,
                    mapping_len: loc.len,
                });
            }
            if !copy {
                return Ok(());
            }
            let slot = self.slot_ptr(self.slot_offset(loc.start) + loc.pad + offset);
            let orig = loc.orig.wrapping_add(offset);
            let (dst, src) = if to_device {
                (slot, orig)
            } else {
                (orig, slot)
            };
            // SAFETY:
            // - `[offset, offset + size)` lies inside the mapping (checked
            //   above), so both sides are in bounds: the slots of the live
            //   allocation and the original the caller keeps valid;
            // - pool and original do not overlap;
            // - the caller holds no reference to the original.
            unsafe { bounce_copy(dst, src, size) };
            self.count_bytes(loc.start, to_device, size);
            Ok(())
        })();
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }
}

/// The misuse checker's hooks (feature `checker`): each public raw entry
/// point calls one, and nothing else does.
#[cfg(feature = "checker")]
impl<P: Policy> Pool<P> {
    /// Writes (`check == false`) or reads back the guard bytes of the
    /// streaming mapping at bounce address `phys`, if this pool holds it.
    pub(crate) fn guard_op(&self, phys: PhysAddr, check: bool) -> Option<InPool> {
        if !self.contains(phys) {
            return None;
        }
        let slot = self.vaddr().as_ptr().addr() + (phys - self.start()) as usize;
        Some(if check {
            InPool {
                slot,
                guarded: true,
                found: self.guard_check(phys),
            }
        } else {
            InPool {
                slot,
                guarded: self.guard_fill(phys),
                found: [None, None],
            }
        })
    }

    /// The checker's view of a call on this pool for `dev`.
    pub(crate) fn hook<'a, T: Translate>(
        &'a self,
        dev: &'a Device<T>,
        caller: Caller,
    ) -> Hook<impl Fn(DmaAddr, bool) -> Option<InPool> + 'a> {
        Hook {
            dev: dev.checker_id(),
            caller,
            guards: move |dma, check| self.guard_op(dev.translate().dma_to_phys(dma), check),
        }
    }

    /// Records a new mapping (an entry of a list of `nents`, 1 if not a
    /// list) and, if it bounced here, fills its guard bytes.
    ///
    /// # Safety
    /// `cpu` is valid for reads of `size` bytes.
    #[expect(clippy::too_many_arguments, reason = "one record's fields")]
    pub(crate) unsafe fn check_mapped<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        cpu: *mut u8,
        size: usize,
        dir: Option<Direction>,
        kind: MapKind,
        nents: usize,
        caller: Caller,
    ) {
        // SAFETY: `cpu` is valid for reads of `size` bytes (this
        // function's contract).
        unsafe {
            self.hook(dev, caller)
                .mapped(dma, cpu, size, dir, kind, nents)
        };
    }

    /// Checks a release against the record and the guard bytes.
    ///
    /// # Safety
    /// The original of a live mapping at `dma` is valid for reads.
    #[expect(clippy::too_many_arguments, reason = "one release's fields")]
    pub(crate) unsafe fn check_release<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Option<Direction>,
        kind: MapKind,
        nents: usize,
        caller: Caller,
    ) {
        // SAFETY: this function's contract.
        unsafe { self.hook(dev, caller).release(dma, size, dir, kind, nents) };
    }

    /// Checks a sync against the record; for the CPU, the guard bytes too.
    ///
    /// # Safety
    /// The original of the live mapping holding `dma` is valid for reads.
    pub(crate) unsafe fn check_sync<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        for_cpu: bool,
        caller: Caller,
    ) {
        // SAFETY: this function's contract.
        unsafe { self.hook(dev, caller).sync(dma, size, dir, for_cpu) };
    }
}
