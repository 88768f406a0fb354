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
//!   policy) scattered small mappings over every segment. Measured by the
//!   earlier one-area fragmentation protocol (`docs/PERFORMANCE.md`, where
//!   next fit failed at 0.63 of the pool's bytes live), that version
//!   failed at 0.41, plain address-ordered first fit at 0.80, and this one
//!   at 0.87; best fit over every run of the area, size segregation and
//!   fullest-segment-first placements at 0.77-0.875. Under today's
//!   two-area protocol this policy fails at 0.85-0.86 and next fit at
//!   0.74-0.76 (`swiotlb bench --only frag`).
//! - **Summaries marked exact.** A segment's summary known to be exact
//!   lets a free update it from the run the freed slots join (no rescan),
//!   and lets a search count the segment as a sure fit without reading its
//!   bits; only the segment finally taken is searched.
//! - **Same acceptance rule as Linux.** A start is taken only where
//!   [`Request::acceptable`] holds, so `min_align_mask`, `alloc_align_mask`,
//!   page alignment and the device boundary mean exactly what they mean in
//!   `NextFit`. Runs stop at segment lines, as in Linux, so no mapping is
//!   ever larger or placed differently in kind.

use super::bitmap::{clear_range, next_one, next_zero, prev_one, set_range, word_mask};
use super::meta::{AreaMemory, MetaArray, MetaCount, MetaSlice};
use super::policy::{AreaGeom, Policy, Request};

/// How many fitting segments a search compares before taking the tightest.
/// Measured under the earlier one-area fragmentation protocol (64 MiB
/// pool, 512 B-64 KiB churn, `docs/PERFORMANCE.md`): first fit failed at
/// 0.80 of the bytes live, the tightest of 4 at 0.86, the tightest of all
/// at 0.87.
const CANDIDATES: u32 = 4;

/// The default fast policy. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fast;

/// Per-area state of [`Fast`].
pub struct FastArea {
    /// One bit per slot of the area, set when the slot is held. Zero means
    /// free so that a new area is zeroed memory: for a large pool no page
    /// is touched until it is used.
    held: MetaSlice<u64>,
    /// The longest free run of each segment the area touches (area-relative
    /// segment index): never below the truth, exact after every free and
    /// after every search it misled.
    longest: MetaSlice<u16>,
    /// One bit per segment, set when its `longest` is known to be exact
    /// (not merely high). An exact summary lets a free update it from the
    /// run it merges into, without a rescan, and lets a search count a
    /// segment as fitting without looking at its bits. The segment of
    /// `last_free` while an exact reuse holds it is the exception (see
    /// [`FastArea::forget_reuse`]).
    exact: MetaSlice<u64>,
    /// The area-relative start and length of the run the last search
    /// took, and whether its segment's summary was exact before (length 0:
    /// none, or something else has been freed since). Freeing that run
    /// next puts the bits back as they were, so the summary, which the
    /// allocation left as it was, is exact again if it was then.
    last_search: (u32, u32, bool),
    /// Area-relative start and length of the run freed last (length 0:
    /// none).
    last_free: (u32, u32),
    /// `last_free` as a word index and mask when it lies in one word (mask
    /// 0 otherwise), worked out once when it is freed rather than on every
    /// reuse.
    last_word: (usize, u64),
    /// Whether the bits are as they were when `last_free` was freed, except
    /// that `last_free` itself may be held again by an exact reuse: then
    /// freeing `last_free` once more restores the bits the summary of its
    /// segment was computed from, and the rescan can be skipped. Cleared by
    /// every allocation that searches (a search may rescan a segment with
    /// `last_free` held, or take other slots).
    undo_only: bool,
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

    /// Whether segment `j`'s summary is marked exact.
    #[inline]
    fn is_exact(&self, j: usize) -> bool {
        self.exact[j / 64] >> (j % 64) & 1 == 1
    }

    /// Marks segment `j`'s summary as possibly high.
    #[inline]
    fn clear_exact(&mut self, j: usize) {
        self.exact[j / 64] &= !(1 << (j % 64));
    }

    /// An exact reuse takes `last_free` without touching the summaries: if
    /// it still holds that run, the summary of the run's segment may be
    /// high, so unmark it before anything relies on the mark or moves
    /// `last_free`.
    #[inline]
    fn forget_reuse(&mut self, geom: &AreaGeom) {
        let (start, len) = self.last_free;
        if len != 0 && next_zero(&self.held, start, start + len) >= start + len {
            self.clear_exact(FastArea::segment_of(geom, start));
        }
    }

    /// The free run of segment `[lo, hi)` (area-relative) that holds the
    /// free slots `[local, local + n)`, by its length.
    #[inline]
    fn run_around(&self, lo: u32, hi: u32, local: u32, n: u32) -> u32 {
        let a = prev_one(&self.held, lo, local).map_or(lo, |i| i + 1);
        let b = next_one(&self.held, local + n, hi).unwrap_or(hi);
        b - a
    }

    /// Whether a search of segment `j`, whose summary `l` is exact, is sure
    /// to find a start for `req`: a free run of `l` slots holds a start of
    /// every alignment residue with `n` slots after it when
    /// `l >= n + stride - 1`, and no start in the segment crosses the
    /// device's boundary when the whole segment lies inside one boundary
    /// window.
    #[inline]
    fn sure_fit(geom: &AreaGeom, req: &Request, j: usize, l: u32, stride: u32) -> bool {
        if (l as u64) < req.nslots as u64 + stride as u64 - 1 {
            return false;
        }
        let (lo, hi) = FastArea::segment_range(geom, j);
        let off = req.tbl_slot.wrapping_add((geom.first + lo) as u64) & (req.boundary_slots - 1);
        off + (hi - lo) as u64 <= req.boundary_slots
    }

    /// Recomputes the longest free run of segment `j`.
    #[inline]
    fn refresh(&mut self, geom: &AreaGeom, j: usize) {
        self.exact[j / 64] |= 1 << (j % 64);
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
    /// considered whole from its start or from `from`, whichever is later:
    /// the lowest acceptable start whose `nslots` slots are free and end by
    /// the run's limit.
    #[inline]
    fn search(&self, geom: &AreaGeom, req: &Request, from: u32, to: u32) -> Option<u32> {
        match self.search_words(geom, req, from, to) {
            Some(found) => found,
            None => self.search_runs(geom, req, from, to),
        }
    }

    /// [`FastArea::search`] over one segment of one or two whole words (a
    /// 64- or 128-slot segment from a word boundary, as with the default
    /// geometry), every candidate at once: the starts of `nslots` free
    /// slots are the free bits ANDed with themselves shifted (doubling the
    /// length each step), the aligned ones are a repeating bit pattern,
    /// and the lowest common bit that passes `acceptable` is the answer,
    /// the same start the run-by-run walk finds. `None`: not such a
    /// segment (use [`FastArea::search_runs`]).
    #[inline]
    fn search_words(
        &self,
        geom: &AreaGeom,
        req: &Request,
        from: u32,
        to: u32,
    ) -> Option<Option<u32>> {
        let len = to.checked_sub(from)?;
        if from % 64 != 0
            || !(len == 64 || len == 128)
            || geom.run_limit(geom.first + from) != geom.first + to
        {
            return None;
        }
        let n = req.nslots;
        if n == 0 || n > len {
            return Some(None);
        }
        let w = (from / 64) as usize;
        // Bit i: area-relative slot `from + i` is free. Bits past `len`
        // stay clear, so no start runs past the segment.
        let mut starts = !self.held[w] as u128;
        if len == 128 {
            starts |= (!self.held[w + 1] as u128) << 64;
        }
        let mut have = 1;
        while have < n && starts != 0 {
            let step = have.min(n - have);
            starts &= starts >> step;
            have += step;
        }
        if starts == 0 {
            return Some(None);
        }
        let (phase, stride) = phase(req, geom.slot_shift);
        let abs = geom.first + from;
        let off = phase.wrapping_sub(abs) & (stride - 1);
        let aligned: u128 = if stride <= 64 {
            // One bit every `stride` (a power of two dividing 64).
            let every = if stride == 64 {
                1
            } else {
                u64::MAX / ((1u64 << stride) - 1)
            };
            let p = every << off;
            p as u128 | (p as u128) << 64
        } else if off < 128 {
            1u128 << off
        } else {
            0
        };
        let mut c = starts & aligned;
        while c != 0 {
            let s = abs + c.trailing_zeros();
            if req.acceptable(s, geom.slot_shift) {
                return Some(Some(s));
            }
            c &= c - 1;
        }
        Some(None)
    }

    /// [`FastArea::search`], run by run, for any range.
    fn search_runs(&self, geom: &AreaGeom, req: &Request, from: u32, to: u32) -> Option<u32> {
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

    /// Takes the last freed run if the request fits it exactly and it is
    /// still free.
    #[inline(always)]
    fn exact_reuse(&mut self, geom: &AreaGeom, req: &Request) -> Option<u32> {
        let (start, len) = self.last_free;
        if len != req.nslots || !req.acceptable(geom.first + start, geom.slot_shift) {
            return None;
        }
        // Still free? Other allocations may have taken part of it since.
        // A run inside one word (every run of up to 64 slots that does not
        // straddle a word) is one load, one test and one store.
        let (w, m) = self.last_word;
        if m != 0 {
            let word = &mut self.held[w];
            if *word & m != 0 {
                return None;
            }
            *word |= m;
        } else {
            if next_one(&self.held, start, start + len).is_some() {
                return None;
            }
            set_range(&mut self.held, start, len);
        }
        Some(geom.first + start)
    }
}

/// The longest run of set bits in `x`, in a fixed number of steps
/// whatever the number of runs: `r_k` marks where a run of at least `2^k`
/// ones starts (`r_{k+1} = r_k & (r_k >> 2^k)`), and the length is then
/// built greedily from the largest power down, keeping the starts of runs
/// at least as long as the length so far.
#[inline]
fn longest_ones(x: u128) -> u32 {
    if x == 0 {
        return 0;
    }
    if x == u128::MAX {
        return 128;
    }
    let r1 = x & (x >> 1);
    let r2 = r1 & (r1 >> 2);
    let r4 = r2 & (r2 >> 4);
    let r8 = r4 & (r4 >> 8);
    let r16 = r8 & (r8 >> 16);
    let r32 = r16 & (r16 >> 32);
    // `cur`: where a run of at least `m` ones starts.
    let mut cur = x;
    let mut m = 1;
    for (len, r) in [
        (64, r32),
        (32, r16),
        (16, r8),
        (8, r4),
        (4, r2),
        (2, r1),
        (1, x),
    ] {
        let c = cur & (r >> m);
        if c != 0 {
            cur = c;
            m += len;
        }
    }
    m
}

/// The first index from `from` on whose value `v` satisfies
/// `lo <= v < hi`, if any. Sixteen values are compared per step without an
/// early exit (so the compiler can use vector compares), then the first
/// hit is taken from the mask.
#[inline]
fn next_in_range(v: &[u16], from: usize, lo: u32, hi: u32) -> Option<usize> {
    // lo <= x < hi  <=>  x - lo < hi - lo (wrapping, unsigned).
    let width = hi.saturating_sub(lo);
    if width == 0 {
        return None;
    }
    let hit = |x: u16| (x as u32).wrapping_sub(lo) < width;
    let mut j = from;
    while let Some(chunk) = v.get(j..j + 16) {
        let mut mask = 0u32;
        for (k, &x) in chunk.iter().enumerate() {
            mask |= (hit(x) as u32) << k;
        }
        if mask != 0 {
            return Some(j + mask.trailing_zeros() as usize);
        }
        j += 16;
    }
    (j..v.len()).find(|&i| hit(v[i]))
}

/// The longest run of clear bits in whole words. One or two words (a 64-
/// or 128-slot segment) take [`longest_ones`], a fixed number of steps;
/// more words go one step per run: each step finds a run with
/// `trailing_zeros` and clears it from the working copy, carrying a run
/// that reaches the top of one word into the next.
#[inline]
fn longest_clear_run(words: &[u64]) -> u32 {
    match *words {
        [a] => return longest_ones(!a as u128),
        [a, b] => return longest_ones(!a as u128 | (!b as u128) << 64),
        _ => {}
    }
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

impl FastArea {
    /// Best of the first few, when the exact reuse did not apply.
    #[inline(never)]
    fn alloc_search(&mut self, geom: &AreaGeom, req: &Request) -> Option<u32> {
        // Anything but an exact reuse may change bits or summaries other
        // than `last_free`'s (see `undo_only`).
        self.undo_only = false;
        // A search may rescan segments (a failing one too), so the record
        // of the previous search's run no longer describes the summaries.
        self.last_search.1 = 0;
        self.forget_reuse(geom);
        let n = req.nslots;
        let stride = phase(req, geom.slot_shift).1;
        // Walking segments in address order, take the fitting start in the
        // segment whose longest free run is shortest among the first
        // `CANDIDATES` that fit (a perfect fit ends the walk). A tight
        // segment absorbs the request and long runs stay whole for large
        // mappings; bounding the candidates bounds the walk.
        // (summary, segment, start if already searched)
        let mut best: Option<(u16, usize, Option<u32>)> = None;
        let mut seen = 0;
        let mut next = 0;
        // Only segments whose longest run fits and is shorter than the best
        // so far are searched; the others are skipped 16 summaries at a
        // time (in a large, mostly empty pool nearly all of them are).
        let below = |best: Option<(u16, usize, Option<u32>)>| best.map_or(u32::MAX, |b| b.0 as u32);
        while let Some(j) = next_in_range(&self.longest, next, n, below(best)) {
            next = j + 1;
            let l = self.longest[j];
            // An exact summary with room to spare is a sure fit: the bits
            // are searched only if this segment is the one taken.
            let found = if self.is_exact(j) && FastArea::sure_fit(geom, req, j, l as u32, stride) {
                Some(None)
            } else {
                let (lo, hi) = FastArea::segment_range(geom, j);
                let found = self.search(geom, req, lo, hi);
                if found.is_none() {
                    // The summary may be stale-high after allocations (see
                    // below); make it exact now that it misled.
                    self.refresh(geom, j);
                }
                found.map(Some)
            };
            if let Some(s) = found {
                best = Some((l, j, s));
                seen += 1;
                if l as u32 == n || seen >= CANDIDATES {
                    break;
                }
            }
        }
        let (_, j, s) = best?;
        let (lo, hi) = FastArea::segment_range(geom, j);
        let s = match s {
            Some(s) => s,
            None => {
                let s = self.search(geom, req, lo, hi);
                debug_assert!(s.is_some(), "a sure fit was not found");
                s?
            }
        };
        let local = s - geom.first;
        // The segment's longest run may have shrunk. Leaving the summary
        // high is safe (a search verifies the bits and corrects a summary
        // that misled it) and spares a rescan on every map; a free
        // rescans or updates an exact summary, so the summary is never
        // low, which is what would lose fits. It stays exact if the run
        // taken from was shorter than the longest.
        let was_exact = self.is_exact(j);
        if was_exact && self.run_around(lo, hi, local, n) >= self.longest[j] as u32 {
            self.clear_exact(j);
        }
        self.last_search = (local, n, was_exact);
        set_range(&mut self.held, local, n);
        Some(s)
    }

    /// A free that did not just undo an exact reuse: the freed run's
    /// segment summary becomes exact (from the run the freed slots merge
    /// into if it was exact, else by a rescan), and the run becomes the
    /// one an exact reuse may take.
    #[inline(never)]
    fn free_and_refresh(&mut self, geom: &AreaGeom, local: u32, nslots: u32) {
        let j = FastArea::segment_of(geom, local);
        let (start, len, was_exact) = self.last_search;
        self.last_search.1 = 0;
        if (start, len) == (local, nslots) && was_exact {
            // Undoes the last search's allocation: the bits are back to
            // those the summary was exact for (an exact reuse since then
            // is caught by `forget_reuse`, after).
            clear_range(&mut self.held, local, nslots);
            self.exact[j / 64] |= 1 << (j % 64);
            self.forget_reuse(geom);
        } else {
            self.forget_reuse(geom);
            clear_range(&mut self.held, local, nslots);
            if self.is_exact(j) {
                let (lo, hi) = FastArea::segment_range(geom, j);
                let run = self.run_around(lo, hi, local, nslots);
                self.longest[j] = self.longest[j].max(run as u16);
            }
        }
        if !self.is_exact(j) {
            self.refresh(geom, j);
        }
        self.last_free = (local, nslots);
        self.last_word = word_mask(local, nslots).unwrap_or((0, 0));
        self.undo_only = true;
    }
}

impl super::policy::sealed::Sealed for Fast {}

// SAFETY:
// - `alloc` returns `s` either from `exact_reuse`, which checks that the
//   `nslots` bits of `last_free` are all clear (free) and sets them (that
//   run was freed whole, so it lies inside the area and one segment: every
//   run a free gives back was allocated so), or from `alloc_search`, when
//   `search` found `[s, s + n)` inside a run `[a, b)` of clear bits that
//   stops at the segment line and the area's end (`run_limit`), and sets
//   those bits before returning (a summary marked exact only chooses which
//   segment is searched: the start always comes from `search` over the
//   bits); so no two live allocations share a slot;
// - both return only starts that pass `req.acceptable`.
unsafe impl Policy for Fast {
    type Area = FastArea;
    const NAME: &'static str = "fast";
    /// The held bits, the segments' longest runs, their exact marks.
    const METADATA: &'static [MetaArray] = &[
        MetaArray::of::<u64>(MetaCount::SlotBits),
        MetaArray::of::<u16>(MetaCount::Segments),
        MetaArray::of::<u64>(MetaCount::SegmentBits),
    ];

    fn new_area(geom: &AreaGeom, mem: &mut AreaMemory<'_>) -> Option<FastArea> {
        // Zero means free: the held bits are used as they come, so a new
        // area of a heap pool touches none of their pages.
        let held = mem.take::<u64>()?;
        let longest = mem.take::<u16>()?;
        let mut exact = mem.take::<u64>()?;
        exact.fill(!0);
        let nsegs = longest.len();
        let mut area = FastArea {
            // Bits past the area's end stay clear (free) but are never
            // reached: every scan stops at `geom.nslabs`.
            held,
            longest,
            exact,
            last_search: (0, 0, false),
            last_free: (0, 0),
            last_word: (0, 0),
            undo_only: false,
        };
        for j in 0..nsegs {
            let (lo, hi) = FastArea::segment_range(geom, j);
            area.longest[j] = (hi - lo) as u16;
        }
        Some(area)
    }

    // Always inlined: the exact reuse is a handful of instructions, less
    // than a call's prologue; the search is a call, so that its frame and
    // spills do not weigh on the reuse.
    #[inline(always)]
    fn alloc(area: &mut FastArea, geom: &AreaGeom, req: &Request) -> Option<u32> {
        match area.exact_reuse(geom, req) {
            // Taken, bits set; the summary stays as it was (high is safe).
            Some(s) => Some(s),
            None => area.alloc_search(geom, req),
        }
    }

    // Always inlined, as `alloc`: the rescan is the call.
    #[inline(always)]
    fn free(area: &mut FastArea, geom: &AreaGeom, start: u32, nslots: u32) {
        let local = start - geom.first;
        // Freeing the run an exact reuse took, with nothing else changed
        // since it was last freed, gives back the very bits the segment's
        // summary was made exact for then (the steady state of a driver
        // mapping and unmapping one size): no rescan. Otherwise rescan.
        if area.undo_only && area.last_free == (local, nslots) {
            let (w, m) = area.last_word;
            if m != 0 {
                area.held[w] &= !m;
            } else {
                clear_range(&mut area.held, local, nslots);
            }
        } else {
            area.free_and_refresh(geom, local, nslots);
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::meta::TestArea;

    /// A request for `nslots` slots with no alignment beyond the slot.
    fn req(nslots: u32) -> Request {
        Request {
            nslots,
            align_mask: (1 << 11) - 1,
            iotlb_mask: 0,
            orig: 0,
            tbl_dma: 0,
            tbl_slot: 0,
            boundary_slots: 1 << 40,
            stride: 1,
        }
    }

    /// The exact longest free run of area-relative segment `j`, bit by bit.
    fn truth(area: &FastArea, geom: &AreaGeom, j: usize) -> u16 {
        let (lo, hi) = FastArea::segment_range(geom, j);
        let (mut best, mut run) = (0, 0);
        for i in lo..hi {
            if area.held[(i / 64) as usize] >> (i % 64) & 1 == 0 {
                run += 1;
                best = best.max(run);
            } else {
                run = 0;
            }
        }
        best
    }

    /// Churn that mostly frees and retakes one size (the exact-reuse and
    /// undo path) mixed with other sizes: after every free the summary of
    /// the freed run's segment is exact, and no summary is ever below the
    /// truth.
    #[test]
    fn summaries_stay_exact_after_frees_with_exact_reuse() {
        let geom = AreaGeom {
            first: 128,
            nslabs: 1000,
            segment: 128,
            slot_shift: 11,
        };
        let mut area = TestArea::<Fast>::new(&geom);
        let mut live: alloc::vec::Vec<(u32, u32)> = alloc::vec::Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut undone = 0;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = if x % 3 == 0 {
                1 + (x >> 8) as u32 % 40
            } else {
                3
            };
            let freed = if !live.is_empty() && (x >> 20) % 2 == 0 {
                let (s, n) = live.swap_remove((x >> 24) as usize % live.len());
                Fast::free(&mut area, &geom, s, n);
                Some(FastArea::segment_of(&geom, s - geom.first))
            } else if let Some(s) = Fast::alloc(&mut area, &geom, &req(n)) {
                assert!((s..s + n).all(|i| !live.iter().any(|&(a, m)| (a..a + m).contains(&i))));
                if (x >> 40) % 4 == 0 {
                    // Given straight back: the undo of a search.
                    Fast::free(&mut area, &geom, s, n);
                    Some(FastArea::segment_of(&geom, s - geom.first))
                } else {
                    live.push((s, n));
                    None
                }
            } else {
                None
            };
            // The segment an exact reuse may hold without unmarking it.
            let (rs, rl) = area.last_free;
            let reused = (rl != 0
                && (rs..rs + rl).all(|i| area.held[(i / 64) as usize] >> (i % 64) & 1 == 1))
            .then(|| FastArea::segment_of(&geom, rs));
            for j in 0..area.longest.len() {
                let t = truth(&area, &geom, j);
                assert!(area.longest[j] >= t, "step {step}: segment {j} low");
                if area.is_exact(j) && reused != Some(j) {
                    assert_eq!(area.longest[j], t, "step {step}: segment {j} marked exact");
                }
                if freed == Some(j) {
                    assert_eq!(area.longest[j], t, "step {step}: segment {j} not exact");
                }
            }
            // Retake and give back the run just freed, as a driver mapping
            // one size does; the summaries must come out the same.
            if freed.is_some() && x % 5 == 0 {
                let before = area.longest.to_vec();
                let (start, len) = area.last_free;
                if let Some(s) = Fast::alloc(&mut area, &geom, &req(len)) {
                    if s == geom.first + start {
                        Fast::free(&mut area, &geom, s, len);
                        assert_eq!(area.longest[..], before[..], "step {step}");
                        undone += 1;
                    } else {
                        live.push((s, len));
                    }
                }
            }
        }
        assert!(undone > 100, "the undo path ran {undone} times");
    }

    /// The allocator-only entry point runs the policy and leaves the pool
    /// as it found it.
    /// The whole-word search finds what the run-by-run walk finds, for
    /// random bits, sizes, alignments, phases and device boundaries.
    #[test]
    fn word_search_matches_run_search() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut checked = 0;
        for case in 0..20_000 {
            let seg = if case % 3 == 0 { 64 } else { 128 };
            let first = [0u32, 128, 64, 256][case % 4];
            let geom = AreaGeom {
                first,
                nslabs: 512,
                segment: seg,
                slot_shift: 11,
            };
            let mut area = TestArea::<Fast>::new(&geom);
            for w in area.held.iter_mut() {
                let a = rnd();
                *w = match case % 5 {
                    0 => a,
                    1 => a & rnd() & rnd(),
                    2 => a | rnd(),
                    3 => 0,
                    _ => a & (a >> 1) & rnd(),
                };
            }
            let n = 1 + (rnd() % if case % 2 == 0 { 8 } else { seg as u64 + 4 }) as u32;
            let align_bits = 11 + (rnd() % 9) as u32;
            let iotlb = if case % 7 == 0 {
                (1u64 << (11 + rnd() % 5)) - 1
            } else {
                0
            };
            let align_mask = (1u64 << align_bits) - 1;
            let tbl_dma = (rnd() % 64) << 11;
            let boundary_slots = 1u64 << (rnd() % 12);
            let req = Request {
                nslots: n,
                align_mask,
                iotlb_mask: iotlb & !align_mask,
                orig: if case % 7 == 0 {
                    rnd() & 0xffff_f800
                } else {
                    0
                },
                tbl_dma,
                tbl_slot: tbl_dma >> 11,
                boundary_slots,
                stride: 1,
            };
            let j = (rnd() % 4) as usize;
            let (lo, hi) = FastArea::segment_range(&geom, j);
            let fast = area.search_words(&geom, &req, lo, hi);
            let runs = area.search_runs(&geom, &req, lo, hi);
            if let Some(found) = fast {
                assert_eq!(found, runs, "case {case}: {req:?} {:x?}", area.held);
                checked += 1;
            }
        }
        assert!(checked > 15_000, "{checked}");
    }

    /// The chunked range scan against a plain one.
    #[test]
    fn next_in_range_matches_naive() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let v: alloc::vec::Vec<u16> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 130) as u16
            })
            .collect();
        for from in [0, 1, 15, 16, 17, 100, 290, 299, 300] {
            for (lo, hi) in [
                (0, u32::MAX),
                (1, 2),
                (5, 9),
                (128, 129),
                (129, 200),
                (7, 7),
                (9, 3),
            ] {
                let naive = (from..v.len()).find(|&i| lo <= v[i] as u32 && (v[i] as u32) < hi);
                assert_eq!(next_in_range(&v, from, lo, hi), naive, "{from} {lo} {hi}");
            }
        }
    }

    #[test]
    fn alloc_free_n_leaves_the_pool_as_it_was() {
        use crate::{Device, Direction, DmaMask, PhysAddr, PoolConfig};
        let pool = crate::Pool::<Fast>::new_heap(1 << 20, PoolConfig::default()).unwrap();
        let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
        let live: alloc::vec::Vec<_> = (0..50)
            .map(|i| {
                pool.map(&dev, alloc::vec![0u8; 100 + 300 * i], Direction::ToDevice)
                    .unwrap()
            })
            .collect();
        let free: alloc::vec::Vec<bool> =
            (0..pool.nslabs()).map(|s| pool.slot_is_free(s)).collect();
        let used = pool.stats().io_tlb_used;
        let r = pool.alloc_request(&dev, PhysAddr(0x1000), 5000).unwrap();
        let s = pool.alloc_free_n(&r, 0, 1).unwrap();
        assert!(pool.slot_is_free(s));
        assert_eq!(pool.alloc_free_n(&r, 0, 100), Some(s));
        let after: alloc::vec::Vec<bool> =
            (0..pool.nslabs()).map(|s| pool.slot_is_free(s)).collect();
        assert_eq!(free, after);
        assert_eq!(pool.stats().io_tlb_used, used);
        let huge = pool
            .alloc_request(&dev, PhysAddr(0x1000), 256 << 10)
            .unwrap();
        drop(live);
        assert!(pool.alloc_free_n(&huge, 0, 1).is_some());
    }

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
            let mut naive1 = 0;
            let mut run1 = 0;
            for i in 0..64 {
                if words[0] >> i & 1 == 0 {
                    run1 += 1;
                    naive1 = naive1.max(run1);
                } else {
                    run1 = 0;
                }
            }
            assert_eq!(longest_clear_run(&words[..1]), naive1, "{:x}", words[0]);
            // Three words take the run-by-run path: it must agree too.
            let three = [words[0], words[1], !words[0]];
            let mut naive3 = 0;
            let mut run3 = 0;
            for i in 0..192 {
                if three[i / 64] >> (i % 64) & 1 == 0 {
                    run3 += 1;
                    naive3 = naive3.max(run3);
                } else {
                    run3 = 0;
                }
            }
            assert_eq!(longest_clear_run(&three), naive3, "{three:x?}");
        }
    }

    /// 128 segments of 128 slots: two words of exact marks.
    const WIDE: AreaGeom = AreaGeom {
        first: 0,
        nslabs: 128 * 128,
        segment: 128,
        slot_shift: 11,
    };

    /// `is_exact` reads segment `j`'s own mark, in either word, whatever
    /// the marks around it; `refresh` sets that mark and no other.
    #[test]
    fn exact_marks_are_one_bit_per_segment() {
        let mut area = TestArea::<Fast>::new(&WIDE);
        let words = [
            0,
            !0,
            1,
            1 << 63,
            0x8000_0000_0000_0001,
            0x5555_5555_5555_5555,
            0x0f0f_0f0f_0f0f_0f0f,
        ];
        for &a in &words {
            for &b in &words {
                area.exact.copy_from_slice(&[a, b]);
                for j in 0..128 {
                    let word = if j < 64 { a } else { b };
                    let set = word & (1u64 << (j % 64)) != 0;
                    assert_eq!(area.is_exact(j), set, "segment {j} of {a:#x} {b:#x}");
                }
            }
        }
        for j in [0, 1, 62, 63, 64, 65, 127] {
            area.exact.copy_from_slice(&[0, 0]);
            area.refresh(&WIDE, j);
            for k in 0..128 {
                assert_eq!(area.is_exact(k), k == j, "refresh of {j}, segment {k}");
            }
            area.exact.copy_from_slice(&[!0, !0]);
            area.clear_exact(j);
            area.refresh(&WIDE, j);
            assert!((0..128).all(|k| area.is_exact(k)), "refresh of {j}");
        }
    }

    /// A segment with an exact summary of `n + stride - 1` free slots is a
    /// sure fit (a run that long holds a start of every residue), one slot
    /// less is not; and only if the whole segment lies in one window of
    /// the device's boundary.
    #[test]
    fn sure_fit_exactly_when_the_summary_leaves_room() {
        for stride in [1, 2, 4, 32] {
            for n in [1, 3, 8, 64] {
                let mut r = req(n);
                let room = n + stride - 1;
                for j in [0, 1, 5, 127] {
                    assert!(FastArea::sure_fit(&WIDE, &r, j, room, stride));
                    assert!(!FastArea::sure_fit(&WIDE, &r, j, room - 1, stride));
                }
                // A window exactly one segment wide, on segment lines.
                r.boundary_slots = 128;
                for j in [0, 1, 5, 127] {
                    assert!(FastArea::sure_fit(&WIDE, &r, j, room, stride), "{j}");
                }
                // The same window shifted by a slot cuts every segment.
                r.tbl_slot = 1;
                for j in [0, 1, 5, 127] {
                    assert!(!FastArea::sure_fit(&WIDE, &r, j, room, stride), "{j}");
                }
                // A window of half a segment cuts every segment.
                r.tbl_slot = 0;
                r.boundary_slots = 64;
                for j in [0, 1, 5, 127] {
                    assert!(!FastArea::sure_fit(&WIDE, &r, j, room, stride), "{j}");
                }
            }
        }
    }

    /// A new area's summaries are all exact. Only a last freed run that
    /// an exact reuse took back unmarks its segment: not the absence of a
    /// freed run, nor a freed run still free (here given back by the undo
    /// of the search that took it, which marks its segment exact again).
    /// Segment 0 is held whole first, so that the run is in segment 1.
    #[test]
    fn forget_reuse_unmarks_only_a_retaken_run() {
        let mut area = TestArea::<Fast>::new(&WIDE);
        assert!((0..128).all(|k| area.is_exact(k)), "a new area");
        area.forget_reuse(&WIDE);
        assert!((0..128).all(|k| area.is_exact(k)), "nothing freed yet");
        set_range(&mut area.held, 0, 128);
        area.refresh(&WIDE, 0);
        let s = Fast::alloc(&mut area, &WIDE, &req(3)).unwrap();
        assert_eq!(FastArea::segment_of(&WIDE, s - WIDE.first), 1);
        Fast::free(&mut area, &WIDE, s, 3);
        assert_eq!(area.last_free, (s - WIDE.first, 3));
        let j = FastArea::segment_of(&WIDE, s - WIDE.first);
        area.forget_reuse(&WIDE);
        assert!((0..128).all(|k| area.is_exact(k)), "the freed run is free");
        assert_eq!(
            Fast::alloc(&mut area, &WIDE, &req(3)),
            Some(s),
            "exact reuse"
        );
        area.forget_reuse(&WIDE);
        for k in 0..128 {
            assert_eq!(area.is_exact(k), k != j, "segment {k}");
        }
    }

    /// The search takes the tightest of the first `CANDIDATES` segments
    /// that fit, walking in address order and counting only segments
    /// tighter than the best so far, and stops early at a perfect fit.
    /// Segments 0 to 4 hold free runs of 9, 8, 7, 6 and 5 slots at their
    /// starts, the rest is held: a 4-slot request takes segment 3 (the
    /// fourth candidate), not the tighter segment 4 after it, nor the
    /// first fit. With a perfect fit among the first four, it is taken.
    #[test]
    fn search_takes_the_tightest_of_the_first_candidates() {
        let geom = AreaGeom {
            first: 0,
            nslabs: 8 * 16,
            segment: 16,
            slot_shift: 11,
        };
        for (runs, want) in [
            (&[9u32, 8, 7, 6, 5][..], 3 * 16),
            (&[9, 4, 7, 6, 5][..], 16),
            (&[9, 8, 7, 6, 4][..], 3 * 16),
        ] {
            let mut area = TestArea::<Fast>::new(&geom);
            set_range(&mut area.held, 0, geom.nslabs);
            for (j, &n) in runs.iter().enumerate() {
                clear_range(&mut area.held, j as u32 * 16, n);
            }
            for j in 0..8 {
                area.refresh(&geom, j);
            }
            assert_eq!(CANDIDATES, 4);
            assert_eq!(
                Fast::alloc(&mut area, &geom, &req(4)),
                Some(want),
                "{runs:?}"
            );
        }
    }
}
