//! `Fast`: the default policy. A free bitmap per area, scanned a word at a
//! time, starting where the last mapping was given back.
//!
//! Why this shape (the argument in full is in `docs/DESIGN.md`):
//! - **One bit per slot.** Linux keeps a 4-byte free-run count per slot and
//!   rewrites up to a segment of them on every allocation and free (the
//!   backward merge walk). A bitmap is written with one or two word
//!   operations, and a free run is found with `trailing_zeros` on whole
//!   words: 64 slots per instruction instead of one.
//! - **Recently freed first.** The search starts at the last freed run
//!   (the *hint*), so a map that follows an unmap of the same size lands on
//!   the slots just written and read by the CPU: the bounce copy hits warm
//!   cache. `NextFit` walks its index through the whole area, touching cold
//!   memory on every map.
//! - **First fit from there, by runs.** The scan jumps from free run to free
//!   run (`next_one`, `next_zero`), tests the first start in each run that
//!   meets the alignment stride, and moves on; it never steps slot by slot.
//! - **Same acceptance rule as Linux.** A start is taken only where
//!   [`Request::acceptable`] holds, so `min_align_mask`, `alloc_align_mask`,
//!   page alignment and the device boundary mean exactly what they mean in
//!   `NextFit`. Runs stop at segment lines, as in Linux, so no mapping is
//!   ever larger or placed differently in kind.

use alloc::boxed::Box;

use super::bitmap::{clear_range, next_one, next_zero, set_range};
use super::policy::{boxed, AreaGeom, Policy, Request};

/// The default fast policy. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fast;

/// Per-area state of [`Fast`].
pub struct FastArea {
    /// One bit per slot of the area, set when the slot is held. Zero means
    /// free so that a new area is zeroed memory: no set-up pass, and for a
    /// large pool no page is touched until it is used.
    held: Box<[u64]>,
    /// Where the next search starts, relative to the area: the start of the
    /// last freed run, or just past the last allocation.
    hint: u32,
}

impl FastArea {
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
        // Bits past the area's end stay clear (free) but are never
        // reached: every scan stops at `geom.nslabs`.
        FastArea {
            held: boxed(0u64, geom.nslabs.div_ceil(64) as usize),
            hint: 0,
        }
    }

    #[inline]
    fn alloc(area: &mut FastArea, geom: &AreaGeom, req: &Request) -> Option<u32> {
        let hint = area.hint.min(geom.nslabs);
        let s = match area.search(geom, req, hint, geom.nslabs) {
            Some(s) => s,
            // Runs that start before the hint; the one holding the hint is
            // seen whole this time.
            None => area.search(geom, req, 0, hint.saturating_add(1).min(geom.nslabs))?,
        };
        let local = s - geom.first;
        set_range(&mut area.held, local, req.nslots);
        area.hint = local + req.nslots;
        Some(s)
    }

    #[inline]
    fn free(area: &mut FastArea, geom: &AreaGeom, start: u32, nslots: u32) {
        let local = start - geom.first;
        clear_range(&mut area.held, local, nslots);
        area.hint = local;
    }

    fn largest_free_run(area: &FastArea, geom: &AreaGeom) -> u32 {
        let mut best = 0;
        let mut pos = 0;
        loop {
            let a = next_zero(&area.held, pos, geom.nslabs);
            if a >= geom.nslabs {
                break;
            }
            let limit = geom.run_limit(geom.first + a) - geom.first;
            let b = next_one(&area.held, a, limit).unwrap_or(limit);
            best = best.max(b - a);
            pos = b;
        }
        best
    }

    fn is_free(area: &FastArea, geom: &AreaGeom, slot: u32) -> bool {
        let i = slot - geom.first;
        area.held[(i / 64) as usize] >> (i % 64) & 1 == 0
    }

    fn metadata_bytes(geom: &AreaGeom) -> usize {
        geom.nslabs.div_ceil(64) as usize * 8 + core::mem::size_of::<FastArea>()
    }
}
