//! Golden tests for `NextFit`: hand-worked request sequences with the slot
//! indices Linux's swiotlb gives for them, and a randomized comparison with
//! a small reference model of the same algorithm.
//!
//! The Linux behaviour these encode (`kernel/dma/swiotlb.c`, 6.10 and
//! later, after the 2024 alignment fixes), in words:
//!
//! - `swiotlb_init_io_tlb_pool`: every slot gets a free-run count `list`,
//!   the free slots starting at it up to the next segment line
//!   (`IO_TLB_SEGSIZE` = 128 slots, lines counted from the pool's first
//!   slot) or the pool's end, whichever comes first. Each area's rotating
//!   `index` starts at 0.
//! - `swiotlb_tbl_map_single`: `offset = swiotlb_align_offset(dev,
//!   alloc_align_mask, orig)` = the bits of `orig` under `min_align_mask`
//!   and under `alloc_align_mask | (IO_TLB_SIZE - 1)`; the allocation is
//!   `ALIGN(size + offset, alloc_align_mask + 1)` bytes; the mapping's first
//!   byte sits `offset >> IO_TLB_SHIFT` slots (`pad_slots`) plus
//!   `offset & (IO_TLB_SIZE - 1)` bytes after the allocation's start.
//! - `swiotlb_find_slots`: start in the caller's area, then the next ones in
//!   turn, wrapping to area 0.
//! - `swiotlb_search_pool_area`: with no masks at all, allocations of a page
//!   or more get `alloc_align_mask = PAGE_SIZE - 1`; the slot mask is always
//!   added; the `min_align_mask` bits left over (`iotlb_align_mask`) must
//!   equal `orig`'s (when `orig` is non-zero); `stride = get_max_slots(max(
//!   alloc_align_mask, iotlb_align_mask))`. Reject at once if the request
//!   needs more slots than the area has free (`nslots > area_nslabs -
//!   used`). Then from `index`: a slot whose DMA address (`tbl_dma_addr`,
//!   the pool's DMA address under the segment boundary mask, plus the
//!   slot's offset) is not aligned as asked moves on by one slot; an aligned
//!   one is taken if the span does not cross the device's segment boundary
//!   (`iommu_is_span_boundary`) and its `list` covers the request, else the
//!   search moves on by `stride`. Moving on past the area's end goes back to
//!   0 (`wrap_area_index`: to 0, not modulo). The search gives up once the
//!   slots it stepped over reach the area's size. On success the slots get
//!   `list = 0`, the free slots just before them in the same segment are
//!   renumbered to end there, and `index` moves just past the allocation.
//! - `swiotlb_release_slots`: the freed slots are renumbered counting on
//!   from the run after them (when that run is in the same segment), and the
//!   free slots before them in the segment are renumbered on top. `index`
//!   does not move.
//!
//! Each test walks through the search in a comment. The pools are built with
//! `Pool::new` over heap memory at a chosen physical base, so the base
//! decides alignment as a kernel pool's physical address does; every CPU
//! access still goes through the heap pointer.

use std::ptr::NonNull;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt as _, SeedableRng as _};

use swiotlb::pool::NextFitArea;
use swiotlb::{
    Attrs, Bounce, Device, Direction, DmaMask, Error, MapOptions, NextFit, PhysAddr, Pool,
    PoolConfig,
};

/// `IO_TLB_SIZE`.
const SLOT: usize = 2048;
/// `IO_TLB_SHIFT`.
const SHIFT: u32 = 11;
/// `PAGE_SIZE`.
const PAGE: usize = 4096;
/// A pool base that is page, 64 KiB and 256 MiB aligned.
const BASE: u64 = 0x1000_0000;
/// An original buffer address with its low 16 bits clear.
const ORIG: u64 = 0x4000_0000;
/// The largest mapping any test makes.
const MAX_MAP: usize = 128 * SLOT;

/// A `NextFit` pool over heap memory at a chosen physical base, with a
/// source buffer for the copies the maps make.
struct Fixture {
    // Dropped before `_backing`: fields drop in declaration order.
    pool: Pool<NextFit>,
    _backing: Vec<u8>,
    _src: Vec<u8>,
    src: *mut u8,
}

/// One live bounce and the size it was made with.
#[derive(Clone, Copy, Debug)]
struct Mapped {
    b: Bounce,
    size: usize,
}

impl Fixture {
    fn new(nslabs: u32, nareas: u32, base: u64) -> Self {
        Self::with_config(nslabs, base, PoolConfig::with_areas(nareas))
    }

    fn with_config(nslabs: u32, base: u64, config: PoolConfig) -> Self {
        let len = nslabs as usize * SLOT;
        let mut backing = vec![0u8; len];
        let vaddr = NonNull::new(backing.as_mut_ptr()).unwrap();
        // SAFETY:
        // - `vaddr` is valid for reads and writes of `len` bytes: `backing`
        //   holds them and is dropped after the pool (field order), and its
        //   heap buffer does not move when the `Vec` does;
        // - nothing else touches `backing` while the pool lives;
        // - `base` is a simulated physical address: the pool uses it only
        //   for address arithmetic (alignment, containment) and reaches the
        //   bytes through `vaddr` alone, which is contiguous.
        let pool = unsafe { Pool::<NextFit>::new(vaddr, PhysAddr(base), len, config) }.unwrap();
        assert_eq!(pool.nslabs(), nslabs);
        let mut src = vec![0x5a; MAX_MAP];
        let src_ptr = src.as_mut_ptr();
        Fixture {
            pool,
            _backing: backing,
            _src: src,
            src: src_ptr,
        }
    }

    /// Bounces `size` bytes of an original at `orig` through the pool,
    /// starting in area `hint`, with `alloc_align_mask`.
    fn try_map(
        &self,
        dev: &Device,
        orig: u64,
        size: usize,
        alloc_align_mask: u64,
        hint: usize,
    ) -> Result<Mapped, Error> {
        assert!(size <= MAX_MAP);
        let opts = MapOptions::new()
            .with_alloc_align_mask(alloc_align_mask)
            .with_area_hint(hint);
        // SAFETY: `src` points into `_src`, valid for `MAX_MAP >= size`
        // bytes for the fixture's life, which outlives every mapping; no
        // reference to `_src` is ever made after construction. Several
        // mappings may share it: the pool reads it at map time and, as every
        // unmap here is to-device, never writes it.
        let b = unsafe {
            self.pool
                .bounce_raw(dev, PhysAddr(orig), self.src, size, Attrs::NONE, opts)
        }?;
        Ok(Mapped { b, size })
    }

    /// `try_map` that must succeed.
    fn map_at(
        &self,
        dev: &Device,
        orig: u64,
        size: usize,
        alloc_align_mask: u64,
        hint: usize,
    ) -> Mapped {
        self.try_map(dev, orig, size, alloc_align_mask, hint)
            .unwrap_or_else(|e| panic!("map of {size} bytes failed: {e:?}"))
    }

    /// A map of `size` bytes from area 0, no alignment mask, that must
    /// succeed.
    fn map(&self, dev: &Device, size: usize) -> Mapped {
        self.map_at(dev, ORIG, size, 0, 0)
    }

    fn unmap(&self, dev: &Device, m: Mapped) {
        // SAFETY: `m` is live (each test unmaps a mapping once); to-device,
        // so nothing is copied back into the shared source.
        unsafe {
            self.pool.unmap_raw(
                dev,
                dev.phys_to_dma(m.b.phys),
                m.size,
                Direction::ToDevice,
                Attrs::NONE,
            )
        }
        .unwrap();
    }

    /// Area `area`'s rotating index (relative to the area).
    fn index(&self, area: usize) -> u32 {
        self.pool.with_area(area, |a: &NextFitArea, _| a.index())
    }

    /// `n` one-slot maps from area 0; returns them in order.
    fn singles(&self, dev: &Device, n: u32) -> Vec<Mapped> {
        (0..n).map(|_| self.map(dev, 100)).collect()
    }

    fn phys_of(&self, slot: u32) -> u64 {
        self.pool.start().0 + slot as u64 * SLOT as u64
    }
}

/// A device that always bounces, with no alignment needs and Linux's
/// default 4 GiB segment boundary. Each test (one thread) has one such
/// device, and every call gives a clone of it: clones are the same
/// device, as a driver keeps one, so that a mapping made with one call's
/// value is unmapped with the same device (what the misuse checker, when
/// built in, asks).
fn plain() -> Device {
    thread_local! {
        static PLAIN: Device = const { Device::new(DmaMask::BITS_64).with_force_bounce() };
    }
    PLAIN.with(Device::clone)
}

/// An NVMe-like device: `min_align_mask` 0xfff; one per test, as
/// [`plain`].
fn nvme() -> Device {
    thread_local! {
        static NVME: Device = const {
            Device::new(DmaMask::BITS_64)
                .with_force_bounce()
                .with_min_align_mask(0xfff)
        };
    }
    NVME.with(Device::clone)
}

#[track_caller]
fn assert_at(m: &Mapped, start: u32) {
    assert_eq!(m.b.start, start, "allocation start of {m:?}");
    assert_eq!(m.b.slot, start, "no padding slots expected in {m:?}");
}

/// Sequential mappings march the rotating index; unmapping does not move it
/// back (next fit, not LIFO).
///
/// Linux, `swiotlb_search_pool_area` over one 512-slot area, index 0:
/// - 100 bytes: 1 slot, no mask, stride 1. Slot 0 has `list` 128: taken.
///   `index` = 0 + 1 = 1.
/// - 3000 bytes: 2 slots (under a page, so no page alignment). Slot 1 has
///   127: taken, 1..=2. `index` = 3.
/// - 2048 bytes: 1 slot at 3, `index` = 4.
/// - unmap the 3000-byte mapping (`swiotlb_release_slots`): slots 1 and 2
///   are free again, `index` stays 4.
/// - 100 bytes: the search starts at 4, not at the hole at 1: slot 4.
/// - 3000 bytes: slots 5..=6, `index` = 7.
#[test]
fn sequential_maps_march_and_unmap_does_not_rewind() {
    let fx = Fixture::new(512, 1, BASE);
    let dev = plain();
    let a = fx.map(&dev, 100);
    assert_at(&a, 0);
    assert_eq!(fx.index(0), 1);
    let b = fx.map(&dev, 3000);
    assert_at(&b, 1);
    assert_eq!(b.b.nslots, 2);
    assert_eq!(fx.index(0), 3);
    let c = fx.map(&dev, 2048);
    assert_at(&c, 3);
    assert_eq!(c.b.nslots, 1);
    assert_eq!(fx.index(0), 4);

    fx.unmap(&dev, b);
    assert_eq!(fx.index(0), 4, "an unmap does not move the index");
    assert!(fx.pool.slot_is_free(1) && fx.pool.slot_is_free(2));

    let d = fx.map(&dev, 100);
    assert_at(&d, 4);
    let e = fx.map(&dev, 3000);
    assert_at(&e, 5);
    assert_eq!(fx.index(0), 7);
    assert!(fx.pool.slot_is_free(1), "the hole at 1 is left behind");
}

/// The index passes the area's end and goes back to slot 0.
///
/// One 512-slot area (four segments):
/// - three 256 KiB maps: 128 slots each, a page or more so page aligned
///   (stride 2). Each starts at an aligned slot whose `list` is 128: slots
///   0, 128, 256; `index` ends at 384.
/// - 126 slots (258048 bytes): slot 384 (`list` 128), `index` = 510.
/// - 100 bytes: slot 510 (`list` 2), `index` 511.
/// - 100 bytes: slot 511 (`list` 1), `index` = `wrap_area_index(512)` = 0.
/// - the pool is full: another 100 bytes fails at the `nslots >
///   area_nslabs - used` check, and `index` stays 0.
/// - unmap the mapping at 128. 100 bytes: from 0, slots 0..=127 have `list`
///   0, stride 1 walks them; slot 128 has 128: taken. `index` = 129.
/// - 4096 bytes (page aligned, stride 2): slot 129 is not page aligned,
///   walk one slot to 130 (aligned, `list` 126): taken. `index` = 132.
#[test]
fn index_wraps_to_zero_after_the_area_end() {
    let fx = Fixture::new(512, 1, BASE);
    let dev = plain();
    let m0 = fx.map(&dev, 128 * SLOT);
    let m1 = fx.map(&dev, 128 * SLOT);
    let m2 = fx.map(&dev, 128 * SLOT);
    assert_at(&m0, 0);
    assert_at(&m1, 128);
    assert_at(&m2, 256);
    assert_eq!(fx.index(0), 384);
    let m3 = fx.map(&dev, 126 * SLOT);
    assert_at(&m3, 384);
    assert_eq!(fx.index(0), 510);
    assert_at(&fx.map(&dev, 100), 510);
    assert_eq!(fx.index(0), 511);
    assert_at(&fx.map(&dev, 100), 511);
    assert_eq!(fx.index(0), 0, "wrap_area_index: past the end is 0");

    assert!(matches!(
        fx.try_map(&dev, ORIG, 100, 0, 0),
        Err(Error::PoolFull { .. })
    ));
    assert_eq!(fx.index(0), 0, "a failed search leaves the index alone");

    fx.unmap(&dev, m1);
    assert_at(&fx.map(&dev, 100), 128);
    assert_eq!(fx.index(0), 129);
    assert_at(&fx.map(&dev, PAGE), 130);
    assert_eq!(fx.index(0), 132);
}

/// Moving on past the area's end goes to slot 0, not `index % area_nslabs`.
///
/// A 99-slot pool (one area, smaller than a segment: every `list` is
/// `99 - i`). Page-sized maps are page aligned with stride 2:
/// - 49 maps of 4096 bytes take 0, 2, .., 96 (each aligned slot has room);
///   `index` = 98.
/// - unmap the one at 0: `list[0]` = 2, `list[1]` = 1 (slot 2 is taken).
/// - 4096 bytes: slot 98 is aligned but `list[98]` = 1 < 2; moving on by the
///   stride gives 100, past the end: `wrap_area_index` makes it 0 (modulo
///   would give 1, an unaligned slot, from which the walk would step over
///   the even slots 2..=98 again and give up after 99 slots checked). Slot 0
///   is aligned with `list` 2: taken. `index` = 2.
#[test]
fn wrap_goes_to_zero_not_modulo() {
    let fx = Fixture::new(99, 1, BASE);
    let dev = plain();
    let maps: Vec<Mapped> = (0..49).map(|_| fx.map(&dev, PAGE)).collect();
    for (k, m) in maps.iter().enumerate() {
        assert_at(m, 2 * k as u32);
    }
    assert_eq!(fx.index(0), 98);
    fx.unmap(&dev, maps[0]);
    assert_at(&fx.map(&dev, PAGE), 0);
    assert_eq!(fx.index(0), 2);
}

/// A run that does not fit in the rest of a segment moves on to the next
/// segment: counts stop at segment lines.
///
/// One 512-slot area, segments at 0, 128, 256, 384:
/// - 127 slots (page aligned): slot 0. `index` = 127. Slot 127 is free with
///   `list` 1: the count stops at the line at 128.
/// - 3000 bytes (2 slots, stride 1): slot 127 has 1 < 2; slot 128 has 128:
///   taken. `index` = 130. Slot 127 stays free.
/// - 100 bytes: slot 130, `index` = 131.
/// - 10 slots (page aligned): 131 is not page aligned, walk to 132
///   (`list` 124): taken. `index` = 142. Slot 131 stays free.
/// - 118 slots (page aligned): 142 is aligned but `list` is 256 - 142 =
///   114; the stride visits 144 (112), .., 254 (2), all short; 256 has 128:
///   taken. `index` = 374.
/// - 100 bytes: slot 374.
#[test]
fn a_run_that_does_not_fit_the_segment_tail_moves_to_the_next_segment() {
    let fx = Fixture::new(512, 1, BASE);
    let dev = plain();
    assert_at(&fx.map(&dev, 127 * SLOT), 0);
    assert_eq!(fx.index(0), 127);
    assert_at(&fx.map(&dev, 3000), 128);
    assert_eq!(fx.index(0), 130);
    assert!(fx.pool.slot_is_free(127));
    assert_at(&fx.map(&dev, 100), 130);
    assert_at(&fx.map(&dev, 10 * SLOT), 132);
    assert_eq!(fx.index(0), 142);
    assert!(fx.pool.slot_is_free(131));
    assert_at(&fx.map(&dev, 118 * SLOT), 256);
    assert_eq!(fx.index(0), 374);
    assert!((142..256).all(|s| fx.pool.slot_is_free(s)));
    assert_at(&fx.map(&dev, 100), 374);
}

/// An allocation shortens the counts of the free slots just before it in its
/// segment, so a later search does not take a run that would overlap it.
///
/// One 256-slot area on a page-aligned base:
/// - 100 bytes: slot 0, `index` 1.
/// - 4096 bytes: 1 is not page aligned, walk to 2 (`list` 126): taken,
///   2..=3. Slot 1 stays free and is renumbered from 127 to 1: its run now
///   ends at the allocation. `index` 4.
/// - 122 slots (page aligned): 4 (`list` 124): taken, 4..=125. `index` 126.
/// - 128 slots: 126 has 2; 128 has 128: taken. `index` 256, wrapped to 0.
///   Free: 1 (`list` 1), and 126..=127 (`list` 2, 1).
/// - 3000 bytes (2 slots, stride 1): 0 is taken; 1 says 1 < 2 (it would say
///   127, and be taken over the allocation at 2, had the allocation not
///   renumbered it); 2..=125 are taken; 126 has 2: taken. `index` 128.
/// - 100 bytes: 128..=255 and 0 are taken; 1: taken. `index` 2.
#[test]
fn an_allocation_shortens_the_free_run_before_it() {
    let fx = Fixture::new(256, 1, BASE);
    let dev = plain();
    assert_at(&fx.map(&dev, 100), 0);
    assert_at(&fx.map(&dev, PAGE), 2);
    assert_eq!(fx.index(0), 4);
    assert!(fx.pool.slot_is_free(1));
    assert_at(&fx.map(&dev, 122 * SLOT), 4);
    assert_eq!(fx.index(0), 126);
    assert_at(&fx.map(&dev, 128 * SLOT), 128);
    assert_eq!(fx.index(0), 0);
    assert_at(&fx.map(&dev, 3000), 126);
    assert_eq!(fx.index(0), 128);
    assert_at(&fx.map(&dev, 100), 1);
    assert_eq!(fx.index(0), 2);
}

/// Freeing merges with the free runs before and after, within a segment.
///
/// One 256-slot area (segments 0..128 and 128..256), page-aligned maps:
/// - A 40 slots at 0, B 40 at 40, C 40 at 80, D 8 at 120 (each aligned with
///   room), E 128 at 128. `index` = 256, wrapped to 0. The pool is full.
/// - unmap A: slot 40 is taken, so A's slots count 40..1 from slot 0.
/// - unmap C: slot 120 (D) is taken: 80..119 count 40..1; slot 79 (B) is
///   taken, so nothing before is renumbered.
/// - 80 slots: 80 free slots, so no early reject; from 0 every even slot
///   has at most 40: no slot has 80 in a row, the search fails, `index`
///   stays 0.
/// - unmap B: the run after it (C, `list[80]` = 40) continues the count:
///   79..40 get 41..80, then the free slots before (A) get 81..120. Slot 0
///   now says 120.
/// - 120 slots: slot 0, `list` 120: taken. `index` = 120.
/// - unmap D and E. E (128..256) has no run after it in its segment; D
///   (120..128) ends on the segment line, so its count starts from 0, not
///   from E's 128: `list[120]` = 8.
/// - 10 slots from 120: 120 (8), 122 (6), 124 (4), 126 (2) are short: the
///   free run does not continue over the line; 128 (128): taken.
#[test]
fn freeing_merges_neighbours_but_not_across_a_segment_line() {
    let fx = Fixture::new(256, 1, BASE);
    let dev = plain();
    let a = fx.map(&dev, 40 * SLOT);
    let b = fx.map(&dev, 40 * SLOT);
    let c = fx.map(&dev, 40 * SLOT);
    let d = fx.map(&dev, 8 * SLOT);
    let e = fx.map(&dev, 128 * SLOT);
    for (m, s) in [(&a, 0), (&b, 40), (&c, 80), (&d, 120), (&e, 128)] {
        assert_at(m, s);
    }
    assert_eq!(fx.index(0), 0);

    fx.unmap(&dev, a);
    fx.unmap(&dev, c);
    assert!(matches!(
        fx.try_map(&dev, ORIG, 80 * SLOT, 0, 0),
        Err(Error::PoolFull { requested: 80, .. })
    ));
    assert_eq!(fx.index(0), 0);

    fx.unmap(&dev, b);
    let big = fx.map(&dev, 120 * SLOT);
    assert_at(&big, 0);
    assert_eq!(fx.index(0), 120);

    fx.unmap(&dev, d);
    fx.unmap(&dev, e);
    assert_at(&fx.map(&dev, 10 * SLOT), 128);
    assert_eq!(fx.index(0), 138);
    assert!((120..128).all(|s| fx.pool.slot_is_free(s)));
}

/// Mappings of a page or more (with no mask) start page aligned: an
/// unaligned index walks one slot at a time until aligned, then the search
/// strides by 2, skipping odd slots even where they have room.
///
/// One 256-slot area on a page-aligned base, so even slots are page aligned:
/// - 256 maps of 100 bytes fill slots 0..=255; `index` wraps to 0.
/// - unmap slots 1, 2, 6, 7, 10, 11: `list[1]` = 2, `list[2]` = 1,
///   `list[6]` = 2, `list[7]` = 1, `list[10]` = 2, `list[11]` = 1.
/// - 4096 bytes (2 slots, stride 2): 0 (`list` 0), 2 (1), 4 (0), 6 (2):
///   taken. `index` = 8. The 2-run at 1 is never looked at.
/// - 4096 bytes: 8 (0), 10 (2): taken. `index` = 12.
/// - 3000 bytes (2 slots, under a page: stride 1): 12..=255 are taken, the
///   index wraps to 0 (taken), 1 has 2: taken. `index` = 3.
/// - unmap slots 3, 4, 5: `list` 3, 2, 1 (6 is taken).
/// - 4096 bytes: slot 3 has 3 free slots but is not page aligned: walk one
///   slot to 4 (aligned, `list` 2): taken. `index` = 6. Slot 3 is left with
///   `list` 1.
/// - 100 bytes (stride 1): 6..=255 and 0..=2 are taken; 3: taken.
#[test]
fn page_sized_maps_walk_to_alignment_then_stride_two() {
    let fx = Fixture::new(256, 1, BASE);
    let dev = plain();
    let singles = fx.singles(&dev, 256);
    for (s, m) in singles.iter().enumerate() {
        assert_at(m, s as u32);
    }
    assert_eq!(fx.index(0), 0);
    for s in [1, 2, 6, 7, 10, 11] {
        fx.unmap(&dev, singles[s]);
    }
    assert_at(&fx.map(&dev, PAGE), 6);
    assert_eq!(fx.index(0), 8);
    assert_at(&fx.map(&dev, PAGE), 10);
    assert_eq!(fx.index(0), 12);
    assert_at(&fx.map(&dev, 3000), 1);
    assert_eq!(fx.index(0), 3);
    for s in [3, 4, 5] {
        fx.unmap(&dev, singles[s]);
    }
    assert_at(&fx.map(&dev, PAGE), 4);
    assert_eq!(fx.index(0), 6);
    assert_at(&fx.map(&dev, 100), 3);
    assert_eq!(fx.index(0), 4);
}

/// Alignment is judged on the slot's address, not on its index: on a base
/// that is slot aligned but not page aligned, the odd slots are the page
/// aligned ones, while segment lines still fall on multiples of 128 slots.
///
/// One 256-slot area at 0x1000_0800:
/// - 4096 bytes: slot 0 is at ...0800, not page aligned; walk to 1
///   (...1000, `list` 127): taken. `index` = 3.
/// - 100 bytes: slot 3. `index` = 4.
/// - 4096 bytes: 4 is at ...2800: walk to 5 (`list` 123): taken. `index` 7.
/// - 256 KiB (128 slots, page aligned): only odd slots are candidates and
///   an odd slot has at most 127 free slots before its segment line: the
///   search steps over the whole area and fails (Linux's
///   `swiotlb_tbl_map_single` warns about this for alignments above a page
///   for the same reason). `index` stays 7.
/// - 127 slots: from 7 the odd slots of the first segment are short (7 has
///   121); 129 has 127: taken. `index` = 256, wrapped to 0.
#[test]
fn alignment_is_judged_on_the_address_not_the_index() {
    let fx = Fixture::new(256, 1, BASE + 0x800);
    let dev = plain();
    let m = fx.map(&dev, PAGE);
    assert_at(&m, 1);
    assert_eq!(m.b.phys.0 % PAGE as u64, 0);
    assert_eq!(fx.index(0), 3);
    assert_at(&fx.map(&dev, 100), 3);
    assert_at(&fx.map(&dev, PAGE), 5);
    assert_eq!(fx.index(0), 7);
    assert!(fx.try_map(&dev, ORIG, 128 * SLOT, 0, 0).is_err());
    assert_eq!(fx.index(0), 7);
    assert_at(&fx.map(&dev, 127 * SLOT), 129);
    assert_eq!(fx.index(0), 0);
}

/// `min_align_mask` 0xfff: the bounce address keeps the original's low 12
/// bits. Bits 0..=10 are kept by an offset inside the slot; bit 11 by the
/// choice of slot, so only slots whose address has the original's bit 11
/// are candidates (`iotlb_align_mask` = 0xfff & !0x7ff = 0x800), with
/// stride 2.
///
/// One 256-slot area on a page-aligned base (even slots have bit 11 clear):
/// - 256 maps of 100 bytes by a plain device fill it; `index` wraps to 0.
/// - unmap slots 2, 3, 5, 9, 10: `list[2]` = 2, `list[3]` = 1, `list[5]` = 1,
///   `list[9]` = 2, `list[10]` = 1.
/// - NVMe, orig ...0a10 (bit 11 set), 3000 bytes: offset = 0xa10 & 0x7ff =
///   0x210, 3000 + 0x210 = 3528 bytes: 2 slots. From 0: even, wrong bit 11,
///   walk to 1 (odd, `list` 0); stride 2: 3 (1), 5 (1), 7 (0), 9 (2): taken.
///   The 2-run at 2 is skipped: wrong bit 11. Bounce address = slot 9 +
///   0x210, low 12 bits 0xa10. `index` = 11.
/// - NVMe, orig ...0400 (bit 11 clear), 3000 bytes: offset 0x400, 4024
///   bytes: 2 slots, even slots. 11 is odd: walk to 12; stride 2 over the
///   taken even slots to 254, then 256 wraps to 0 (taken), 2 (`list` 2):
///   taken. Low 12 bits 0x400. `index` = 4.
/// - NVMe, orig ...0810, 100 bytes: offset 0x10, 1 slot, odd slots. 4 is
///   even: walk to 5 (`list` 1): taken. Low 12 bits 0x810. `index` = 6.
#[test]
fn min_align_mask_keeps_low_bits_by_slot_parity_and_offset() {
    let fx = Fixture::new(256, 1, BASE);
    let singles = fx.singles(&plain(), 256);
    assert_eq!(fx.index(0), 0);
    for s in [2, 3, 5, 9, 10] {
        fx.unmap(&plain(), singles[s]);
    }
    let dev = nvme();

    let a = fx.map_at(&dev, ORIG + 0xa10, 3000, 0, 0);
    assert_at(&a, 9);
    assert_eq!(a.b.nslots, 2);
    assert_eq!(a.b.phys.0, fx.phys_of(9) + 0x210);
    assert_eq!(a.b.phys.0 & 0xfff, 0xa10);
    assert_eq!(fx.index(0), 11);

    let b = fx.map_at(&dev, ORIG + 0x400, 3000, 0, 0);
    assert_at(&b, 2);
    assert_eq!(b.b.nslots, 2);
    assert_eq!(b.b.phys.0, fx.phys_of(2) + 0x400);
    assert_eq!(b.b.phys.0 & 0xfff, 0x400);
    assert_eq!(fx.index(0), 4);

    let c = fx.map_at(&dev, ORIG + 0x810, 100, 0, 0);
    assert_at(&c, 5);
    assert_eq!(c.b.phys.0 & 0xfff, 0x810);
    assert_eq!(fx.index(0), 6);
}

/// `alloc_align_mask` 0xffff with `min_align_mask` 0xfff: the offset keeps
/// all 12 low bits (`swiotlb_align_offset` masks with `alloc_align_mask |
/// 0x7ff`), so an offset of 0x800 or more puts whole padding slots before
/// the mapping (`pad_slots`); the size is rounded up to 64 KiB; starts are
/// 64 KiB aligned (32 slots) and the stride is 32.
///
/// One 512-slot area on a 64 KiB aligned base:
/// - NVMe, orig ...1a10, 3000 bytes: offset 0xa10 (1 padding slot + 0x210),
///   ALIGN(3000 + 0xa10, 64 KiB) = 64 KiB = 32 slots. Slot 0 (aligned,
///   `list` 128): taken. Bounce at slot 1 + 0x210. `index` = 32.
/// - plain, 100 bytes: slot 32. `index` = 33.
/// - the first request again: 33..=63 are not 64 KiB aligned, walk one by
///   one to 64 (`list` 64): taken. Bounce at slot 65. `index` = 96.
/// - NVMe, same orig, 64 KiB: ALIGN(64 KiB + 0xa10, 64 KiB) = 128 KiB = 64
///   slots. 96 is aligned but has 32; stride 32 to 128 (128): taken. Bounce
///   at slot 129. `index` = 192.
/// - plain with `alloc_align_mask` 0xffff, 3000 bytes: no `min_align_mask`,
///   so offset 0, no padding; 64 KiB = 32 slots at 192 (aligned, 64 free).
#[test]
fn alloc_align_mask_adds_padding_slots_and_strides_by_the_alignment() {
    let fx = Fixture::new(512, 1, BASE);
    let dev = nvme();
    let orig = ORIG + 0x1a10;

    let a = fx.map_at(&dev, orig, 3000, 0xffff, 0);
    assert_eq!((a.b.start, a.b.slot, a.b.nslots), (0, 1, 32));
    assert_eq!(a.b.phys.0, fx.phys_of(1) + 0x210);
    assert_eq!(a.b.phys.0 & 0xfff, 0xa10);
    assert_eq!(fx.index(0), 32);

    assert_at(&fx.map(&plain(), 100), 32);
    assert_eq!(fx.index(0), 33);

    let b = fx.map_at(&dev, orig, 3000, 0xffff, 0);
    assert_eq!((b.b.start, b.b.slot, b.b.nslots), (64, 65, 32));
    assert_eq!(b.b.phys.0, fx.phys_of(65) + 0x210);
    assert_eq!(fx.index(0), 96);

    let c = fx.map_at(&dev, orig, 0x10000, 0xffff, 0);
    assert_eq!((c.b.start, c.b.slot, c.b.nslots), (128, 129, 64));
    assert_eq!(c.b.phys.0, fx.phys_of(129) + 0x210);
    assert_eq!(fx.index(0), 192);

    let d = fx.map_at(&plain(), orig, 3000, 0xffff, 0);
    assert_eq!((d.b.start, d.b.slot, d.b.nslots), (192, 192, 32));
    assert_eq!(d.b.phys.0, fx.phys_of(192));
    assert_eq!(fx.index(0), 224);
}

/// Two areas: the hint picks the first area searched, each area keeps its
/// own index, and a full or fragmented area hands over to the next
/// (`swiotlb_find_slots`: hint & (nareas - 1), then +1 wrapping to 0).
///
/// 512 slots, 2 areas of 256 (area 1 = slots 256..512; indexes are relative
/// to their area):
/// - 100 bytes, hint 1: area 1 from 0: slot 256. Area 1 index 1, area 0
///   index 0.
/// - 100 bytes, hint 0: slot 0. Area 0 index 1.
/// - 100 bytes, hint 3: 3 & 1 = area 1: slot 257. Area 1 index 2.
/// - 128 slots, hint 1: from 258 (aligned, `list` 126 to the line at 384),
///   stride 2 to 384 (128): taken. Area 1 index 256, wrapped to 0.
/// - 126 slots, hint 1: from 256 (taken), 258 (126): taken. Area 1 index
///   128. Area 1 is now full (256 used).
/// - 100 bytes, hint 1: area 1 fails at `nslots > area_nslabs - used`;
///   area 0 from 1: slot 1. Area 0 index 2, area 1 index still 128.
/// - unmap the maps at 256 and at 258: area 1 has 127 free slots, as a
///   1-run at 256 and a 126-run at 258.
/// - 127 slots, hint 1: 127 free, so the search runs: from 384 (area index
///   128) every aligned slot up to the end is taken, wrap to 256 (1), 258
///   (126), .., all short; 256 slots checked, fail. Area 0 from 2: 2 (126),
///   .., 126 (2) short; 128 (128): taken. Area 0 index 255, area 1 index
///   still 128.
#[test]
fn area_hint_chooses_the_area_and_full_areas_fall_back() {
    let fx = Fixture::new(512, 2, BASE);
    assert_eq!(fx.pool.nareas(), 2);
    let dev = plain();
    let first = fx.map_at(&dev, ORIG, 100, 0, 1);
    assert_at(&first, 256);
    assert_eq!((fx.index(0), fx.index(1)), (0, 1));
    assert_at(&fx.map_at(&dev, ORIG, 100, 0, 0), 0);
    assert_eq!((fx.index(0), fx.index(1)), (1, 1));
    assert_at(&fx.map_at(&dev, ORIG, 100, 0, 3), 257);
    assert_eq!(fx.index(1), 2);

    assert_at(&fx.map_at(&dev, ORIG, 128 * SLOT, 0, 1), 384);
    assert_eq!(fx.index(1), 0);
    let run = fx.map_at(&dev, ORIG, 126 * SLOT, 0, 1);
    assert_at(&run, 258);
    assert_eq!(fx.index(1), 128);
    assert_eq!(fx.pool.stats().area_used, vec![1, 256]);

    assert_at(&fx.map_at(&dev, ORIG, 100, 0, 1), 1);
    assert_eq!((fx.index(0), fx.index(1)), (2, 128));

    fx.unmap(&dev, first);
    fx.unmap(&dev, run);
    assert_at(&fx.map_at(&dev, ORIG, 127 * SLOT, 0, 1), 128);
    assert_eq!((fx.index(0), fx.index(1)), (255, 128));
}

/// The early reject: an area with fewer free slots than the request needs
/// is not searched (`nslots > area_nslabs - area->used`), and the test is
/// strict: a request for exactly the free count is searched.
///
/// 512 slots, 2 areas of 256, all maps page aligned:
/// - hint 0: 128 slots at 0, then 126 at 128 (`list[128]` 128). Area 0 has
///   254 used, 2 free (254..=255), index 254.
/// - 5000 bytes = 3 slots, hint 0: 3 > 2, area 0 is skipped without a
///   search (its index stays 254); area 1 from 0: slot 256. Area 1 index 3.
/// - 4096 bytes = 2 slots, hint 0: 2 is not > 2: area 0 is searched from
///   254 (aligned, `list` 2): taken. Area 0 index 256, wrapped to 0.
/// - 100 bytes, hint 0: area 0 is full; area 1 from 3: slot 259.
#[test]
fn early_reject_skips_areas_with_too_few_free_slots() {
    let fx = Fixture::new(512, 2, BASE);
    let dev = plain();
    assert_at(&fx.map_at(&dev, ORIG, 128 * SLOT, 0, 0), 0);
    assert_at(&fx.map_at(&dev, ORIG, 126 * SLOT, 0, 0), 128);
    assert_eq!(fx.index(0), 254);
    let m = fx.map_at(&dev, ORIG, 5000, 0, 0);
    assert_at(&m, 256);
    assert_eq!(m.b.nslots, 3);
    assert_eq!((fx.index(0), fx.index(1)), (254, 3));
    assert_at(&fx.map_at(&dev, ORIG, PAGE, 0, 0), 254);
    assert_eq!(fx.index(0), 0);
    assert_at(&fx.map_at(&dev, ORIG, 100, 0, 0), 259);
    assert_eq!((fx.index(0), fx.index(1)), (0, 4));
}

/// A segment boundary mask of 0xffff: no mapping may cross a 64 KiB line in
/// device address space, i.e. a 32-slot window (`get_max_slots`). The span
/// check (`iommu_is_span_boundary`) places the pool in those windows with
/// `nr_slots(tbl_dma_addr)`, the pool's DMA address under the mask.
///
/// Pool A at 0x1000_0000 (under the mask: 0, so windows start at slots 0,
/// 32, 64, ..), 256 slots:
/// - 31 plain maps of 100 bytes: slots 0..=30, `index` 31.
/// - 3000 bytes (2 slots): slot 31 is free with `list` 97, but 31 + 2 runs
///   past the window at 32: skip; 32 starts a window: taken. `index` 34.
///   (The same request from a device with the default 4 GiB boundary takes
///   31: checked on pool C below.)
/// - 20 slots (page aligned): 34 is in window 32..64 at offset 2, 2 + 20 <=
///   32: taken. `index` 54.
/// - 20 slots: 54 (offset 22), 56, 58, 60, 62 (offset 30) all cross the
///   line at 64; 64 (offset 0, `list` 64): taken. `index` 84.
///
/// Pool B at 0x1000_4000 (under the mask: 0x4000 = 8 slots, so the windows
/// start at pool slots 24, 56, ..), 256 slots:
/// - 23 plain maps: slots 0..=22, `index` 23.
/// - 3000 bytes: slot 23 is at window offset (8 + 23) % 32 = 31, crosses;
///   24 is at offset 0: taken.
#[test]
fn segment_boundary_mask_keeps_spans_inside_their_window() {
    let bounded = plain().with_seg_boundary_mask(0xffff);

    let a = Fixture::new(256, 1, BASE);
    a.singles(&plain(), 31);
    assert_eq!(a.index(0), 31);
    assert_at(&a.map(&bounded, 3000), 32);
    assert_eq!(a.index(0), 34);
    assert!(a.pool.slot_is_free(31));
    assert_at(&a.map(&bounded, 20 * SLOT), 34);
    assert_eq!(a.index(0), 54);
    assert_at(&a.map(&bounded, 20 * SLOT), 64);
    assert_eq!(a.index(0), 84);

    let b = Fixture::new(256, 1, BASE + 0x4000);
    b.singles(&plain(), 23);
    assert_at(&b.map(&bounded, 3000), 24);
    assert_eq!(b.index(0), 26);

    let c = Fixture::new(256, 1, BASE);
    c.singles(&plain(), 31);
    assert_at(&c.map(&plain(), 3000), 31);
}

/// A pool smaller than a segment: free-run counts stop at the pool's end
/// (`swiotlb_init_io_tlb_pool` takes `min(IO_TLB_SEGSIZE - offset, nslabs -
/// i)`, the CVE-2023-52790 fix). Before the fix slot 96 of a 100-slot pool
/// said 32, and a 6-slot request there ran 2 slots past the pool.
///
/// One 100-slot area (`list[i]` = 100 - i):
/// - 96 maps of 100 bytes: slots 0..=95, `index` 96.
/// - unmap slots 0, 2, 4: three isolated free slots. 7 free slots in all,
///   93 used.
/// - 6 slots (page aligned, stride 2): 6 <= 7, so searched. 96 has 4, 98
///   has 2; 100 wraps to 0 (1), 2 (1), 4 (1), then 6..=94 are taken; 100
///   slots checked: fail. `index` stays 96.
/// - 4 slots: 96 has 4: taken, ending exactly at the pool's end. `index` =
///   100, wrapped to 0.
///
/// (No test here frees a mapping that ends at the end of such a pool:
/// there Linux's `swiotlb_release_slots` reads the count of the slot past
/// the pool's end, as `index + nslots` is still short of the next segment
/// line, while `NextFit` counts nothing past the end.)
#[test]
fn pool_smaller_than_a_segment_caps_runs_at_the_pool_end() {
    let fx = Fixture::new(100, 1, BASE);
    let dev = plain();
    let singles = fx.singles(&dev, 96);
    assert_eq!(fx.index(0), 96);
    for s in [0, 2, 4] {
        fx.unmap(&dev, singles[s]);
    }
    assert!(matches!(
        fx.try_map(&dev, ORIG, 6 * SLOT, 0, 0),
        Err(Error::PoolFull { requested: 6, .. })
    ));
    assert_eq!(fx.index(0), 96);
    let tail = fx.map(&dev, 4 * SLOT);
    assert_at(&tail, 96);
    assert_eq!(fx.index(0), 0);
}

/// A device with `min_align_mask` 0xfff whose original has an offset of 0
/// may map a little more than `swiotlb_max_mapping_size` (a segment less a
/// page): that bound is the worst case, for an original whose offset needs
/// the most room. Linux's `swiotlb_tbl_map_single` does not check it.
///
/// One 512-slot area: NVMe, orig ...0000, 255 KiB. offset 0, 261120 bytes =
/// 128 slots (the last one half used). `iotlb_align_mask` 0x800 and orig's
/// bit 11 clear: even slots, stride 2. Slot 0 is even with `list` 128:
/// taken. `index` = 128.
#[test]
fn min_align_mapping_above_the_worst_case_bound_is_served_as_linux() {
    let fx = Fixture::new(512, 1, BASE);
    let m = fx.try_map(&nvme(), ORIG, 255 * 1024, 0, 0);
    let m = m.expect("Linux maps 255 KiB at slot 0 here");
    assert_eq!((m.b.start, m.b.slot, m.b.nslots), (0, 0, 128));
    assert_eq!(fx.index(0), 128);
}

// ---------------------------------------------------------------------------
// Randomized comparison with a reference model.
// ---------------------------------------------------------------------------

/// The next-fit algorithm as Linux documents and implements it, kept as
/// plainly as possible: one free-run count per pool slot, a rotating index
/// and a used count per area. Written for geometries whose areas are whole
/// segments, as Linux's are.
struct Model {
    base: u64,
    seg: u32,
    nareas: u32,
    area_nslabs: u32,
    list: Vec<u32>,
    index: Vec<u32>,
    used: Vec<u32>,
}

/// What the model says a map returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelMap {
    start: u32,
    slot: u32,
    nslots: u32,
    phys: u64,
}

impl Model {
    fn new(nslabs: u32, nareas: u32, seg: u32, base: u64) -> Self {
        assert_eq!(nslabs % (nareas * seg), 0, "areas must be whole segments");
        let list = (0..nslabs)
            .map(|i| (seg - i % seg).min(nslabs - i))
            .collect();
        Model {
            base,
            seg,
            nareas,
            area_nslabs: nslabs / nareas,
            list,
            index: vec![0; nareas as usize],
            used: vec![0; nareas as usize],
        }
    }

    fn wrap(&self, i: u32) -> u32 {
        if i >= self.area_nslabs {
            0
        } else {
            i
        }
    }

    /// `swiotlb_tbl_map_single` + `swiotlb_find_slots`.
    fn map(
        &mut self,
        min_align: u64,
        boundary: u64,
        orig: u64,
        size: u64,
        alloc_align: u64,
        hint: usize,
    ) -> Option<ModelMap> {
        let slot_mask = SLOT as u64 - 1;
        let offset = orig & min_align & (alloc_align | slot_mask);
        let total = (size + offset).div_ceil(alloc_align + 1) * (alloc_align + 1);
        let nslots = total.div_ceil(SLOT as u64) as u32;
        let first = hint as u32 % self.nareas;
        for k in 0..self.nareas {
            let area = (first + k) % self.nareas;
            if let Some(start) =
                self.search(area, min_align, boundary, orig, total, alloc_align, nslots)
            {
                let slot = start + (offset >> SHIFT) as u32;
                let phys = self.base + ((slot as u64) << SHIFT) + (offset & slot_mask);
                return Some(ModelMap {
                    start,
                    slot,
                    nslots,
                    phys,
                });
            }
        }
        None
    }

    /// `swiotlb_search_pool_area`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one golden case is this many numbers"
    )]
    fn search(
        &mut self,
        area: u32,
        min_align: u64,
        boundary: u64,
        orig: u64,
        total: u64,
        alloc_align: u64,
        nslots: u32,
    ) -> Option<u32> {
        let mut align = alloc_align;
        if align == 0 && min_align == 0 && total >= PAGE as u64 {
            align = PAGE as u64 - 1;
        }
        align |= SLOT as u64 - 1;
        let iotlb = min_align & !align;
        let stride = ((align.max(iotlb) >> SHIFT) + 1) as u32;
        let a = area as usize;
        if nslots > self.area_nslabs - self.used[a] {
            return None;
        }
        let tbl = self.base & boundary;
        let window = (boundary >> SHIFT) + 1;
        let tbl_slots = tbl.div_ceil(SLOT as u64);
        let base_slot = area * self.area_nslabs;
        let mut idx = self.index[a];
        let mut checked = 0;
        while checked < self.area_nslabs {
            let s = base_slot + idx;
            let addr = tbl + ((s as u64) << SHIFT);
            if addr & align != 0 || (orig != 0 && addr & iotlb != orig & iotlb) {
                idx = self.wrap(idx + 1);
                checked += 1;
                continue;
            }
            let crosses = ((tbl_slots + s as u64) & (window - 1)) + nslots as u64 > window;
            if !crosses && self.list[s as usize] >= nslots {
                for c in &mut self.list[s as usize..(s + nslots) as usize] {
                    *c = 0;
                }
                self.renumber_before(s, 0);
                self.index[a] = self.wrap(idx + nslots);
                self.used[a] += nslots;
                return Some(s);
            }
            idx = self.wrap(idx + stride);
            checked += stride;
        }
        None
    }

    /// The free slots just before `s` in its segment count on from `count`.
    fn renumber_before(&mut self, s: u32, mut count: u32) {
        let mut i = s;
        while i > 0 {
            i -= 1;
            if i % self.seg == self.seg - 1 || self.list[i as usize] == 0 {
                break;
            }
            count += 1;
            self.list[i as usize] = count;
        }
    }

    /// `swiotlb_release_slots`.
    fn unmap(&mut self, start: u32, nslots: u32) {
        let end = start + nslots;
        let seg_end = (start / self.seg + 1) * self.seg;
        let mut count = if end < seg_end {
            self.list[end as usize]
        } else {
            0
        };
        for i in (start..end).rev() {
            count += 1;
            self.list[i as usize] = count;
        }
        self.renumber_before(start, count);
        self.used[(start / self.area_nslabs) as usize] -= nslots;
    }
}

/// Replays `ops` random maps and unmaps against `NextFit` and the model and
/// requires the same answer every time: success or failure, allocation
/// start, first slot, slots held, bounce address, and afterwards every
/// area's index; every 64 operations, every slot's free state.
fn cross_check(seed: u64, nslabs: u32, nareas: u32, seg: u32, base: u64, ops: usize) {
    let config = PoolConfig::default().with_segment(seg).with_nareas(nareas);
    let fx = Fixture::with_config(nslabs, base, config);
    assert_eq!(fx.pool.nareas(), nareas);
    let mut model = Model::new(nslabs, nareas, seg, base);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // (min_align_mask, segment boundary mask) pairs.
    let devices: Vec<Device> = [
        (0, 0xffff_ffff),
        (0xfff, 0xffff_ffff),
        (0x3ff, 0xffff_ffff),
        (0x1fff, 0xffff_ffff),
        (0, 0xffff),
        (0x7ff, 0x1_ffff),
        (0xfff, 0xffff),
    ]
    .iter()
    .map(|&(m, b)| plain().with_min_align_mask(m).with_seg_boundary_mask(b))
    .collect();
    let aligns = [0u64, 0, 0, 0xfff, 0x1fff, 0x7fff, 0xffff];
    let mut live: Vec<(usize, Mapped)> = Vec::new();

    for op in 0..ops {
        let unmap = !live.is_empty() && rng.random_bool(0.4);
        if unmap {
            let (d, m) = live.swap_remove(rng.random_range(0..live.len()));
            fx.unmap(&devices[d], m);
            model.unmap(m.b.start, m.b.nslots);
        } else {
            let d = rng.random_range(0..devices.len());
            let dev = &devices[d];
            let min_align = dev.min_align_mask();
            let max = fx.pool.max_mapping_size(min_align) as u64;
            let size = match rng.random_range(0..10) {
                0..=4 => rng.random_range(1..=PAGE as u64),
                5..=7 => rng.random_range(1..=16 * PAGE as u64),
                _ => rng.random_range(1..=max),
            }
            .min(max);
            let orig = match rng.random_range(0..20) {
                0 => 0,
                _ => 0x4000_0000 + (rng.random_range(0..1 << 20) << 4) + rng.random_range(0..16),
            };
            let align = aligns[rng.random_range(0..aligns.len())];
            let hint = rng.random_range(0..8);
            let want = model.map(min_align, dev.seg_boundary_mask(), orig, size, align, hint);
            let got = fx.try_map(dev, orig, size as usize, align, hint);
            let ctx = || {
                format!(
                    "seed {seed:#x}, op {op}: size {size}, orig {orig:#x}, min_align \
                     {min_align:#x}, boundary {:#x}, align {align:#x}, hint {hint}",
                    dev.seg_boundary_mask()
                )
            };
            match (want, got) {
                (Some(w), Ok(m)) => {
                    let g = ModelMap {
                        start: m.b.start,
                        slot: m.b.slot,
                        nslots: m.b.nslots,
                        phys: m.b.phys.0,
                    };
                    assert_eq!(g, w, "{}", ctx());
                    live.push((d, m));
                }
                (None, Err(_)) => {}
                (w, g) => panic!("{}: model {w:?}, NextFit {g:?}", ctx()),
            }
        }
        for a in 0..nareas as usize {
            assert_eq!(
                fx.index(a),
                model.index[a],
                "seed {seed:#x}, op {op}: index of area {a}"
            );
        }
        if op % 64 == 0 {
            for s in 0..nslabs {
                assert_eq!(
                    fx.pool.slot_is_free(s),
                    model.list[s as usize] != 0,
                    "seed {seed:#x}, op {op}: slot {s}"
                );
            }
        }
    }
}

#[test]
fn random_sequences_match_the_reference_model() {
    // (nslabs, nareas, segment, base): aligned and unaligned bases, one to
    // four areas, Linux's segment and a smaller one.
    let geometries = [
        (512, 1, 128, BASE),
        (256, 1, 128, BASE),
        (1024, 2, 128, BASE + 0x800),
        (1024, 4, 128, BASE + 0x4000),
        (512, 4, 32, BASE + 0x1800),
    ];
    for (k, &(nslabs, nareas, seg, base)) in geometries.iter().enumerate() {
        for round in 0..2u64 {
            let seed = (k as u64) << 32 | round;
            cross_check(seed, nslabs, nareas, seg, base, 3000);
        }
    }
}
