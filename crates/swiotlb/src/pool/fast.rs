//! `Fast`: the default policy. A held-slot bitmap per area, scanned a word
//! at a time, a one-number summary per segment, and the last freed run
//! kept for an exact reuse.
//!
//! Why this shape (the argument in full is in `docs/DESIGN.md`):
//! - **One bit per slot.** Linux keeps a 4-byte free-run count per slot and
//!   rewrites up to a segment of them on every allocation and free (the
//!   backward merge walk). A bitmap is written with one or two word
//!   operations, and a free run is found with `trailing_zeros` on whole
//!   words: 64 slots per instruction instead of one.
//! - **Exact reuse of the last freed run.** A request of exactly the size
//!   of the run given back last takes it again when its alignment allows:
//!   the bounce copy lands on slots the CPU just touched (warm cache), and
//!   a perfect fit splits no free run. This is the steady state of a
//!   driver that maps and unmaps buffers of one size.
//! - **Otherwise, best of the first few segments, in address order.** Each
//!   segment keeps the length of its longest free run; the search skips
//!   segments too full for the request, scans the others run by run
//!   (`next_zero`, `next_one`), testing the first start in each run that
//!   meets the alignment period, and of the first [`CANDIDATES`] segments
//!   that fit takes the one whose longest run is shortest. Small mappings
//!   fill tight segments and long runs stay whole for large mappings, which
//!   is what lets large mappings succeed in a churning pool. Starting the
//!   search where something was last freed (an earlier version of this
//!   policy) scattered small mappings over every segment and failed at
//!   0.41 of the pool's bytes live where next fit fails at 0.63; plain
//!   address-ordered first fit reached 0.80, this reaches 0.86.
//! - **Same acceptance rule as Linux.** A start is taken only where
//!   [`Request::acceptable`] holds, so `min_align_mask`, `alloc_align_mask`,
//!   page alignment and the device boundary mean exactly what they mean in
//!   `NextFit`. Runs stop at segment lines, as in Linux, so no mapping is
//!   ever larger or placed differently in kind.

use alloc::boxed::Box;

use super::bitmap::{clear_range, next_one, next_zero, set_range};
use super::policy::{boxed, AreaGeom, Policy, Request};

/// How many fitting segments a search compares before taking the tightest.
/// Measured with `swiotlb bench --only frag` (64 MiB pool, 512 B-64 KiB
/// churn): first fit fails at 0.80 of the bytes live, the tightest of 4 at
/// 0.86, the tightest of all at 0.87.
const CANDIDATES: u32 = 4;

/// The default fast policy. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fast;

/// Per-area state of [`Fast`].
pub struct FastArea {
    /// One bit per slot of the area, set when the slot is held. Zero means
    /// free so that a new area is zeroed memory: for a large pool no page
    /// is touched until it is used.
    held: Box<[u64]>,
    /// The longest free run of each segment the area touches (area-relative
    /// segment index): never below the truth, exact after every free and
    /// after every search it misled.
    longest: Box<[u16]>,
    /// Area-relative start and length of the run freed last (length 0:
    /// none).
    last_free: (u32, u32),
}

impl FastArea {
    /// The area-relative range of the area's `j`th segment. Segments are
    /// powers of two, so shifts, not divisions (this runs on every map).
    #[inline]
    fn segment_range(geom: &AreaGeom, j: usize) -> (u32, u32) {
        let shift = geom.segment.trailing_zeros();
        let first_seg = geom.first >> shift;
        let lo = ((first_seg + j as u32) << shift).max(geom.first);
        let hi = ((first_seg + j as u32 + 1) << shift).min(geom.end());
        (lo - geom.first, hi - geom.first)
    }

    /// The area-relative segment index of area-relative slot `local`.
    #[inline]
    fn segment_of(geom: &AreaGeom, local: u32) -> usize {
        let shift = geom.segment.trailing_zeros();
        (((geom.first + local) >> shift) - (geom.first >> shift)) as usize
    }

    /// Recomputes the longest free run of segment `j`.
    #[inline]
    fn refresh(&mut self, geom: &AreaGeom, j: usize) {
        let (lo, hi) = Self::segment_range(geom, j);
        self.longest[j] = if lo % 64 == 0 && hi % 64 == 0 {
            longest_clear_run(&self.held[(lo / 64) as usize..(hi / 64) as usize])
        } else {
            self.longest_run_between(lo, hi)
        } as u16;
    }

    /// The longest free run in `[lo, hi)`, run by run.
    fn longest_run_between(&self, lo: u32, hi: u32) -> u32 {
        let mut best = 0;
        let mut pos = lo;
        loop {
            let a = next_zero(&self.held, pos, hi);
            if a >= hi {
                break;
            }
            let b = next_one(&self.held, a, hi).unwrap_or(hi);
            best = best.max(b - a);
            pos = b;
        }
        best
    }

    /// Searches runs that start in `[from, to)` (area-relative), each
    /// considered whole from its start or from `from`, whichever is later.
    #[inline]
    fn search(&self, geom: &AreaGeom, req: &Request, from: u32, to: u32) -> Option<u32> {
        let shift = geom.slot_shift;
        let n = req.nslots;
        // The period and phase of acceptable starts: with contiguous masks
        // (checked by the pool) a slot is aligned iff its pool index is
        // congruent to `phase` modulo `stride`, a power of two. Linux's
        // `req.stride` is not always that period (see `phase`).
        let (phase, stride) = phase(req, shift);
        let mut pos = from;
        while pos < to {
            let a = next_zero(&self.held, pos, to);
            if a >= to {
                return None;
            }
            let limit = geom.run_limit(geom.first + a) - geom.first;
            let b = next_one(&self.held, a, limit).unwrap_or(limit);
            if b - a >= n {
                // First start >= a congruent to phase (in pool indices).
                let abs = geom.first + a;
                let mut s = abs + ((phase.wrapping_sub(abs)) & (stride - 1));
                while s + n <= geom.first + b {
                    if req.acceptable(s, shift) {
                        return Some(s);
                    }
                    s += stride;
                }
            }
            pos = b;
        }
        None
    }

    /// The last freed run, if the request fits it exactly.
    #[inline]
    fn exact_reuse(&self, geom: &AreaGeom, req: &Request) -> Option<u32> {
        let (start, len) = self.last_free;
        if len != req.nslots || !req.acceptable(geom.first + start, geom.slot_shift) {
            return None;
        }
        // Still free? Other allocations may have taken part of it since.
        (next_one(&self.held, start, start + len).is_none()).then_some(geom.first + start)
    }
}

/// The longest run of clear bits in whole words, one step per run: each
/// step finds a run with `trailing_zeros` and clears it from the working
/// copy, carrying a run that reaches the top of one word into the next.
#[inline]
fn longest_clear_run(words: &[u64]) -> u32 {
    let mut best = 0;
    let mut carry = 0;
    for &w in words {
        let mut free = !w;
        if free == u64::MAX {
            carry += 64;
            continue;
        }
        // The run continuing from the previous word.
        let head = free.trailing_ones();
        best = best.max(carry + head);
        free &= !((1u64 << head) - 1);
        carry = 0;
        while free != 0 {
            let start = free.trailing_zeros();
            let len = (free >> start).trailing_ones();
            if start + len == 64 {
                carry = len;
                break;
            }
            best = best.max(len);
            free &= !(((1u64 << len) - 1) << start);
        }
    }
    best.max(carry)
}

/// The residue and the period (a power of two, in slots) of the pool
/// indices whose slot address meets the alignment masks.
///
/// The period comes from the combined mask, not from Linux's `stride`
/// (`(max(align_mask, iotlb_mask) >> shift) + 1`): when `min_align_mask`
/// is wider than the allocation alignment, `iotlb_mask` has its low bits
/// clear and that stride is not a power of two (0x3fff over 0xfff on 2 KiB
/// slots gives 7). Linux's walk then steps over misaligned slots one at a
/// time; a residue test modulo such a stride picks the wrong slots.
#[inline]
fn phase(req: &Request, shift: u32) -> (u32, u32) {
    let mask = req.align_mask | if req.orig != 0 { req.iotlb_mask } else { 0 };
    let want = if req.orig != 0 {
        req.orig & req.iotlb_mask
    } else {
        0
    };
    let period = ((mask >> shift) + 1).min(1 << 31) as u32;
    let phase = ((want.wrapping_sub(req.tbl_dma) & mask) >> shift) as u32;
    (phase & (period - 1), period)
}

// SAFETY:
// - `alloc` returns `s` only when `search` found `[s, s + n)` inside a run
//   `[a, b)` of clear (free) bits that stops at the segment line and the
//   area's end (`run_limit`), and sets those bits before returning, so no
//   two live allocations share a slot;
// - `search` returns only starts that pass `req.acceptable`.
unsafe impl Policy for Fast {
    type Area = FastArea;
    const NAME: &'static str = "fast";

    fn new_area(geom: &AreaGeom) -> FastArea {
        let nsegs = FastArea::segment_of(geom, geom.nslabs - 1) + 1;
        let mut area = FastArea {
            // Bits past the area's end stay clear (free) but are never
            // reached: every scan stops at `geom.nslabs`.
            held: boxed(0u64, geom.nslabs.div_ceil(64) as usize),
            longest: boxed(0u16, nsegs),
            last_free: (0, 0),
        };
        for j in 0..nsegs {
            let (lo, hi) = FastArea::segment_range(geom, j);
            area.longest[j] = (hi - lo) as u16;
        }
        area
    }

    #[inline]
    fn alloc(area: &mut FastArea, geom: &AreaGeom, req: &Request) -> Option<u32> {
        let s = match area.exact_reuse(geom, req) {
            Some(s) => s,
            None => {
                let n = req.nslots;
                // Best of the first few: walking segments in address
                // order, take the fitting start in the segment whose longest
                // free run is shortest among the first `CANDIDATES` that
                // fit (a perfect fit ends the walk). A tight segment absorbs
                // the request and long runs stay whole for large mappings;
                // bounding the candidates bounds the walk.
                let mut best: Option<(u16, u32)> = None;
                let mut seen = 0;
                for j in 0..area.longest.len() {
                    let l = area.longest[j];
                    if (l as u32) < n || best.is_some_and(|(b, _)| l >= b) {
                        continue;
                    }
                    let (lo, hi) = FastArea::segment_range(geom, j);
                    let found = area.search(geom, req, lo, hi);
                    if found.is_none() {
                        // The summary may be stale-high after allocations
                        // (see `alloc`); make it exact now that it misled.
                        area.refresh(geom, j);
                    }
                    if let Some(s) = found {
                        best = Some((l, s));
                        seen += 1;
                        if l as u32 == n || seen >= CANDIDATES {
                            break;
                        }
                    }
                }
                best?.1
            }
        };
        let local = s - geom.first;
        set_range(&mut area.held, local, req.nslots);
        // The segment's longest run may have shrunk. Leaving the summary
        // high is safe (a search verifies the bits and corrects a summary
        // that misled it) and spares a rescan on every map; `free`
        // rescans, so the summary is never low, which is what would lose
        // fits.
        Some(s)
    }

    #[inline]
    fn free(area: &mut FastArea, geom: &AreaGeom, start: u32, nslots: u32) {
        let local = start - geom.first;
        clear_range(&mut area.held, local, nslots);
        area.refresh(geom, FastArea::segment_of(geom, local));
        area.last_free = (local, nslots);
    }

    fn largest_free_run(area: &FastArea, geom: &AreaGeom) -> u32 {
        // Exact, from the bits: the summary may be high after allocations.
        // Only error reports ask, so the scan is off the fast path.
        (0..area.longest.len())
            .map(|j| {
                let (lo, hi) = FastArea::segment_range(geom, j);
                area.longest_run_between(lo, hi)
            })
            .max()
            .unwrap_or(0)
    }

    fn is_free(area: &FastArea, geom: &AreaGeom, slot: u32) -> bool {
        let i = slot - geom.first;
        area.held[(i / 64) as usize] >> (i % 64) & 1 == 0
    }

    fn metadata_bytes(geom: &AreaGeom) -> usize {
        let nsegs = (geom.end() - 1) / geom.segment - geom.first / geom.segment + 1;
        geom.nslabs.div_ceil(64) as usize * 8
            + nsegs as usize * 2
            + core::mem::size_of::<FastArea>()
    }
}

#[cfg(test)]
mod tests {
    use super::longest_clear_run;

    /// The word-at-a-time run length against a bit-by-bit count.
    #[test]
    fn longest_clear_run_matches_naive() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..2000 {
            let mut words = [0u64; 2];
            for w in &mut words {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Sparse, dense and empty words all appear.
                *w = match case % 4 {
                    0 => x,
                    1 => x & (x >> 3) & (x >> 5),
                    2 => 0,
                    _ => x | (x << 1),
                };
            }
            let mut naive = 0;
            let mut run = 0;
            for i in 0..128 {
                if words[i / 64] >> (i % 64) & 1 == 0 {
                    run += 1;
                    naive = naive.max(run);
                } else {
                    run = 0;
                }
            }
            assert_eq!(longest_clear_run(&words), naive, "{words:x?}");
        }
    }
}
