//! Map, unmap and sync: the streaming DMA API, at two levels.
//!
//! - The **safe level** ([`Pool::map`]) takes ownership of a buffer and
//!   returns a [`Mapping`] that holds a raw pointer and a length, never a
//!   live `&mut`, while the device owns the memory (the Tock DMA soundness
//!   lesson); [`Mapping::unmap`] gives the buffer back.
//! - The **raw level** ([`Pool::map_raw`] and friends) takes physical
//!   addresses and CPU pointers, for kernels that manage their own memory.
//!   It is `unsafe`, with its contract written on each function.
//!
//! Both follow Linux's semantics (`dma_direct_map_page`, `swiotlb_map`,
//! `swiotlb_tbl_map_single`, `swiotlb_tbl_unmap_single`,
//! `swiotlb_sync_single_for_{cpu,device}`):
//! - a buffer the device reaches (judged on both addresses) and that is not
//!   forced to bounce is mapped directly;
//! - otherwise it is bounced, and the map copies the original into the
//!   slots **for every direction**, so a device that writes only part of a
//!   from-device buffer never leaves stale slot bytes of an earlier mapping
//!   in the original (CVE-2022-0854);
//! - `sync_for_device` copies only for to-device and bidirectional
//!   mappings; unmap and `sync_for_cpu` copy back only for from-device and
//!   bidirectional ones, and `SKIP_CPU_SYNC` skips the unmap copy-back;
//! - a sync may cover any sub-range of a mapping; one that runs past it is
//!   an error and copies nothing;
//! - the bounce address must itself be reachable by the device, or the map
//!   fails and nothing stays mapped.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::Attrs;
use crate::copy::bounce_copy;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::pool::{Bounce, Policy, Pool};
#[cfg(feature = "alloc")]
use crate::tlb::IoTlb;
use crate::translate::Translate;

/// Options of one bounce beyond its attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapOptions {
    /// Start alignment of the allocation (Linux's `alloc_align_mask`
    /// argument of `swiotlb_tbl_map_single`): `2^n - 1`, or `0` for none.
    pub alloc_align_mask: u64,
    /// The area to search first; `None` uses the calling thread's hint
    /// (one per thread under `std`, area 0 without it), as Linux starts at
    /// the CPU's own area.
    pub area_hint: Option<usize>,
}

/// The area the calling thread starts its searches in.
#[cfg(feature = "std")]
fn thread_hint() -> usize {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        // Const-initialised, with no destructor: reading it is one load,
        // where a lazily initialised thread-local checks its state first.
        static HINT: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) };
    }
    HINT.with(|h| {
        let mut v = h.get();
        if v == usize::MAX {
            // Areas are a power of two in number, so any value works; MAX
            // is only the "not yet" mark.
            v = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
            h.set(v);
        }
        v
    })
}

/// The area the calling thread starts its searches in.
#[cfg(not(feature = "std"))]
fn thread_hint() -> usize {
    0
}

/// An unmap or sync of device address `dma` (physical `phys`) that no pool
/// holds: nothing to do for a direct mapping (Linux's dma-direct does
/// nothing either), [`Error::NotMapped`] for an address the device could
/// only have been given by a bounce, such as a second unmap of a mapping
/// whose transient pool is gone.
pub(crate) fn outside<T: Translate>(
    dev: &Device<T>,
    dma: DmaAddr,
    phys: PhysAddr,
    size: usize,
) -> Result {
    if dev.may_be_direct(phys, size) {
        Ok(())
    } else {
        Err(Error::NotMapped { dma })
    }
}

/// Maps every entry of a raw scatter-gather list with `map`, all or
/// nothing: an entry longer than `max_segment` fails the list before any
/// is mapped ([`Error::SegmentTooLong`]); if one entry fails, the ones
/// already mapped are given to `unmap`, in order, and the error returned.
/// Each entry's `dma` is set. The one walk behind the pool's, the tlb's
/// and the platform's `map_sg_raw`.
pub(crate) fn map_sg_by(
    sg: &mut [SgEntry],
    max_segment: usize,
    map: &mut dyn FnMut(&SgEntry) -> Result<DmaAddr>,
    unmap: &mut dyn FnMut(&SgEntry),
) -> Result {
    if let Some((index, e)) = sg.iter().enumerate().find(|(_, e)| e.len > max_segment) {
        return Err(Error::SegmentTooLong {
            index,
            len: e.len,
            max: max_segment,
        });
    }
    for i in 0..sg.len() {
        match map(&sg[i]) {
            Ok(dma) => sg[i].dma = dma,
            Err(err) => {
                sg[..i].iter().for_each(&mut *unmap);
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Whether a raw map may hand the device the original's own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "alloc"),
    expect(dead_code, reason = "only a restricted tlb (alloc) always bounces")
)]
pub(crate) enum Bouncing {
    /// Directly when the device reaches the original and is not forced to
    /// bounce (Linux's dma-direct).
    IfNeeded,
    /// Always through the pool: a restricted tlb's devices.
    Always,
}

/// One entry of a raw scatter-gather list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// Physical address of the segment.
    pub phys: PhysAddr,
    /// CPU address of the segment.
    pub cpu: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// Set by [`Pool::map_sg_raw`]: the device address of the segment.
    pub dma: DmaAddr,
}

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
    pub unsafe fn bounce_raw<T: Translate>(
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
        unsafe { self.map_one(dev, orig, cpu, size, attrs, Bouncing::IfNeeded) }
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
        let b = unsafe { self.bounce_raw(dev, orig, cpu, size, attrs, MapOptions::default())? };
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
    pub unsafe fn unmap_raw<T: Translate>(
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
        unsafe { self.unmap_at(dma, phys, size, dir, attrs) }
    }

    /// [`Pool::unmap_raw`] of device address `dma`, already translated to
    /// `phys` (a growing tlb translates once to find the pool).
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`], with `phys` the CPU physical address of
    /// `dma` for the device.
    pub(crate) unsafe fn unmap_at(
        &self,
        dma: DmaAddr,
        phys: PhysAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
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
                unsafe { bounce_copy(loc.orig, src, size) };
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
    pub unsafe fn sync_for_cpu_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
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
    pub unsafe fn sync_for_device_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
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

    /// Maps every entry of a scatter-gather list, all or nothing: if one
    /// entry fails, the ones already mapped are unmapped (without copying
    /// back) and the error is returned. Each entry's `dma` is set.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] for an entry longer than the device's
    /// `max_segment_size`, or the first mapping error.
    ///
    /// # Safety
    /// As [`Pool::map_raw`], for every entry.
    pub unsafe fn map_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        // SAFETY: this function's contract, for every entry.
        unsafe { self.map_sg_with(dev, sg, dir, attrs, Bouncing::IfNeeded) }
    }

    /// [`Pool::map_sg_raw`], each entry mapped as `bouncing` says.
    ///
    /// # Safety
    /// As [`Pool::map_sg_raw`].
    pub(crate) unsafe fn map_sg_with<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
        bouncing: Bouncing,
    ) -> Result {
        let r = map_sg_by(
            sg,
            dev.max_segment_size(),
            &mut |e| {
                // SAFETY: the entry's `cpu`, `phys` and `len` carry the raw
                // map's obligations (this function's contract, per entry).
                unsafe { self.map_one(dev, e.phys, e.cpu, e.len, attrs, bouncing) }
            },
            &mut |done| {
                // SAFETY: `done` was mapped by this call and the device has
                // not been told of it yet; its original is still valid (the
                // caller's obligation).
                let undo = unsafe {
                    self.unmap_raw(dev, done.dma, done.len, dir, attrs | Attrs::SKIP_CPU_SYNC)
                };
                debug_assert!(undo.is_ok(), "rollback of a fresh mapping failed");
            },
        );
        if let Err(e @ Error::SegmentTooLong { .. }) = &r {
            self.count_failure(e);
        }
        r
    }

    /// Unmaps every entry of a list mapped by [`Pool::map_sg_raw`].
    ///
    /// A failing entry does not stop the others: every entry is tried, in
    /// list order, and each one that can be unmapped is unmapped (copied
    /// back as its direction says). A failing entry is left as it was: one
    /// refused with [`Error::OutOfBounds`] stays mapped and can still be
    /// unmapped with its own size.
    ///
    /// # Errors
    /// As [`Pool::unmap_raw`]: the error of the first failing entry in list
    /// order. Later failures are counted in the pool's statistics but not
    /// returned.
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`], for every entry.
    pub unsafe fn unmap_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &[SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        let mut first = Ok(());
        for e in sg {
            // SAFETY: this entry's original is valid for writes and
            // unreferenced, and the device is done with it (this
            // function's contract, per entry).
            let r = unsafe { self.unmap_raw(dev, e.dma, e.len, dir, attrs) };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// A buffer a device may be given: it can be taken apart into a raw
/// region while the device owns it, and put back together afterwards.
///
/// A mapping never keeps the buffer value itself while a device may use
/// its bytes. Moving a value such as a `Box` or a `&mut` retags the memory
/// it points to (Stacked and Tree Borrows alike), which would invalidate
/// any pointer derived from it before the move; so the safe API takes the
/// buffer apart first ([`DmaBuffer::into_raw_parts`]), derives every access
/// from the pointer that returns, lets the mapping move freely, and puts
/// the buffer back together only once no copy can touch it again
/// ([`DmaBuffer::from_raw_parts`]).
///
/// # Implementation safety
/// An implementor guarantees that:
/// - [`DmaBuffer::into_raw_parts`] returns a pointer valid for reads and
///   writes of the returned length, whose provenance comes from the raw
///   form itself (`Box::into_raw`, `ManuallyDrop` and `as_mut_ptr`, a
///   reference turned into a raw pointer), not from any value that moves
///   afterwards;
/// - the bytes stay valid, and nothing other than the holder of the parts
///   reads or writes them, until [`DmaBuffer::from_raw_parts`] is called
///   with the same pointer, length and rest; moving or dropping nothing
///   else invalidates them;
/// - [`DmaBuffer::Rest`] does not own, borrow or point to the bytes in a
///   way that moving it retags them (a capacity, a handle, `()`);
/// - `from_raw_parts` with the parts `into_raw_parts` returned gives back
///   the buffer, bytes included.
pub unsafe trait DmaBuffer: Sized {
    /// What the buffer needs besides its region to be put back together
    /// (a `Vec`'s capacity; nothing for a box or a slice).
    type Rest;

    /// Takes the buffer apart: the bytes' address and length, and the
    /// rest.
    fn into_raw_parts(self) -> (NonNull<u8>, usize, Self::Rest);

    /// Puts a buffer taken apart by [`DmaBuffer::into_raw_parts`] back
    /// together.
    ///
    /// # Safety
    /// `ptr`, `len` and `rest` are what one call of `into_raw_parts`
    /// returned, each used once, and nothing accesses the bytes any more
    /// through `ptr`.
    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, rest: Self::Rest) -> Self;
}

#[cfg(feature = "alloc")]
// SAFETY:
// - the pointer is taken from the `Vec` behind `ManuallyDrop`, so it is
//   the heap buffer's own pointer, valid for `len` bytes, and no `Vec`
//   value exists any more to move or free it;
// - the rest is the capacity, a number;
// - `Vec::from_raw_parts` with the same pointer, length and capacity gives
//   back the same vector (its documented contract).
unsafe impl DmaBuffer for Vec<u8> {
    type Rest = usize;

    fn into_raw_parts(self) -> (NonNull<u8>, usize, usize) {
        let mut v = core::mem::ManuallyDrop::new(self);
        let ptr = NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling());
        (ptr, v.len(), v.capacity())
    }

    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, capacity: usize) -> Self {
        // SAFETY: `ptr`, `len` and `capacity` describe a vector taken
        // apart by `into_raw_parts` (the caller's obligation), which is
        // what `Vec::from_raw_parts` requires.
        unsafe { Vec::from_raw_parts(ptr.as_ptr(), len, capacity) }
    }
}

#[cfg(feature = "alloc")]
// SAFETY:
// - `Box::into_raw` gives up the box: the pointer it returns is the only
//   one to the bytes, valid for their length, and no box moves any more;
// - the rest is `()`;
// - `Box::from_raw` of that pointer gives back the same box.
unsafe impl DmaBuffer for alloc::boxed::Box<[u8]> {
    type Rest = ();

    fn into_raw_parts(self) -> (NonNull<u8>, usize, ()) {
        let raw = alloc::boxed::Box::into_raw(self);
        let len = raw.len();
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        (ptr, len, ())
    }

    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, (): ()) -> Self {
        let raw = core::ptr::slice_from_raw_parts_mut(ptr.as_ptr(), len);
        // SAFETY: `raw` is the pointer `Box::into_raw` returned (the same
        // address and length; a box of an empty slice holds a dangling
        // pointer, which `from_raw` accepts for a zero-sized value), used
        // once (the caller's obligation).
        unsafe { alloc::boxed::Box::from_raw(raw) }
    }
}

// SAFETY:
// - the `&'static mut` is turned into a raw pointer and not kept, so the
//   raw pointer is the only way to the bytes, valid forever;
// - the rest is `()`;
// - reborrowing the raw pointer gives back an exclusive slice of the same
//   bytes.
unsafe impl DmaBuffer for &'static mut [u8] {
    type Rest = ();

    fn into_raw_parts(self) -> (NonNull<u8>, usize, ()) {
        let len = self.len();
        let raw: *mut [u8] = self;
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        (ptr, len, ())
    }

    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, (): ()) -> Self {
        // SAFETY: `ptr` and `len` came from a `&'static mut [u8]` given up
        // by `into_raw_parts`: valid for `len` bytes forever, aligned, and
        // no other reference to them exists (the caller uses the parts
        // once and no longer accesses the bytes through `ptr`).
        unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), len) }
    }
}

/// A [`DmaBuffer`] taken apart for as long as a device may use it (see the
/// trait). Dropping it puts the buffer back together and drops it.
///
/// # Invariants
/// `ptr`, `len` and `rest` are the parts of one buffer, and `rest` is
/// taken exactly once (by [`RawBuffer::into_buffer`] or by `Drop`).
pub(crate) struct RawBuffer<B: DmaBuffer> {
    ptr: NonNull<u8>,
    len: usize,
    rest: ManuallyDrop<B::Rest>,
}

impl<B: DmaBuffer> RawBuffer<B> {
    /// Takes `buffer` apart.
    pub(crate) fn new(buffer: B) -> Self {
        let (ptr, len, rest) = buffer.into_raw_parts();
        // INVARIANT: the parts of `buffer`, none taken yet.
        Self {
            ptr,
            len,
            rest: ManuallyDrop::new(rest),
        }
    }

    /// The bytes' address: the one pointer every access derives from.
    #[inline]
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The bytes' length.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Puts the buffer back together. Its owner must have made sure that
    /// no copy touches the bytes any more (the slots are given back, the
    /// queued request is cancelled or completed).
    pub(crate) fn into_buffer(self) -> B {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `rest` is taken once: `this` is never dropped, so `Drop`
        // cannot take it again (type invariant).
        let rest = unsafe { ManuallyDrop::take(&mut this.rest) };
        // SAFETY: the parts of one buffer, each used once (type invariant);
        // the owner no longer accesses the bytes (this function's
        // contract).
        unsafe { B::from_raw_parts(this.ptr, this.len, rest) }
    }
}

impl<B: DmaBuffer> Drop for RawBuffer<B> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `into_buffer` never reaches this drop.
        let rest = unsafe { ManuallyDrop::take(&mut self.rest) };
        // SAFETY: the parts of one buffer, each used once (type invariant);
        // a `RawBuffer` is dropped only by an owner done with its bytes.
        drop(unsafe { B::from_raw_parts(self.ptr, self.len, rest) });
    }
}

/// A failed safe map: the reason and the buffer, given back.
#[derive(Debug)]
pub struct MapFailed<B> {
    /// Why it failed.
    pub error: Error,
    /// The buffer, untouched by any device.
    pub buffer: B,
}

impl<B: DmaBuffer> MapFailed<B> {
    /// The failure of a map of the taken-apart `buffer`.
    pub(crate) fn new(error: Error, buffer: RawBuffer<B>) -> Self {
        Self {
            error,
            buffer: buffer.into_buffer(),
        }
    }
}

/// How long the pool of a bounced mapping lives, which decides how its
/// slots are given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "alloc"),
    expect(
        dead_code,
        reason = "only a growing tlb (alloc) holds grown or transient pools"
    )
)]
pub(crate) enum Held {
    /// The pool outlives the mapping's borrow: a fixed pool, or the first
    /// pool of a growing tlb.
    Lasting,
    /// A grown pool, which the tlb frees once idle: the slots are given
    /// back under the tlb's guard (`IoTlb::guard_release`).
    Grown,
    /// A transient pool made for this mapping alone: the tlb frees it
    /// after the slots are given back.
    Transient,
}

/// Where a safe mapping's device-side bytes are.
///
/// # Invariants
/// `pool` is valid while the mapping holds the slots `start..start +
/// nslots`: for the mapping's borrow (`Held::Lasting`), or in a growing
/// tlb until they are given back (the tlb frees no pool that holds a live
/// allocation, and no grown pool while a release runs in it).
struct BounceRef<P: Policy> {
    pool: NonNull<Pool<P>>,
    held: Held,
    start: u32,
    nslots: u32,
    /// Byte offset of the mapping's first byte in the pool.
    off: usize,
    phys: PhysAddr,
}

impl<P: Policy> Clone for BounceRef<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Policy> Copy for BounceRef<P> {}

/// What a safe mapping borrows: the pool or the tlb that made it.
#[derive(Debug)]
pub(crate) enum Owner<'p, P: Policy> {
    /// Nothing: a direct mapping of a platform that has no default or
    /// high tlb.
    #[cfg(feature = "alloc")]
    Nothing,
    /// A bare pool ([`Pool::map`]).
    Pool(&'p Pool<P>),
    /// A tlb, which is told of every release (to give back a transient
    /// pool, and to serve its queue) and guards the release of a grown
    /// pool's slots.
    #[cfg(feature = "alloc")]
    Tlb(&'p IoTlb<P>),
}

impl<P: Policy> Clone for Owner<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Policy> Copy for Owner<'_, P> {}

impl<'p, P: Policy> Owner<'p, P> {
    /// Where direct mappings and failures are counted.
    #[inline]
    pub(crate) fn home(self) -> Option<&'p Pool<P>> {
        match self {
            #[cfg(feature = "alloc")]
            Owner::Nothing => None,
            Owner::Pool(pool) => Some(pool),
            #[cfg(feature = "alloc")]
            Owner::Tlb(tlb) => Some(tlb.first_pool()),
        }
    }
}

/// A buffer mapped for a device: it owns the buffer until
/// [`Mapping::unmap`] gives it back.
///
/// It holds the buffer taken apart into a raw pointer and a length (see
/// [`DmaBuffer`]), never a reference or the buffer value, because the
/// device may read and write the memory at any time. The CPU reads and
/// writes through [`Mapping::read`] and [`Mapping::write`], which copy
/// through the audited routine. Dropping a mapping unmaps it without
/// copying back (as `SKIP_CPU_SYNC`) and drops the buffer: drop it only
/// when the device is done with it, as with any unmap.
pub struct Mapping<'p, B: DmaBuffer, P: Policy = crate::pool::Fast> {
    buffer: RawBuffer<B>,
    dma: DmaAddr,
    dir: Direction,
    /// The pool or tlb that made the mapping.
    owner: Owner<'p, P>,
    bounce: Option<BounceRef<P>>,
}

impl<P: Policy> Pool<P> {
    /// Maps a buffer for `dev`, taking ownership of it: directly when the
    /// device reaches it and is not forced to bounce, else through this
    /// pool.
    ///
    /// # Errors
    /// A [`MapFailed`] with the reason and the buffer.
    pub fn map<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_with_attrs(dev, buffer, dir, Attrs::NONE)
    }

    /// [`Pool::map`] with attributes.
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
        let buffer = RawBuffer::new(buffer);
        let (phys, direct) = dev.direct(buffer.ptr().as_ptr(), buffer.len());
        if direct {
            let dma = dev.phys_to_dma(phys);
            return Ok(Mapping::direct(Owner::Pool(self), buffer, dma, dir));
        }
        self.bounce_buffer(dev, phys, buffer, dir, attrs)
            .map_err(|(error, buffer)| MapFailed::new(error, buffer))
    }

    /// The bounce half of a safe map: `buffer` (physical address `phys`)
    /// through this pool, whatever the device could reach.
    pub(crate) fn bounce_buffer<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        phys: PhysAddr,
        buffer: RawBuffer<B>,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, (Error, RawBuffer<B>)> {
        let _ = attrs;
        let r = self.bounce_buffer_in(Owner::Pool(self), dev, phys, buffer, dir);
        if let Err((e, _)) = &r {
            self.count_failure(e);
        }
        r
    }

    /// [`Pool::bounce_buffer`] for `owner`, which lives at least as long
    /// as this pool is borrowed; failures are not counted.
    #[inline]
    pub(crate) fn bounce_buffer_in<'p, B: DmaBuffer, T: Translate>(
        &'p self,
        owner: Owner<'p, P>,
        dev: &Device<T>,
        phys: PhysAddr,
        buffer: RawBuffer<B>,
        dir: Direction,
    ) -> core::result::Result<Mapping<'p, B, P>, (Error, RawBuffer<B>)> {
        let (ptr, len) = (buffer.ptr(), buffer.len());
        // SAFETY:
        // - `ptr` is valid for reads and writes of `len` bytes and nothing
        //   else accesses them until the parts are put back together
        //   (`DmaBuffer` contract); the returned `Mapping` owns the parts
        //   and accesses the bytes only through the pool's copies until
        //   unmap;
        // - `phys` is the platform's physical address of `ptr`.
        let r = unsafe { self.bounce_inner(dev, phys, ptr.as_ptr(), len, MapOptions::default()) };
        match r {
            // SAFETY: `b` was just allocated in this pool for `buffer`'s
            // region, and this pool lives for the mapping's borrow `'p`.
            Ok(b) => Ok(unsafe { Mapping::bounced(self, owner, Held::Lasting, buffer, dir, b) }),
            Err(error) => Err((error, buffer)),
        }
    }

    /// Maps several buffers as one scatter-gather list, all or nothing.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error, with every
    /// buffer given back in order; nothing stays mapped.
    #[cfg(feature = "alloc")]
    pub fn map_sg<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        self.map_sg_buffers(dev, buffers, dir, Bouncing::IfNeeded)
    }

    /// [`Pool::map_sg`], each buffer mapped as `bouncing` says.
    #[cfg(feature = "alloc")]
    pub(crate) fn map_sg_buffers<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
        bouncing: Bouncing,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        let r = map_sg_buffers_by(buffers, dev.max_segment_size(), |b| {
            let (phys, direct) = dev.direct(b.ptr().as_ptr(), b.len());
            if direct && bouncing == Bouncing::IfNeeded {
                Ok(Mapping::direct(
                    Owner::Pool(self),
                    b,
                    dev.phys_to_dma(phys),
                    dir,
                ))
            } else {
                self.bounce_buffer(dev, phys, b, dir, Attrs::NONE)
            }
        });
        if let Err(f) = &r {
            if let Error::SegmentTooLong { .. } = f.error {
                self.count_failure(&f.error);
            }
        }
        r
    }
}

/// Maps several buffers as one scatter-gather list with `map_one`, all or
/// nothing: a buffer longer than `max_segment` fails the list before any
/// is mapped ([`Error::SegmentTooLong`]); if one fails, the ones already
/// mapped are unmapped without copying back, and every buffer comes back
/// in order. The one walk behind the pool's, the tlb's and the platform's
/// `map_sg`.
#[cfg(feature = "alloc")]
pub(crate) fn map_sg_buffers_by<'p, B: DmaBuffer, P: Policy>(
    buffers: Vec<B>,
    max_segment: usize,
    mut map_one: impl FnMut(
        RawBuffer<B>,
    ) -> core::result::Result<Mapping<'p, B, P>, (Error, RawBuffer<B>)>,
) -> core::result::Result<Vec<Mapping<'p, B, P>>, MapFailed<Vec<B>>> {
    let mut buffers: Vec<RawBuffer<B>> = buffers.into_iter().map(RawBuffer::new).collect();
    let too_long = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| (i, b.len()))
        .find(|&(_, len)| len > max_segment);
    if let Some((index, len)) = too_long {
        return Err(MapFailed {
            error: Error::SegmentTooLong {
                index,
                len,
                max: max_segment,
            },
            buffer: buffers.drain(..).map(RawBuffer::into_buffer).collect(),
        });
    }
    let mut maps: Vec<Mapping<'p, B, P>> = Vec::with_capacity(buffers.len());
    let mut rest = buffers.into_iter();
    while let Some(b) = rest.next() {
        match map_one(b) {
            Ok(m) => maps.push(m),
            Err((error, failed)) => {
                let mut back: Vec<B> = maps
                    .into_iter()
                    .map(|m| m.unmap_with_attrs(Attrs::SKIP_CPU_SYNC))
                    .collect();
                back.push(failed.into_buffer());
                back.extend(rest.map(RawBuffer::into_buffer));
                return Err(MapFailed {
                    error,
                    buffer: back,
                });
            }
        }
    }
    Ok(maps)
}

impl<'p, B: DmaBuffer, P: Policy> Mapping<'p, B, P> {
    /// A direct mapping of `buffer`, counted under `owner`.
    pub(crate) fn direct(
        owner: Owner<'p, P>,
        buffer: RawBuffer<B>,
        dma: DmaAddr,
        dir: Direction,
    ) -> Self {
        if let Some(pool) = owner.home() {
            pool.count_direct();
        }
        Mapping {
            buffer,
            dma,
            dir,
            owner,
            bounce: None,
        }
    }

    /// A mapping of `buffer` bounced through `b`.
    ///
    /// # Safety
    /// - `b` is a live allocation of `pool`, made for `buffer`'s region,
    ///   and owned by the new mapping alone;
    /// - `pool` stays valid for as long as `b`'s slots are held, as `held`
    ///   says: for `'p` (`Lasting`), or, in the tlb `owner`, until the
    ///   slots are given back (`Grown`, `Transient`).
    pub(crate) unsafe fn bounced(
        pool: &Pool<P>,
        owner: Owner<'p, P>,
        held: Held,
        buffer: RawBuffer<B>,
        dir: Direction,
        b: Bounce,
    ) -> Self {
        Mapping {
            buffer,
            dma: b.dma,
            dir,
            owner,
            // INVARIANT: `pool` holds `b`'s slots and lives as `held` says
            // (the caller's obligations).
            bounce: Some(BounceRef {
                pool: NonNull::from(pool),
                held,
                start: b.start,
                nslots: b.nslots,
                off: (b.phys - pool.start()) as usize,
                phys: b.phys,
            }),
        }
    }
}

impl<P: Policy> BounceRef<P> {
    /// The pool. Not to be called after the slots are given back.
    #[inline]
    fn pool(&self) -> &Pool<P> {
        // SAFETY: the pointer is valid while the mapping holds its slots
        // (type invariant); a `BounceRef` is taken out of its mapping
        // before the slots are given back, and the pool is not used after.
        unsafe { self.pool.as_ref() }
    }
}

impl<B: DmaBuffer, P: Policy> Mapping<'_, B, P> {
    /// The address the device uses.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.buffer.len() == 0
    }

    /// The direction given at map time.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Whether the mapping bounces through the pool.
    pub fn is_bounced(&self) -> bool {
        self.bounce.is_some()
    }

    /// The bounce address (CPU physical) if the mapping bounces.
    pub fn bounce_phys(&self) -> Option<PhysAddr> {
        self.bounce.map(|b| b.phys)
    }

    /// The CPU address of the bytes the device accesses: the bounce slots
    /// or, for a direct mapping, the buffer. For simulated devices and
    /// tests; touching these bytes from the CPU is the device's part.
    pub fn device_ptr(&self) -> NonNull<u8> {
        match &self.bounce {
            Some(b) => NonNull::new(b.pool().slot_ptr(b.off)).unwrap_or(self.buffer.ptr()),
            None => self.buffer.ptr(),
        }
    }

    fn check(&self, offset: usize, len: usize) -> Result {
        let mapping_len = self.buffer.len();
        if offset.checked_add(len).is_none_or(|end| end > mapping_len) {
            let e = Error::OutOfBounds {
                offset,
                len,
                mapping_len,
            };
            match &self.bounce {
                Some(b) => b.pool().count_failure(&e),
                None => {
                    if let Some(pool) = self.owner.home() {
                        pool.count_failure(&e);
                    }
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Copies device writes in `[offset, offset + len)` into the buffer, for
    /// from-device and bidirectional mappings (Linux
    /// `dma_sync_single_for_cpu`); nothing for direct or to-device ones.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end; nothing is copied.
    pub fn sync_for_cpu(&mut self, offset: usize, len: usize) -> Result {
        self.sync(offset, len, false)
    }

    /// Copies CPU writes in `[offset, offset + len)` of the buffer into the
    /// slots, for to-device and bidirectional mappings (Linux
    /// `dma_sync_single_for_device`).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end; nothing is copied.
    pub fn sync_for_device(&mut self, offset: usize, len: usize) -> Result {
        self.sync(offset, len, true)
    }

    /// The copy of a partial sync, checked whatever the direction.
    fn sync(&mut self, offset: usize, len: usize, to_device: bool) -> Result {
        self.check(offset, len)?;
        let copies = if to_device {
            self.dir.copies_to_device()
        } else {
            self.dir.copies_to_cpu()
        };
        if let (Some(b), true) = (self.bounce, copies) {
            let pool = b.pool();
            let slot = pool.slot_ptr(b.off + offset);
            // SAFETY: `[offset, offset + len)` is inside the mapping
            // (checked), so `offset` stays inside the buffer's region.
            let buf = unsafe { self.buffer.ptr().as_ptr().add(offset) };
            let (dst, src) = if to_device { (slot, buf) } else { (buf, slot) };
            // SAFETY:
            // - both ranges are inside the mapping (checked): the buffer's
            //   region is valid while taken apart (`DmaBuffer`), the slots
            //   belong to this allocation;
            // - pool and buffer do not overlap;
            // - nothing else accesses the buffer: the mapping holds its
            //   parts and hands out no reference, and `&mut self` excludes
            //   a concurrent copy.
            unsafe { bounce_copy(dst, src, len) };
            pool.count_bytes(b.start, to_device, len);
        }
        Ok(())
    }

    /// Reads `out.len()` bytes of the buffer (the CPU's copy) at `offset`.
    /// After a [`Mapping::sync_for_cpu`] this is what the device wrote.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result {
        self.check(offset, out.len())?;
        // SAFETY: the range is inside the mapping (checked), so `offset`
        // stays inside the buffer's region.
        let src = unsafe { self.buffer.ptr().as_ptr().add(offset) };
        // SAFETY:
        // - `src` is valid for `out.len()` reads (checked, `DmaBuffer`);
        // - `out` is a distinct Rust buffer the mapping does not own;
        // - a device may write a direct mapping concurrently: the audited
        //   copy reads each byte once and decides nothing from it.
        unsafe { bounce_copy(out.as_mut_ptr(), src, out.len()) };
        Ok(())
    }

    /// Writes `data` into the buffer (the CPU's copy) at `offset`; a
    /// [`Mapping::sync_for_device`] then shows it to a bouncing device.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        self.check(offset, data.len())?;
        // SAFETY: the range is inside the mapping (checked), so `offset`
        // stays inside the buffer's region.
        let dst = unsafe { self.buffer.ptr().as_ptr().add(offset) };
        // SAFETY:
        // - `dst` is valid for `data.len()` writes (checked, `DmaBuffer`);
        // - `data` is a distinct Rust buffer the mapping does not own;
        // - `&mut self` excludes every other CPU access through the
        //   mapping.
        unsafe { bounce_copy(dst, data.as_ptr(), data.len()) };
        Ok(())
    }

    /// Unmaps, copying device writes back for from-device and
    /// bidirectional mappings, and gives the buffer back.
    pub fn unmap(self) -> B {
        self.unmap_with_attrs(Attrs::NONE)
    }

    /// [`Mapping::unmap`] with attributes (`SKIP_CPU_SYNC` skips the
    /// copy-back).
    pub fn unmap_with_attrs(self, attrs: Attrs) -> B {
        let mut this = ManuallyDrop::new(self);
        this.release(attrs);
        // SAFETY: `buffer` is read out exactly once: `this` is never
        // dropped (ManuallyDrop), so neither its `Drop` nor the field's
        // runs; the other fields own nothing that needs dropping.
        let buffer = unsafe { core::ptr::read(&this.buffer) };
        // The slots are given back: no copy touches the bytes again.
        buffer.into_buffer()
    }

    /// Gives the slots back, copying back first unless `attrs` or the
    /// direction say not to. Nothing of the pool is touched after the
    /// release that may leave it idle.
    fn release(&mut self, attrs: Attrs) {
        let Some(b) = self.bounce.take() else {
            return;
        };
        let pool = b.pool();
        let len = self.buffer.len();
        let copy_back = self.dir.copies_to_cpu() && !attrs.contains(Attrs::SKIP_CPU_SYNC);
        if copy_back {
            // SAFETY:
            // - the slots at `b.off` hold the mapping's `len` bytes, and the
            //   buffer's region is valid for `len` writes (`DmaBuffer`);
            // - pool and buffer do not overlap;
            // - nothing else accesses the buffer (as in `sync`).
            unsafe { bounce_copy(self.buffer.ptr().as_ptr(), pool.slot_ptr(b.off), len) };
        }
        let copied = if copy_back { len } else { 0 };
        let pool_start = pool.start();
        let dma = self.dma;
        let give_back = || {
            let r = pool.release(b.start, b.nslots, dma, copied, 0);
            // A safe mapping owns its allocation, so it is live.
            debug_assert!(r.is_ok(), "safe mapping was not live: {r:?}");
        };
        match (self.owner, b.held) {
            #[cfg(feature = "alloc")]
            (Owner::Tlb(tlb), Held::Grown) => tlb.guard_release(&give_back),
            _ => give_back(),
        }
        // From here on the pool may be gone: only its address is used.
        #[cfg(feature = "alloc")]
        if let Owner::Tlb(tlb) = self.owner {
            tlb.after_release(pool_start, b.held);
        }
        #[cfg(not(feature = "alloc"))]
        let _ = pool_start;
    }
}

// SAFETY: a mapping owns its buffer's parts and borrows a `Pool`, which is
// `Sync`, or a tlb, which is `Sync` too; its raw
// pointers point into `B`'s own bytes and into the pool, so sending the
// mapping sends exactly what sending `B` (and its rest) would.
unsafe impl<B: DmaBuffer + Send, P: Policy> Send for Mapping<'_, B, P> where B::Rest: Send {}

// SAFETY: through `&Mapping` the CPU only reads the buffer (`read`,
// `device_ptr`); every method that writes the buffer or the slots takes
// `&mut self`, so shared references never race with each other.
unsafe impl<B: DmaBuffer + Sync, P: Policy> Sync for Mapping<'_, B, P> where B::Rest: Sync {}

impl<B: DmaBuffer, P: Policy> Drop for Mapping<'_, B, P> {
    fn drop(&mut self) {
        self.release(Attrs::SKIP_CPU_SYNC);
        // The buffer field drops after this, put back together, once the
        // slots are given back.
    }
}

impl<B: DmaBuffer, P: Policy> core::fmt::Debug for Mapping<'_, B, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mapping")
            .field("dma", &self.dma)
            .field("len", &self.buffer.len())
            .field("dir", &self.dir)
            .field("bounced", &self.bounce.is_some())
            .finish()
    }
}
