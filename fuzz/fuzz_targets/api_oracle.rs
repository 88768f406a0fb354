//! Sequences of API actions on a growing tlb, held to a shadow of Linux's
//! semantics, for both allocation policies.
//!
//! The tlb (`IoTlb`, `Fast` or `NextFit`) starts with one 64 KiB pool of
//! 16-slot segments, grows from a heap provider by 64 KiB up to 256 KiB,
//! makes transient pools for callers that may not sleep, never waits (a
//! zero wait timeout), and gives idle pools back when a manual clock says
//! so. Actions: safe and raw maps of one buffer or a scatter-gather list,
//! for devices that must bounce (with and without a `min_align_mask`) and
//! for one that maps directly; unmaps (raw ones with any direction and a
//! shorter size, `SKIP_CPU_SYNC` or not), partial syncs either way, CPU
//! and device writes, coherent allocations, frees and writes, growth,
//! maintenance, and unmaps and syncs of addresses already unmapped.
//!
//! The shadow keeps, for every live mapping, what its original and its
//! bounce slots must hold, with Linux's rules: the map copies the original
//! into the slots whatever the direction (CVE-2022-0854); a sync for the
//! device copies CPU data in for to-device and bidirectional, a sync for
//! the CPU and an unmap copy device data back for from-device and
//! bidirectional (an unmap not with `SKIP_CPU_SYNC`), each exactly the
//! bytes named; an out-of-bounds sync is refused and copies nothing; a
//! failed map leaves everything as it was. After every action the bytes
//! of what it touched are compared with the shadow (every byte of
//! everything after a maintenance, every 16 actions and at the end), and
//! the statistics with its sums:
//! `io_tlb_used` is the slots of the live mappings and coherent
//! allocations, one transient pool per live transient mapping, the pool
//! counts agree with themselves, bytes held stay within the limit, and no
//! grown pool holding a mapping goes away. Every bounce is checked where
//! it lands: the slot count and alignment Linux's
//! `swiotlb_tbl_map_single` gives (`min_align_mask` bits kept,
//! `alloc_align_mask` and page alignment of the start, the device's
//! segment boundary), inside one pool and one of its segments,
//! overlapping no other live allocation. Coherent memory is zeroed,
//! aligned to its size's order, and keeps what was written to it.
//!
//! With the `threads` flag the actions are dealt to two threads sharing
//! the tlb, each with its own devices and shadow; the statistics are then
//! checked as bounds while they run, and exactly, with the allocations of
//! both checked for overlap, once they have joined.
#![no_main]

use std::ptr::NonNull;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use swiotlb::tlb::{GrowConfig, IoTlb, ManualClock};
use swiotlb::{
    Attrs, Device, Direction, DmaAddr, DmaMask, Error, Fast, Growth, MapOptions, Mapping, NextFit,
    PhysAddr, Policy, PoolConfig, SgEntry, TlbKind,
};
use swiotlb_host::HeapProvider;

/// Bytes in a slot (Linux's `IO_TLB_SIZE`).
const SLOT: u64 = 2048;
/// Slots in a segment: the largest mapping is 32 KiB.
const SEGMENT: u32 = 16;
/// The page size of the pools.
const PAGE: u64 = 4096;
/// The first pool, and each grown one.
const POOL: usize = 64 << 10;
/// The most bytes the tlb holds.
const MAX: usize = 256 << 10;
/// How long a grown pool must be idle before it goes back, in ns.
const IDLE: u64 = 1_000_000;
/// Live mappings at most; a map past it is skipped.
const MAX_LIVE: usize = 24;

#[derive(Arbitrary, Debug)]
struct Input {
    nextfit: bool,
    threads: bool,
    /// Areas wanted: 1 or 2.
    two_areas: bool,
    actions: Vec<Action>,
}

/// A buffer length: mostly small, up to past a segment.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Len(u8, u16);

impl Len {
    fn get(self) -> usize {
        let v = usize::from(self.1);
        match self.0 % 4 {
            0 => 1 + v % 64,
            1 => 1 + v % 4096,
            2 => 1 + v % (32 << 10),
            _ => 1 + v % (40 << 10),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Action {
    Map {
        len: Len,
        dir: u8,
        dev: u8,
        raw: bool,
        may_sleep: bool,
        /// Raw maps: the `alloc_align_mask` asked for.
        align: u8,
    },
    MapSg {
        lens: Vec<Len>,
        dir: u8,
        dev: u8,
        raw: bool,
    },
    Unmap {
        which: u8,
        skip_cpu_sync: bool,
        /// Raw unmaps: the direction given (see `call_dir`), and how much
        /// shorter than the mapping the size is.
        dir: u8,
        short: u16,
    },
    Sync {
        which: u8,
        to_device: bool,
        off: u16,
        len: u16,
        /// Raw syncs: the direction given (see `call_dir`).
        dir: u8,
    },
    CpuWrite {
        which: u8,
        off: u16,
        len: u16,
        seed: u8,
    },
    DeviceWrite {
        which: u8,
        off: u16,
        len: u16,
        seed: u8,
    },
    AllocCoherent {
        size: u16,
    },
    FreeCoherent {
        which: u8,
        wrong_size: bool,
    },
    CoherentWrite {
        which: u8,
        off: u16,
        len: u16,
        seed: u8,
    },
    Grow,
    Maintain {
        /// Quarters of the idle time the clock moves on.
        advance: u8,
    },
    Stale {
        which: u8,
        unmap: bool,
    },
}

fn dir_of(d: u8) -> Direction {
    match d % 3 {
        0 => Direction::ToDevice,
        1 => Direction::FromDevice,
        _ => Direction::Bidirectional,
    }
}

/// The period of [`bytes`]: a prime larger than a page and than a slot,
/// so that a copy shifted by slots or pages reads other bytes.
const BLOCK: usize = 4099;

/// `len` bytes from `seed`: a window of a fixed pseudo-random sequence of
/// period [`BLOCK`], starting where `seed` says, so that a copy at a wrong
/// offset or from a wrong buffer reads other bytes. One copy out of a
/// table made once: bytes made one at a time would cost more than the
/// rest of a run under the sanitizer.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    // Long enough for a window of the largest length from any start.
    let table = TABLE.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let block: Vec<u8> = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        block.repeat((64 << 10) / BLOCK + 2)
    });
    let from = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % BLOCK;
    table[from..from + len].to_vec()
}

/// Reads `len` bytes of memory a device sees at `addr` (identity: the heap
/// provider's physical addresses are CPU addresses).
///
/// # Safety
/// `[addr, addr + len)` is valid for reads, and nothing writes it
/// meanwhile.
unsafe fn device_read(addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    // SAFETY: the range is valid for reads (this function's contract);
    // `out` is a fresh allocation, so the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

/// Writes `data` where a device sees `addr`.
///
/// # Safety
/// `[addr, addr + data.len())` is valid for writes, and nothing else
/// accesses it meanwhile.
unsafe fn device_write(addr: u64, data: &[u8]) {
    // SAFETY: the range is valid for writes (this function's contract);
    // `data` is a distinct Rust slice.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}

/// An original for the raw API: a heap buffer reached only through its
/// pointer, because the tlb writes into it on syncs and unmaps.
///
/// # Invariants
/// `ptr` is the start of a live `Box<[u8]>` of `len` bytes, owned by this
/// value.
struct RawBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned (type invariant) and reached only by the
// thread holding this value, or by the tlb inside calls that thread makes.
unsafe impl Send for RawBuf {}

impl RawBuf {
    fn new(data: &[u8]) -> Self {
        let boxed: Box<[u8]> = data.into();
        let len = boxed.len();
        let raw = Box::into_raw(boxed).cast::<u8>();
        // INVARIANT: `raw` comes from `Box::into_raw` of `len` bytes.
        RawBuf {
            ptr: NonNull::new(raw).expect("a box is never null"),
            len,
        }
    }

    fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn addr(&self) -> u64 {
        self.ptr() as u64
    }

    fn to_vec(&self) -> Vec<u8> {
        // SAFETY: the box's bytes (type invariant); the tlb touches them
        // only inside calls of this thread.
        unsafe { device_read(self.addr(), self.len) }
    }

    fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: inside the box (asserted, type invariant); as in
        // `to_vec`, nothing else accesses it meanwhile.
        unsafe { device_write(self.addr() + off as u64, data) }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr(), self.len);
        // SAFETY: the box given up in `new` (type invariant), freed once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Which pool holds a bounce.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Home {
    First,
    /// A grown pool, by its start.
    Grown(u64),
    Transient,
}

/// A live mapping's handle.
enum Handle<'t, P: Policy> {
    Safe(Mapping<'t, Vec<u8>, P>),
    Raw {
        buf: RawBuf,
        /// The raw scatter-gather list it was mapped in (a number of
        /// this thread's), and its entry's device address.
        sg: Option<(u64, DmaAddr)>,
    },
}

/// A live mapping and what its two sides must hold.
struct Live<'t, P: Policy> {
    handle: Handle<'t, P>,
    dev: usize,
    dir: Direction,
    len: usize,
    /// Where the device reads and writes: the bounce address, or the
    /// original itself for a direct mapping.
    dev_addr: u64,
    /// The allocation, when bounced: first byte, slots, pool.
    alloc: Option<(u64, u64, Home)>,
    orig: Vec<u8>,
    slots: Vec<u8>,
}

/// A live coherent allocation.
struct Coh {
    dma: DmaAddr,
    cpu: u64,
    size: usize,
    nslots: u64,
    data: Vec<u8>,
}

/// An address already unmapped, with its original kept alive so that a
/// wrongly accepted unmap writes into live memory and is caught.
struct Stale {
    dev: usize,
    dma: DmaAddr,
    len: usize,
    dir: Direction,
    buf: RawBuf,
    copy: Vec<u8>,
}

/// One thread's shadow.
struct Shadow<'t, P: Policy> {
    tlb: &'t IoTlb<P>,
    clock: &'t ManualClock,
    devs: Vec<Device>,
    live: Vec<Live<'t, P>>,
    coherent: Vec<Coh>,
    stale: Vec<Stale>,
    seed: u64,
    next_sg: u64,
    /// Actions taken.
    steps: u64,
    /// Alone on the tlb: the statistics are exact.
    alone: bool,
}

fn devices() -> Vec<Device> {
    let forced = || Device::new(DmaMask::BITS_64).with_force_bounce();
    vec![
        forced(),
        // NVMe's 4 KiB-1.
        forced().with_min_align_mask(0xfff),
        forced().with_min_align_mask(0x3f),
        // Reaches everything and is not forced: maps directly.
        Device::new(DmaMask::BITS_64),
        // A 16 KiB segment boundary: no bounce may cross one.
        forced().with_seg_boundary_mask(BOUNDARY - 1),
    ]
}

/// How many devices `devices` makes.
const DEVICES: usize = 5;
/// The device with a segment boundary, and the boundary.
const BOUNDED: usize = 4;
const BOUNDARY: u64 = 16 << 10;
/// The device that maps directly.
const DIRECT: usize = 3;

impl<'t, P: Policy> Shadow<'t, P> {
    fn new(tlb: &'t IoTlb<P>, clock: &'t ManualClock, alone: bool, seed: u64) -> Self {
        Shadow {
            tlb,
            clock,
            devs: devices(),
            live: Vec::new(),
            coherent: Vec::new(),
            stale: Vec::new(),
            seed,
            next_sg: 0,
            steps: 0,
            alone,
        }
    }

    fn data(&mut self, len: usize) -> Vec<u8> {
        self.seed += 1;
        bytes(self.seed, len)
    }

    fn direct(&self, dev: usize) -> bool {
        dev == DIRECT
    }

    /// The slot count and the bounce offset of `len` bytes at `orig` with
    /// `alloc_align` (Linux `swiotlb_align_offset` and `nr_slots`).
    fn expected_slots(&self, dev: usize, orig: u64, len: usize, alloc_align: u64) -> (u64, u64) {
        let m = self.devs[dev].min_align_mask();
        let offset = orig & m & (alloc_align | (SLOT - 1));
        let total = (len as u64 + offset).div_ceil(alloc_align + 1) * (alloc_align + 1);
        (total.div_ceil(SLOT), offset)
    }

    /// Where a bounce at `phys` of `nslots` from `start` lives, checked
    /// against every rule of its placement.
    fn place(&self, dev: usize, orig: u64, len: usize, align: u64, phys: u64) -> (u64, u64, Home) {
        let (nslots, offset) = self.expected_slots(dev, orig, len, align);
        let m = self.devs[dev].min_align_mask();
        assert_eq!(phys & m, orig & m, "min_align_mask bits lost");
        let start = phys - offset;
        assert_eq!(start % SLOT, 0, "allocation not at a slot");
        assert_eq!(
            start & align,
            0,
            "allocation not aligned to alloc_align_mask"
        );
        if m == 0 && align == 0 && len as u64 >= PAGE {
            assert_eq!(start % PAGE, 0, "a page or more not page aligned");
        }
        let end = start + nslots * SLOT;
        // The device's segment boundary (none for a mask of all ones).
        let span = self.devs[dev].seg_boundary_mask().wrapping_add(1);
        if let Some(first) = start.checked_div(span) {
            assert_eq!(first, (end - 1) / span, "crosses the segment boundary");
        }
        let first = self.tlb.first_pool();
        let f0 = first.start().as_u64();
        let home = if (f0..f0 + first.len() as u64).contains(&start) {
            assert!(end <= f0 + first.len() as u64, "runs past the first pool");
            Home::First
        } else if let Some(s) = self
            .tlb
            .pool_starts()
            .into_iter()
            .map(PhysAddr::as_u64)
            .find(|&s| (s..s + POOL as u64).contains(&start))
        {
            assert!(end <= s + POOL as u64, "runs past a grown pool");
            Home::Grown(s)
        } else {
            Home::Transient
        };
        // The segment: no allocation crosses one, counted from its
        // pool's start.
        let base = match home {
            Home::First => Some(f0),
            Home::Grown(s) => Some(s),
            Home::Transient => None,
        };
        if let Some(base) = base {
            let seg = u64::from(SEGMENT) * SLOT;
            assert_eq!(
                (start - base) / seg,
                (end - 1 - base) / seg,
                "crosses a segment"
            );
        }
        (start, nslots, home)
    }

    /// Live allocations overlap nowhere.
    fn check_overlap(allocs: &mut [(u64, u64)]) {
        allocs.sort_unstable();
        for w in allocs.windows(2) {
            assert!(w[0].1 <= w[1].0, "allocations overlap: {w:?}");
        }
    }

    fn allocs(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .live
            .iter()
            .filter_map(|l| l.alloc.map(|(s, n, _)| (s, s + n * SLOT)))
            .collect();
        v.extend(
            self.coherent
                .iter()
                .map(|c| (c.dma.as_u64(), c.dma.as_u64() + c.nslots * SLOT)),
        );
        v
    }

    fn check_live(&self, l: &Live<'t, P>) {
        let orig = match &l.handle {
            Handle::Safe(m) => {
                let mut v = vec![0; l.len];
                m.read(0, &mut v).expect("in bounds");
                v
            }
            Handle::Raw { buf, .. } => buf.to_vec(),
        };
        assert!(orig == l.orig, "the original does not hold what it must");
        // SAFETY: the mapping's device side, live, touched by nothing else
        // while this thread checks it (each thread checks its own).
        let slots = unsafe { device_read(l.dev_addr, l.len) };
        assert!(
            slots == l.slots,
            "the bounce slots do not hold what they must"
        );
    }

    fn check_coherent(c: &Coh) {
        // SAFETY: a live coherent allocation of this thread.
        let now = unsafe { device_read(c.cpu, c.size) };
        assert!(now == c.data, "coherent memory changed under its owner");
    }

    /// After a map: the new mappings' bytes, and no overlap with any.
    fn check_new(&self, before: usize) {
        for l in &self.live[before..] {
            self.check_live(l);
        }
        Self::check_overlap(&mut self.allocs());
    }

    fn check_all(&self) {
        for l in &self.live {
            self.check_live(l);
        }
        for c in &self.coherent {
            Self::check_coherent(c);
        }
        Self::check_overlap(&mut self.allocs());
    }

    fn used(&self) -> u64 {
        let mapped: u64 = self.live.iter().filter_map(|l| l.alloc).map(|a| a.1).sum();
        mapped + self.coherent.iter().map(|c| c.nslots).sum::<u64>()
    }

    fn check_stats(&self) {
        let s = self.tlb.stats();
        let starts: Vec<u64> = self
            .tlb
            .pool_starts()
            .into_iter()
            .map(PhysAddr::as_u64)
            .collect();
        for l in &self.live {
            if let Some((_, _, Home::Grown(p))) = l.alloc {
                assert!(starts.contains(&p), "a grown pool went back while mapped");
            }
        }
        if self.alone {
            assert_eq!(s.pool.io_tlb_used, self.used(), "io_tlb_used");
            let transient = self
                .live
                .iter()
                .filter(|l| matches!(l.alloc, Some((_, _, Home::Transient))))
                .count();
            assert_eq!(s.transient_pools, transient as u64, "transient pools");
            assert_eq!(s.pools, 1 + s.pools_added - s.pools_removed, "{s:?}");
            assert_eq!(s.pools as usize, starts.len(), "{s:?}");
            for (k, d) in self.devs.iter().enumerate() {
                let mine = self
                    .live
                    .iter()
                    .filter(|l| l.dev == k && matches!(l.alloc, Some((_, _, Home::Transient))))
                    .count();
                assert_eq!(d.transient_pools(), mine, "device {k}'s transient pools");
            }
        } else {
            assert!(s.pool.io_tlb_used >= self.used(), "io_tlb_used");
        }
        assert!(s.bytes_held as usize <= MAX, "{s:?}");
        assert!(s.bytes_held as usize >= POOL, "{s:?}");
    }

    /// The direction a raw unmap or sync of mapping `i` passes: mostly
    /// the one it was mapped with, as a driver does, sometimes another
    /// (what Linux copies then follows the call's direction).
    fn call_dir(&self, i: usize, d: u8) -> Direction {
        if d.is_multiple_of(4) {
            dir_of(d / 4)
        } else {
            self.live[i].dir
        }
    }

    fn pick(&self, which: u8) -> Option<usize> {
        (!self.live.is_empty()).then(|| usize::from(which) % self.live.len())
    }

    /// A failed map: the reason must fit the request (as the pool oracle
    /// of the core's tests plans it: too large only when the slots it
    /// needs exceed a segment, `max_mapping_size` being a promise, not a
    /// cap), and nothing moved.
    fn failed(&self, e: Error, dev: usize, orig: u64, len: usize, align: u64) {
        let max = self
            .tlb
            .first_pool()
            .max_mapping_size(self.devs[dev].min_align_mask());
        let (nslots, _) = self.expected_slots(dev, orig, len, align);
        let fits = nslots <= u64::from(SEGMENT);
        match e {
            Error::TooLarge { size, .. } => {
                assert_eq!(size, len);
                assert!(len > max && !fits, "{len} bytes, {nslots} slots: {e:?}")
            }
            Error::PaddingTooLarge { .. } => {
                assert!(len <= max && !fits, "{len} bytes, {nslots} slots: {e:?}")
            }
            _ if !fits => panic!("{len} bytes in {nslots} slots refused with {e:?}"),
            Error::PoolFull { .. } | Error::GrowFailed { .. } | Error::TimedOut { .. } => {}
            // The padding, or the boundary, leaves no start.
            Error::AlignmentImpossible { .. } if align != 0 => {}
            Error::AlignmentImpossible { .. } if dev == BOUNDED && len as u64 > BOUNDARY => {}
            e => panic!("a map of {len} bytes failed with {e:?}"),
        }
    }

    /// A failed list: one entry's failure, all or nothing.
    fn list_failed(&self, e: Error, dev: usize, lens: &[usize]) {
        let max = self
            .tlb
            .first_pool()
            .max_mapping_size(self.devs[dev].min_align_mask());
        match e {
            Error::TooLarge { size, .. } => {
                assert!(size > max && lens.contains(&size), "{e:?} of {lens:?}")
            }
            Error::PoolFull { .. } | Error::GrowFailed { .. } | Error::TimedOut { .. } => {}
            Error::AlignmentImpossible { .. }
                if dev == BOUNDED && lens.iter().any(|&l| l as u64 > BOUNDARY) => {}
            e => panic!("a list of {lens:?} failed with {e:?}"),
        }
    }

    fn map(&mut self, len: usize, dir: Direction, dev: usize, raw: bool, attrs: Attrs, align: u64) {
        let data = self.data(len);
        let tlb = self.tlb;
        if raw {
            let buf = RawBuf::new(&data);
            let d = &self.devs[dev];
            let orig = buf.addr();
            let r = if self.direct(dev) {
                // SAFETY: `buf` is valid for `len` bytes, reached only
                // through its pointer until the unmap, and `orig` is its
                // address (identity).
                unsafe { tlb.map_raw_with_attrs(d, PhysAddr(orig), buf.ptr(), len, dir, attrs) }
                    .map(|dma| (dma.as_u64(), None))
            } else {
                let opts = MapOptions::new().with_alloc_align_mask(align);
                // SAFETY: `buf` is valid for reads and writes of `len`
                // bytes, reached only through its pointer until the unmap,
                // and `orig` is its address (identity).
                unsafe { tlb.bounce_raw(d, PhysAddr(orig), buf.ptr(), len, attrs, opts) }.map(|b| {
                    assert_eq!(b.dma.as_u64(), b.phys.as_u64(), "identity");
                    let a = self.place(dev, orig, len, align, b.phys.as_u64());
                    assert_eq!(u64::from(b.nslots), a.1, "Bounce.nslots");
                    (b.phys.as_u64(), Some(a))
                })
            };
            match r {
                Ok((dev_addr, alloc)) => {
                    if alloc.is_none() {
                        assert_eq!(dev_addr, orig, "a direct map at another address");
                    }
                    self.live.push(Live {
                        handle: Handle::Raw { buf, sg: None },
                        dev,
                        dir,
                        len,
                        dev_addr,
                        alloc,
                        orig: data.clone(),
                        slots: data,
                    });
                }
                Err(e) => {
                    self.failed(e, dev, orig, len, align);
                    assert!(buf.to_vec() == data, "a failed map touched the original");
                }
            }
        } else {
            let buffer = data.clone();
            let orig = buffer.as_ptr() as u64;
            match tlb.map_with_attrs(&self.devs[dev], buffer, dir, attrs) {
                Ok(m) => {
                    let dev_addr = m.device_ptr().as_ptr() as u64;
                    let alloc = m.bounce_phys().map(|p| {
                        assert_eq!(p.as_u64(), dev_addr, "identity");
                        self.place(dev, orig, len, 0, p.as_u64())
                    });
                    assert_eq!(alloc.is_none(), self.direct(dev), "bounced or not");
                    assert_eq!(m.dma_addr().as_u64(), dev_addr);
                    self.live.push(Live {
                        handle: Handle::Safe(m),
                        dev,
                        dir,
                        len,
                        dev_addr,
                        alloc,
                        orig: data.clone(),
                        slots: data,
                    });
                }
                Err(f) => {
                    self.failed(f.error, dev, orig, len, 0);
                    assert!(f.buffer == data, "a failed map touched the buffer");
                }
            }
        }
    }

    fn map_sg(&mut self, lens: &[usize], dir: Direction, dev: usize, raw: bool) {
        let datas: Vec<Vec<u8>> = lens.iter().map(|&l| self.data(l)).collect();
        let tlb = self.tlb;
        let d = &self.devs[dev];
        if raw {
            let bufs: Vec<RawBuf> = datas.iter().map(|x| RawBuf::new(x)).collect();
            let mut sg: Vec<SgEntry> = bufs
                .iter()
                .map(|b| SgEntry {
                    phys: PhysAddr(b.addr()),
                    cpu: b.ptr(),
                    len: b.len,
                    dma: DmaAddr(0),
                })
                .collect();
            // SAFETY: every entry's buffer is valid for its length and
            // reached only through its pointer until the unmap; `phys` is
            // its address (identity).
            match unsafe { tlb.map_sg_raw(d, &mut sg, dir, Attrs::NONE) } {
                Ok(()) => {
                    let group = self.next_sg;
                    self.next_sg += 1;
                    for ((buf, e), data) in bufs.into_iter().zip(sg).zip(datas) {
                        let alloc = (!self.direct(dev))
                            .then(|| self.place(dev, buf.addr(), e.len, 0, e.dma.as_u64()));
                        self.live.push(Live {
                            handle: Handle::Raw {
                                buf,
                                sg: Some((group, e.dma)),
                            },
                            dev,
                            dir,
                            len: e.len,
                            dev_addr: e.dma.as_u64(),
                            alloc,
                            orig: data.clone(),
                            slots: data,
                        });
                    }
                }
                Err(e) => {
                    self.list_failed(e, dev, lens);
                    for (b, x) in bufs.iter().zip(&datas) {
                        assert!(b.to_vec() == *x, "a failed list touched an original");
                    }
                }
            }
        } else {
            let buffers = datas.clone();
            let origs: Vec<u64> = buffers.iter().map(|x| x.as_ptr() as u64).collect();
            match tlb.map_sg(d, buffers, dir) {
                Ok(maps) => {
                    assert_eq!(maps.len(), datas.len());
                    for ((m, data), orig) in maps.into_iter().zip(datas).zip(origs) {
                        let dev_addr = m.device_ptr().as_ptr() as u64;
                        let alloc = m
                            .bounce_phys()
                            .map(|p| self.place(dev, orig, m.len(), 0, p.as_u64()));
                        self.live.push(Live {
                            handle: Handle::Safe(m),
                            dev,
                            dir,
                            len: data.len(),
                            dev_addr,
                            alloc,
                            orig: data.clone(),
                            slots: data,
                        });
                    }
                }
                Err(f) => {
                    self.list_failed(f.error, dev, lens);
                    assert!(f.buffer == datas, "a failed list touched a buffer");
                }
            }
        }
    }

    /// What a mapping's original must hold after its unmap: the device's
    /// bytes copied back over the first `n`, if the unmap copies.
    fn after_unmap(l: &Live<'t, P>, copy_back: Option<usize>) -> Vec<u8> {
        let mut orig = l.orig.clone();
        if let (Some(n), Some(_)) = (copy_back, l.alloc) {
            orig[..n].copy_from_slice(&l.slots[..n]);
        }
        orig
    }

    /// Keeps an unmapped raw bounce's address and original, for `stale`.
    fn keep_stale(&mut self, l: Live<'t, P>, copy: Vec<u8>) {
        let Handle::Raw { buf, .. } = l.handle else {
            return;
        };
        if l.alloc.is_none() {
            return;
        }
        self.stale.push(Stale {
            dev: l.dev,
            dma: DmaAddr(l.dev_addr),
            len: l.len,
            dir: l.dir,
            buf,
            copy,
        });
        if self.stale.len() > 8 {
            self.stale.remove(0);
        }
    }

    fn unmap(&mut self, i: usize, skip: bool, dir: Direction, short: usize) {
        let attrs = if skip {
            Attrs::SKIP_CPU_SYNC
        } else {
            Attrs::NONE
        };
        let group = match &self.live[i].handle {
            Handle::Raw {
                sg: Some((g, _)), ..
            } => Some(*g),
            _ => None,
        };
        if let Some(g) = group {
            // The whole list, as it was mapped.
            let in_group = |l: &Live<'t, P>| matches!(&l.handle, Handle::Raw { sg: Some((h, _)), .. } if *h == g);
            let members: Vec<usize> = (0..self.live.len())
                .filter(|&k| in_group(&self.live[k]))
                .collect();
            let entries: Vec<SgEntry> = members
                .iter()
                .filter_map(|&k| match &self.live[k].handle {
                    Handle::Raw {
                        buf,
                        sg: Some((_, dma)),
                    } => Some(SgEntry {
                        phys: PhysAddr(buf.addr()),
                        cpu: buf.ptr(),
                        len: buf.len,
                        dma: *dma,
                    }),
                    _ => None,
                })
                .collect();
            let dev = &self.devs[self.live[i].dev];
            // SAFETY: every entry is live, its original reached only
            // through its pointer, and the device is done with it.
            let r = unsafe { self.tlb.unmap_sg_raw(dev, &entries, dir, attrs) };
            assert_eq!(r, Ok(()), "unmap_sg_raw");
            // From the last, so that the indices before stay put.
            for &k in members.iter().rev() {
                let l = self.live.swap_remove(k);
                let want = Self::after_unmap(&l, (dir.copies_to_cpu() && !skip).then_some(l.len));
                if let Handle::Raw { buf, .. } = &l.handle {
                    assert!(buf.to_vec() == want, "an original after unmap_sg_raw");
                }
                self.keep_stale(l, want);
            }
            return;
        }
        let l = self.live.swap_remove(i);
        if let Handle::Raw { buf, .. } = &l.handle {
            let size = l.len - short % l.len;
            // SAFETY: the mapping is live, its original reached only
            // through its pointer, and the device is done with it.
            let r = unsafe {
                self.tlb
                    .unmap_raw(&self.devs[l.dev], DmaAddr(l.dev_addr), size, dir, attrs)
            };
            assert_eq!(r, Ok(()), "unmap_raw of a live mapping");
            let want = Self::after_unmap(&l, (dir.copies_to_cpu() && !skip).then_some(size));
            assert!(buf.to_vec() == want, "an original after unmap_raw");
            self.keep_stale(l, want);
            return;
        }
        let want = Self::after_unmap(&l, (l.dir.copies_to_cpu() && !skip).then_some(l.len));
        let Handle::Safe(m) = l.handle else {
            unreachable!("not raw")
        };
        let got = m.unmap_with_attrs(attrs);
        assert!(got == want, "a buffer after its unmap");
    }

    fn sync(&mut self, i: usize, to_device: bool, off: usize, len: usize, dir: Direction) {
        // First the side the sync copies from gets bytes the other side
        // lacks, as in use (the CPU prepares data, the device answers), so
        // that a copy the wrong way, or of the wrong bytes, shows.
        if off + len <= self.live[i].len {
            self.seed += 1;
            if to_device {
                self.cpu_fill(i, off, len, self.seed);
            } else {
                self.device_fill(i, off, len, self.seed);
            }
        }
        let tlb = self.tlb;
        let l = &mut self.live[i];
        let inside = off + len <= l.len;
        let (r, dir) = match &mut l.handle {
            Handle::Safe(m) => {
                let r = if to_device {
                    m.sync_for_device(off, len)
                } else {
                    m.sync_for_cpu(off, len)
                };
                (r, l.dir)
            }
            Handle::Raw { .. } => {
                let d = &self.devs[l.dev];
                let at = DmaAddr(l.dev_addr + off as u64);
                let r = if to_device {
                    // SAFETY: the mapping is live; its original is valid for
                    // the reads of the synced range and reached only through
                    // its pointer.
                    unsafe { tlb.sync_for_device_raw(d, at, len, dir) }
                } else {
                    // SAFETY: the mapping is live; its original is valid for
                    // the writes of the synced range and reached only
                    // through its pointer.
                    unsafe { tlb.sync_for_cpu_raw(d, at, len, dir) }
                };
                (r, dir)
            }
        };
        if l.alloc.is_none() {
            // Direct: nothing to copy; only the safe mapping checks bounds.
            match &l.handle {
                Handle::Safe(_) => assert_eq!(r.is_ok(), inside, "{r:?}"),
                Handle::Raw { .. } => assert_eq!(r, Ok(()), "a direct raw sync"),
            }
            return;
        }
        if !inside {
            assert!(
                matches!(r, Err(Error::OutOfBounds { .. })),
                "a sync past the mapping gave {r:?}"
            );
            return;
        }
        assert_eq!(r, Ok(()), "a sync inside a live mapping");
        let range = off..off + len;
        if to_device && dir.copies_to_device() {
            l.slots[range.clone()].copy_from_slice(&l.orig[range]);
        } else if !to_device && dir.copies_to_cpu() {
            l.orig[range.clone()].copy_from_slice(&l.slots[range]);
        }
    }

    /// The CPU writing fresh bytes over `[off, off + len)` of mapping
    /// `i`'s original.
    fn cpu_fill(&mut self, i: usize, off: usize, len: usize, seed: u64) {
        let data = bytes(seed, len);
        let l = &mut self.live[i];
        match &mut l.handle {
            Handle::Safe(m) => m.write(off, &data).expect("in bounds"),
            Handle::Raw { buf, .. } => buf.write(off, &data),
        }
        l.orig[off..off + len].copy_from_slice(&data);
        if l.alloc.is_none() {
            l.slots[off..off + len].copy_from_slice(&data);
        }
    }

    /// The device writing fresh bytes over `[off, off + len)` of mapping
    /// `i`'s device side.
    fn device_fill(&mut self, i: usize, off: usize, len: usize, seed: u64) {
        let data = bytes(seed, len);
        let l = &mut self.live[i];
        // SAFETY: inside the mapping's device side, live; this thread is
        // the device and nothing else touches those bytes meanwhile.
        unsafe { device_write(l.dev_addr + off as u64, &data) };
        l.slots[off..off + len].copy_from_slice(&data);
        if l.alloc.is_none() {
            l.orig[off..off + len].copy_from_slice(&data);
        }
    }

    /// `[off, off + len)` inside mapping `i`, from any two numbers.
    fn range_in(&self, i: usize, off: usize, len: usize) -> (usize, usize) {
        let n = self.live[i].len;
        let off = off % n;
        (off, 1 + len % (n - off))
    }

    fn alloc_coherent(&mut self, size: usize) {
        let d = &self.devs[0];
        match self.tlb.alloc_coherent(d, size) {
            Ok(c) => {
                assert_eq!(c.size, size);
                assert_eq!(c.dma.as_u64(), c.phys.as_u64(), "identity");
                assert_eq!(c.cpu.as_ptr() as u64, c.phys.as_u64(), "identity");
                let first = self.tlb.first_pool();
                assert!(
                    first.contains(c.phys),
                    "coherent memory outside the first pool"
                );
                // Aligned to its size's order (`get_order`), in pages.
                let order = (size as u64).div_ceil(PAGE).next_power_of_two() * PAGE;
                assert_eq!(c.dma.as_u64() % order, 0, "coherent alignment");
                let nslots = (size as u64).div_ceil(SLOT);
                // SAFETY: the allocation's slots, fresh and this thread's.
                let now = unsafe { device_read(c.cpu.as_ptr() as u64, (nslots * SLOT) as usize) };
                // Compared whole (memcmp), not byte by byte: an
                // instrumented loop would cost more than the rest of a run.
                assert!(now == vec![0; now.len()], "coherent memory not zeroed");
                self.coherent.push(Coh {
                    dma: c.dma,
                    cpu: c.cpu.as_ptr() as u64,
                    size,
                    nslots,
                    data: vec![0; size],
                });
            }
            Err(e) => {
                let segment = u64::from(SEGMENT) * SLOT;
                match e {
                    Error::TooLarge { .. } => assert!(size as u64 > segment, "{size}"),
                    Error::PoolFull { .. } | Error::AlignmentImpossible { .. } => {
                        assert!(size as u64 <= segment, "{size}: {e:?}")
                    }
                    e => panic!("coherent {size}: {e:?}"),
                }
            }
        }
    }

    fn free_coherent(&mut self, which: u8, wrong_size: bool) {
        if self.coherent.is_empty() {
            return;
        }
        let i = usize::from(which) % self.coherent.len();
        let c = &self.coherent[i];
        Self::check_coherent(c);
        let d = &self.devs[0];
        if wrong_size {
            // SAFETY: not the allocation's size: nothing is freed.
            let r = unsafe { self.tlb.free_coherent(d, c.dma, c.size + 1) };
            assert!(matches!(r, Err(Error::WrongSize { .. })), "{r:?}");
            return;
        }
        // SAFETY: a live allocation of this thread, no longer used.
        let r = unsafe { self.tlb.free_coherent(d, c.dma, c.size) };
        assert_eq!(r, Ok(()));
        let c = self.coherent.swap_remove(i);
        // A second free is refused. Alone only: with another thread it
        // might be that thread's new allocation at the same place.
        if self.alone {
            // SAFETY: freed already, and no live allocation of anyone's
            // starts there but one of this thread's (checked): nothing of
            // anyone else's is freed.
            let again = unsafe { self.tlb.free_coherent(d, c.dma, c.size) };
            if !self
                .allocs()
                .iter()
                .any(|&(s, e)| (s..e).contains(&c.dma.as_u64()))
            {
                assert!(matches!(again, Err(Error::NotMapped { .. })), "{again:?}");
            }
        }
    }

    fn coherent_write(&mut self, which: u8, off: usize, len: usize, seed: u8) {
        if self.coherent.is_empty() {
            return;
        }
        let i = usize::from(which) % self.coherent.len();
        let c = &mut self.coherent[i];
        let off = off % c.size;
        let len = 1 + len % (c.size - off);
        let data = bytes(u64::from(seed) << 48 | c.dma.as_u64(), len);
        // SAFETY: inside the live allocation, this thread's alone.
        unsafe { device_write(c.cpu + off as u64, &data) };
        c.data[off..off + len].copy_from_slice(&data);
    }

    /// Unmaps or syncs an address already unmapped, when no live
    /// allocation holds it now: refused, nothing copied.
    fn stale(&mut self, which: u8, unmap: bool) {
        // Alone only: with another thread the address may be its mapping
        // now, which this would unmap.
        if self.stale.is_empty() || !self.alone {
            return;
        }
        let i = usize::from(which) % self.stale.len();
        let s = &self.stale[i];
        let a = s.dma.as_u64();
        if self
            .allocs()
            .iter()
            .any(|&(lo, hi)| lo < a + s.len as u64 && a < hi)
        {
            return;
        }
        let d = &self.devs[s.dev];
        let r = if unmap {
            // SAFETY: `buf` is alive and reached only through its pointer;
            // no live allocation of this thread, the tlb's only user, holds
            // the address, so nothing may be written (checked below).
            unsafe { self.tlb.unmap_raw(d, s.dma, s.len, s.dir, Attrs::NONE) }
        } else {
            // SAFETY: `buf` is alive and reached only through its pointer;
            // no live allocation of this thread, the tlb's only user, holds
            // the address, so nothing may be written (checked below).
            unsafe {
                self.tlb
                    .sync_for_cpu_raw(d, s.dma, s.len, Direction::Bidirectional)
            }
        };
        assert!(
            matches!(r, Err(Error::NotMapped { .. })),
            "a stale address gave {r:?}"
        );
        assert!(s.buf.to_vec() == s.copy, "a stale unmap or sync wrote");
    }

    fn step(&mut self, a: &Action) {
        match a {
            Action::Map {
                len,
                dir,
                dev,
                raw,
                may_sleep,
                align,
            } => {
                if self.live.len() >= MAX_LIVE {
                    return;
                }
                let attrs = if *may_sleep {
                    Attrs::MAY_SLEEP
                } else {
                    Attrs::NONE
                };
                let align = [0, 0, 0x7ff, 0xfff, 0x3fff][usize::from(*align) % 5];
                let dev = usize::from(*dev) % DEVICES;
                let before = self.live.len();
                self.map(len.get(), dir_of(*dir), dev, *raw, attrs, align);
                self.check_new(before);
            }
            Action::MapSg {
                lens,
                dir,
                dev,
                raw,
            } => {
                if lens.is_empty() || self.live.len() + lens.len() > MAX_LIVE {
                    return;
                }
                let lens: Vec<usize> = lens.iter().take(4).map(|l| l.get()).collect();
                let before = self.live.len();
                self.map_sg(&lens, dir_of(*dir), usize::from(*dev) % DEVICES, *raw);
                self.check_new(before);
            }
            Action::Unmap {
                which,
                skip_cpu_sync,
                dir,
                short,
            } => {
                let Some(i) = self.pick(*which) else { return };
                let dir = self.call_dir(i, *dir);
                // The device's answer, so that a copy-back shows whether
                // it happened (for every direction: a copy-back that
                // should not happen shows too).
                let n = self.live[i].len;
                self.seed += 1;
                self.device_fill(i, 0, n, self.seed);
                self.unmap(i, *skip_cpu_sync, dir, usize::from(*short));
            }
            Action::Sync {
                which,
                to_device,
                off,
                len,
                dir,
            } => {
                let Some(i) = self.pick(*which) else { return };
                let mlen = self.live[i].len;
                // Mostly inside; sometimes past the end. A raw sync names
                // an address, which must be inside its mapping (past it,
                // it may be another mapping's): only its length runs over.
                let raw = matches!(self.live[i].handle, Handle::Raw { .. });
                let off = usize::from(*off) % (mlen + if raw { 0 } else { 2 });
                let len = 1 + usize::from(*len) % (mlen + 4);
                let dir = self.call_dir(i, *dir);
                self.sync(i, *to_device, off, len, dir);
                self.check_live(&self.live[i]);
            }
            Action::CpuWrite {
                which,
                off,
                len,
                seed,
            } => {
                let Some(i) = self.pick(*which) else { return };
                let (off, len) = self.range_in(i, usize::from(*off), usize::from(*len));
                self.cpu_fill(i, off, len, u64::from(*seed) << 32 | self.seed);
                self.check_live(&self.live[i]);
            }
            Action::DeviceWrite {
                which,
                off,
                len,
                seed,
            } => {
                let Some(i) = self.pick(*which) else { return };
                let (off, len) = self.range_in(i, usize::from(*off), usize::from(*len));
                self.device_fill(i, off, len, u64::from(*seed) << 40 | self.seed);
                self.check_live(&self.live[i]);
            }
            Action::AllocCoherent { size } => {
                if self.coherent.len() >= 4 {
                    return;
                }
                self.alloc_coherent(1 + usize::from(*size) % (40 << 10));
                Self::check_overlap(&mut self.allocs());
            }
            Action::FreeCoherent { which, wrong_size } => self.free_coherent(*which, *wrong_size),
            Action::CoherentWrite {
                which,
                off,
                len,
                seed,
            } => self.coherent_write(*which, usize::from(*off), usize::from(*len), *seed),
            Action::Grow => {
                self.tlb.add_pool().expect("the heap provider");
            }
            Action::Maintain { advance } => {
                self.clock.advance(u64::from(*advance % 16) * IDLE / 4);
                self.tlb.maintain().expect("a release");
                self.check_all();
            }
            Action::Stale { which, unmap } => self.stale(*which, *unmap),
        }
        self.check_stats();
        // Every byte of everything now and then: a copy that strays into
        // another mapping shows here, if not at that mapping's next use.
        self.steps += 1;
        if self.steps.is_multiple_of(16) {
            self.check_all();
        }
    }

    /// Unmaps and frees everything left, checking each.
    fn finish(mut self) {
        self.check_all();
        while !self.live.is_empty() {
            let n = self.live.len();
            let dir = self.live[n - 1].dir;
            self.unmap(n - 1, false, dir, 0);
        }
        while !self.coherent.is_empty() {
            self.free_coherent(0, false);
        }
        self.check_stats();
    }
}

fn run<P: Policy>(input: &Input) {
    let clock = Arc::new(ManualClock::new());
    let mut config = GrowConfig::new(POOL, MAX);
    config.grow_by = POOL;
    config.idle = IDLE;
    config.wait_timeout = 0;
    config.pool = PoolConfig::DEFAULT
        .with_segment(SEGMENT)
        .with_nareas(if input.two_areas { 2 } else { 1 });
    let growth = Growth::new(HeapProvider::new(), config);
    let tlb = IoTlb::<P>::growing_with_policy(TlbKind::Default, growth)
        .expect("a 64 KiB pool from the heap")
        .with_clock(clock.clone());
    let actions = &input.actions[..input.actions.len().min(256)];

    if !input.threads {
        let mut s = Shadow::new(&tlb, &clock, true, 0);
        for a in actions {
            s.step(a);
        }
        s.finish();
    } else {
        let halves: [Vec<&Action>; 2] = [
            actions.iter().step_by(2).collect(),
            actions.iter().skip(1).step_by(2).collect(),
        ];
        let shadows = std::thread::scope(|scope| {
            let handles = halves.map(|half| {
                let (tlb, clock) = (&tlb, &*clock);
                scope.spawn(move || {
                    let seed = half.len() as u64 * 1_000_003;
                    let mut s = Shadow::new(tlb, clock, false, seed);
                    for a in half {
                        s.step(a);
                    }
                    s
                })
            });
            handles.map(|h| h.join().expect("a thread of actions"))
        });
        // Both stopped: the statistics are exact again, and no allocation
        // of one overlaps one of the other.
        let [a, mut b] = shadows;
        let mut allocs = a.allocs();
        allocs.extend(b.allocs());
        Shadow::<P>::check_overlap(&mut allocs);
        a.check_all();
        b.check_all();
        let s = tlb.stats();
        assert_eq!(
            s.pool.io_tlb_used,
            a.used() + b.used(),
            "io_tlb_used of both"
        );
        // Each unmaps through its own devices (a transient pool is
        // tracked on the device that made it); the second alone.
        a.finish();
        b.alone = true;
        b.finish();
    }
    let s = tlb.stats();
    assert_eq!(s.pool.io_tlb_used, 0, "{s:?}");
    assert_eq!(s.transient_pools, 0, "{s:?}");
}

fuzz_target!(|input: Input| {
    if input.nextfit {
        run::<NextFit>(&input);
    } else {
        run::<Fast>(&input);
    }
});
