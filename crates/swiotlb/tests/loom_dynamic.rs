//! Loom models of a growing tlb ([`IoTlb`]): growth racing with lookup and
//! unmap (a), shrinking racing with growth and a map, raw or safe (b), and
//! with two safe mappings' releases in the pools it frees (b''), a
//! deferred request racing with the unmap that frees its slots, with and
//! without cancellation (c), FIFO deferral racing with two unmaps (d), a
//! deferred request racing with the background growth it asks for (e),
//! and the future of `map_async` racing with an unmap (f).
//!
//! Built only with `RUSTFLAGS="--cfg swiotlb_loom"`, which swaps the core's
//! locks and atomics for loom's (see `src/sync.rs`): the pool set's
//! reader-writer lock, the deferral queue, the growth flag and the pools'
//! area locks are all modelled. Run by `ci/loom.sh`.
//!
//! Every pool is tiny: 2 slots of 2 KiB in one area, one segment (4 KiB,
//! the largest mapping), so a single mapping fills it and growth adds
//! another such pool. Memory comes from an [`Arena`] provider, whose
//! "physical" address is the CPU address (as
//! `swiotlb_host::HeapProvider`'s): the models read and write the slots
//! through a bounce's `phys` as the device would. Not that provider
//! itself: the tlb keeps its pools sorted by address and searches them in
//! that order, so with heap addresses the modelled
//! operations would depend on where the allocator put each pool, which
//! differs from one run of the model to the next, and loom requires a
//! deterministic model. The arena hands out fixed chunks of one block in a
//! fixed scrambled order (so that a new pool sorts sometimes after and
//! sometimes before the existing ones), never reuses one, and poisons a
//! chunk it gets back, so a pool given back under a live mapping shows in
//! that mapping's bytes.
//!
//! Loom does not see the slot bytes, so overlap and lost pools are caught
//! by plain checks: a shadow list of the slot ranges of live mappings (a
//! `std` mutex, invisible to loom: it adds no synchronisation and no
//! interleavings, and is never held across a modelled operation), data
//! integrity of every live mapping, and a copy-back at every unmap. An
//! unmap whose pool lookup misses returns `Ok` (the address is taken for a
//! direct mapping), so it is the copy-back and the final "every slot free"
//! check that prove the lookup found the pool.
//!
//! A caller that may sleep and can neither find room nor grow waits on a
//! real OS thread (`std::thread::park_timeout`), which loom cannot model;
//! under `swiotlb_loom` that wait is compiled out and such a caller fails
//! with `PoolFull`. The models are built so that no caller ever needs to
//! wait (the limit leaves room for every growth), and they check that
//! nothing was queued but their own deferred requests.
#![cfg(swiotlb_loom)]

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Mutex as StdMutex;

use loom::sync::Arc;
use loom::thread;

use swiotlb::provider::{Provider, ProviderError, Region};
use swiotlb::tlb::{Deferral, GrowConfig, Growth, IoTlb, ManualClock, TlbKind};
use swiotlb::{
    Attrs, Bounce, Device, Direction, DmaMask, Fast, MapOptions, NextFit, PhysAddr, Policy,
    PoolConfig, Result,
};

const SLOT: usize = 2048;
/// One pool: 2 slots, one segment.
const POOL: usize = 2 * SLOT;
/// How long a grown pool must stay idle before `maintain` gives it back.
const IDLE: u64 = 10;

type Tlb<P> = IoTlb<P>;

/// Chunks of an arena: more than any model allocates (pools and transient
/// pools), as chunks are never reused.
const CHUNKS: usize = 8;
/// The order in which the arena hands out its chunks: the first pool in
/// the middle, then one below it, one above, and so on.
const ORDER: [usize; CHUNKS] = [3, 1, 5, 0, 6, 2, 7, 4];
/// What the arena writes over a chunk it gets back.
const POISON: u8 = 0xdd;

/// A provider of fixed memory: one block of `CHUNKS` chunks of one pool
/// each, allocated per model run, handed out in the order `ORDER`, never
/// reused, poisoned when given back. Identity "physical" addresses.
struct Arena {
    base: NonNull<u8>,
    /// How many chunks were handed out, and which are live. A `std` lock:
    /// bookkeeping loom need not see (it is never held across a modelled
    /// operation).
    state: StdMutex<(usize, [bool; CHUNKS])>,
}

impl Arena {
    const LAYOUT: Layout = match Layout::from_size_align(CHUNKS * POOL, 4096) {
        Ok(l) => l,
        Err(_) => panic!("arena layout"),
    };

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) })
            .expect("arena allocation");
        Self {
            base,
            state: StdMutex::new((0, [false; CHUNKS])),
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Ok(st) = self.state.lock() {
            // Not while unwinding from a failed model: a second panic
            // would abort the whole test binary.
            assert!(
                std::thread::panicking() || !st.1.contains(&true),
                "arena dropped with live chunks"
            );
        }
        // SAFETY: allocated in `new` with this layout, freed once, here;
        // no pool over it is left (the tlb's pools hold the provider).
        unsafe { std::alloc::dealloc(self.base.as_ptr(), Self::LAYOUT) };
    }
}

// SAFETY: the arena's block is plain heap memory, handed out in disjoint
// chunks; its bookkeeping is behind a lock.
unsafe impl Send for Arena {}
// SAFETY: as above; `&Arena` only hands out and takes back chunks under
// the lock.
unsafe impl Sync for Arena {}

// SAFETY: each region is a distinct chunk of the block, valid until the
// block is freed when the arena drops (after every pool over it), never
// handed out twice (chunks are not reused), contiguous in the identity
// "physical" space, and checked against the limit.
unsafe impl Provider for Arena {
    fn alloc(&self, len: usize, below: PhysAddr) -> std::result::Result<Region, ProviderError> {
        let no_memory = ProviderError::NoMemory { len, below };
        if len == 0 || len > POOL {
            return Err(no_memory);
        }
        let mut st = self.state.lock().unwrap();
        let Some(&i) = ORDER.get(st.0) else {
            return Err(no_memory);
        };
        // SAFETY: `i < CHUNKS`, so the chunk lies inside the block.
        let cpu = unsafe { self.base.add(i * POOL) };
        let region = Region {
            cpu,
            phys: PhysAddr(cpu.as_ptr() as usize as u64),
            len,
        };
        if !region.is_below(below) {
            return Err(no_memory);
        }
        st.0 += 1;
        st.1[i] = true;
        Ok(region)
    }

    fn alloc_nowait(
        &self,
        len: usize,
        below: PhysAddr,
    ) -> std::result::Result<Region, ProviderError> {
        self.alloc(len, below)
    }

    unsafe fn free(&self, region: Region) {
        let off = region.cpu.as_ptr() as usize - self.base.as_ptr() as usize;
        let i = off / POOL;
        {
            let mut st = self.state.lock().unwrap();
            assert!(st.1[i], "chunk {i} freed twice");
            st.1[i] = false;
        }
        // SAFETY: the caller gives back a region of this arena that nothing
        // uses any more; it is `region.len` bytes inside chunk `i`.
        unsafe { std::ptr::write_bytes(region.cpu.as_ptr(), POISON, region.len) };
    }
}

/// A tlb of tiny pools, starting at one pool and growing one pool at a
/// time up to `max` bytes.
fn tiny_tlb<P: Policy>(clock: std::sync::Arc<ManualClock>, max: usize) -> Tlb<P> {
    let mut config = GrowConfig::new(POOL, max);
    config.grow_by = POOL;
    config.pool = PoolConfig::DEFAULT
        .with_slot_shift(11)
        .with_segment(2)
        .with_nareas(1)
        .with_page_shift(12);
    config.idle = IDLE;
    let tlb = Tlb::<P>::growing_with_policy(TlbKind::Default, Growth::new(Arena::new(), config))
        .unwrap()
        .with_clock(clock);
    assert_eq!(tlb.pool_count(), 1);
    tlb
}

fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

/// Runs `f` under loom with at most `bound` preemptions, or exhaustively
/// with `None` (per model, exhaustive where that takes seconds, else the
/// deepest bound that does; `LOOM_MAX_PREEMPTIONS` overrides it for a
/// deeper or quicker run), and prints how many interleavings it explored
/// and how long that took.
fn model<F: Fn() + Sync + Send + 'static>(bound: Option<usize>, f: F) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = bound;
    }
    // A growing tlb takes many more modelled steps per map than a pool.
    b.max_branches = 10_000;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    let began = std::time::Instant::now();
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "{}: {} interleavings in {:.1?} (preemption bound {:?})",
        std::thread::current().name().unwrap_or("?"),
        runs.load(std::sync::atomic::Ordering::Relaxed),
        began.elapsed(),
        b.preemption_bound
    );
}

/// The bytes a buffer tagged `tag` starts with.
fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i as u8)).collect()
}

/// What the simulated device writes into a mapping tagged `tag`.
fn device_pattern(tag: u8, len: usize) -> Vec<u8> {
    pattern(!tag, len)
}

/// `[first, end)` physical addresses of the slots a bounce holds, padding
/// included (pools are slot-aligned: the arena's chunks are 4 KiB-aligned).
fn slot_range(b: &Bounce) -> (u64, u64) {
    let first = (b.phys.0 & !(SLOT as u64 - 1)) - u64::from(b.slot - b.start) * SLOT as u64;
    (first, first + u64::from(b.nslots) * SLOT as u64)
}

/// The slot ranges of live mappings, across every pool of the tlb.
#[derive(Default)]
struct Shadow(StdMutex<Vec<(u64, u64)>>);

impl Shadow {
    /// Records `b`'s slots, which no live mapping may hold.
    fn claim(&self, b: &Bounce) {
        let (s, e) = slot_range(b);
        let mut live = self.0.lock().unwrap();
        if let Some(&(ls, le)) = live.iter().find(|&&(ls, le)| s < le && ls < e) {
            panic!("slots {s:#x}..{e:#x} of {b:?} handed out while {ls:#x}..{le:#x} is live");
        }
        live.push((s, e));
    }

    /// Forgets `b`'s slots, before they are given back.
    fn clear(&self, b: &Bounce) {
        let r = slot_range(b);
        let mut live = self.0.lock().unwrap();
        let at = live.iter().position(|&x| x == r).expect("cleared twice");
        live.swap_remove(at);
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

/// A live bounce of a buffer the calling thread owns.
struct Live {
    orig: Vec<u8>,
    b: Bounce,
    tag: u8,
}

/// Bounces a fresh buffer of `len` bytes tagged `tag` through the tlb and
/// claims its slots in `shadow`; the slots must hold the buffer's bytes.
fn bounce<P: Policy>(
    tlb: &Tlb<P>,
    dev: &Device,
    shadow: &Shadow,
    len: usize,
    tag: u8,
    attrs: Attrs,
) -> Live {
    let mut orig = pattern(tag, len);
    let cpu = orig.as_mut_ptr();
    // SAFETY: `orig` is a heap buffer that stays put (it moves only as a
    // `Vec`), lives until after the unmap in `unmap`, and is not read or
    // written through a reference while mapped.
    let b = unsafe {
        tlb.bounce_raw(
            dev,
            PhysAddr(cpu as usize as u64),
            cpu,
            len,
            attrs,
            MapOptions::default(),
        )
    }
    .unwrap_or_else(|e| panic!("bounce of {len} bytes ({attrs:?}) failed: {e}"));
    shadow.claim(&b);
    let live = Live { orig, b, tag };
    assert_slots(&live, &pattern(tag, len));
    live
}

/// Reads the device side of a live mapping, as the device would.
fn device_read(live: &Live) -> Vec<u8> {
    let p = live.b.phys.0 as usize as *const u8;
    // SAFETY: the mapping is live and owned by the calling thread, so its
    // slots (identity-mapped heap memory of a pool the tlb must keep while
    // they are held) hold `len` bytes only it uses.
    unsafe { std::slice::from_raw_parts(p, live.orig.len()) }.to_vec()
}

/// Writes the device side of a live mapping, as the device would.
fn device_write(live: &Live, data: &[u8]) {
    assert!(data.len() <= live.orig.len());
    let p = live.b.phys.0 as usize as *mut u8;
    // SAFETY: as in `device_read`; the range is inside the mapping.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
}

/// Checks a live mapping's slots still hold exactly `want`.
fn assert_slots(live: &Live, want: &[u8]) {
    assert!(
        device_read(live) == want,
        "slots of mapping tag {:#x} at {:?} changed under it",
        live.tag,
        live.b
    );
}

/// Plays the device (writes its pattern), clears the shadow and unmaps
/// from-device: the copy-back proves the unmap found the mapping's pool.
fn unmap<P: Policy>(tlb: &Tlb<P>, dev: &Device, shadow: &Shadow, live: Live) {
    let len = live.orig.len();
    let written = device_pattern(live.tag, len);
    device_write(&live, &written);
    shadow.clear(&live.b);
    let Live { orig, b, tag } = live;
    // SAFETY: the mapping is live, its original is `orig`, still valid and
    // not referenced; the simulated device is done with it.
    unsafe { tlb.unmap_raw(dev, b.dma, len, Direction::FromDevice, Attrs::NONE) }
        .unwrap_or_else(|e| panic!("unmap of {b:?} failed: {e}"));
    assert!(
        orig == written,
        "unmap of tag {tag:#x} at {b:?} did not copy back: its pool was not found"
    );
}

/// Nothing mapped, queued or transient; no failure counted.
fn assert_empty<P: Policy>(tlb: &Tlb<P>, shadow: &Shadow) {
    assert!(shadow.is_empty());
    let st = tlb.stats();
    assert_eq!(st.pool.io_tlb_used, 0, "{st:?}");
    assert!(st.pool.area_used.iter().all(|&u| u == 0), "{st:?}");
    assert_eq!(st.pool.total_failures(), 0, "{st:?}");
    assert_eq!(st.waiters, 0, "{st:?}");
    assert_eq!(st.transient_pools, 0, "{st:?}");
    assert_eq!(st.io_tlb_transient_nslabs, 0, "{st:?}");
    assert_eq!(st.pools, 1 + st.pools_added - st.pools_removed, "{st:?}");
    assert_eq!(
        tlb.bytes_held() as u64,
        st.pools * POOL as u64,
        "bytes held do not match the pools: {st:?}"
    );
}

/// (a) Growth racing with lookup and unmap. The first pool is full with
/// `x`. Thread A (the model's main thread) maps one slot with `MAY_SLEEP`:
/// it finds the tlb full and grows it (inserting a pool into the sorted
/// pool set), unless B's unmap came first. Thread B meanwhile unmaps `x`
/// (a lookup in the pool set, racing the insertion), then maps a
/// whole pool's worth with `MAY_SLEEP`, which fits the freed first pool or
/// a grown one, or grows.
/// No slot is handed out twice, every unmap finds its pool, and the limit
/// (three pools) leaves room for every growth, so nobody waits.
fn grow_vs_unmap<P: Policy>() {
    model(None, || {
        let clock = std::sync::Arc::new(ManualClock::new());
        let tlb = Arc::new(tiny_tlb::<P>(clock, 3 * POOL));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x30, Attrs::MAY_SLEEP);
        assert_eq!(tlb.pool_count(), 1);

        let tb = {
            let (tlb, shadow, dev) = (tlb.clone(), shadow.clone(), dev.clone());
            thread::spawn(move || {
                unmap(&*tlb, &dev, &shadow, x);
                bounce(&*tlb, &dev, &shadow, POOL - 100, 0x50, Attrs::MAY_SLEEP)
            })
        };
        let z = bounce(&*tlb, &dev, &shadow, SLOT - 24, 0xa0, Attrs::MAY_SLEEP);
        let y = tb.join().unwrap();

        // Neither thread's copies reached the other's slots.
        assert_slots(&y, &pattern(0x50, POOL - 100));
        assert_slots(&z, &pattern(0xa0, SLOT - 24));
        let st = tlb.stats();
        assert!(st.pools_added <= 2, "{st:?}");
        assert_eq!(st.deferred, 0, "a caller waited: {st:?}");
        unmap(&*tlb, &dev, &shadow, y);
        unmap(&*tlb, &dev, &shadow, z);
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn grow_vs_unmap_fast() {
    grow_vs_unmap::<Fast>();
}

#[test]
fn grow_vs_unmap_nextfit() {
    grow_vs_unmap::<NextFit>();
}

/// (a') Growth racing with the unmap of a mapping in a grown pool and of a
/// transient one. Before the threads: the first pool holds `x`, a grown
/// pool holds `w`, and `t` (a caller that may not sleep, on a full tlb)
/// holds a transient pool of its own. Thread A (the main thread) grows the
/// tlb with `add_pool` and maps a whole pool's worth; thread B unmaps `w`
/// (found by a lookup while the set changes) and `t` (found through
/// its device's transient ranges, then given back).
fn grow_vs_transient_unmap<P: Policy>() {
    model(None, || {
        let clock = std::sync::Arc::new(ManualClock::new());
        // Three pools and one transient pool of one slot.
        let tlb = Arc::new(tiny_tlb::<P>(clock, 3 * POOL + SLOT));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x30, Attrs::MAY_SLEEP);
        assert!(tlb.add_pool().unwrap());
        let w = bounce(&*tlb, &dev, &shadow, POOL, 0x60, Attrs::MAY_SLEEP);
        let t = bounce(&*tlb, &dev, &shadow, 1000, 0x90, Attrs::NONE);
        assert_eq!(dev.transient_pools(), 1);
        assert_eq!(tlb.stats().transient_pools, 1);

        let tb = {
            let (tlb, shadow, dev) = (tlb.clone(), shadow.clone(), dev.clone());
            thread::spawn(move || {
                unmap(&*tlb, &dev, &shadow, w);
                unmap(&*tlb, &dev, &shadow, t);
            })
        };
        // The limit leaves room for this pool whether or not `t`'s
        // transient pool has gone back yet, and no one else grows.
        let grew = tlb.add_pool().unwrap();
        assert!(grew, "add_pool refused with room under the limit");
        let z = bounce(&*tlb, &dev, &shadow, POOL, 0xc0, Attrs::MAY_SLEEP);
        tb.join().unwrap();

        assert_slots(&z, &pattern(0xc0, POOL));
        assert_eq!(dev.transient_pools(), 0);
        let st = tlb.stats();
        assert_eq!((st.pools, st.pools_added), (3, 2), "{st:?}");
        assert_eq!(st.deferred, 0, "a caller waited: {st:?}");
        unmap(&*tlb, &dev, &shadow, z);
        unmap(&*tlb, &dev, &shadow, x);
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn grow_vs_transient_unmap_fast() {
    grow_vs_transient_unmap::<Fast>();
}

#[test]
fn grow_vs_transient_unmap_nextfit() {
    grow_vs_transient_unmap::<NextFit>();
}

/// (b) Shrinking racing with growth and a map. The first pool is full with
/// `x`; a grown pool has been idle for longer than the idle time, so
/// `maintain` wants to give it back. Thread M runs `maintain`, thread A
/// maps one slot without `MAY_SLEEP` (into the idle pool, a pool being
/// added, or a transient pool), and the main thread grows with `add_pool`.
/// A pool must never be given back while a mapping lives in it: the
/// mapping's pool is still in the tlb, its bytes are intact and its unmap
/// copies back.
fn shrink_vs_grow_and_map<P: Policy>() {
    model(Some(4), || {
        let clock = std::sync::Arc::new(ManualClock::new());
        // The first pool, the idle one, one added by `add_pool`, one that
        // `maintain` may add when the map asked for background growth, and
        // a transient pool of one slot.
        let tlb = Arc::new(tiny_tlb::<P>(clock.clone(), 4 * POOL + SLOT));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x30, Attrs::MAY_SLEEP);
        assert!(tlb.add_pool().unwrap());
        let idle_pool = tlb.pool_starts();
        clock.advance(10 * IDLE);

        let tm = {
            let tlb = tlb.clone();
            thread::spawn(move || tlb.maintain().unwrap())
        };
        let ta = {
            let (tlb, shadow, dev) = (tlb.clone(), shadow.clone(), dev.clone());
            thread::spawn(move || bounce(&*tlb, &dev, &shadow, SLOT - 24, 0xa0, Attrs::NONE))
        };
        let added = tlb.add_pool().unwrap();
        let (_, shrunk) = tm.join().unwrap();
        let z = ta.join().unwrap();

        // `z`'s pool is still there (or it is transient), with its bytes.
        let transient = dev.transient_pools() == 1;
        if !transient {
            let starts = tlb.pool_starts();
            assert!(
                starts
                    .iter()
                    .any(|s| s.0 <= z.b.phys.0 && z.b.phys.0 < s.0 + POOL as u64),
                "pool of {:?} given back while mapped (pools {starts:?}, before {idle_pool:?})",
                z.b
            );
        }
        assert_slots(&z, &pattern(0xa0, SLOT - 24));
        let st = tlb.stats();
        assert_eq!(st.pools_removed, u64::from(shrunk), "{st:?}");
        // The growth before the threads, and `add_pool`'s if it grew.
        assert!(st.pools_added > u64::from(added), "{st:?}");
        assert_eq!(st.deferred, 0, "{st:?}");
        unmap(&*tlb, &dev, &shadow, z);
        unmap(&*tlb, &dev, &shadow, x);
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn shrink_vs_grow_and_map_fast() {
    shrink_vs_grow_and_map::<Fast>();
}

#[test]
fn shrink_vs_grow_and_map_nextfit() {
    shrink_vs_grow_and_map::<NextFit>();
}

/// The outcomes deferred requests' callbacks were called with, by request
/// (the `id` given to `defer`).
type Calls = std::sync::Arc<StdMutex<Vec<(u8, Result<Bounce>)>>>;

/// Queues a deferred bounce of `buf` through `tlb`; its callback records
/// its outcome in `calls` under `id`.
fn defer<P: Policy>(tlb: &Tlb<P>, dev: &Device, buf: &mut [u8], calls: &Calls, id: u8) -> Deferral {
    let calls = calls.clone();
    let cpu = buf.as_mut_ptr();
    // SAFETY: `buf` is a heap buffer the caller keeps alive and untouched
    // until the request is unmapped, or cancelled with `cancel` returning
    // `true`.
    unsafe {
        tlb.bounce_deferred_raw(
            dev,
            PhysAddr(cpu as usize as u64),
            cpu,
            buf.len(),
            MapOptions::default(),
            move |r| calls.lock().unwrap().push((id, r)),
        )
    }
    .expect("a deferred request failed at once")
}

/// The bounce a deferred request completed with.
fn completed(call: &(u8, Result<Bounce>)) -> Bounce {
    match &call.1 {
        Ok(b) => *b,
        Err(e) => panic!("deferred request {} failed: {e}", call.0),
    }
}

/// The bounce of a deferred request that must have been mapped by now:
/// at once, or by exactly one call of its callback (id `id`) in `calls`.
fn mapped(d: &Deferral, calls: &[(u8, Result<Bounce>)], id: u8) -> Bounce {
    let mine: Vec<_> = calls.iter().filter(|c| c.0 == id).collect();
    match d {
        Deferral::Now(b) => {
            assert!(mine.is_empty(), "request {id}, mapped at once, called back");
            *b
        }
        Deferral::Queued(_) => {
            assert_eq!(mine.len(), 1, "request {id} completed {} times", mine.len());
            completed(mine[0])
        }
    }
}

/// (c) A deferred request queued on a full tlb racing with the unmap that
/// frees its slots. The tlb cannot grow (its limit is the first pool),
/// which `x` fills. Thread B asks for a deferred bounce: mapped at once if
/// the unmap came first, else queued. The main thread unmaps `x`. Either
/// way the request completes exactly once, before both threads are done:
/// the enqueuer's own `service` after its store to `queued`, or the
/// unmapper's `service` after its fence and load in `after_release`, must
/// see the other's write (a lost wakeup leaves it queued forever). With
/// `cancel`, B then cancels its ticket: either the cancel wins and the
/// callback never runs, or the request completed (exactly once).
fn deferred_vs_unmap<P: Policy>(cancel: bool) {
    model(None, move || {
        let clock = std::sync::Arc::new(ManualClock::new());
        let tlb = Arc::new(tiny_tlb::<P>(clock, POOL));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x30, Attrs::MAY_SLEEP);
        let calls: Calls = Default::default();

        let tb = {
            let (tlb, dev, calls) = (tlb.clone(), dev.clone(), calls.clone());
            thread::spawn(move || {
                let mut buf = pattern(0x50, SLOT - 24);
                let d = defer(&*tlb, &dev, &mut buf, &calls, 1);
                let cancelled = match &d {
                    Deferral::Queued(ticket) if cancel => tlb.cancel(ticket),
                    _ => false,
                };
                (buf, d, cancelled)
            })
        };
        unmap(&*tlb, &dev, &shadow, x);
        let (buf, d, cancelled) = tb.join().unwrap();

        let calls = std::mem::take(&mut *calls.lock().unwrap());
        let b = match d {
            Deferral::Now(b) => {
                assert!(calls.is_empty(), "a request mapped at once called back");
                b
            }
            Deferral::Queued(_) if cancelled => {
                assert!(calls.is_empty(), "a cancelled request called back");
                assert_eq!(tlb.stats().cancelled, 1);
                assert_empty(&*tlb, &shadow);
                return;
            }
            Deferral::Queued(ticket) => {
                assert_eq!(
                    calls.len(),
                    1,
                    "request {} completed {} times",
                    ticket.id(),
                    calls.len()
                );
                assert!(!tlb.cancel(&ticket), "a completed request was cancelled");
                completed(&calls[0])
            }
        };
        shadow.claim(&b);
        let live = Live {
            orig: buf,
            b,
            tag: 0x50,
        };
        assert_slots(&live, &pattern(0x50, SLOT - 24));
        let st = tlb.stats();
        assert_eq!(st.waiters, 0, "{st:?}");
        assert_eq!(st.pools_added, 0, "{st:?}");
        unmap(&*tlb, &dev, &shadow, live);
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn deferred_vs_unmap_fast() {
    deferred_vs_unmap::<Fast>(false);
}

#[test]
fn deferred_vs_unmap_nextfit() {
    deferred_vs_unmap::<NextFit>(false);
}

#[test]
fn deferred_cancel_vs_unmap_fast() {
    deferred_vs_unmap::<Fast>(true);
}

#[test]
fn deferred_cancel_vs_unmap_nextfit() {
    deferred_vs_unmap::<NextFit>(true);
}

/// (d) FIFO deferral racing with two unmaps on two threads. The pool holds
/// `x` and `y`, one slot each, and cannot grow. Thread B defers `r1` (the
/// whole pool) and then `r2` (one slot); thread C unmaps `y` and the main
/// thread unmaps `x`. One freed slot fits `r2` but not `r1`, which is
/// first: `r2` must not pass it. So after both unmaps `r1` is mapped
/// (at once or by exactly one callback) and `r2` still queued; unmapping
/// `r1` then completes `r2`, exactly once.
fn deferred_fifo_vs_unmaps<P: Policy>() {
    model(Some(3), || {
        let clock = std::sync::Arc::new(ManualClock::new());
        let tlb = Arc::new(tiny_tlb::<P>(clock, POOL));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, SLOT - 24, 0x30, Attrs::NONE);
        let y = bounce(&*tlb, &dev, &shadow, SLOT - 24, 0x60, Attrs::NONE);
        let calls: Calls = Default::default();

        let tb = {
            let (tlb, dev, calls) = (tlb.clone(), dev.clone(), calls.clone());
            thread::spawn(move || {
                let mut b1 = pattern(0x50, POOL - 100);
                let mut b2 = pattern(0xa0, SLOT - 24);
                let d1 = defer(&*tlb, &dev, &mut b1, &calls, 1);
                let d2 = defer(&*tlb, &dev, &mut b2, &calls, 2);
                (b1, d1, b2, d2)
            })
        };
        let tc = {
            let (tlb, dev, shadow) = (tlb.clone(), dev.clone(), shadow.clone());
            thread::spawn(move || unmap(&*tlb, &dev, &shadow, y))
        };
        unmap(&*tlb, &dev, &shadow, x);
        tc.join().unwrap();
        let (b1, d1, b2, d2) = tb.join().unwrap();

        let r1 = mapped(&d1, &calls.lock().unwrap(), 1);
        assert!(
            matches!(d2, Deferral::Queued(_)),
            "r2 mapped at once on a pool r1 holds"
        );
        assert!(
            calls.lock().unwrap().iter().all(|c| c.0 != 2),
            "r2 completed before r1 was unmapped"
        );
        assert_eq!(tlb.stats().waiters, 1);
        shadow.claim(&r1);
        let r1 = Live {
            orig: b1,
            b: r1,
            tag: 0x50,
        };
        assert_slots(&r1, &pattern(0x50, POOL - 100));
        // Unmapping `r1` runs the queue: `r2` completes on this thread.
        unmap(&*tlb, &dev, &shadow, r1);
        let r2 = mapped(&d2, &calls.lock().unwrap(), 2);
        shadow.claim(&r2);
        let r2 = Live {
            orig: b2,
            b: r2,
            tag: 0xa0,
        };
        assert_slots(&r2, &pattern(0xa0, SLOT - 24));
        unmap(&*tlb, &dev, &shadow, r2);
        assert_eq!(
            calls.lock().unwrap().len(),
            1 + usize::from(matches!(d1, Deferral::Queued(_)))
        );
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn deferred_fifo_vs_unmaps_fast() {
    deferred_fifo_vs_unmaps::<Fast>();
}

#[test]
fn deferred_fifo_vs_unmaps_nextfit() {
    deferred_fifo_vs_unmaps::<NextFit>();
}

/// (e) A deferred request racing with the background growth it asks for.
/// The first pool is full with `x` and stays so; the limit allows one more
/// pool. Thread B defers a one-slot request, which queues and asks for
/// growth; thread M runs `maintain`, which grows if it saw the wish, and
/// the growth runs the queue. Whichever way they interleave, the request
/// completes exactly once: during B's or M's call if M grew (the
/// enqueuer's `service` or the grower's must see the other's write), else
/// during a later growth.
fn deferred_vs_growth<P: Policy>() {
    model(None, || {
        let clock = std::sync::Arc::new(ManualClock::new());
        let tlb = Arc::new(tiny_tlb::<P>(clock, 2 * POOL));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x30, Attrs::NONE);
        let calls: Calls = Default::default();

        let tb = {
            let (tlb, dev, calls) = (tlb.clone(), dev.clone(), calls.clone());
            thread::spawn(move || {
                let mut buf = pattern(0x50, SLOT - 24);
                let d = defer(&*tlb, &dev, &mut buf, &calls, 1);
                (buf, d)
            })
        };
        let tm = {
            let tlb = tlb.clone();
            thread::spawn(move || tlb.maintain().unwrap())
        };
        let (grew, shrunk) = tm.join().unwrap();
        let (buf, d) = tb.join().unwrap();
        assert!(
            matches!(d, Deferral::Queued(_)),
            "mapped at once on a full tlb"
        );
        assert!(!shrunk);
        if grew {
            assert!(
                !calls.lock().unwrap().is_empty(),
                "growth did not serve the queue"
            );
        } else {
            assert!(calls.lock().unwrap().is_empty(), "served with no room");
            // `maintain` ran before the request asked for growth (or lost
            // the race for the growth flag); a growth now serves it. Not
            // the next `maintain`: loom orders a relaxed store and a
            // concurrent relaxed swap of the same atomic only partially,
            // so it lets a later swap read the earlier swap's `false`
            // instead of the store's `true`, which no real machine does
            // (a read-modify-write reads the latest value).
            assert!(tlb.add_pool().unwrap(), "{:?}", tlb.stats());
        }
        let b = mapped(&d, &calls.lock().unwrap(), 1);
        let st = tlb.stats();
        assert_eq!((st.pools, st.waiters), (2, 0), "{st:?}");
        shadow.claim(&b);
        let live = Live {
            orig: buf,
            b,
            tag: 0x50,
        };
        assert_slots(&live, &pattern(0x50, SLOT - 24));
        unmap(&*tlb, &dev, &shadow, live);
        unmap(&*tlb, &dev, &shadow, x);
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn deferred_vs_growth_fast() {
    deferred_vs_growth::<Fast>();
}

#[test]
fn deferred_vs_growth_nextfit() {
    deferred_vs_growth::<NextFit>();
}

/// (b') Shrinking racing with the safe API. The first pool is full with
/// `x`; a grown pool is idle past the idle time. Thread A maps a buffer
/// with `IoTlb::map` (a caller that may not sleep: into the idle pool, or
/// into a transient pool if it is gone), plays the device on it and
/// unmaps it; the mapping holds only a pointer to its pool, outside every
/// lock of the tlb. Thread M runs `maintain` twice. The pool must not go
/// back while the mapping lives (the arena would poison its bytes), nor
/// when a mapping came and went between `maintain`'s scan and its removal
/// (the activity check).
fn shrink_vs_safe_map<P: Policy>() {
    model(Some(5), || {
        let clock = std::sync::Arc::new(ManualClock::new());
        let tlb = Arc::new(tiny_tlb::<P>(clock.clone(), 2 * POOL + SLOT));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x30, Attrs::MAY_SLEEP);
        assert!(tlb.add_pool().unwrap());
        clock.advance(10 * IDLE);

        let ta = {
            let (tlb, dev) = (tlb.clone(), dev.clone());
            thread::spawn(move || {
                let len = SLOT - 24;
                let mut m = tlb
                    .map_with_attrs(
                        &dev,
                        pattern(0xa0, len),
                        Direction::Bidirectional,
                        Attrs::NONE,
                    )
                    .unwrap_or_else(|f| panic!("map failed: {}", f.error));
                assert!(m.is_bounced());
                let p = m.device_ptr().as_ptr();
                // SAFETY: playing the device on a live mapping this thread
                // owns: its slots hold `len` bytes only it uses.
                let seen = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
                assert!(seen == pattern(0xa0, len), "slots changed under a mapping");
                let dp = device_pattern(0xa0, len);
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(dp.as_ptr(), p, len) };
                m.sync_for_cpu(0, len).unwrap();
                assert!(m.unmap() == dp, "unmap copied back the wrong bytes");
            })
        };
        let tm = {
            let tlb = tlb.clone();
            thread::spawn(move || {
                let (_, first) = tlb.maintain().unwrap();
                let (_, second) = tlb.maintain().unwrap();
                // At most one pool per idle time, and the clock is still.
                assert!(!(first && second));
                first || second
            })
        };
        ta.join().unwrap();
        let shrunk = tm.join().unwrap();

        let st = tlb.stats();
        assert_eq!(st.pools_removed, u64::from(shrunk), "{st:?}");
        assert_eq!(st.deferred, 0, "{st:?}");
        unmap(&*tlb, &dev, &shadow, x);
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn shrink_vs_safe_map_fast() {
    shrink_vs_safe_map::<Fast>();
}

#[test]
fn shrink_vs_safe_map_nextfit() {
    shrink_vs_safe_map::<NextFit>();
}

/// (b'') Safe mappings' releases racing with the shrink that frees their
/// pools. The first pool is full with `x`; two grown pools hold the safe
/// mappings `y` and `z`, seen busy by a first `maintain`, and the idle
/// time has passed. Threads A and B drop `y` and `z`: each release
/// unlocks its area (which may leave its pool idle) and still runs inside
/// the pool until it returns. Thread M runs `maintain`, which gives one
/// idle pool back. No pool may be freed while a release runs in it: the
/// core's loom build counts releases in flight in each pool and asserts,
/// when a pool is dropped, that none is (the release runs under the pool
/// set's read lock, which the removal's write lock waits for). Without
/// that grace period this model fails.
fn release_vs_shrink<P: Policy>() {
    model(Some(3), || {
        let clock = std::sync::Arc::new(ManualClock::new());
        let tlb = Arc::new(tiny_tlb::<P>(clock.clone(), 3 * POOL));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x40, Attrs::MAY_SLEEP);
        let map = |tag: u8| {
            tlb.map_with_attrs(
                &dev,
                pattern(tag, POOL),
                Direction::ToDevice,
                Attrs::MAY_SLEEP,
            )
            .unwrap_or_else(|f| panic!("map failed: {}", f.error))
        };
        let (y, z) = (map(0x41), map(0x42));
        assert_eq!(tlb.pool_count(), 3, "each map grew the tlb");
        // Seen busy once, then idle past the idle time once they go.
        assert_eq!(tlb.maintain().unwrap(), (false, false));
        clock.advance(10 * IDLE);

        // SAFETY: only the lifetimes change: `y` and `z` borrow the tlb
        // behind `tlb`, which this thread keeps alive until after `ta` and
        // `tb` are joined (and the mappings dropped on them).
        let (y, z): (
            swiotlb::Mapping<'static, Vec<u8>, P>,
            swiotlb::Mapping<'static, Vec<u8>, P>,
        ) = unsafe { (std::mem::transmute(y), std::mem::transmute(z)) };
        let tlb2 = tlb.clone();
        let ta = thread::spawn(move || drop(y));
        let tb = thread::spawn(move || drop(z));
        let tm = thread::spawn(move || tlb2.maintain().unwrap().1);
        ta.join().unwrap();
        tb.join().unwrap();
        let shrunk = tm.join().unwrap();

        let st = tlb.stats();
        assert_eq!(st.pools_removed, u64::from(shrunk), "{st:?}");
        assert_eq!(tlb.pool_count() as u64, 3 - u64::from(shrunk));
        unmap(&*tlb, &dev, &shadow, x);
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn release_vs_shrink_fast() {
    release_vs_shrink::<Fast>();
}

#[test]
fn release_vs_shrink_nextfit() {
    release_vs_shrink::<NextFit>();
}

/// Wakes `block_on`: a flag and a condition variable, both loom's, so
/// loom sees a wakeup that never comes as a deadlock.
struct Wakeup {
    woken: loom::sync::Mutex<bool>,
    cv: loom::sync::Condvar,
}

impl std::task::Wake for Wakeup {
    fn wake(self: std::sync::Arc<Self>) {
        *self.woken.lock().unwrap() = true;
        self.cv.notify_one();
    }
}

/// Drives `f` to completion on the calling thread, blocking (in loom's
/// eyes) between polls until its waker is woken.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let wakeup = std::sync::Arc::new(Wakeup {
        woken: loom::sync::Mutex::new(false),
        cv: loom::sync::Condvar::new(),
    });
    let waker = std::task::Waker::from(wakeup.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let mut woken = wakeup.woken.lock().unwrap();
        while !*woken {
            woken = wakeup.cv.wait(woken).unwrap();
        }
        *woken = false;
    }
}

/// (f) The future of `map_async` racing with the unmap that frees its
/// slots. The pool is full with `x` and cannot grow. Thread B drives
/// `map_async` with `block_on`: mapped at once if the unmap came
/// first, else queued with its waker, and B blocks until woken. The main
/// thread unmaps `x`. A lost wakeup (the request completed unseen, or
/// never served) leaves B blocked forever, which loom reports as a
/// deadlock; a completion must hand B a mapping with its bytes.
fn async_vs_unmap<P: Policy>() {
    model(None, || {
        let clock = std::sync::Arc::new(ManualClock::new());
        let tlb = Arc::new(tiny_tlb::<P>(clock, POOL));
        let shadow = Arc::new(Shadow::default());
        let dev = forced();
        let x = bounce(&*tlb, &dev, &shadow, POOL, 0x30, Attrs::NONE);

        let tb = {
            let (tlb, dev) = (tlb.clone(), dev.clone());
            thread::spawn(move || {
                let len = SLOT - 24;
                let fut = tlb.map_async(&dev, pattern(0x50, len), Direction::Bidirectional);
                let m = block_on(fut).unwrap_or_else(|f| panic!("map_async failed: {}", f.error));
                assert!(m.is_bounced());
                let p = m.device_ptr().as_ptr();
                // SAFETY: playing the device on a live mapping this thread
                // owns: its slots hold `len` bytes only it uses.
                let seen = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
                assert!(seen == pattern(0x50, len), "slots changed under a mapping");
                let dp = device_pattern(0x50, len);
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(dp.as_ptr(), p, len) };
                assert!(m.unmap() == dp, "unmap copied back the wrong bytes");
            })
        };
        unmap(&*tlb, &dev, &shadow, x);
        tb.join().unwrap();
        assert_empty(&*tlb, &shadow);
    });
}

#[test]
fn async_vs_unmap_fast() {
    async_vs_unmap::<Fast>();
}

#[test]
fn async_vs_unmap_nextfit() {
    async_vs_unmap::<NextFit>();
}
