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

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::Attrs;
use crate::copy::bounce_copy;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::pool::{Bounce, Policy, Pool};
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
        // SAFETY: the caller's obligations, passed on unchanged.
        let r = unsafe { self.bounce_inner(dev, orig, cpu, size, opts) };
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }

    /// # Safety
    /// As [`Pool::bounce_raw`].
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
        // SAFETY: the caller's obligations, passed on.
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
        if !dev.force_bounce() && size != 0 && dev.can_reach(orig, size) {
            self.count_direct();
            return Ok(dev.phys_to_dma(orig));
        }
        // SAFETY: the caller's obligations, passed on.
        let b = unsafe { self.bounce_raw(dev, orig, cpu, size, attrs, MapOptions::default())? };
        Ok(b.dma)
    }

    /// Unmaps a mapping made by [`Pool::map_raw`] or [`Pool::bounce_raw`]:
    /// copies the slots back into the original for from-device and
    /// bidirectional mappings (unless `SKIP_CPU_SYNC`), then frees them. A
    /// device address outside the pool is a direct mapping: nothing to do.
    ///
    /// # Errors
    /// [`Error::NotMapped`] if `dma` is in the pool but is not the start of
    /// a live mapping (a double unmap); [`Error::OutOfBounds`] if `size` is
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
        // SAFETY: the caller's obligations; `phys` is `dma` translated.
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
    /// address inside a mapping. Outside the pool: nothing to do.
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
        // SAFETY: the caller's obligations.
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
        // SAFETY: the caller's obligations.
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
        // SAFETY: the caller's obligations; `phys` is `dma` translated.
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
            // SAFETY:
            // - `[offset, offset + size)` lies inside the mapping (checked
            //   above), so both sides are in bounds: the slots of the live
            //   allocation and the original the caller keeps valid;
            // - pool and original do not overlap;
            // - the caller holds no reference to the original.
            unsafe {
                if to_device {
                    bounce_copy(slot, orig, size);
                } else {
                    bounce_copy(orig, slot, size);
                }
            }
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
        if let Some((index, e)) = sg
            .iter()
            .enumerate()
            .find(|(_, e)| e.len > dev.max_segment_size())
        {
            let err = Error::SegmentTooLong {
                index,
                len: e.len,
                max: dev.max_segment_size(),
            };
            self.count_failure(&err);
            return Err(err);
        }
        for i in 0..sg.len() {
            let e = sg[i];
            // SAFETY: the caller's obligations for this entry.
            match unsafe { self.map_raw_with_attrs(dev, e.phys, e.cpu, e.len, dir, attrs) } {
                Ok(dma) => sg[i].dma = dma,
                Err(err) => {
                    for done in &sg[..i] {
                        // SAFETY: mapped just above by this call; the device
                        // has not been told of it yet.
                        let undo = unsafe {
                            self.unmap_raw(
                                dev,
                                done.dma,
                                done.len,
                                dir,
                                attrs | Attrs::SKIP_CPU_SYNC,
                            )
                        };
                        debug_assert!(undo.is_ok(), "rollback of a fresh mapping failed");
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
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
            // SAFETY: the caller's obligations for this entry.
            let r = unsafe { self.unmap_raw(dev, e.dma, e.len, dir, attrs) };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// A buffer whose bytes stay put while the value moves, so a device can be
/// given its address.
///
/// # Implementation safety
/// [`DmaBuffer::dma_region`] returns a pointer valid for reads and writes
/// of the returned length, and the same pointer and length on every call,
/// for as long as the value is neither dropped nor accessed other than
/// through this trait; moving the value does not move the bytes.
pub unsafe trait DmaBuffer {
    /// The bytes' address and length.
    fn dma_region(&mut self) -> (NonNull<u8>, usize);
}

// SAFETY: a `Vec`'s heap buffer does not move when the `Vec` moves, and
// without a call that reallocates (none is made through this trait) its
// pointer and length stay the same.
unsafe impl DmaBuffer for Vec<u8> {
    fn dma_region(&mut self) -> (NonNull<u8>, usize) {
        let len = self.len();
        (
            NonNull::new(self.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len,
        )
    }
}

// SAFETY: a boxed slice's heap bytes do not move when the box moves.
unsafe impl DmaBuffer for alloc::boxed::Box<[u8]> {
    fn dma_region(&mut self) -> (NonNull<u8>, usize) {
        let len = self.len();
        (
            NonNull::new(self.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len,
        )
    }
}

// SAFETY: a `'static` slice's bytes never move, and holding the only `&mut`
// to them means nothing else accesses them.
unsafe impl DmaBuffer for &'static mut [u8] {
    fn dma_region(&mut self) -> (NonNull<u8>, usize) {
        let len = self.len();
        (
            NonNull::new(self.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len,
        )
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

/// Where a safe mapping's device-side bytes are.
#[derive(Clone, Copy, Debug)]
struct BounceRef {
    start: u32,
    nslots: u32,
    /// Byte offset of the mapping's first byte in the pool.
    off: usize,
    phys: PhysAddr,
}

/// A buffer mapped for a device: it owns the buffer until
/// [`Mapping::unmap`] gives it back.
///
/// It holds a raw pointer and a length, never a reference, because the
/// device may read and write the memory at any time. The CPU reads and
/// writes through [`Mapping::read`] and [`Mapping::write`], which copy
/// through the audited routine. Dropping a mapping unmaps it without
/// copying back (as `SKIP_CPU_SYNC`) and drops the buffer: drop it only
/// when the device is done with it, as with any unmap.
pub struct Mapping<'p, B: DmaBuffer, P: Policy = crate::pool::Fast> {
    /// The pool the mapping belongs to. A pointer rather than `&'p Pool`:
    /// a pool of a growing tlb may be released as soon as this mapping's
    /// slots are given back, and a reference must not outlive its target
    /// even unused. It is valid for as long as the mapping holds slots
    /// (always, for a direct mapping: it then points at a pool that lives
    /// for `'p`).
    pool: NonNull<Pool<P>>,
    /// Told after the slots are given back (a growing tlb wakes waiters
    /// there), with whether the pool is a transient one to free.
    after: Option<(&'p dyn AfterRelease, bool)>,
    _pool: PhantomData<&'p Pool<P>>,
    buffer: ManuallyDrop<B>,
    ptr: NonNull<u8>,
    len: usize,
    dma: DmaAddr,
    dir: Direction,
    bounce: Option<BounceRef>,
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
        mut buffer: B,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        let (ptr, len) = buffer.dma_region();
        let (phys, direct) = dev.direct(ptr.as_ptr(), len);
        if direct {
            return Ok(Mapping::direct(
                self,
                None,
                buffer,
                ptr,
                len,
                dev.phys_to_dma(phys),
                dir,
            ));
        }
        // SAFETY:
        // - `ptr` is valid for reads and writes of `len` bytes while
        //   `buffer` lives and is not otherwise accessed (`DmaBuffer`
        //   contract); the returned `Mapping` owns `buffer` and accesses it
        //   only through the pool's copies until unmap;
        // - `phys` is the platform's physical address of `ptr`.
        let r =
            unsafe { self.bounce_raw(dev, phys, ptr.as_ptr(), len, attrs, MapOptions::default()) };
        match r {
            // SAFETY: `b` was just allocated in this pool for `buffer`,
            // whose region is `ptr`/`len`.
            Ok(b) => Ok(unsafe { Mapping::bounced(self, None, buffer, ptr, len, dir, b) }),
            Err(error) => Err(MapFailed { error, buffer }),
        }
    }

    /// Maps several buffers as one scatter-gather list, all or nothing.
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
        let mut buffers = buffers;
        let too_long = buffers
            .iter_mut()
            .enumerate()
            .map(|(i, b)| (i, b.dma_region().1))
            .find(|&(_, len)| len > dev.max_segment_size());
        if let Some((index, len)) = too_long {
            let error = Error::SegmentTooLong {
                index,
                len,
                max: dev.max_segment_size(),
            };
            self.count_failure(&error);
            return Err(MapFailed {
                error,
                buffer: buffers,
            });
        }
        let mut maps: Vec<Mapping<'_, B, P>> = Vec::with_capacity(buffers.len());
        let mut rest = buffers.into_iter();
        while let Some(b) = rest.next() {
            match self.map(dev, b, dir) {
                Ok(m) => maps.push(m),
                Err(f) => {
                    let mut back: Vec<B> = maps
                        .into_iter()
                        .map(|m| m.unmap_with_attrs(Attrs::SKIP_CPU_SYNC))
                        .collect();
                    back.push(f.buffer);
                    back.extend(rest);
                    return Err(MapFailed {
                        error: f.error,
                        buffer: back,
                    });
                }
            }
        }
        Ok(maps)
    }
}

/// What a growing tlb is told when a safe mapping gives its slots back.
pub(crate) trait AfterRelease: Sync {
    /// The slots of a mapping in the pool starting at `pool_start` were
    /// just given back; `transient` if that pool was made for this mapping
    /// alone. The pool may be gone by the time this returns.
    fn after_release(&self, pool_start: PhysAddr, transient: bool);
}

impl<'p, B: DmaBuffer, P: Policy> Mapping<'p, B, P> {
    /// A direct mapping of `buffer`, counted under `pool`.
    pub(crate) fn direct(
        pool: &'p Pool<P>,
        after: Option<(&'p dyn AfterRelease, bool)>,
        buffer: B,
        ptr: NonNull<u8>,
        len: usize,
        dma: DmaAddr,
        dir: Direction,
    ) -> Self {
        pool.count_direct();
        Mapping {
            pool: NonNull::from(pool),
            after,
            _pool: PhantomData,
            buffer: ManuallyDrop::new(buffer),
            ptr,
            len,
            dma,
            dir,
            bounce: None,
        }
    }

    /// A mapping of `buffer` bounced through `b`.
    ///
    /// # Safety
    /// - `b` is a live allocation of `pool`, made for `buffer`'s region
    ///   `ptr`/`len` (from `dma_region`), and owned by the new mapping alone;
    /// - `pool` stays valid for as long as `b`'s slots are held: for `'p`,
    ///   or, in a growing tlb, until the slots are given back (the tlb
    ///   never releases a pool that holds a live allocation).
    pub(crate) unsafe fn bounced(
        pool: &Pool<P>,
        after: Option<(&'p dyn AfterRelease, bool)>,
        buffer: B,
        ptr: NonNull<u8>,
        len: usize,
        dir: Direction,
        b: Bounce,
    ) -> Self {
        Mapping {
            pool: NonNull::from(pool),
            after,
            _pool: PhantomData,
            buffer: ManuallyDrop::new(buffer),
            ptr,
            len,
            dma: b.dma,
            dir,
            bounce: Some(BounceRef {
                start: b.start,
                nslots: b.nslots,
                off: (b.phys - pool.start()) as usize,
                phys: b.phys,
            }),
        }
    }

    /// The pool. Not to be called after the slots are given back.
    #[inline]
    fn pool(&self) -> &Pool<P> {
        // SAFETY: the pointer is valid while the mapping holds its slots
        // (the field's invariant, set up by `direct` and `bounced`); every
        // caller runs before `release` gives them back, which is the last
        // use of the pool.
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
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        match self.bounce {
            Some(b) => NonNull::new(self.pool().slot_ptr(b.off)).unwrap_or(self.ptr),
            None => self.ptr,
        }
    }

    fn check(&self, offset: usize, len: usize) -> Result {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            let e = Error::OutOfBounds {
                offset,
                len,
                mapping_len: self.len,
            };
            self.pool().count_failure(&e);
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
            let slot = self.pool().slot_ptr(b.off + offset);
            // SAFETY: `[offset, offset + len)` is inside the mapping
            // (checked), so `offset` stays inside the buffer, which is
            // valid for the mapping's length (`DmaBuffer`).
            let buf = unsafe { self.ptr.as_ptr().add(offset) };
            let (dst, src) = if to_device { (slot, buf) } else { (buf, slot) };
            // SAFETY:
            // - both ranges are inside the mapping (checked): the buffer is
            //   valid per `DmaBuffer`, the slots belong to this allocation;
            // - pool and buffer do not overlap;
            // - no reference to the buffer exists: the mapping owns it and
            //   hands out none, and `&mut self` excludes a concurrent copy.
            unsafe { bounce_copy(dst, src, len) };
            self.pool().count_bytes(b.start, to_device, len);
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
        // SAFETY:
        // - the range is inside the buffer (checked), valid per `DmaBuffer`;
        // - `out` is a distinct Rust buffer the mapping does not own;
        // - a device may write a direct mapping concurrently: the audited
        //   copy reads each byte once and decides nothing from it.
        unsafe { bounce_copy(out.as_mut_ptr(), self.ptr.as_ptr().add(offset), out.len()) };
        Ok(())
    }

    /// Writes `data` into the buffer (the CPU's copy) at `offset`; a
    /// [`Mapping::sync_for_device`] then shows it to a bouncing device.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        self.check(offset, data.len())?;
        // SAFETY: as in `read`, the other way.
        unsafe { bounce_copy(self.ptr.as_ptr().add(offset), data.as_ptr(), data.len()) };
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
        // SAFETY: `buffer` is taken exactly once: `this` is never dropped
        // (ManuallyDrop), so its own `Drop` cannot take it again.
        unsafe { ManuallyDrop::take(&mut this.buffer) }
    }

    fn release(&mut self, attrs: Attrs) {
        if let Some(b) = self.bounce.take() {
            let copy_back = self.dir.copies_to_cpu() && !attrs.contains(Attrs::SKIP_CPU_SYNC);
            if copy_back {
                // SAFETY: as in `sync_for_cpu`, over the whole mapping.
                unsafe { bounce_copy(self.ptr.as_ptr(), self.pool().slot_ptr(b.off), self.len) };
            }
            let copied = if copy_back { self.len } else { 0 };
            let pool = self.pool();
            let pool_start = pool.start();
            let r = pool.release(b.start, b.nslots, self.dma, copied, 0);
            // A safe mapping owns its allocation, so it is live.
            debug_assert!(r.is_ok(), "safe mapping was not live: {r:?}");
            // From here on the pool may be gone: only its address is used.
            if let Some((after, transient)) = self.after {
                after.after_release(pool_start, transient);
            }
        }
    }
}

// SAFETY: a mapping owns its buffer `B` and borrows a `Pool`, which is
// `Sync`; its raw pointer points into `B`'s own bytes, so sending the
// mapping sends exactly what sending `B` would.
unsafe impl<B: DmaBuffer + Send, P: Policy> Send for Mapping<'_, B, P> {}

// SAFETY: through `&Mapping` the CPU only reads the buffer (`read`,
// `device_ptr`); every method that writes the buffer or the slots takes
// `&mut self`, so shared references never race with each other.
unsafe impl<B: DmaBuffer + Sync, P: Policy> Sync for Mapping<'_, B, P> {}

impl<B: DmaBuffer, P: Policy> Drop for Mapping<'_, B, P> {
    fn drop(&mut self) {
        self.release(Attrs::SKIP_CPU_SYNC);
        // SAFETY: dropped once, here; `unmap` never reaches this drop.
        unsafe { ManuallyDrop::drop(&mut self.buffer) }
    }
}

impl<B: DmaBuffer, P: Policy> core::fmt::Debug for Mapping<'_, B, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mapping")
            .field("dma", &self.dma)
            .field("len", &self.len)
            .field("dir", &self.dir)
            .field("bounced", &self.bounce.is_some())
            .finish()
    }
}
