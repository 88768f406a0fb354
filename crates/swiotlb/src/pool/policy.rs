//! The allocation-policy trait and the request both policies answer.

use super::meta::{AreaMemory, MetaArray};
#[cfg(feature = "unstable-internals")]
use super::Pool;
#[cfg(feature = "unstable-internals")]
use crate::addr::PhysAddr;
#[cfg(feature = "unstable-internals")]
use crate::device::Device;
#[cfg(feature = "unstable-internals")]
use crate::error::Result;
#[cfg(feature = "unstable-internals")]
use crate::translate::Translate;

/// Where one area lies in its pool and how the pool is cut into segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaGeom {
    /// Pool-wide index of the area's first slot.
    pub first: u32,
    /// Slots in the area.
    pub nslabs: u32,
    /// Slots per segment (a power of two); no allocation crosses a segment
    /// line, counted from the pool's first slot.
    pub segment: u32,
    /// log2 of the slot size.
    pub slot_shift: u32,
}

impl AreaGeom {
    /// The pool-wide index one past the area's last slot.
    #[inline]
    pub const fn end(&self) -> u32 {
        self.first + self.nslabs
    }

    /// The pool-wide index where the segment holding pool slot `slot` ends,
    /// capped at the area's end: free runs stop there.
    #[inline]
    pub const fn run_limit(&self, slot: u32) -> u32 {
        let seg_end = (slot | (self.segment - 1)) as u64 + 1;
        let end = self.end() as u64;
        (if seg_end < end { seg_end } else { end }) as u32
    }

    /// The pool-wide index where the segment holding pool slot `slot`
    /// starts, capped at the area's start: free runs start no earlier.
    #[inline]
    pub const fn run_start(&self, slot: u32) -> u32 {
        let seg_start = slot & !(self.segment - 1);
        if seg_start > self.first {
            seg_start
        } else {
            self.first
        }
    }

    /// How many segments the area touches: segment lines are counted from
    /// the pool's first slot, so an area that does not start on one
    /// touches one more than its size alone would say.
    #[inline]
    pub const fn segments(&self) -> u32 {
        if self.nslabs == 0 {
            return 0;
        }
        (self.end() - 1) / self.segment - self.first / self.segment + 1
    }
}

/// One slot request, already normalised as Linux's
/// `swiotlb_search_pool_area` normalises it, so that both policies accept
/// exactly the same start slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Slots to allocate (padding for `min_align_mask` included).
    pub nslots: u32,
    /// Start alignment of the allocation in device address space: the
    /// caller's `alloc_align_mask`, or a page for mappings of a page or more
    /// when no mask says otherwise, always including the slot mask.
    pub align_mask: u64,
    /// The bits of the original address that must reappear in the slot
    /// address (`min_align_mask` less `align_mask`); checked only when
    /// `orig` is non-zero, as Linux does.
    pub iotlb_mask: u64,
    /// The original physical address (`0` means "none": no `iotlb_mask`
    /// check).
    pub orig: u64,
    /// The device address of the pool's first slot, under the device's
    /// segment boundary mask (Linux `tbl_dma_addr`).
    pub tbl_dma: u64,
    /// `tbl_dma` in slots, rounded up (Linux `nr_slots(tbl_dma_addr)`).
    pub tbl_slot: u64,
    /// The device's segment boundary in slots (a power of two).
    pub boundary_slots: u64,
    /// The slot stride between candidates once one is aligned (Linux
    /// `stride`).
    pub stride: u32,
}

impl Request {
    /// The device address of pool slot `slot`, as Linux's `slot_addr`.
    #[inline]
    pub const fn slot_addr(&self, slot: u32, slot_shift: u32) -> u64 {
        self.tbl_dma.wrapping_add((slot as u64) << slot_shift)
    }

    /// Whether pool slot `slot` may start the allocation as far as the
    /// alignment masks go.
    #[inline]
    pub const fn aligned(&self, slot: u32, slot_shift: u32) -> bool {
        let a = self.slot_addr(slot, slot_shift);
        a & self.align_mask == 0
            && (self.orig == 0 || a & self.iotlb_mask == self.orig & self.iotlb_mask)
    }

    /// Whether an allocation starting at pool slot `slot` would cross the
    /// device's segment boundary (Linux `iommu_is_span_boundary`).
    #[inline]
    pub const fn crosses_boundary(&self, slot: u32, slot_shift: u32) -> bool {
        let _ = slot_shift;
        let off = self.tbl_slot.wrapping_add(slot as u64) & (self.boundary_slots - 1);
        off + self.nslots as u64 > self.boundary_slots
    }

    /// Whether pool slot `slot` is an acceptable start, ignoring whether
    /// the slots are free.
    #[inline]
    pub const fn acceptable(&self, slot: u32, slot_shift: u32) -> bool {
        self.aligned(slot, slot_shift) && !self.crosses_boundary(slot, slot_shift)
    }
}

/// The seal of [`Policy`]: only this crate's policies implement it.
pub(crate) mod sealed {
    /// Implemented by [`Fast`](crate::Fast) and [`NextFit`](crate::NextFit)
    /// alone.
    pub trait Sealed {}
}

/// An allocation policy: how free slots of one area are found and given
/// back. Sealed: the shipped policies are [`Fast`](super::Fast) (the
/// default) and [`NextFit`](super::NextFit) (Linux's); the pool's memory
/// safety rests on a policy never handing out a slot twice, which both
/// are checked for (a shadow oracle under proptest, loom).
///
/// The pool keeps everything else (locks, mapping records, statistics), so
/// a policy is only the search. [`NextFit`](super::NextFit) is Linux's;
/// [`Fast`](super::Fast) is the default.
///
/// # Implementation safety
/// Implementors guarantee, for every area state made by [`Policy::new_area`]
/// and every call made under the pool's area lock:
/// - [`Policy::alloc`] returns `Some(s)` only if `[s, s + nslots)` lies
///   inside the area, within one segment ([`AreaGeom::run_limit`]), and no
///   slot of it is held by an allocation not yet given back to
///   [`Policy::free`];
/// - it returns only starts for which [`Request::acceptable`] holds;
/// - every [`MetaSlice`](super::MetaSlice) [`Policy::new_area`] takes from
///   its [`AreaMemory`] stays in the area state it returns, or is dropped:
///   none is kept anywhere else, since the pool gives the memory behind
///   them back (frees it, for a heap pool) once it has dropped the states.
///
/// The pool relies on the first and last points for memory safety: two
/// live allocations that shared a slot would race on its bytes, and an
/// array kept past its pool would point into freed memory.
pub unsafe trait Policy: sealed::Sealed + Send + Sync + 'static {
    /// The per-area state.
    type Area: Send;

    /// A short name (`fast`, `nextfit`).
    const NAME: &'static str;

    /// The arrays of per-area metadata the policy keeps, in the order
    /// [`Policy::new_area`] takes them: what sizes a pool's metadata
    /// ([`Pool::metadata_len`]), in a `const fn`, so that a pool without a
    /// heap can keep it in a `static`.
    const METADATA: &'static [MetaArray];

    /// The state of an empty area, over the arrays `mem` hands out (zeroed,
    /// as [`Policy::METADATA`] declares them); `None` if it cannot be
    /// built (the pool then reports [`crate::Error::OutOfMemory`]), which
    /// happens only to a policy that takes an array it did not declare.
    fn new_area(geom: &AreaGeom, mem: &mut AreaMemory<'_>) -> Option<Self::Area>;

    /// Finds and takes `req.nslots` free slots; the pool-wide index of the
    /// first, or `None`.
    fn alloc(area: &mut Self::Area, geom: &AreaGeom, req: &Request) -> Option<u32>;

    /// Gives back `[start, start + nslots)`, which an earlier `alloc` of
    /// this area returned.
    fn free(area: &mut Self::Area, geom: &AreaGeom, start: u32, nslots: u32);

    /// The longest run of free slots the policy could hand out (within one
    /// segment), for error reports.
    fn largest_free_run(area: &Self::Area, geom: &AreaGeom) -> u32;

    /// Whether slot `slot` is free (for the shadow checks of tests).
    fn is_free(area: &Self::Area, geom: &AreaGeom, slot: u32) -> bool;
}

/// The allocator alone, without the mapping layers: for the benchmark's
/// `alloc_free` rows. Kept next to the trait it drives; the pool's fields
/// are visible here because this module is inside `pool`.
#[cfg(feature = "unstable-internals")]
impl<P: Policy> Pool<P> {
    /// The slot request a bounce of `size` bytes of the original at `orig`
    /// for `dev` makes (no `alloc_align_mask`), normalised exactly as a map
    /// normalises it: for [`Pool::alloc_free_n`].
    ///
    /// # Errors
    /// As a map: [`Error::ZeroSize`](crate::Error::ZeroSize),
    /// [`Error::TooLarge`](crate::Error::TooLarge),
    /// [`Error::AlignmentImpossible`](crate::Error::AlignmentImpossible).
    pub fn alloc_request<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        size: usize,
    ) -> Result<Request> {
        Ok(self.request(dev, orig.0, size, 0)?.0)
    }

    #[cfg(feature = "unstable-internals")]
    /// The allocator alone, for benchmarks: under one hold of an area lock,
    /// the policy finds slots for `req` ([`Policy::alloc`], the search and
    /// slot bookkeeping a map runs) and gives them straight back
    /// ([`Policy::free`], what an unmap runs), `n` times over. Areas are
    /// tried from `hint % nareas` on, as a map tries them; all `n` pairs
    /// run in the first area where the first one fits. Nothing else of a
    /// map is done: no record, start bit or pool-wide counter is written,
    /// nothing is copied, and the pool's state is as before (the policy's
    /// search hints aside). Returns the first slot the last pair found, or
    /// `None` if no area could hold `req` (then no pair ran).
    ///
    /// `n = 1` is one request with its own lock hold; a larger `n`
    /// spreads one hold over `n` requests, leaving the policy's own cost.
    #[inline]
    pub fn alloc_free_n(&self, req: &Request, hint: usize, n: u64) -> Option<u32> {
        self.in_areas(hint, req.nslots, |geom, st| {
            let mut s = P::alloc(&mut st.policy, geom, req)?;
            P::free(&mut st.policy, geom, s, req.nslots);
            for _ in 1..n {
                // Freed just above, so the area has room again; a policy
                // that cannot find it again stops here.
                s = P::alloc(&mut st.policy, geom, req)?;
                P::free(&mut st.policy, geom, s, req.nslots);
            }
            Some(s)
        })
    }
}
