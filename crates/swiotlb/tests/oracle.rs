//! The shadow oracle: every slot of a pool tracked as free or held by one
//! mapping, every live mapping kept with the bytes its original and its
//! bounce slots must hold, and the engine checked against it after every
//! operation (the rlsf `ShadowAllocator` habit).
//!
//! The oracle computes what Linux's `swiotlb_tbl_map_single` and
//! `swiotlb_search_pool_area` allow from the request alone, in address
//! terms rather than through the crate's own `Request`, so a fault in the
//! crate's normalisation is not copied into the check:
//! - the bounce address keeps the original's `min_align_mask` bits;
//! - the allocation's first slot is aligned to `alloc_align_mask`, and to a
//!   page when the mapping is a page or more and neither mask is set;
//! - the allocation stays inside the pool, inside one area, inside one
//!   segment (counted from slot 0) and inside one device segment boundary;
//! - its size is `ALIGN(size + offset, alloc_align_mask + 1)` in slots.
//!
//! It panics on overlap with a live mapping, a double unmap the engine
//! accepts, a mask violation, an original that does not hold what the
//! device wrote (or was touched for to-device), slot accounting that
//! disagrees with the shadow, and a failed map whose typed reason is not
//! the one the oracle predicts. It also panics on a `PoolFull` while a
//! fitting free run exists that the policy must have seen: anywhere for
//! `Fast`; for `NextFit`, from its cursor to the end of each area, because
//! Linux's walk may give up before the starts behind its cursor.
//!
//! Proptest drives random operation sequences over random geometries and
//! both policies; the case count (256 by default) follows `PROPTEST_CASES`.
//! Regression-shaped tests at the end replay the allocator CVEs and the
//! one fault this oracle found in `Fast`.

mod common;
mod misuse;

use misuse::expect_misuse;

/// What the misuse checker, when built in, finds in a raw sync: a range
/// past the mapping's end is outside every mapping.
fn refused(oob: bool) -> &'static [&'static str] {
    if oob {
        &["SyncOutside"]
    } else {
        &[]
    }
}

use common::{bytes, device_read, device_write, forced, RawBuf};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;
use swiotlb::{
    Attrs, Bounce, Device, Direction, DmaAddr, Error, FailReason, Fast, MapOptions, Mapping,
    NextFit, PhysAddr, Policy, Pool, PoolConfig,
};

/// Linux's default segment boundary (`dma_get_seg_boundary`): 4 GiB.
const DEFAULT_BOUNDARY: u64 = 0xffff_ffff;

/// The page size of every pool here (`PoolConfig::page_shift` 12).
const PAGE: u64 = 4096;

/// One bounce request as the oracle sees it.
#[derive(Clone, Copy, Debug)]
struct Req {
    size: usize,
    /// The original's physical address (never 0: Linux skips the
    /// `min_align_mask` check for a zero `orig_addr`).
    orig: u64,
    min_align: u64,
    alloc_align: u64,
    /// The device's segment boundary mask.
    boundary: u64,
}

/// What the oracle predicts for a request, before looking at free slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// More slots than a segment (or the smallest area) holds:
    /// `Error::TooLarge`, however empty the pool.
    TooLarge,
    /// Within `max_mapping_size`, but the alignment padding takes it past
    /// a segment: `Error::PaddingTooLarge`.
    PaddingTooLarge,
    /// No slot of an empty pool satisfies the masks and lines:
    /// `Error::AlignmentImpossible`.
    Impossible,
    /// Possible in an empty pool; it needs `nslots` slots and the bounce
    /// address sits `offset` bytes into the allocation.
    Feasible { nslots: u32, offset: u64 },
}

/// The pool's geometry, computed by the oracle from the configuration and
/// checked against what the pool reports.
#[derive(Clone, Copy, Debug)]
struct Geo {
    shift: u32,
    slot: u64,
    segment: u32,
    nslabs: u32,
    nareas: u32,
    area_nslabs: u32,
    /// Physical (= device, identity) address of slot 0.
    phys: u64,
}

impl Geo {
    fn of<P: Policy>(pool: &Pool<P>, cfg: &PoolConfig, len: usize) -> Geo {
        let slot = 1u64 << cfg.slot_shift;
        let nslabs = (len as u64 / slot) as u32;
        // Linux `limit_nareas`: a power of two, halved until each area
        // holds a whole segment.
        let mut nareas = cfg.nareas.max(1).next_power_of_two();
        while nareas > 1 && nslabs / nareas < cfg.segment {
            nareas /= 2;
        }
        let geo = Geo {
            shift: cfg.slot_shift,
            slot,
            segment: cfg.segment,
            nslabs,
            nareas,
            area_nslabs: nslabs / nareas,
            phys: pool.start().0,
        };
        assert_eq!(pool.nslabs(), nslabs, "whole slots only");
        assert_eq!(pool.len() as u64, nslabs as u64 * slot);
        assert_eq!(pool.nareas(), nareas, "area count (limit_nareas)");
        assert_eq!(pool.area_nslabs(), geo.area_nslabs);
        assert_eq!(geo.phys % PAGE, 0, "new_heap pools are page aligned");
        geo
    }

    fn area(&self, s: u32) -> u32 {
        (s / self.area_nslabs).min(self.nareas - 1)
    }

    fn addr(&self, s: u32) -> u64 {
        self.phys + ((s as u64) << self.shift)
    }

    /// Linux `swiotlb_max_mapping_size`: a segment less `min_align_mask`
    /// rounded up to a slot; capped by the smallest area, which only a pool
    /// smaller than a segment makes smaller (CVE-2023-52790).
    fn max_mapping_size(&self, min_align: u64) -> usize {
        let round = min_align.div_ceil(self.slot) * self.slot;
        let cap = self.segment.min(self.area_nslabs) as u64 * self.slot;
        cap.saturating_sub(round) as usize
    }

    /// Linux `swiotlb_align_offset`: the bits of the original kept below the
    /// allocation's start alignment.
    fn offset(&self, r: &Req) -> u64 {
        r.orig & r.min_align & (r.alloc_align | (self.slot - 1))
    }

    /// `ALIGN(size + offset, alloc_align_mask + 1)`, in slots.
    fn nslots(&self, r: &Req) -> u32 {
        let total =
            (r.size as u64 + self.offset(r)).div_ceil(r.alloc_align + 1) * (r.alloc_align + 1);
        total.div_ceil(self.slot) as u32
    }

    /// Why an allocation of `n` slots for `r` may not start at slot `s`,
    /// free slots aside.
    fn refuse(&self, r: &Req, s: u32, n: u32) -> Option<&'static str> {
        let last = s + n - 1;
        let addr = self.addr(s);
        let bounce = addr + self.offset(r);
        let bytes = (n as u64) << self.shift;
        let span = r.boundary + 1;
        if last >= self.nslabs {
            Some("runs past the pool's end")
        } else if self.area(s) != self.area(last) {
            Some("crosses an area")
        } else if s / self.segment != last / self.segment {
            Some("crosses a segment line")
        } else if addr / span != (addr + bytes - 1) / span {
            Some("crosses the device's segment boundary")
        } else if addr & r.alloc_align != 0 {
            Some("start not aligned to alloc_align_mask")
        } else if r.min_align == 0
            && r.alloc_align == 0
            && r.size as u64 >= PAGE
            && addr % PAGE != 0
        {
            Some("mapping of a page or more not page aligned")
        } else if bounce & r.min_align != r.orig & r.min_align {
            Some("bounce address lost the min_align_mask bits")
        } else {
            None
        }
    }

    fn plan(&self, r: &Req) -> Plan {
        let n = self.nslots(r);
        let cap = self.segment.min(self.area_nslabs);
        // `max_mapping_size` is a promise, not a cap (as in Linux): every
        // mapping up to it fits a segment, whatever its offset. A larger one
        // whose actual offset leaves room is served too.
        if r.size <= self.max_mapping_size(r.min_align) && r.alloc_align == 0 {
            assert!(n <= cap, "{r:?}: max_mapping_size promises too much");
        }
        if n > cap {
            if r.size > self.max_mapping_size(r.min_align) {
                return Plan::TooLarge;
            }
            return Plan::PaddingTooLarge;
        }
        if (0..self.nslabs).all(|s| self.refuse(r, s, n).is_some()) {
            return Plan::Impossible;
        }
        Plan::Feasible {
            nslots: n,
            offset: self.offset(r),
        }
    }
}

/// How far a policy's search is complete, for the `PoolFull` check.
trait Searched: Policy + Sized {
    /// The area-relative slot from which a failed search of area `area`
    /// has tried every start up to the area's end.
    fn complete_from(pool: &Pool<Self>, area: usize) -> u32;
}

impl Searched for Fast {
    /// `Fast` searches whole areas, wrapping around its hint.
    fn complete_from(_: &Pool<Self>, _: usize) -> u32 {
        0
    }
}

impl Searched for NextFit {
    /// Linux's walk (`swiotlb_search_pool_area`) counts `stride` slots
    /// checked even when the step wraps past the area's end, so it may
    /// give up before reaching starts behind its index; it never skips one
    /// between its index and the area's end.
    fn complete_from(pool: &Pool<Self>, area: usize) -> u32 {
        pool.with_area(area, |a, _| a.index())
    }
}

/// Where a live mapping's original is, and through which API it was made.
enum Side<'p, P: Searched> {
    Raw { buf: RawBuf, dev: Device },
    Safe(Mapping<'p, Vec<u8>, P>),
}

/// A live mapping and what its two copies must hold.
struct Live<'p, P: Searched> {
    id: u64,
    side: Side<'p, P>,
    dir: Direction,
    len: usize,
    start: u32,
    nslots: u32,
    dma: DmaAddr,
    /// Byte offset of the bounce address in the pool.
    off: usize,
    /// What the original must hold.
    orig: Vec<u8>,
    /// What the bounce slots must hold.
    slots: Vec<u8>,
}

impl<P: Searched> Live<'_, P> {
    /// The original's bytes as they are.
    fn original(&self) -> Vec<u8> {
        match &self.side {
            Side::Raw { buf, .. } => buf.to_vec(),
            Side::Safe(m) => {
                let mut out = vec![0; self.len];
                m.read(0, &mut out).expect("in bounds");
                out
            }
        }
    }

    /// The CPU rewriting its copy.
    fn cpu_write(&mut self, data: &[u8]) {
        match &mut self.side {
            Side::Raw { buf, .. } => buf.write(0, data),
            Side::Safe(m) => m.write(0, data).expect("in bounds"),
        }
    }
}

/// `[off, off + len)` inside a mapping of `mlen` bytes or, with `oob`,
/// starting inside it and running past its end.
fn pick_range(mlen: usize, off: u32, len: u32, oob: bool) -> (usize, usize) {
    let off = off as usize % mlen;
    let room = mlen - off;
    if oob {
        (off, room + 1 + len as usize % 64)
    } else {
        (off, 1 + len as usize % room)
    }
}

/// The shadow of one pool.
struct Model<'p, P: Searched> {
    pool: &'p Pool<P>,
    geo: Geo,
    /// Per slot: the id of the mapping holding it.
    owner: Vec<Option<u64>>,
    held: u64,
    hiwater: u64,
    /// Slots held per area, and each area's own high-water mark (what the
    /// pool reports, summed, without `with_hiwater(Hiwater::Exact)`).
    area_held: Vec<u64>,
    area_hiwater: Vec<u64>,
    /// Whether the pool was built `with_hiwater(Hiwater::Exact)`.
    exact: bool,
    live: Vec<Live<'p, P>>,
    /// Device addresses of mappings already unmapped.
    stale: Vec<DmaAddr>,
    /// Their originals, kept alive so that an engine that wrongly accepts
    /// a stale address writes into live memory, and is caught, rather than
    /// into freed memory.
    _kept: Vec<Box<dyn std::any::Any>>,
    next_id: u64,
    to_device: u64,
    from_device: u64,
    failures: [u64; FailReason::COUNT],
}

impl<'p, P: Searched> Model<'p, P> {
    fn new(pool: &'p Pool<P>, cfg: &PoolConfig, len: usize, exact: bool) -> Self {
        let geo = Geo::of(pool, cfg, len);
        let m = Self {
            pool,
            geo,
            owner: vec![None; geo.nslabs as usize],
            held: 0,
            hiwater: 0,
            area_held: vec![0; geo.nareas as usize],
            area_hiwater: vec![0; geo.nareas as usize],
            exact,
            live: Vec::new(),
            stale: Vec::new(),
            _kept: Vec::new(),
            next_id: 0,
            to_device: 0,
            from_device: 0,
            failures: [0; FailReason::COUNT],
        };
        m.check_stats();
        m.check_all_slots();
        m
    }

    fn is_fast() -> bool {
        P::NAME == Fast::NAME
    }

    /// The longest free run inside one segment and one area: what both
    /// policies report as `largest_run`.
    fn largest_run(&self) -> u32 {
        let (mut best, mut run) = (0, 0);
        for s in 0..self.geo.nslabs {
            if s % self.geo.segment == 0 || s == self.geo.area(s) * self.geo.area_nslabs {
                run = 0;
            }
            run = if self.owner[s as usize].is_some() {
                0
            } else {
                run + 1
            };
            best = best.max(run);
        }
        best
    }

    /// The first start where `r` fits in the free slots and that the
    /// policy's search must have tried, if any.
    fn first_fit(&self, r: &Req, n: u32) -> Option<u32> {
        let from: Vec<u32> = (0..self.geo.nareas)
            .map(|a| a * self.geo.area_nslabs + P::complete_from(self.pool, a as usize))
            .collect();
        (0..self.geo.nslabs).find(|&s| {
            s >= from[self.geo.area(s) as usize]
                && self.geo.refuse(r, s, n).is_none()
                && (s..s + n).all(|i| self.owner[i as usize].is_none())
        })
    }

    /// Records `[start, start + n)` as held by a new mapping after the
    /// engine handed it out, checking every rule on the way.
    fn take(&mut self, r: &Req, plan: Plan, start: u32, nslots: u32, phys: PhysAddr) -> u64 {
        let Plan::Feasible { nslots: n, offset } = plan else {
            panic!("engine mapped {r:?} at slot {start}, oracle planned {plan:?}");
        };
        assert_eq!(nslots, n, "{r:?}: slot count");
        if let Some(why) = self.geo.refuse(r, start, n) {
            panic!("{r:?} at slot {start} ({n} slots): {why}");
        }
        assert_eq!(
            phys.0,
            self.geo.addr(start) + offset,
            "{r:?}: bounce address"
        );
        let id = self.next_id;
        self.next_id += 1;
        for s in start..start + n {
            if let Some(other) = self.owner[s as usize] {
                panic!("overlap: {r:?} got slot {s}, held by live mapping {other}");
            }
            self.owner[s as usize] = Some(id);
            assert!(!self.pool.slot_is_free(s), "slot {s} mapped but free");
        }
        self.held += n as u64;
        self.hiwater = self.hiwater.max(self.held);
        // An allocation never leaves its area.
        let a = self.geo.area(start) as usize;
        self.area_held[a] += n as u64;
        self.area_hiwater[a] = self.area_hiwater[a].max(self.area_held[a]);
        self.to_device += r.size as u64;
        id
    }

    /// Gives back the slots of a mapping the engine released.
    fn give(&mut self, start: u32, n: u32) {
        for s in start..start + n {
            assert!(self.owner[s as usize].take().is_some(), "shadow slot {s}");
            assert!(self.pool.slot_is_free(s), "slot {s} unmapped but held");
        }
        self.held -= n as u64;
        self.area_held[self.geo.area(start) as usize] -= n as u64;
    }

    /// A failed map: the reason must be the predicted one, and nothing
    /// changes (`check_stats` sees to the slots).
    fn reject(&mut self, r: &Req, plan: Plan, e: Error) {
        self.failures[e.reason() as usize] += 1;
        match (plan, e) {
            (Plan::TooLarge, Error::TooLarge { size, max }) => {
                assert_eq!(size, r.size);
                assert_eq!(max, self.geo.max_mapping_size(r.min_align));
            }
            (
                Plan::PaddingTooLarge,
                Error::PaddingTooLarge {
                    size,
                    padded,
                    align_mask,
                    ..
                },
            ) => {
                assert_eq!(size, r.size);
                assert_eq!(align_mask, r.alloc_align);
                let cap = self.geo.segment.min(self.geo.area_nslabs) as u64;
                assert!(padded > cap << self.geo.shift, "{r:?}: padded {padded}");
            }
            (Plan::Impossible, Error::AlignmentImpossible { min_align_mask, .. }) => {
                assert_eq!(min_align_mask, r.min_align)
            }
            (
                Plan::Feasible { nslots, .. },
                Error::PoolFull {
                    requested,
                    free,
                    largest_run,
                },
            ) => {
                assert_eq!(requested, nslots, "{r:?}: PoolFull.requested");
                assert_eq!(free as u64, self.geo.nslabs as u64 - self.held, "free");
                assert_eq!(largest_run, self.largest_run(), "largest_run");
                if let Some(s) = self.first_fit(r, nslots) {
                    panic!("{r:?}: PoolFull while slot {s} fits (held {})", self.held);
                }
            }
            (plan, e) => panic!("{r:?}: engine said {e:?}, oracle planned {plan:?}"),
        }
    }

    fn map_raw(&mut self, r: Req, dir: Direction, hint: usize, seed: u64) -> Result<Bounce, Error> {
        let pool = self.pool;
        assert_eq!(
            pool.max_mapping_size(r.min_align),
            self.geo.max_mapping_size(r.min_align),
            "max_mapping_size({:#x})",
            r.min_align
        );
        let dev = forced()
            .with_min_align_mask(r.min_align)
            .with_seg_boundary_mask(r.boundary);
        let data = bytes(seed, r.size);
        let buf = RawBuf::new(&data);
        let plan = self.geo.plan(&r);
        let opts = MapOptions::new()
            .with_alloc_align_mask(r.alloc_align)
            .with_area_hint(hint);
        // SAFETY:
        // - `buf` is valid for reads and writes of `r.size` bytes; it moves
        //   into `self.live` (its heap bytes stay put) and is reached only
        //   through its raw pointer until the mapping is unmapped;
        // - `r.orig` is not `buf`'s physical address: it only steers the
        //   alignment, which the contract allows (wrongly aligned but
        //   sound).
        let res = unsafe {
            pool.bounce_raw(&dev, PhysAddr(r.orig), buf.ptr(), r.size, Attrs::NONE, opts)
        };
        match res {
            Ok(b) => {
                let id = self.take(&r, plan, b.start, b.nslots, b.phys);
                let off = (b.phys - pool.start()) as usize;
                assert_eq!(b.slot, (off >> self.geo.shift) as u32, "Bounce.slot");
                // Linux copies the original into the slots at map time for
                // every direction (CVE-2022-0854).
                assert_eq!(device_read(pool, off, r.size), data, "map-time copy");
                self.live.push(Live {
                    id,
                    side: Side::Raw { buf, dev },
                    dir,
                    len: r.size,
                    start: b.start,
                    nslots: b.nslots,
                    dma: DmaAddr(b.phys.0),
                    off,
                    orig: data.clone(),
                    slots: data,
                });
            }
            Err(e) => {
                self.reject(&r, plan, e);
                assert_eq!(buf.to_vec(), data, "a failed map touched the original");
            }
        }
        res
    }

    fn map_safe(&mut self, size: usize, min_align: u64, dir: Direction, seed: u64) {
        let pool = self.pool;
        let dev = forced().with_min_align_mask(min_align);
        let data = bytes(seed, size);
        let buf = data.clone();
        let r = Req {
            size,
            orig: buf.as_ptr() as u64,
            min_align,
            alloc_align: 0,
            boundary: DEFAULT_BOUNDARY,
        };
        let plan = self.geo.plan(&r);
        match pool.map(&dev, buf, dir) {
            Ok(m) => {
                assert!(m.is_bounced(), "forced device");
                let phys = m.bounce_phys().expect("bounced");
                assert_eq!(m.dma_addr().0, phys.0, "identity translation");
                let Plan::Feasible { nslots, offset } = plan else {
                    panic!("engine mapped {r:?} at {phys:?}, oracle planned {plan:?}");
                };
                let start = phys
                    .0
                    .checked_sub(self.geo.phys + offset)
                    .expect("bounce address below the pool")
                    >> self.geo.shift;
                // The safe handle does not show its slot count: the pool's
                // count of used slots must grow by exactly the planned one.
                assert_eq!(pool.stats().io_tlb_used, self.held + nslots as u64);
                let id = self.take(&r, plan, start as u32, nslots, phys);
                let off = (phys - pool.start()) as usize;
                assert_eq!(
                    m.device_ptr().as_ptr(),
                    pool.vaddr().as_ptr().wrapping_add(off),
                    "device_ptr"
                );
                assert_eq!(device_read(pool, off, size), data, "map-time copy");
                self.live.push(Live {
                    id,
                    side: Side::Safe(m),
                    dir,
                    len: size,
                    start: start as u32,
                    nslots,
                    dma: DmaAddr(phys.0),
                    off,
                    orig: data.clone(),
                    slots: data,
                });
            }
            Err(f) => {
                self.reject(&r, plan, f.error);
                assert_eq!(f.buffer, data, "a failed map touched the buffer");
            }
        }
    }

    /// Unmaps live mapping `i`: the slots must hold what the device left,
    /// and the original must then hold exactly what the direction says.
    fn unmap(&mut self, i: usize, attrs: Attrs) {
        let Live {
            id,
            side,
            dir,
            len,
            start,
            nslots,
            dma,
            off,
            orig,
            slots,
        } = self.live.swap_remove(i);
        assert_eq!(
            device_read(self.pool, off, len),
            slots,
            "bounce bytes of mapping {id} changed behind its back"
        );
        // Linux `swiotlb_tbl_unmap_single`: copy back for from-device and
        // bidirectional, unless DMA_ATTR_SKIP_CPU_SYNC.
        let want = if dir.copies_to_cpu() && !attrs.contains(Attrs::SKIP_CPU_SYNC) {
            self.from_device += len as u64;
            slots
        } else {
            orig
        };
        let what = format!("original of mapping {id} ({dir:?}, {attrs:?})");
        match side {
            Side::Raw { buf, dev } => {
                // SAFETY:
                // - `buf` is still valid and reached only through its raw
                //   pointer, as at map time;
                // - the simulated device is done with the mapping.
                let r = unsafe { self.pool.unmap_raw(&dev, dma, len, dir, attrs) };
                assert_eq!(r, Ok(()), "unmap of live mapping {id}");
                assert_eq!(buf.to_vec(), want, "{what}");
                self._kept.push(Box::new(buf));
            }
            Side::Safe(m) => {
                let got = m.unmap_with_attrs(attrs);
                assert_eq!(got, want, "{what}");
                self._kept.push(Box::new(got));
            }
        }
        self.give(start, nslots);
        self.stale.push(dma);
    }

    /// Unmaps a raw mapping twice: the engine must refuse the second.
    fn double_unmap(&mut self, i: usize) {
        let (dev, dma, len, dir) = match &self.live[i] {
            Live {
                side: Side::Raw { dev, .. },
                dma,
                len,
                dir,
                ..
            } => (dev.clone(), *dma, *len, *dir),
            _ => return self.unmap(i, Attrs::NONE),
        };
        self.unmap(i, Attrs::NONE);
        // SAFETY: the address is no longer a mapping; a correct engine
        // touches no memory for it (that is what is checked).
        let r = expect_misuse(&["NeverMapped"], || unsafe {
            self.pool.unmap_raw(&dev, dma, len, dir, Attrs::NONE)
        });
        assert_eq!(r, Err(Error::NotMapped { dma }), "double unmap accepted");
        self.failures[FailReason::Misuse as usize] += 1;
    }

    /// Drops live mapping `i` without unmapping (a safe mapping's `Drop`
    /// unmaps without copying back); a raw one is unmapped with
    /// `SKIP_CPU_SYNC`, which is the same thing.
    fn drop_mapping(&mut self, i: usize) {
        if matches!(self.live[i].side, Side::Raw { .. }) {
            return self.unmap(i, Attrs::SKIP_CPU_SYNC);
        }
        let l = self.live.swap_remove(i);
        assert_eq!(device_read(self.pool, l.off, l.len), l.slots);
        drop(l.side);
        self.give(l.start, l.nslots);
        self.stale.push(l.dma);
    }

    /// The live mapping whose allocation holds device address `dma`.
    fn holder(&self, dma: DmaAddr) -> Option<&Live<'p, P>> {
        self.live.iter().find(|l| {
            let lo = self.geo.addr(l.start);
            (lo..lo + ((l.nslots as u64) << self.geo.shift)).contains(&dma.0)
        })
    }

    /// Unmap of an address that is no longer a mapping's start.
    fn stale_unmap(&mut self, k: usize) {
        let Some(&dma) = self.stale.get(k % self.stale.len().max(1)) else {
            return;
        };
        if self.live.iter().any(|l| l.dma == dma) {
            // Reused for a live mapping: unmapping it would be legitimate.
            return;
        }
        // SAFETY: not a live mapping's address; a correct engine touches
        // no memory for it (that is what is checked).
        let r = expect_misuse(&["NeverMapped"], || unsafe {
            self.pool
                .unmap_raw(&forced(), dma, 1, Direction::Bidirectional, Attrs::NONE)
        });
        assert_eq!(r, Err(Error::NotMapped { dma }), "stale unmap accepted");
        self.failures[FailReason::Misuse as usize] += 1;
    }

    /// Sync of one byte at a stale address: refused unless it falls inside
    /// a live mapping's bytes (then it is a legitimate sync, skipped here).
    fn stale_sync(&mut self, k: usize) {
        let Some(&dma) = self.stale.get(k % self.stale.len().max(1)) else {
            return;
        };
        let want = match self.holder(dma) {
            None => Error::NotMapped { dma },
            Some(l) if dma.0 < l.dma.0 => Error::OutOfBounds {
                offset: usize::MAX,
                len: 1,
                mapping_len: l.len,
            },
            Some(l) if dma.0 - l.dma.0 >= l.len as u64 => Error::OutOfBounds {
                offset: (dma.0 - l.dma.0) as usize,
                len: 1,
                mapping_len: l.len,
            },
            Some(_) => return,
        };
        // SAFETY: the address is not inside a live mapping's bytes; a
        // correct engine copies nothing for it (that is what is checked).
        let r = expect_misuse(&["SyncOutside"], || unsafe {
            self.pool
                .sync_for_cpu_raw(&forced(), dma, 1, Direction::Bidirectional)
        });
        assert_eq!(r, Err(want), "stale sync at {dma:?}");
        self.failures[FailReason::Misuse as usize] += 1;
    }

    fn device_writes(&mut self, i: usize, off: u32, len: u32, seed: u64) {
        let l = &mut self.live[i];
        let (o, n) = pick_range(l.len, off, len, false);
        let data = bytes(seed, n);
        device_write(self.pool, l.off + o, &data);
        l.slots[o..o + n].copy_from_slice(&data);
    }

    /// `sync_for_cpu` of a sub-range: Linux `swiotlb_sync_single_for_cpu`
    /// copies slots to the original for from-device and bidirectional
    /// mappings only; past the end it is refused whatever the direction.
    fn sync_for_cpu(&mut self, i: usize, off: u32, len: u32, oob: bool) {
        let pool = self.pool;
        let l = &mut self.live[i];
        let (o, n) = pick_range(l.len, off, len, oob);
        let r = match &mut l.side {
            // SAFETY: the original is valid and reached only through its
            // raw pointer; the device is not writing meanwhile.
            Side::Raw { dev, .. } => expect_misuse(refused(oob), || unsafe {
                pool.sync_for_cpu_raw(dev, l.dma + o as u64, n, l.dir)
            }),
            Side::Safe(m) => m.sync_for_cpu(o, n),
        };
        if oob {
            let e = Error::OutOfBounds {
                offset: o,
                len: n,
                mapping_len: l.len,
            };
            assert_eq!(r, Err(e), "{:?} sync_for_cpu past the end", l.dir);
            self.failures[FailReason::Misuse as usize] += 1;
        } else {
            assert_eq!(r, Ok(()));
            if l.dir.copies_to_cpu() {
                l.orig[o..o + n].copy_from_slice(&l.slots[o..o + n]);
                self.from_device += n as u64;
            }
        }
        assert_eq!(l.original(), l.orig, "original after sync_for_cpu");
    }

    /// The CPU rewrites its whole copy (if `seed`), then `sync_for_device`
    /// of a sub-range: Linux `swiotlb_sync_single_for_device` copies the
    /// original to the slots for to-device and bidirectional mappings only,
    /// and only the range asked for.
    fn sync_for_device(&mut self, i: usize, seed: Option<u64>, off: u32, len: u32, oob: bool) {
        let pool = self.pool;
        let l = &mut self.live[i];
        if let Some(seed) = seed {
            let data = bytes(seed, l.len);
            l.cpu_write(&data);
            l.orig = data;
        }
        let (o, n) = pick_range(l.len, off, len, oob);
        let r = match &mut l.side {
            // SAFETY: as in `sync_for_cpu`.
            Side::Raw { dev, .. } => expect_misuse(refused(oob), || unsafe {
                pool.sync_for_device_raw(dev, l.dma + o as u64, n, l.dir)
            }),
            Side::Safe(m) => m.sync_for_device(o, n),
        };
        if oob {
            let e = Error::OutOfBounds {
                offset: o,
                len: n,
                mapping_len: l.len,
            };
            assert_eq!(r, Err(e), "{:?} sync_for_device past the end", l.dir);
            self.failures[FailReason::Misuse as usize] += 1;
        } else {
            assert_eq!(r, Ok(()));
            if l.dir.copies_to_device() {
                l.slots[o..o + n].copy_from_slice(&l.orig[o..o + n]);
                self.to_device += n as u64;
            }
        }
        assert_eq!(
            device_read(pool, l.off, l.len),
            l.slots,
            "slots after sync_for_device"
        );
    }

    /// The pool's counters against the shadow's.
    fn check_stats(&self) {
        let st = self.pool.stats();
        let mut per_area = vec![0u64; self.geo.nareas as usize];
        for (s, o) in self.owner.iter().enumerate() {
            if o.is_some() {
                per_area[self.geo.area(s as u32) as usize] += 1;
            }
        }
        assert_eq!(st.io_tlb_nslabs, self.geo.nslabs as u64);
        assert_eq!(st.io_tlb_used, self.held, "io_tlb_used (lost slots)");
        assert_eq!(st.area_used, per_area, "per-area use");
        // Exact when the pool keeps Linux's pool-wide counter or has one
        // area; otherwise the sum of the areas' own marks, never below the
        // true mark.
        let area_marks: u64 = self.area_hiwater.iter().sum();
        assert!(area_marks >= self.hiwater);
        if st.hiwater_exact {
            assert_eq!(st.io_tlb_used_hiwater, self.hiwater, "io_tlb_used_hiwater");
        } else {
            assert_eq!(st.io_tlb_used_hiwater, area_marks, "sum of area marks");
        }
        let exact = self.pool.stats().hiwater_exact;
        assert_eq!(exact, self.exact || self.geo.nareas == 1, "hiwater_exact");
        assert_eq!(st.bytes_to_device, self.to_device, "bytes_to_device");
        assert_eq!(st.bytes_from_device, self.from_device, "bytes_from_device");
        assert_eq!(st.failures, self.failures, "failure counters");
        assert_eq!(st.direct_maps, 0, "a forced device never maps directly");
    }

    fn check_all_slots(&self) {
        for s in 0..self.geo.nslabs {
            assert_eq!(
                self.pool.slot_is_free(s),
                self.owner[s as usize].is_none(),
                "slot {s}: pool and shadow disagree"
            );
        }
    }

    fn step(&mut self, op: &Op) {
        let slot = self.geo.slot as usize;
        // Operations on a live mapping pick it modulo the live count.
        let pick = |which: usize, live: usize| (live > 0).then(|| which % live);
        match *op {
            Op::Map {
                size,
                orig,
                min_align,
                alloc_align,
                boundary,
                dir,
                hint,
                seed,
            } => {
                let max = self.geo.max_mapping_size(min_align);
                let r = Req {
                    size: size.resolve(max, slot),
                    orig,
                    min_align,
                    alloc_align,
                    boundary,
                };
                let _ = self.map_raw(r, dir, hint, seed);
            }
            Op::MapSafe {
                size,
                min_align,
                dir,
                seed,
            } => {
                let max = self.geo.max_mapping_size(min_align);
                self.map_safe(size.resolve(max, slot), min_align, dir, seed);
            }
            Op::Unmap { which, skip } => {
                if let Some(i) = pick(which, self.live.len()) {
                    let attrs = if skip {
                        Attrs::SKIP_CPU_SYNC
                    } else {
                        Attrs::NONE
                    };
                    self.unmap(i, attrs);
                }
            }
            Op::DoubleUnmap { which } => {
                if let Some(i) = pick(which, self.live.len()) {
                    self.double_unmap(i);
                }
            }
            Op::Drop { which } => {
                if let Some(i) = pick(which, self.live.len()) {
                    self.drop_mapping(i);
                }
            }
            Op::StaleUnmap { which } => self.stale_unmap(which),
            Op::StaleSync { which } => self.stale_sync(which),
            Op::DeviceWrite {
                which,
                off,
                len,
                seed,
            } => {
                if let Some(i) = pick(which, self.live.len()) {
                    self.device_writes(i, off, len, seed);
                }
            }
            Op::SyncForCpu {
                which,
                off,
                len,
                oob,
            } => {
                if let Some(i) = pick(which, self.live.len()) {
                    self.sync_for_cpu(i, off, len, oob);
                }
            }
            Op::SyncForDevice {
                which,
                cpu_write,
                off,
                len,
                oob,
            } => {
                if let Some(i) = pick(which, self.live.len()) {
                    self.sync_for_device(i, cpu_write, off, len, oob);
                }
            }
        }
        self.check_stats();
    }

    /// End of a case: every slot agrees, everything unmaps with the right
    /// bytes, nothing is lost, and the largest mapping fits again.
    fn finish(mut self) {
        self.check_all_slots();
        while !self.live.is_empty() {
            self.unmap(self.live.len() - 1, Attrs::NONE);
            self.check_stats();
        }
        assert_eq!(self.held, 0);
        self.check_all_slots();
        // Every slot came back, wherever the policy's cursor stands: the
        // largest mapping the pool allows fits in it.
        let r = Req {
            size: self.geo.max_mapping_size(0),
            orig: 1 << 30,
            min_align: 0,
            alloc_align: 0,
            boundary: DEFAULT_BOUNDARY,
        };
        // (`NextFit`'s walk may give up before the only start behind its
        // index, as Linux's does; `reject` has checked that it may.)
        let b = self.map_raw(r, Direction::Bidirectional, 0, 1);
        assert!(
            b.is_ok() || !Self::is_fast(),
            "largest mapping, empty pool: {b:?}"
        );
        if b.is_ok() {
            self.unmap(0, Attrs::NONE);
        }
        self.check_stats();
        self.check_all_slots();
    }
}

impl<P: Searched> Drop for Model<'_, P> {
    fn drop(&mut self) {
        // A failed check unwinds through here: leak safe mappings rather
        // than unmap them from an engine state already known to be wrong (a
        // second panic would abort the run and lose the shrunk case).
        if std::thread::panicking() {
            for l in self.live.drain(..) {
                if let Side::Safe(m) = l.side {
                    std::mem::forget(m);
                }
            }
        }
    }
}

/// How a map's size is chosen, resolved against the largest mapping the
/// request may have.
#[derive(Clone, Copy, Debug)]
enum Size {
    /// Up to two slots: most streaming mappings.
    Small(u32),
    /// Anywhere in `1..=max`.
    Any(u32),
    /// Around one to four pages: just under, at and just over the line
    /// where the page-alignment rule starts.
    Pages(u32),
    /// Within 64 bytes of the largest promised mapping.
    NearMax(u32),
    /// Past the largest promised mapping: served when the offset leaves
    /// room in a segment, `TooLarge` otherwise.
    OverMax(u32),
}

impl Size {
    fn resolve(self, max: usize, slot: usize) -> usize {
        match self {
            Size::Small(x) => 1 + x as usize % (2 * slot),
            Size::Any(x) => 1 + x as usize % max.max(1),
            Size::Pages(x) => {
                let base = PAGE as usize * (1 + x as usize % 4);
                [base - 1, base, base + 1][(x as usize >> 2) % 3]
            }
            Size::NearMax(x) => max.saturating_sub(x as usize % 64).max(1),
            Size::OverMax(x) => max + 1 + x as usize % 100,
        }
    }
}

/// One step of a random sequence. `which` picks a live mapping (or an
/// unmapped address) modulo how many there are.
#[derive(Clone, Debug)]
enum Op {
    Map {
        size: Size,
        orig: u64,
        min_align: u64,
        alloc_align: u64,
        boundary: u64,
        dir: Direction,
        hint: usize,
        seed: u64,
    },
    MapSafe {
        size: Size,
        min_align: u64,
        dir: Direction,
        seed: u64,
    },
    Unmap {
        which: usize,
        skip: bool,
    },
    DoubleUnmap {
        which: usize,
    },
    Drop {
        which: usize,
    },
    StaleUnmap {
        which: usize,
    },
    StaleSync {
        which: usize,
    },
    DeviceWrite {
        which: usize,
        off: u32,
        len: u32,
        seed: u64,
    },
    SyncForCpu {
        which: usize,
        off: u32,
        len: u32,
        oob: bool,
    },
    SyncForDevice {
        which: usize,
        cpu_write: Option<u64>,
        off: u32,
        len: u32,
        oob: bool,
    },
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        4 => any::<u32>().prop_map(Size::Small),
        3 => any::<u32>().prop_map(Size::Any),
        2 => any::<u32>().prop_map(Size::Pages),
        1 => any::<u32>().prop_map(Size::NearMax),
        1 => any::<u32>().prop_map(Size::OverMax),
    ]
}

fn min_align() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0), 1 => Just(0x7ff), 1 => Just(0xfff), 1 => Just(0x3fff)]
}

fn dir() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::ToDevice),
        Just(Direction::FromDevice),
        Just(Direction::Bidirectional),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // A non-zero original address with random low bits.
    let orig = (1u64..1 << 30, any::<u16>()).prop_map(|(page, low)| page << 16 | low as u64);
    let alloc_align = prop_oneof![4 => Just(0), 1 => Just(0xfff), 1 => Just(0xffff)];
    // Boundaries no smaller than the masks above, so that Linux's
    // alignment test on `tbl_dma_addr & boundary_mask` means real address
    // alignment.
    let boundary = prop_oneof![4 => Just(DEFAULT_BOUNDARY), 1 => Just(0xffff), 1 => Just(0x7fff)];
    let map = (
        size(),
        orig,
        min_align(),
        alloc_align,
        boundary,
        dir(),
        0..8usize,
        any::<u64>(),
    )
        .prop_map(
            |(size, orig, min_align, alloc_align, boundary, dir, hint, seed)| Op::Map {
                size,
                orig,
                min_align,
                alloc_align,
                boundary,
                dir,
                hint,
                seed,
            },
        );
    let map_safe =
        (size(), min_align(), dir(), any::<u64>()).prop_map(|(size, min_align, dir, seed)| {
            Op::MapSafe {
                size,
                min_align,
                dir,
                seed,
            }
        });
    let w = any::<usize>;
    let oob = || prop::bool::weighted(0.1);
    prop_oneof![
        30 => map,
        6 => map_safe,
        15 => (w(), any::<bool>()).prop_map(|(which, skip)| Op::Unmap { which, skip }),
        3 => w().prop_map(|which| Op::DoubleUnmap { which }),
        2 => w().prop_map(|which| Op::Drop { which }),
        3 => w().prop_map(|which| Op::StaleUnmap { which }),
        3 => w().prop_map(|which| Op::StaleSync { which }),
        15 => (w(), any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(which, off, len, seed)| Op::DeviceWrite { which, off, len, seed }),
        10 => (w(), any::<u32>(), any::<u32>(), oob())
            .prop_map(|(which, off, len, oob)| Op::SyncForCpu { which, off, len, oob }),
        10 => (w(), prop::option::of(any::<u64>()), any::<u32>(), any::<u32>(), oob())
            .prop_map(|(which, cpu_write, off, len, oob)| Op::SyncForDevice {
                which,
                cpu_write,
                off,
                len,
                oob,
            }),
    ]
}

/// A pool configuration and byte length: 2 KiB slots mostly, from less
/// than one segment to a few hundred slots, sometimes with a tail shorter
/// than a slot (which the pool must leave alone).
fn geometry() -> impl Strategy<Value = (PoolConfig, usize)> {
    let shift = prop_oneof![6 => Just(11u32), 1 => Just(9), 1 => Just(12)];
    let segment = prop::sample::select(vec![4u32, 8, 16, 32, 64, 128]);
    let nslabs = prop_oneof![1 => 1usize..=8, 2 => 1usize..=140, 2 => 100usize..=400];
    let tail = prop_oneof![3 => Just(0usize), 1 => 1usize..512];
    (shift, segment, 1u32..=4, nslabs, tail).prop_map(|(slot_shift, segment, nareas, n, tail)| {
        let cfg = PoolConfig::DEFAULT
            .with_slot_shift(slot_shift)
            .with_segment(segment)
            .with_nareas(nareas)
            .with_page_shift(12);
        (cfg, (n << slot_shift) + tail)
    })
}

fn run_case<P: Searched>(cfg: PoolConfig, len: usize, ops: &[Op]) {
    // Half the cases keep Linux's exact pool-wide mark, half the per-area
    // marks of the default.
    let exact = ops.len() % 2 == 0;
    let pool = Pool::<P>::new_heap(len, cfg)
        .expect("valid geometry")
        .with_hiwater(if exact {
            swiotlb::Hiwater::Exact
        } else {
            swiotlb::Hiwater::PerArea
        });
    let mut m = Model::new(&pool, &cfg, len, exact);
    for op in ops {
        m.step(op);
    }
    m.finish();
}

/// 256 cases unless `PROPTEST_CASES` says otherwise (`with_cases` alone
/// would override the variable). No regression files are written into
/// the tree: a failure found here becomes an explicit test.
fn config() -> ProptestConfig {
    let base = if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(256)
    };
    ProptestConfig {
        failure_persistence: None,
        // Generation dominates a debug run with the default ChaCha; the
        // sequences need no cryptographic randomness.
        rng_algorithm: RngAlgorithm::XorShift,
        ..base
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn shadow_fast((cfg, len) in geometry(), ops in vec(op(), 1..=200)) {
        run_case::<Fast>(cfg, len, &ops);
    }

    #[test]
    fn shadow_nextfit((cfg, len) in geometry(), ops in vec(op(), 1..=200)) {
        run_case::<NextFit>(cfg, len, &ops);
    }
}

/// A request with no masks and the default boundary.
fn plain(size: usize) -> Req {
    Req {
        size,
        orig: 0x10_0000,
        min_align: 0,
        alloc_align: 0,
        boundary: DEFAULT_BOUNDARY,
    }
}

/// CVE-2023-52790 shape: Linux initialised each slot's free-run count as
/// `IO_TLB_SEGSIZE - io_tlb_offset(i)` without capping it at the pool's
/// end, so in a pool smaller than one segment the first slot claimed 128
/// free slots and an allocation could run past the end of the pool; and
/// `swiotlb_max_mapping_size` promised a whole segment. Here: pools of 1,
/// 5, 100 and 127 slots with 128-slot segments; the largest mapping is the
/// pool; a mapping one byte larger is `TooLarge`; filling the pool with
/// mixed sizes never places a slot past its end and uses every slot.
fn small_pool<P: Searched>() {
    for (nslabs, nareas) in [(1u32, 1u32), (5, 1), (5, 4), (100, 1), (100, 4), (127, 2)] {
        let cfg = PoolConfig::with_areas(nareas);
        let len = nslabs as usize * 2048;
        let pool = Pool::<P>::new_heap(len, cfg).unwrap();
        let mut m = Model::new(&pool, &cfg, len, false);
        assert_eq!(pool.nareas(), 1, "a pool under one segment has one area");
        assert_eq!(pool.max_mapping_size(0), len, "capped to the pool");
        assert_eq!(pool.max_mapping_size(0x7ff), len - 2048);
        let over = m.map_raw(plain(len + 1), Direction::ToDevice, 0, 0);
        assert!(matches!(over, Err(Error::TooLarge { .. })), "{over:?}");

        // Most of the pool in one mapping from slot 0; then a mapping
        // larger than what is left must be refused, not placed past the
        // end (the old count at slot 0 said 128).
        if nslabs > 4 {
            let big = m.map_raw(
                plain((nslabs as usize - 3) * 2048),
                Direction::ToDevice,
                0,
                1,
            );
            let big = big.expect("empty pool");
            let r = m.map_raw(plain(4 * 2048), Direction::ToDevice, 0, 2);
            assert_eq!(
                r,
                Err(Error::PoolFull {
                    requested: 4,
                    free: 3,
                    largest_run: 3
                })
            );
            let i = m.live.iter().position(|l| l.start == big.start).unwrap();
            m.unmap(i, Attrs::NONE);
        }

        // Fill with mixed sizes (1 to 3 slots, some page aligned, some
        // with a min_align_mask offset), then top up slot by slot.
        let mixed = [3 * 2048, 1, 2049, 5000, 2 * 2048, 700, 4096];
        for (k, &size) in mixed.iter().cycle().take(4 * nslabs as usize).enumerate() {
            let r = Req {
                min_align: if k % 3 == 0 { 0x7ff } else { 0 },
                orig: 0x10_0000 + ((k as u64 * 0x1a0) & 0x7ff),
                ..plain(size.min(m.geo.max_mapping_size(0x7ff).max(1)))
            };
            match m.map_raw(r, Direction::Bidirectional, k, k as u64) {
                Ok(b) => {
                    assert!(b.start + b.nslots <= nslabs, "past the pool: {b:?}");
                    assert!(b.phys.0 + r.size as u64 <= pool.start().0 + len as u64);
                }
                Err(Error::PoolFull { .. } | Error::TooLarge { .. }) => {}
                Err(e) => panic!("{r:?}: {e:?}"),
            }
        }
        while m.held < nslabs as u64 {
            m.map_raw(plain(1), Direction::FromDevice, 0, m.held)
                .expect("a free slot is left");
        }
        assert_eq!(
            m.map_raw(plain(1), Direction::FromDevice, 0, 9),
            Err(Error::PoolFull {
                requested: 1,
                free: 0,
                largest_run: 0
            })
        );
        m.finish();
    }
}

#[test]
fn cve_2023_52790_small_pool_fast() {
    small_pool::<Fast>();
}

#[test]
fn cve_2023_52790_small_pool_nextfit() {
    small_pool::<NextFit>();
}

/// CVE-2024-35814 shape: a one-slot mapping leaves Linux's search index on
/// an odd slot; the broken alignment handling then checked the free count
/// of one slot and allocated from another, so a page-aligned request
/// (a mapping of a page or more, or `alloc_align_mask` 0xfff as
/// `dma_alloc_coherent` from a restricted pool uses) came back unaligned
/// and overlapping a live allocation. Here every page-aligned request
/// follows a one-slot mapping, with holes at odd slots from interleaved
/// unmaps; the oracle checks alignment and overlap on every map.
/// `cursor` reads the policy's search index where it has one.
fn unaligned_cursor<P: Searched>(cursor: fn(&Pool<P>) -> Option<u32>) {
    let cfg = PoolConfig::default();
    let len = 96 * 2048;
    let pool = Pool::<P>::new_heap(len, cfg).unwrap();
    let mut m = Model::new(&pool, &cfg, len, false);
    let requests = [
        plain(8192),
        Req {
            alloc_align: 0xfff,
            ..plain(2000)
        },
        Req {
            alloc_align: 0xfff,
            ..plain(8192)
        },
        // NVMe-like: min_align_mask 0xfff with an original at offset 0x800
        // inside its page, and alloc_align_mask too (the vsock report).
        Req {
            min_align: 0xfff,
            alloc_align: 0xfff,
            orig: 0x10_0800,
            ..plain(8192)
        },
        plain(4096),
        plain(5000),
    ];
    let mut odd_seen = false;
    for round in 0..40usize {
        let one = m
            .map_raw(plain(100), Direction::ToDevice, 0, round as u64)
            .expect("room for one slot");
        if (one.start + 1) % 2 == 1 {
            odd_seen = true;
            if let Some(index) = cursor(&pool) {
                assert_eq!(index % 2, 1, "cursor left odd by a one-slot map");
            }
        }
        let r = requests[round % requests.len()];
        match m.map_raw(r, Direction::Bidirectional, 0, round as u64) {
            Ok(b) => {
                let start = m.geo.addr(b.start);
                assert_eq!(start % PAGE, 0, "{r:?}: allocation at {start:#x}");
            }
            // The oracle has already checked that nothing fits (Fast) or
            // that the pool is not empty (NextFit).
            Err(Error::PoolFull { .. }) => {}
            Err(e) => panic!("{r:?}: {e:?}"),
        }
        // Keep about a third of the pool live, oldest out first, so that
        // holes open at odd slots.
        while m.held > 32 {
            let oldest = (0..m.live.len()).min_by_key(|&i| m.live[i].id).unwrap();
            m.unmap(oldest, Attrs::NONE);
        }
    }
    assert!(odd_seen, "the test never left the cursor odd");
    m.finish();
}

#[test]
fn cve_2024_35814_unaligned_cursor_fast() {
    unaligned_cursor::<Fast>(|_| None);
}

#[test]
fn cve_2024_35814_unaligned_cursor_nextfit() {
    unaligned_cursor::<NextFit>(|p| Some(p.with_area(0, |a, _| a.index())));
}

/// Regression: a `min_align_mask` wider than the allocation alignment.
/// With `min_align_mask` 0x3fff and `alloc_align_mask` 0xfff on 2 KiB
/// slots, Linux's `stride` is `(0x3000 >> 11) + 1 = 7`, not a power of
/// two: its walk steps over misaligned slots one at a time, so that is
/// harmless there. `Fast` once used that stride as the period of
/// acceptable starts (`phase & (stride - 1)`), so in a free run not
/// starting at slot 0 it tested the wrong slots and reported `PoolFull`
/// with the right slot free. Here slot 0 is held and the only start the
/// masks allow in `[1, 16)` is slot 8.
fn wide_min_align<P: Searched>() {
    let cfg = PoolConfig::default();
    let len = 16 * 2048;
    let pool = Pool::<P>::new_heap(len, cfg).unwrap();
    let mut m = Model::new(&pool, &cfg, len, false);
    let first = m.map_raw(plain(100), Direction::ToDevice, 0, 0).unwrap();
    assert_eq!(first.start, 0);
    // An original whose bits 12..14 equal those of slot 0's address: the
    // acceptable starts are slots 0, 8, 16, ...
    let r = Req {
        size: 100,
        orig: 0x4000_0000 | (pool.start().0 & 0x3000) | 0x123,
        min_align: 0x3fff,
        alloc_align: 0xfff,
        boundary: DEFAULT_BOUNDARY,
    };
    let b = m.map_raw(r, Direction::ToDevice, 0, 1);
    assert_eq!(b.map(|b| b.start), Ok(8), "{b:?}");
    m.finish();
}

#[test]
fn wide_min_align_fast() {
    wide_min_align::<Fast>();
}

#[test]
fn wide_min_align_nextfit() {
    wide_min_align::<NextFit>();
}
