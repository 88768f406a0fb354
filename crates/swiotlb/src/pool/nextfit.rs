//! `NextFit`: Linux's per-area next-fit search, written from its documented
//! behaviour (`Documentation/core-api/swiotlb.rst` and the
//! `swiotlb_search_pool_area` / `swiotlb_release_slots` descriptions).
//!
//! Each slot carries a count: how many free slots start at it and run,
//! without crossing a segment line, to the next allocated slot or the
//! segment's end. Slot 0 of an empty 128-slot segment says 128, slot 127
//! says 1, an allocated slot says 0. A search starts at the area's rotating
//! index, walks forward one slot at a time until it finds a slot whose
//! address is aligned as the request needs, and from then on strides by the
//! alignment, taking the first slot whose count covers the request. The
//! index then moves just past the allocation, so the next search starts
//! there: allocations march through the area, which spreads wear but walks
//! cold memory and, as measured in `docs/PERFORMANCE.md`, fragments.
//!
//! It exists so that a replayed trace predicts what a real kernel does: for
//! the same geometry and the same requests from the same area it returns
//! the same slot indices as Linux (the golden tests check hand-worked
//! sequences). Where Linux has a latent fault this keeps the fixed
//! behaviour: counts stop at the area's end as well as the segment's, both
//! when a pool is set up and when a free merges with the run after it (a
//! pool smaller than a segment, CVE-2023-52790, where Linux's release path
//! still reads the count one past the pool's end; an area whose size is not
//! a multiple of the segment), and an allocation always starts slot-aligned
//! (CVE-2024-35814).

use super::meta::{AreaMemory, MetaArray, MetaCount, MetaSlice};
use super::policy::{AreaGeom, Policy, Request};

/// Linux's next-fit policy. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct NextFit;

/// Per-area state of [`NextFit`].
pub struct NextFitArea {
    /// Free-run count per slot of the area (Linux `slots[i].list`).
    list: MetaSlice<u32>,
    /// Where the next search starts, relative to the area (Linux
    /// `area->index`).
    index: u32,
}

impl NextFitArea {
    /// The rotating index, relative to the area.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Linux `wrap_area_index`: past the end goes back to 0, not modulo.
#[inline]
fn wrap(geom: &AreaGeom, index: u32) -> u32 {
    if index >= geom.nslabs {
        0
    } else {
        index
    }
}

/// Rewrites the counts of the free slots just before area-relative slot
/// `index`, back to the segment's first slot (or the area's, if later) or
/// the first held slot, so that they run on into whatever now starts at
/// `index` (a free run of `count` slots, or a held slot when `count` is
/// 0). Linux does this walk after every allocation and free.
///
/// Linux tests every slot on the way back for the segment line by its
/// offset in the segment, a division by a segment size known only at run
/// time, which cost more than the rest of the walk. Where the line lies is
/// known before the walk starts, so the walk runs over the slice of counts
/// that ends there and tests only for a held slot; it writes the same
/// counts in the same order.
#[inline]
fn merge_back(list: &mut [u32], geom: &AreaGeom, index: u32, mut count: u32) {
    let from = geom.run_start(geom.first + index) - geom.first;
    for c in list[from as usize..index as usize].iter_mut().rev() {
        if *c == 0 {
            break;
        }
        count += 1;
        *c = count;
    }
}

impl super::policy::sealed::Sealed for NextFit {}

// SAFETY:
// - `alloc` returns `s` only when `list[s - first] >= nslots`; a count says
//   how many free slots follow without crossing a segment line or the
//   area's end (kept so by `new_area`, `alloc` and `free`), so the whole
//   run is free, inside the area and inside one segment;
// - it returns only starts that passed `req.aligned` and
//   `!req.crosses_boundary`, that is `req.acceptable`.
unsafe impl Policy for NextFit {
    type Area = NextFitArea;
    const NAME: &'static str = "nextfit";
    const METADATA: &'static [MetaArray] = &[MetaArray::of::<u32>(MetaCount::Slots)];

    fn new_area(geom: &AreaGeom, mem: &mut AreaMemory<'_>) -> Option<NextFitArea> {
        let mut list = mem.take::<u32>()?;
        for (i, count) in list.iter_mut().enumerate() {
            let slot = geom.first + i as u32;
            // Linux (after the CVE-2023-52790 fix): min(SEGSIZE - offset,
            // nslabs - i); capped at the area's end too.
            *count = geom.run_limit(slot) - slot;
        }
        Some(NextFitArea { list, index: 0 })
    }

    fn alloc(area: &mut NextFitArea, geom: &AreaGeom, req: &Request) -> Option<u32> {
        let shift = geom.slot_shift;
        let n = req.nslots;
        let mut index = area.index;
        let mut checked = 0u32;
        let found = loop {
            if checked >= geom.nslabs {
                return None;
            }
            let slot = geom.first + index;
            if !req.aligned(slot, shift) {
                // Walk one slot at a time until aligned.
                index = wrap(geom, index + 1);
                checked += 1;
                continue;
            }
            if !req.crosses_boundary(slot, shift) && area.list[index as usize] >= n {
                break index;
            }
            index = wrap(geom, index + req.stride);
            checked += req.stride;
        };
        for c in &mut area.list[found as usize..(found + n) as usize] {
            *c = 0;
        }
        // Slots before the allocation in the same segment now run into it:
        // their counts shrink to end there.
        merge_back(&mut area.list, geom, found, 0);
        area.index = wrap(geom, found + n);
        Some(geom.first + found)
    }

    fn free(area: &mut NextFitArea, geom: &AreaGeom, start: u32, nslots: u32) {
        let index = start - geom.first;
        let end = index + nslots;
        // The run after the freed slots joins them if it is in the same
        // segment (and area).
        let mut count = if geom.first + end < geom.run_limit(start) {
            area.list[end as usize]
        } else {
            0
        };
        for c in area.list[index as usize..end as usize].iter_mut().rev() {
            count += 1;
            *c = count;
        }
        merge_back(&mut area.list, geom, index, count);
    }

    fn largest_free_run(area: &NextFitArea, _geom: &AreaGeom) -> u32 {
        area.list.iter().copied().max().unwrap_or(0)
    }

    fn is_free(area: &NextFitArea, geom: &AreaGeom, slot: u32) -> bool {
        area.list[(slot - geom.first) as usize] != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk as Linux writes it: one slot at a time, each tested for
    /// the segment line by its offset in the segment.
    fn merge_back_per_slot(list: &mut [u32], geom: &AreaGeom, index: u32, mut count: u32) {
        let mut i = index;
        while i > 0 {
            i -= 1;
            let slot = geom.first + i;
            if slot % geom.segment == geom.segment - 1 || list[i as usize] == 0 {
                break;
            }
            count += 1;
            list[i as usize] = count;
        }
    }

    /// `merge_back` stops where the per-slot walk stops and writes what it
    /// writes, for every pattern of held slots in small areas that start
    /// on, and off, a segment line.
    #[test]
    fn merge_back_matches_the_per_slot_walk() {
        let (max_slabs, firsts) = if cfg!(miri) { (5, 3) } else { (9, 10) };
        for segment in [1, 2, 4, 8] {
            for first in 0..firsts {
                for nslabs in 1..=max_slabs {
                    let geom = AreaGeom {
                        first,
                        nslabs,
                        segment,
                        slot_shift: 11,
                    };
                    for held in 0..1u32 << nslabs {
                        let start: alloc::vec::Vec<u32> = (0..nslabs)
                            .map(|i| if held >> i & 1 == 1 { 0 } else { 100 + i })
                            .collect();
                        for index in 0..nslabs {
                            for count in [0, 5] {
                                let mut want = start.clone();
                                merge_back_per_slot(&mut want, &geom, index, count);
                                let mut got = start.clone();
                                merge_back(&mut got, &geom, index, count);
                                assert_eq!(got, want, "{geom:?} index {index} count {count}");
                            }
                        }
                    }
                }
            }
        }
    }
}
