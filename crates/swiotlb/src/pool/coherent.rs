//! Coherent allocations from a pool (Linux `swiotlb_alloc` and
//! `swiotlb_free`): zeroed memory the CPU and the device share.

use core::ptr::NonNull;

use super::{Policy, Pool, Shape};
use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::sync::Ordering;
use crate::translate::Translate;

/// A coherent allocation from a pool (Linux `swiotlb_alloc`): memory the
/// CPU and the device share for as long as it lives, with no copies. The
/// CPU reaches it through `cpu`, the device through `dma`.
///
/// It is a plain description, not an owner: it is given back with
/// [`Pool::free_coherent`] by its device address and size, as Linux's
/// `dma_free_coherent` takes them, and reading or writing through `cpu` is
/// the caller's `unsafe` business, valid only until the free. Freeing is
/// `unsafe` for the same reason `dealloc` is: once the slots are free the
/// pool hands them out again (zeroing them first), so any pointer still
/// into the allocation, a `&mut` a driver holds to its ring for instance,
/// would then alias someone else's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coherent {
    /// The CPU address of the first byte.
    pub cpu: NonNull<u8>,
    /// The physical address of the first byte.
    pub phys: PhysAddr,
    /// The address the device uses.
    pub dma: DmaAddr,
    /// Bytes asked for; the slots holding them are all zeroed and all
    /// belong to the allocation.
    pub size: usize,
}

impl<P: Policy> Pool<P> {
    /// Allocates `size` bytes shared with `dev`, zeroed, page aligned and
    /// aligned to the size's power-of-two order in device address space:
    /// Linux's `swiotlb_alloc`, which asks `swiotlb_find_slots` for
    /// `align = (1 << (get_order(size) + PAGE_SHIFT)) - 1` with no original
    /// address, and `dma_direct_alloc`, which zeroes what it hands out.
    ///
    /// The record of the allocation has a null original: nothing is ever
    /// copied into or out of it, a streaming unmap or sync of its address is
    /// [`Error::NotMapped`], and only [`Pool::free_coherent`] frees it. Its
    /// slots come from the same policy as streaming mappings, so they are
    /// never handed out twice (CVE-2024-35814 was a coherent allocation
    /// overlapping another in Linux).
    ///
    /// # Errors
    /// [`Error::ZeroSize`], [`Error::TooLarge`] (more than a segment),
    /// [`Error::PoolFull`], [`Error::AlignmentImpossible`] (no page-aligned
    /// start, as Linux's "Cannot allocate pages from non page-aligned
    /// swiotlb addr"), [`Error::Unreachable`]; each is counted.
    #[cfg_attr(feature = "checker", track_caller)]
    pub fn alloc_coherent<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        let r = self.alloc_coherent_inner(dev, size);
        if let Err(e) = &r {
            self.count_failure(e);
        }
        #[cfg(feature = "checker")]
        if let Ok(c) = &r {
            let caller = core::panic::Location::caller();
            let kind = crate::checker::MapKind::Coherent;
            let cpu = c.cpu.as_ptr();
            // SAFETY: no checksum is taken without a direction; `cpu` is
            // valid for reads of `size` bytes anyway (just zeroed).
            unsafe { self.check_mapped(dev, c.dma, cpu, size, None, kind, 1, caller) };
        }
        r
    }

    fn alloc_coherent_inner<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let page = 1u64 << self.page_shift;
        // 1 << (get_order(size) + PAGE_SHIFT): the size in pages rounded
        // up to a power of two. Saturates for absurd sizes, which
        // `request` then rejects as too large.
        let order_bytes = (size as u64)
            .div_ceil(page)
            .checked_next_power_of_two()
            .and_then(|pages| pages.checked_mul(page))
            .unwrap_or(1 << 63);
        let align = order_bytes - 1;
        let min_align = dev.min_align_mask();
        let (mut req, _) = self.request(dev, 0, size, align)?;
        // Linux hands `size` itself to `swiotlb_find_slots`, not `size`
        // rounded up to the alignment as a streaming map does: a 12 KiB
        // allocation holds 6 slots at a 16 KiB-aligned start.
        let slot_mask = (1u64 << self.slot_shift) - 1;
        req.nslots = ((size as u64 + slot_mask) >> self.slot_shift) as u32;
        // Coherent allocations are rare (rings, descriptor tables): they
        // start in area 0 rather than a per-CPU area.
        let start = self
            .alloc_counted(&req, 0, core::ptr::null_mut(), size, 0, 0)
            .ok_or_else(|| self.full_error(&req, min_align))?;
        let off = self.slot_offset(start);
        let phys = self.start + off as u64;
        let dma = dev.phys_to_dma(phys);
        if phys.0 & (page - 1) != 0 {
            // The alignment holds in device address space; a translation
            // that is not page aligned breaks it in physical space, where
            // Linux refuses too (`swiotlb_alloc`'s PAGE_ALIGNED check).
            self.release(start, req.nslots, dma, 0, 0)?;
            return Err(Error::AlignmentImpossible {
                align_mask: align,
                min_align_mask: min_align,
            });
        }
        if !dev.translate().dma_capable(&dev.limits(), phys, dma, size) {
            self.release(start, req.nslots, dma, 0, 0)?;
            return Err(Error::Unreachable { dma, size });
        }
        let bytes = (req.nslots as usize) << self.slot_shift;
        let cpu = self.slot_ptr(off);
        // SAFETY:
        // - `cpu` is valid for writes of `bytes`: the allocation's slots,
        //   inside the pool (type invariant on `vaddr`);
        // - the slots belong to this new allocation alone (the `Policy`
        //   contract), and the CPU touches them only on its behalf; no
        //   device has been given their address yet.
        unsafe { core::ptr::write_bytes(cpu, 0, bytes) };
        // SAFETY: `cpu` is `vaddr` (non-null) plus an offset inside the
        // pool, which does not wrap the address space, so it is non-null.
        let cpu = unsafe { NonNull::new_unchecked(cpu) };
        Ok(Coherent {
            cpu,
            phys,
            dma,
            size,
        })
    }

    /// Frees the coherent allocation of `size` bytes at device address
    /// `dma` (Linux `dma_free_coherent`, which takes the size too, and
    /// `swiotlb_free`). `size` must be the size it was allocated with
    /// ([`Coherent::size`]); unlike Linux, which trusts it, the pool
    /// checks it against its record and frees nothing on a mismatch.
    ///
    /// # Errors
    /// [`Error::NotMapped`] if `dma` is not the start of a live coherent
    /// allocation of this pool: outside the pool, inside an allocation, a
    /// streaming mapping, or already freed. [`Error::WrongSize`] if it is
    /// one, of another size. Nothing changes then.
    ///
    /// # Safety
    /// If `dma` and `size` are a live coherent allocation of this pool,
    /// the memory of that allocation is no longer used through any
    /// pointer: no reference into it lives on, and nothing reads or writes
    /// it through [`Coherent::cpu`] (or a pointer derived from it) from
    /// now on. The device must be done with it too. Its slots go back to
    /// the pool, which hands them out (zeroed) to the next allocation or
    /// mapping. Given anything else, the call only returns an error.
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn free_coherent<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
    ) -> Result {
        #[cfg(feature = "checker")]
        {
            let caller = core::panic::Location::caller();
            let kind = crate::checker::MapKind::Coherent;
            // SAFETY: a release of kind coherent has no direction, so no
            // original is read.
            unsafe { self.check_release(dev, dma, size, None, kind, 1, caller) };
        }
        let phys = dev.translate().dma_to_phys(dma);
        let r = self.free_coherent_at(phys, dma, size);
        if let Err(e) = &r {
            self.count_failure(e);
        }
        #[cfg(feature = "checker")]
        if r.is_ok() {
            crate::checker::released(dev.checker_id(), dma);
        }
        r
    }

    fn free_coherent_at(&self, phys: PhysAddr, dma: DmaAddr, size: usize) -> Result {
        let not_mapped = Error::NotMapped { dma };
        if !self.contains(phys) {
            return Err(not_mapped);
        }
        let off = phys.0 - self.start.0;
        if off & ((1 << self.slot_shift) - 1) != 0 {
            return Err(not_mapped);
        }
        let s = (off >> self.slot_shift) as u32;
        let area = self.area_of(s);
        // Checks and free under one hold of the area lock (an allocation
        // never leaves its area): a second free racing this one finds the
        // start bit clear, and cannot free an allocation made in between.
        let mut st = area.state.lock();
        let bit = 1u64 << (s % 64);
        let live = self.start_bits[(s / 64) as usize].load(Ordering::Acquire) & bit != 0;
        if !live || !self.orig[s as usize].load(Ordering::Relaxed).is_null() {
            return Err(not_mapped);
        }
        let shape = Shape(self.shape[s as usize].load(Ordering::Relaxed));
        if shape.len() != size {
            return Err(Error::WrongSize {
                dma,
                size,
                allocated: shape.len(),
            });
        }
        let nslots = shape.nslots();
        self.clear_start_bit(s);
        if self.zero_on_free {
            // As in `release_slots`: under the lock, before the policy has
            // the slots back.
            self.scrub(s, nslots);
        }
        P::free(&mut st.policy, &area.geom, s, nslots);
        st.used -= nslots;
        drop(st);
        if self.exact_hiwater {
            self.used.fetch_sub(nslots as usize, Ordering::Relaxed);
        }
        Ok(())
    }
}
