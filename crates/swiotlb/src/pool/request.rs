//! The request of one mapping, worked out once: the slot count, the
//! alignment masks, the segment boundary and the padding before the bounce
//! address (Linux's `swiotlb_find_slots` arguments), and the error a full
//! pool reports for it.

#![forbid(unsafe_code)]

use super::policy::{AreaGeom, Request};
use super::{Policy, Pool};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::translate::Translate;

impl<P: Policy> Pool<P> {
    /// Builds the slot request for a bounce of `size` bytes of the original
    /// at `orig`, as Linux's `swiotlb_tbl_map_single` and
    /// `swiotlb_search_pool_area` normalise it. Returns the request and the
    /// offset of the bounce address from the allocation's first slot.
    pub(crate) fn request<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: u64,
        size: usize,
        alloc_align_mask: u64,
    ) -> Result<(Request, usize)> {
        let tbl_dma = dev.phys_to_dma(self.start).0;
        let boundary_mask = dev.seg_boundary_mask();
        let min_align_mask = dev.min_align_mask();
        let shift = self.slot_shift;
        let slot_mask = (1u64 << shift) - 1;
        let impossible = Error::AlignmentImpossible {
            align_mask: alloc_align_mask,
            min_align_mask,
        };
        if alloc_align_mask & alloc_align_mask.wrapping_add(1) != 0 {
            return Err(impossible);
        }
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        // Like Linux, `max_mapping_size` is the size every request up to it
        // can get, not a cap: a larger mapping whose actual offset leaves
        // room in a segment is served (`swiotlb_tbl_map_single` enforces
        // nothing more). Only a request no segment can hold is too large.
        if size > self.segment_bytes() {
            return Err(Error::TooLarge {
                size,
                max: self.max_mapping_size(min_align_mask),
            });
        }
        // swiotlb_align_offset(dev, alloc_align_mask, orig): the bits of
        // the original the bounce address keeps, padding slots included.
        let offset = orig & min_align_mask & (alloc_align_mask | slot_mask);
        // ALIGN(mapping_size + offset, alloc_align_mask + 1), then slots;
        // the mask is `2^n - 1` (checked above), so shifts and masks do it.
        let total = (size as u64 + offset)
            .checked_add(alloc_align_mask)
            .ok_or(impossible)?
            & !alloc_align_mask;
        let nslots = (total + slot_mask) >> shift;
        let limit = self.segment.min(self.area_nslabs) as u64;
        if nslots > limit {
            let max = self.max_mapping_size(min_align_mask);
            if size > max {
                return Err(Error::TooLarge { size, max });
            }
            // The size fits; the alignment padding does not.
            return Err(Error::PaddingTooLarge {
                size,
                padded: total,
                align_mask: alloc_align_mask,
                segment: self.segment_bytes(),
            });
        }
        // Historically mappings of a page or more are page aligned when no
        // mask says otherwise; drivers rely on it.
        let mut align = alloc_align_mask;
        let page = 1u64 << self.page_shift;
        if align == 0 && min_align_mask == 0 && total >= page {
            align = page - 1;
        }
        align |= slot_mask;
        let iotlb = min_align_mask & !align;
        let stride = ((align.max(iotlb) >> shift) + 1).min(1 << 31) as u32;
        let boundary_slots = (boundary_mask >> shift) + 1;
        if nslots > boundary_slots {
            return Err(impossible);
        }
        // Linux tests every slot's device address against the alignment
        // mask, which always holds the slot mask: a table whose device
        // address is not slot aligned (an odd bus offset) has no
        // acceptable slot at all.
        if tbl_dma & boundary_mask & slot_mask != 0 {
            return Err(impossible);
        }
        // No slot at device address 0, ever: drivers and transports take 0
        // for a failed mapping (virtio-drivers' `Hal::dma_alloc` says so in
        // its contract). The table's device address is known only here,
        // per device (it is the device's translation of the pool's base),
        // so a table whose device range holds 0 (it starts there, or runs
        // past the top of the bus onto it) is refused whole, for every
        // size, before any slot is chosen. The check comes after the
        // alignment ones so that a table that is refused anyway gives the
        // same answer as before.
        let len = self.len() as u64;
        if tbl_dma == 0 || tbl_dma.checked_add(len - 1).is_none() {
            return Err(Error::DmaZeroInPool {
                start: crate::addr::DmaAddr(tbl_dma),
                len: self.len(),
            });
        }
        let req = Request {
            nslots: nslots as u32,
            align_mask: align,
            iotlb_mask: iotlb,
            orig,
            tbl_dma: tbl_dma & boundary_mask,
            // Linux `nr_slots(tbl_dma_addr)`: DIV_ROUND_UP in unsigned
            // arithmetic, which wraps for a table in the last slot of the
            // device address space.
            tbl_slot: (tbl_dma & boundary_mask).wrapping_add(slot_mask) >> shift,
            boundary_slots,
            stride,
        };
        Ok((req, offset as usize))
    }

    /// Why `req` failed: full, or impossible in this pool.
    pub(crate) fn full_error(&self, req: &Request, min_align_mask: u64) -> Error {
        let mut largest = 0;
        let mut used = 0;
        for area in self.areas.iter() {
            let st = area.state.lock();
            largest = largest.max(P::largest_free_run(&st.policy, &area.geom));
            used += st.used;
        }
        let possible = self.areas.iter().any(|a| fits_empty(&a.geom, req));
        if !possible {
            return Error::AlignmentImpossible {
                align_mask: req.align_mask,
                min_align_mask,
            };
        }
        Error::PoolFull {
            requested: req.nslots,
            free: self.nslabs - used,
            largest_run: largest,
        }
    }
}

/// Whether `req` could be met in an empty area of this geometry.
pub(super) fn fits_empty(geom: &AreaGeom, req: &Request) -> bool {
    let mut s = geom.first;
    // Find the first aligned slot, then stride; the pattern of segment
    // lines and boundaries repeats, so a bounded number of candidates
    // decides it.
    let end = geom.end();
    let mut tries = 0u32;
    while s < end && tries < 1 << 16 {
        if req.aligned(s, geom.slot_shift) {
            if !req.crosses_boundary(s, geom.slot_shift) && s + req.nslots <= geom.run_limit(s) {
                return true;
            }
            s = s.saturating_add(req.stride);
        } else {
            s += 1;
        }
        tries += 1;
    }
    false
}
