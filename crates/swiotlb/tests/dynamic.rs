//! A growing tlb: growth, transient pools, waiting, deferral, shrinking.
//!
//! Small enough for miri (`ci/miri.sh`): 1 MiB pools, buffers of at most
//! 256 KiB, and data checked in full. The large burst and the two-thread
//! stress test live in `dynamic_stress.rs`.
//!
//! The tests play the device: pools come from the heap with identity
//! translation, so a mapping's [`Mapping::device_ptr`] is where the device
//! would read and write. Raw deferred requests are checked without a
//! device pointer: the CPU copy is cleared while the request is mapped and
//! an unmap from the device must bring back the bytes the completion copied
//! into the bounce slots.

mod misuse;

use misuse::expect_misuse;

use std::collections::HashSet;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use swiotlb::provider::{MemoryHooks, NoHooks, Provider, ProviderError, Region};
use swiotlb::tlb::{Deferral, GrowConfig, IoTlb, ManualClock, Ticket};
use swiotlb::Growth;
use swiotlb::TlbKind;
use swiotlb::{
    Attrs, Bounce, Device, Direction, DmaMask, Error, MapOptions, Mapping, PhysAddr, Policy,
};
use swiotlb_host::{HeapProvider, Maintainer, StdClock};

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;

fn tlb(start: usize, max: usize) -> (IoTlb, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let mut config = GrowConfig::new(start, max);
    config.grow_by = MIB;
    config.idle = 1_000;
    let t = IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(clock.clone()))
        .unwrap();
    (t, clock)
}

fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

/// The bytes of buffer `i`: distinct per buffer and per offset, so a copy
/// from the wrong buffer, or at the wrong offset, shows. One pseudo-random
/// block of a prime length, repeated from an offset that depends on `i`:
/// made by bulk copies, cheap under miri.
fn pattern(i: usize, len: usize) -> Vec<u8> {
    const BLOCK: usize = 4099;
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut x = 0x9e37_79b9_u32;
        (0..2 * BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    });
    let from = i.wrapping_mul(1031) % BLOCK;
    // `base` is two blocks, so this window is one block starting at
    // `from` of the periodic sequence.
    let block = &base[from..from + BLOCK];
    let mut out = block.repeat(len.div_ceil(BLOCK));
    out.truncate(len);
    out
}

/// What the device writes into mapping `i`.
fn answer(i: usize, len: usize) -> Vec<u8> {
    pattern(i ^ 0x5a5a, len)
}

/// The device's side of a live mapping: checks it holds what the CPU
/// mapped, then overwrites it with its answer, as a device writing.
fn device_roundtrip<P: Policy>(m: &Mapping<'_, Vec<u8>, P>, i: usize) {
    let p = m.device_ptr().as_ptr();
    let mut got = vec![0; m.len()];
    // SAFETY: the mapping's bounce slots are valid for `len` bytes while
    // it lives; this test is the device, the only other user of those
    // bytes, and no Rust reference to them exists; `got` is a fresh
    // allocation.
    unsafe { std::ptr::copy_nonoverlapping(p, got.as_mut_ptr(), m.len()) };
    assert!(
        got == pattern(i, m.len()),
        "buffer {i}: the bounce slots do not hold the buffer"
    );
    let answer = answer(i, m.len());
    // SAFETY: as above, for writes.
    unsafe { std::ptr::copy_nonoverlapping(answer.as_ptr(), p, m.len()) };
}

/// The buffer of mapping `i` after its unmap: what the device wrote.
fn check_answer(buf: &[u8], i: usize) {
    assert!(
        buf == answer(i, buf.len()),
        "buffer {i}: the device's bytes did not come back"
    );
}

/// Fills a 1 MiB tlb with four 256 KiB mappings.
fn fill<'t>(t: &'t IoTlb, dev: &Device) -> Vec<Mapping<'t, Vec<u8>>> {
    let maps: Vec<_> = (0..4)
        .map(|i| {
            t.map_with_attrs(
                dev,
                pattern(1000 + i, 256 * KIB),
                Direction::Bidirectional,
                Attrs::NONE,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(
        t.stats().transient_pools,
        0,
        "the first pool holds all four"
    );
    maps
}

#[test]
fn grows_for_callers_that_may_sleep_and_shrinks_when_idle() {
    let (t, clock) = tlb(MIB, 8 * MIB);
    let dev = forced();
    let mut maps = Vec::new();
    for i in 0..24 {
        let buf = vec![i as u8; 256 * 1024];
        let m = t
            .map_with_attrs(&dev, buf, Direction::ToDevice, Attrs::MAY_SLEEP)
            .unwrap();
        maps.push(m);
    }
    let s = t.stats();
    assert!(s.pools >= 6, "{s:?}");
    assert_eq!(s.pools_added, s.pools - 1);
    for (i, m) in maps.into_iter().enumerate() {
        let b = m.unmap();
        assert!(b == vec![i as u8; 256 * 1024]);
    }
    // Idle: one pool per idle time goes back, never the first.
    for _ in 0..20 {
        clock.advance(2_000);
        t.maintain().unwrap();
    }
    let s = t.stats();
    assert_eq!(s.pools, 1, "{s:?}");
    assert_eq!(t.bytes_held(), MIB);
}

#[test]
fn callers_that_may_not_sleep_get_transient_pools() {
    let (t, _clock) = tlb(MIB, 64 * MIB);
    let dev = forced();
    let mut maps = Vec::new();
    for i in 0..16 {
        let buf = vec![i as u8; 200 * 1024];
        maps.push(
            t.map_with_attrs(&dev, buf, Direction::Bidirectional, Attrs::NONE)
                .unwrap(),
        );
    }
    let s = t.stats();
    assert_eq!(s.pools, 1);
    assert!(s.transient_pools >= 12, "{s:?}");
    assert_eq!(dev.transient_pools() as u64, s.transient_pools);
    drop(maps);
    let s = t.stats();
    assert_eq!(s.transient_pools, 0, "{s:?}");
    assert_eq!(s.io_tlb_transient_nslabs, 0);
    assert_eq!(t.bytes_held(), MIB);
}

#[test]
fn a_second_unmap_of_a_transient_mapping_is_not_mapped() {
    let (t, _clock) = tlb(MIB, 8 * MIB);
    let dev = forced();
    let fill = fill(&t, &dev);
    let mut orig = pattern(7, 100 * KIB);
    let cpu = orig.as_mut_ptr();
    let phys = PhysAddr(cpu as usize as u64);
    let len = orig.len();
    // SAFETY: `orig` outlives the mapping and is not touched while mapped.
    let b =
        unsafe { t.bounce_raw(&dev, phys, cpu, len, Attrs::NONE, MapOptions::default()) }.unwrap();
    assert_eq!(
        t.stats().transient_pools,
        1,
        "the full tlb made a transient pool"
    );
    // SAFETY: as above; the mapping is live.
    let first = unsafe { t.unmap_raw(&dev, b.dma, len, Direction::FromDevice, Attrs::NONE) };
    assert_eq!(first, Ok(()));
    assert_eq!(t.stats().transient_pools, 0, "its pool went back");
    // The pool is gone, and a device that must bounce was never given this
    // address directly: every further use is `NotMapped`, as a second
    // unmap in a pool that stays.
    let not_mapped = Err(Error::NotMapped { dma: b.dma });
    // SAFETY: the call finds no mapping and touches nothing.
    let r = expect_misuse(&["NeverMapped"], || unsafe {
        t.unmap_raw(&dev, b.dma, len, Direction::FromDevice, Attrs::NONE)
    });
    assert_eq!(r, not_mapped);
    // SAFETY: as the unmap: no mapping, nothing touched.
    let r = expect_misuse(&["SyncOutside"], || unsafe {
        t.sync_for_cpu_raw(&dev, b.dma, len, Direction::FromDevice)
    });
    assert_eq!(r, not_mapped);
    // SAFETY: as the unmap: no mapping, nothing touched.
    let r = expect_misuse(&["SyncOutside"], || unsafe {
        t.sync_for_device_raw(&dev, b.dma, len, Direction::ToDevice)
    });
    assert_eq!(r, not_mapped);
    assert!(
        orig == pattern(7, len),
        "nothing was copied by the refused calls"
    );
    // The same in a shared pool.
    drop(fill);
    // SAFETY: as above.
    let b =
        unsafe { t.bounce_raw(&dev, phys, cpu, len, Attrs::NONE, MapOptions::default()) }.unwrap();
    assert_eq!(t.stats().transient_pools, 0);
    // SAFETY: the mapping is live, its original valid and unreferenced.
    let r = unsafe { t.unmap_raw(&dev, b.dma, len, Direction::FromDevice, Attrs::NONE) };
    assert_eq!(r, Ok(()));
    // SAFETY: a second unmap finds no mapping and touches nothing.
    let r = expect_misuse(&["NeverMapped"], || unsafe {
        t.unmap_raw(&dev, b.dma, len, Direction::FromDevice, Attrs::NONE)
    });
    assert_eq!(r, Err(Error::NotMapped { dma: b.dma }));
}

#[test]
fn a_device_and_its_clones_share_their_transient_pools() {
    let (t, _clock) = tlb(MIB, 8 * MIB);
    let dev = forced();
    assert!(!dev.used_transient());
    let maps = fill(&t, &dev);
    // A clone made before the device had any transient pool still
    // describes the same device.
    let clone = dev.clone();
    let mut orig = pattern(8, 64 * KIB);
    let (cpu, len) = (orig.as_mut_ptr(), orig.len());
    // SAFETY: `orig` outlives the mapping and is not touched while mapped.
    let b = unsafe {
        t.bounce_raw(
            &clone,
            PhysAddr(cpu as u64),
            cpu,
            len,
            Attrs::NONE,
            MapOptions::default(),
        )
    }
    .unwrap();
    assert_eq!((dev.transient_pools(), clone.transient_pools()), (1, 1));
    assert!(dev.used_transient());
    // The original device finds the clone's transient pool.
    // SAFETY: as above; the mapping is live.
    let r = unsafe { t.unmap_raw(&dev, b.dma, len, Direction::FromDevice, Attrs::NONE) };
    assert_eq!(r, Ok(()));
    assert_eq!((dev.transient_pools(), t.stats().transient_pools), (0, 0));
    drop(maps);
}

/// A kernel keeps its devices in statics: `Device::new` stays `const`, and
/// the transient-pool tracking is made on first use.
static STATIC_DEVICE: Device = Device::new(DmaMask::BITS_64).with_force_bounce();

#[test]
fn a_device_in_a_static_gets_transient_pools() {
    let (t, _clock) = tlb(MIB, 8 * MIB);
    let maps = fill(&t, &STATIC_DEVICE);
    let m = t
        .map_with_attrs(
            &STATIC_DEVICE,
            pattern(9, 4 * KIB),
            Direction::ToDevice,
            Attrs::NONE,
        )
        .unwrap();
    assert_eq!(STATIC_DEVICE.transient_pools(), 1);
    assert!(m.unmap() == pattern(9, 4 * KIB));
    assert_eq!(STATIC_DEVICE.transient_pools(), 0);
    drop(maps);
}

#[test]
fn deferred_requests_complete_in_order() {
    // The device first, so that the tlb goes first: the four requests
    // that complete last stay mapped until their pools go with it.
    let dev = forced();
    let (t, _clock) = tlb(MIB, MIB);
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 256 * 1024]).collect();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut now = Vec::new();
    let mut queued = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let o = order.clone();
        let cpu = b.as_mut_ptr();
        // SAFETY: the buffers outlive every mapping and request.
        let r = unsafe {
            t.bounce_deferred_raw(
                &dev,
                PhysAddr(cpu as u64),
                cpu,
                b.len(),
                MapOptions::default(),
                move |r| {
                    o.lock().unwrap().push((i, r.unwrap()));
                },
            )
        }
        .unwrap();
        match r {
            Deferral::Now(b) => now.push(b),
            Deferral::Queued(tk) => queued.push(tk),
        }
    }
    assert_eq!(now.len(), 4);
    assert_eq!(queued.len(), 4);
    assert_eq!(t.stats().waiters, 4);
    for b in now {
        // SAFETY: as above.
        unsafe { t.unmap_raw(&dev, b.dma, 256 * 1024, Direction::ToDevice, Attrs::NONE) }.unwrap();
    }
    let got: Vec<usize> = order.lock().unwrap().iter().map(|x| x.0).collect();
    assert_eq!(got, vec![4, 5, 6, 7]);
    let _ = AtomicUsize::new(0).load(Ordering::Relaxed);
    let _ = Error::NoPool;
}

// ---------------------------------------------------------------------
// Transient pools under a provider that runs out.

/// A heap provider that refuses with [`ProviderError::NoMemory`] once
/// `budget` bytes are handed out, from both of its allocation paths.
struct Budget {
    heap: HeapProvider,
    budget: usize,
    used: AtomicUsize,
}

impl Budget {
    fn new(budget: usize) -> Self {
        Self {
            heap: HeapProvider::new(),
            budget,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `len` bytes of the budget, or refuses.
    fn take(&self, len: usize, below: PhysAddr) -> Result<(), ProviderError> {
        let refused = ProviderError::NoMemory { len, below };
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(len).filter(|&n| n <= self.budget)
            })
            .map(drop)
            .map_err(|_| refused)
    }

    fn live(&self) -> usize {
        self.heap.live()
    }
}

// SAFETY: every region is one the inner `HeapProvider` returned, passed on
// unchanged, and `free` hands it back to that same provider: the heap
// provider's guarantees (valid, contiguous, below the limit, exclusive)
// hold as they are. The budget only refuses, it never changes a region.
unsafe impl Provider for Budget {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.take(len, below)?;
        self.heap.alloc(len, below).inspect_err(|_| {
            self.used.fetch_sub(len, Ordering::Relaxed);
        })
    }

    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.take(len, below)?;
        self.heap.alloc_nowait(len, below).inspect_err(|_| {
            self.used.fetch_sub(len, Ordering::Relaxed);
        })
    }

    unsafe fn free(&self, region: Region) {
        let len = region.len;
        // SAFETY: the caller's obligations: `region` came from `alloc` or
        // `alloc_nowait` of this provider, that is, from the inner heap
        // provider, unchanged, and is no longer used.
        unsafe { self.heap.free(region) };
        self.used.fetch_sub(len, Ordering::Relaxed);
    }
}

/// A provider that can only give memory by sleeping (the default
/// `alloc_nowait`).
struct SleepyProvider(Arc<HeapProvider>);

// SAFETY: regions are the inner heap provider's, passed on unchanged and
// given back to it.
unsafe impl Provider for SleepyProvider {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.0.alloc(len, below)
    }

    unsafe fn free(&self, region: Region) {
        // SAFETY: the caller's obligations, passed on: `region` came from
        // `alloc`, that is, from the inner provider.
        unsafe { self.0.free(region) }
    }
}

/// Hooks that need to sleep (the default `nowait`), and do nothing else.
struct SleepyHooks;

// SAFETY: every hook is the default, which touches nothing.
unsafe impl MemoryHooks for SleepyHooks {}

/// A 1 MiB tlb over `provider` that may hold 64 MiB (so only the provider
/// limits transient pools).
fn tlb_over<V: Provider + 'static, H: MemoryHooks + 'static>(provider: V, hooks: H) -> IoTlb {
    let mut config = GrowConfig::new(MIB, 64 * MIB);
    config.grow_by = MIB;
    IoTlb::growing(
        TlbKind::Default,
        Growth::new(provider, config).with_hooks(hooks),
    )
    .map(|t| t.with_clock(Arc::new(ManualClock::new())))
    .unwrap()
}

/// Bytes of a transient pool for one mapping of `size` bytes (a page or
/// more): the mapping, a page of alignment slack, in 2 KiB slots.
fn transient_bytes(size: usize) -> usize {
    (size + 4095).next_multiple_of(2048)
}

#[test]
fn transient_pools_serve_a_non_sleeping_burst_until_the_provider_runs_out() {
    const SIZE: usize = 100 * KIB;
    let extra = 4 * MIB;
    let provider = Arc::new(Budget::new(MIB + extra));
    let t = tlb_over(provider.clone(), NoHooks);
    let dev = forced();
    assert_eq!(provider.live(), 1);

    // A burst that the budget covers: no failure at all.
    let n = 20;
    let mut maps = Vec::new();
    for i in 0..n {
        let m = t.map_with_attrs(
            &dev,
            pattern(i, SIZE),
            Direction::Bidirectional,
            Attrs::NONE,
        );
        let m = m.unwrap_or_else(|f| panic!("mapping {i} failed: {:?}", f.error));
        device_roundtrip(&m, i);
        maps.push(m);
    }
    let s = t.stats();
    assert_eq!(s.pools, 1, "no caller could sleep, so nothing grew: {s:?}");
    assert!(s.transient_pools >= 8, "{s:?}");
    assert_eq!(s.transient_made, s.transient_pools);
    assert_eq!(dev.transient_pools() as u64, s.transient_pools);
    assert!(dev.used_transient());
    assert_eq!(provider.live() as u64, 1 + s.transient_pools);
    let per_pool = transient_bytes(SIZE);
    assert_eq!(
        s.io_tlb_transient_nslabs,
        s.transient_pools * (per_pool / 2048) as u64
    );
    assert_eq!(
        s.bytes_held,
        (MIB + per_pool * s.transient_pools as usize) as u64
    );

    // Each unmap of a transient mapping gives its pool back at once.
    let mut transients = s.transient_pools;
    for (i, m) in maps.into_iter().enumerate().rev() {
        check_answer(&m.unmap(), i);
        let s = t.stats();
        assert!(s.transient_pools == transients || s.transient_pools + 1 == transients);
        transients = s.transient_pools;
        assert_eq!(provider.live() as u64, 1 + transients);
        assert_eq!(dev.transient_pools() as u64, transients);
    }
    let s = t.stats();
    assert_eq!(s.transient_pools, 0, "{s:?}");
    assert_eq!(s.io_tlb_transient_nslabs, 0);
    assert_eq!(s.pool.io_tlb_used, 0);
    assert_eq!(provider.live(), 1);
    assert_eq!(dev.transient_pools(), 0);
    assert_eq!(t.bytes_held(), MIB);

    // Now until the provider runs out: every transient pool it can give
    // is made, then a typed "full, and could not grow".
    let mut maps = Vec::new();
    let failed = loop {
        let i = maps.len();
        assert!(i < 100, "the budget never ran out");
        match t.map_with_attrs(
            &dev,
            pattern(i, SIZE),
            Direction::Bidirectional,
            Attrs::NONE,
        ) {
            Ok(m) => maps.push(m),
            Err(f) => break f,
        }
    };
    assert!(
        matches!(failed.error, Error::GrowFailed { .. }),
        "{:?}",
        failed.error
    );
    assert!(
        failed.buffer == pattern(maps.len(), SIZE),
        "the failed map gives the buffer back"
    );
    let s = t.stats();
    assert_eq!(s.grow_failures, 1, "the refused transient pool: {s:?}");
    assert_eq!(s.transient_pools as usize, extra / per_pool, "{s:?}");
    assert_eq!(provider.live() as u64, 1 + s.transient_pools);
    for (i, m) in maps.iter().enumerate() {
        device_roundtrip(m, i);
    }
    for (i, m) in maps.into_iter().enumerate() {
        check_answer(&m.unmap(), i);
    }
    assert_eq!(t.stats().transient_pools, 0);
    assert_eq!(provider.live(), 1);
    assert_eq!(t.bytes_held(), MIB);
}

#[test]
fn no_transient_pool_without_a_non_sleeping_provider_and_hooks() {
    fn burst(t: &IoTlb, live: impl Fn() -> usize) {
        let dev = forced();
        let mut maps = Vec::new();
        let failed = loop {
            assert!(
                maps.len() < 20,
                "a 1 MiB pool cannot hold 20 mappings of 100 KiB"
            );
            match t.map_with_attrs(
                &dev,
                pattern(maps.len(), 100 * KIB),
                Direction::ToDevice,
                Attrs::NONE,
            ) {
                Ok(m) => maps.push(m),
                Err(f) => break f.error,
            }
        };
        assert!(matches!(failed, Error::PoolFull { .. }), "{failed:?}");
        let s = t.stats();
        assert_eq!((s.transient_made, s.transient_pools), (0, 0), "{s:?}");
        assert!(!dev.used_transient());
        assert_eq!(live(), 1);
        assert!(maps.len() >= 8, "the first pool served what it holds");
    }
    let heap = Arc::new(HeapProvider::new());
    burst(&tlb_over(heap.clone(), SleepyHooks), || heap.live());
    let heap = Arc::new(HeapProvider::new());
    burst(&tlb_over(SleepyProvider(heap.clone()), NoHooks), || {
        heap.live()
    });
    // The same burst with hooks and provider that can run without
    // sleeping does get transient pools (the check above can fail).
    let heap = Arc::new(HeapProvider::new());
    let t = tlb_over(heap.clone(), NoHooks);
    let dev = forced();
    let maps: Vec<_> = (0..12)
        .map(|i| {
            t.map_with_attrs(
                &dev,
                pattern(i, 100 * KIB),
                Direction::ToDevice,
                Attrs::NONE,
            )
            .unwrap()
        })
        .collect();
    assert!(t.stats().transient_pools > 0);
    assert!(heap.live() > 1);
    drop(maps);
    assert_eq!(heap.live(), 1);
}

// ---------------------------------------------------------------------
// Deferral by callback.

/// Original buffers for the raw API, reached only through raw pointers
/// once made.
struct Originals {
    _bufs: Vec<Vec<u8>>,
    ptrs: Vec<*mut u8>,
    len: usize,
}

impl Originals {
    fn new(n: usize, len: usize) -> Self {
        let mut bufs: Vec<Vec<u8>> = (0..n).map(|i| pattern(i, len)).collect();
        let ptrs = bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        Self {
            _bufs: bufs,
            ptrs,
            len,
        }
    }

    fn copy(&self, i: usize) -> Vec<u8> {
        // SAFETY: `ptrs[i]` starts a live buffer of `len` bytes; the pool
        // copies into it only inside calls made on this thread.
        unsafe { std::slice::from_raw_parts(self.ptrs[i], self.len) }.to_vec()
    }

    fn clear(&self, i: usize) {
        // SAFETY: as in `copy`, for writes.
        unsafe { self.ptrs[i].write_bytes(0, self.len) };
    }
}

/// Queues request `i` for original `i`, its callback recording `(i,
/// outcome)` in `done` and counting itself in `calls[i]`.
fn defer(
    t: &IoTlb,
    dev: &Device,
    o: &Originals,
    i: usize,
    done: &Arc<Mutex<Vec<(usize, Bounce)>>>,
    calls: &Arc<Vec<AtomicUsize>>,
) -> Deferral {
    let (done, calls) = (done.clone(), calls.clone());
    let cpu = o.ptrs[i];
    // SAFETY: the original lives until the end of the test, after every
    // request is unmapped or cancelled, and is touched by the test only
    // while the request is not in flight (after its completion, before its
    // unmap, as a CPU may between map and unmap).
    unsafe {
        t.bounce_deferred_raw(
            dev,
            PhysAddr(cpu as u64),
            cpu,
            o.len,
            MapOptions::default(),
            move |r| {
                calls[i].fetch_add(1, Ordering::SeqCst);
                done.lock()
                    .unwrap()
                    .push((i, r.expect("a deferred request fails only at once")));
            },
        )
    }
    .unwrap()
}

/// Checks request `i` holds its original's bytes in its bounce slots, then
/// unmaps it: the original was cleared, and the unmap from the device
/// copies the slots back.
fn check_and_unmap(t: &IoTlb, dev: &Device, o: &Originals, i: usize, b: Bounce) {
    o.clear(i);
    // SAFETY: `b` is request `i`'s live bounce of `o.len` bytes, unmapped
    // once, here.
    unsafe { t.unmap_raw(dev, b.dma, o.len, Direction::FromDevice, Attrs::NONE) }.unwrap();
    assert!(
        o.copy(i) == pattern(i, o.len),
        "request {i}: bytes lost in the bounce"
    );
}

/// Fills the tlb through the raw API: four 256 KiB bounces.
fn fill_raw(t: &IoTlb, dev: &Device, fills: &Originals) -> Vec<Bounce> {
    (0..4)
        .map(|i| {
            let cpu = fills.ptrs[i];
            // SAFETY: the fill originals outlive their bounces.
            unsafe {
                t.bounce_raw(
                    dev,
                    PhysAddr(cpu as u64),
                    cpu,
                    fills.len,
                    Attrs::NONE,
                    MapOptions::default(),
                )
            }
            .unwrap()
        })
        .collect()
}

fn unmap_fill(t: &IoTlb, dev: &Device, fills: &Originals, b: Bounce) {
    // SAFETY: `b` is a live fill bounce, unmapped once.
    unsafe { t.unmap_raw(dev, b.dma, fills.len, Direction::ToDevice, Attrs::NONE) }.unwrap();
}

const REQUESTS: usize = 1000;
const REQ_SIZE: usize = 4 * KIB;

#[test]
fn a_thousand_deferred_requests_complete_in_fifo_order() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let fills = Originals::new(4, 256 * KIB);
    let mut fill_bounces = fill_raw(&t, &dev, &fills);
    assert_eq!(t.stats().transient_pools, 0);

    let o = Originals::new(REQUESTS, REQ_SIZE);
    let done = Arc::new(Mutex::new(Vec::new()));
    let calls: Arc<Vec<AtomicUsize>> =
        Arc::new((0..REQUESTS).map(|_| AtomicUsize::new(0)).collect());
    let mut tickets: Vec<Ticket> = Vec::new();
    for i in 0..REQUESTS {
        match defer(&t, &dev, &o, i, &done, &calls) {
            Deferral::Queued(tk) => tickets.push(tk),
            Deferral::Now(_) => panic!("request {i} mapped on a full tlb"),
        }
    }
    assert!(
        tickets.windows(2).all(|w| w[0].id() < w[1].id()),
        "tickets numbered in queue order"
    );
    let s = t.stats();
    assert_eq!(s.waiters, REQUESTS as u64);
    assert_eq!(s.deferred, REQUESTS as u64);
    assert!(
        done.lock().unwrap().is_empty(),
        "nothing completes on a full tlb"
    );

    // Free slots: each freed slot run lets the head through, in order.
    let mut order = Vec::new();
    loop {
        let batch: Vec<_> = std::mem::take(&mut *done.lock().unwrap());
        if batch.is_empty() {
            match fill_bounces.pop() {
                Some(b) => unmap_fill(&t, &dev, &fills, b),
                None => break,
            }
            continue;
        }
        for (i, b) in batch {
            order.push(i);
            check_and_unmap(&t, &dev, &o, i, b);
        }
    }
    assert_eq!(
        order,
        (0..REQUESTS).collect::<Vec<_>>(),
        "completed in FIFO order"
    );
    assert!(
        calls.iter().all(|c| c.load(Ordering::SeqCst) == 1),
        "each callback ran once"
    );
    let s = t.stats();
    assert_eq!(s.waiters, 0);
    assert_eq!(s.cancelled, 0);
    assert_eq!(s.pool.io_tlb_used, 0, "{s:?}");
}

#[test]
fn cancelled_deferred_requests_are_never_lost_nor_completed_twice() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let fills = Originals::new(4, 256 * KIB);
    let mut fill_bounces = fill_raw(&t, &dev, &fills);
    let o = Originals::new(REQUESTS, REQ_SIZE);
    let done = Arc::new(Mutex::new(Vec::new()));
    let calls: Arc<Vec<AtomicUsize>> =
        Arc::new((0..REQUESTS).map(|_| AtomicUsize::new(0)).collect());
    let tickets: Vec<Ticket> = (0..REQUESTS)
        .map(|i| match defer(&t, &dev, &o, i, &done, &calls) {
            Deferral::Queued(tk) => tk,
            Deferral::Now(_) => panic!("request {i} mapped on a full tlb"),
        })
        .collect();
    // Every third request is cancelled: the first third's before any slot
    // frees, the second third's by this thread between frees (some still
    // queued, some completed), the last third's by another thread while
    // this one frees.
    let third = REQUESTS / 3;
    let mut cancelled: Vec<(usize, bool)> = Vec::new();
    for i in (0..third).step_by(3) {
        assert!(t.cancel(&tickets[i]), "request {i} was queued");
        cancelled.push((i, true));
    }
    assert!(!t.cancel(&tickets[0]), "a second cancel finds nothing");
    assert_eq!(t.stats().cancelled, cancelled.len() as u64);
    let mut phase2 = (third..2 * third).filter(|i| i % 3 == 0).peekable();
    let phase3: Vec<usize> = (2 * third..REQUESTS).filter(|i| i % 3 == 0).collect();

    let go = AtomicBool::new(false);
    let (order, phase3_results, before_go) = std::thread::scope(|s| {
        let canceller = s.spawn(|| {
            while !go.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            let mut results = Vec::new();
            for &i in &phase3 {
                results.push((i, t.cancel(&tickets[i])));
                std::thread::yield_now();
            }
            results
        });
        let mut order = Vec::new();
        let mut drained = 0;
        // Completions delivered before the canceller starts: until then
        // only this thread serves the queue, so they arrive in queue
        // order. Afterwards a cancel on the other thread serves it too,
        // and two callbacks granted in order may report in either order.
        let mut before_go = None;
        loop {
            while phase2.peek().is_some_and(|&c| c < drained + 96) {
                let c = phase2.next().unwrap();
                cancelled.push((c, t.cancel(&tickets[c])));
            }
            if phase2.peek().is_none() && before_go.is_none() {
                before_go = Some(order.len() + done.lock().unwrap().len());
                go.store(true, Ordering::Release);
            }
            let batch: Vec<_> = std::mem::take(&mut *done.lock().unwrap());
            if batch.is_empty() {
                if let Some(b) = fill_bounces.pop() {
                    unmap_fill(&t, &dev, &fills, b);
                } else if canceller.is_finished() && t.stats().waiters == 0 {
                    if done.lock().unwrap().is_empty() {
                        break;
                    }
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            for (i, b) in batch {
                order.push(i);
                drained = drained.max(i);
                check_and_unmap(&t, &dev, &o, i, b);
            }
        }
        (order, canceller.join().unwrap(), before_go.unwrap_or(0))
    });

    let phase2_results: Vec<bool> = cancelled
        .iter()
        .filter(|c| c.0 >= third)
        .map(|c| c.1)
        .collect();
    assert!(
        phase2_results.contains(&true),
        "some cancels caught queued requests"
    );
    assert!(
        phase2_results.contains(&false),
        "some cancels came after completion"
    );
    cancelled.extend(phase3_results);
    let mut true_cancels = 0;
    let cancel_of: std::collections::HashMap<usize, bool> = cancelled.iter().copied().collect();
    for i in 0..REQUESTS {
        let n = calls[i].load(Ordering::SeqCst);
        match cancel_of.get(&i) {
            Some(true) => {
                true_cancels += 1;
                assert_eq!(n, 0, "request {i}: cancelled, yet its callback ran");
            }
            Some(false) => assert_eq!(
                n, 1,
                "request {i}: cancel failed, so it must have completed once"
            ),
            None => assert_eq!(n, 1, "request {i}: not cancelled, completed {n} times"),
        }
    }
    let seen: HashSet<usize> = order.iter().copied().collect();
    assert_eq!(seen.len(), order.len(), "no request completed twice");
    assert_eq!(order.len(), REQUESTS - true_cancels);
    // The order is FIFO where one thread completed everything: before the
    // canceller started.
    assert!(before_go > third, "the concurrent phase came too early");
    assert!(
        order[..before_go].windows(2).all(|w| w[0] < w[1]),
        "FIFO before the concurrent phase"
    );
    let s = t.stats();
    assert_eq!(s.cancelled, true_cancels as u64);
    assert_eq!(s.waiters, 0);
    assert_eq!(s.pool.io_tlb_used, 0, "every slot back: {s:?}");
}

// ---------------------------------------------------------------------
// Waiting.

/// A 1 MiB tlb that cannot grow, waiting `timeout` for slots, on the
/// standard clock.
fn fixed_tlb(timeout: Duration) -> IoTlb {
    let mut config = GrowConfig::new(MIB, MIB);
    config.grow_by = MIB;
    config.wait_timeout = timeout.as_nanos() as u64;
    IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(Arc::new(StdClock::default())))
        .unwrap()
}

#[test]
fn a_sleeping_caller_waits_for_an_unmap_on_another_thread() {
    let t = fixed_tlb(Duration::from_secs(30));
    let dev = forced();
    let (filled_tx, filled_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            let maps = fill(&t, &dev);
            filled_tx.send(()).unwrap();
            // Unmap only once the main thread is queued.
            while t.stats().waiters == 0 {
                std::thread::yield_now();
            }
            for (i, m) in maps.into_iter().enumerate() {
                assert!(m.unmap() == pattern(1000 + i, 256 * KIB));
            }
        });
        filled_rx.recv().unwrap();
        let m = t.map_with_attrs(
            &dev,
            pattern(7, 256 * KIB),
            Direction::Bidirectional,
            Attrs::MAY_SLEEP,
        );
        let m = m.unwrap_or_else(|f| panic!("the waiter failed: {:?}", f.error));
        device_roundtrip(&m, 7);
        check_answer(&m.unmap(), 7);
        other.join().unwrap();
    });
    let s = t.stats();
    assert_eq!(s.deferred, 1, "{s:?}");
    assert_eq!((s.timeouts, s.waiters, s.pools), (0, 0, 1));
    assert_eq!(s.pool.io_tlb_used, 0);
}

#[test]
fn a_sleeping_caller_times_out_on_a_tlb_that_stays_full() {
    let t = fixed_tlb(Duration::from_millis(20));
    let dev = forced();
    let mut maps = fill(&t, &dev);
    let failed = t
        .map_with_attrs(
            &dev,
            pattern(9, 64 * KIB),
            Direction::ToDevice,
            Attrs::MAY_SLEEP,
        )
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(failed.error, Error::TimedOut { .. }),
        "{:?}",
        failed.error
    );
    assert!(failed.buffer == pattern(9, 64 * KIB));
    let s = t.stats();
    assert_eq!((s.timeouts, s.waiters, s.deferred), (1, 0, 1), "{s:?}");
    // The queue is not left stuck: with room, the next caller maps at once.
    drop(maps.pop());
    let m = t
        .map_with_attrs(
            &dev,
            pattern(9, 64 * KIB),
            Direction::Bidirectional,
            Attrs::MAY_SLEEP,
        )
        .unwrap();
    device_roundtrip(&m, 9);
    check_answer(&m.unmap(), 9);
    assert_eq!(t.stats().timeouts, 1);
}

// ---------------------------------------------------------------------
// Futures.

/// A waker that raises a flag.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

fn poll_once<F: Future>(f: Pin<&mut F>, flag: &Arc<Flag>) -> Poll<F::Output> {
    let waker = Waker::from(flag.clone());
    f.poll(&mut Context::from_waker(&waker))
}

#[test]
fn map_async_waits_on_a_full_tlb_and_completes_when_woken() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let mut maps = fill(&t, &dev);
    let flag = Arc::new(Flag::default());
    let mut fut = pin!(t.map_async(&dev, pattern(3, 256 * KIB), Direction::Bidirectional));
    assert!(poll_once(fut.as_mut(), &flag).is_pending());
    assert!(poll_once(fut.as_mut(), &flag).is_pending(), "still full");
    assert!(!flag.take(), "nothing freed, nothing woken");
    assert_eq!(t.stats().waiters, 1);
    assert!(maps.pop().unwrap().unmap() == pattern(1003, 256 * KIB));
    assert!(flag.take(), "the unmap woke the future");
    let Poll::Ready(r) = poll_once(fut.as_mut(), &flag) else {
        panic!("woken, yet pending");
    };
    let m = r.unwrap_or_else(|f| panic!("{:?}", f.error));
    assert!(m.is_bounced());
    device_roundtrip(&m, 3);
    check_answer(&m.unmap(), 3);
    drop(maps);
    let s = t.stats();
    assert_eq!(
        (s.deferred, s.waiters, s.cancelled, s.pool.io_tlb_used),
        (1, 0, 0, 0),
        "{s:?}"
    );
}

#[test]
fn map_async_is_immediate_with_room() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let flag = Arc::new(Flag::default());
    let fut = pin!(t.map_async(&dev, pattern(4, 10 * KIB), Direction::Bidirectional));
    let Poll::Ready(Ok(m)) = poll_once(fut, &flag) else {
        panic!("room, yet not mapped");
    };
    device_roundtrip(&m, 4);
    check_answer(&m.unmap(), 4);
    assert_eq!(t.stats().deferred, 0);
}

#[test]
fn dropping_a_map_future_cancels_it_or_gives_its_slots_back() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let flag = Arc::new(Flag::default());
    let mut maps = fill(&t, &dev);
    let full = t.stats().pool.io_tlb_used;

    // Pending, dropped: cancelled, nothing held.
    {
        let mut fut = Box::pin(t.map_async(&dev, pattern(5, 64 * KIB), Direction::ToDevice));
        assert!(poll_once(fut.as_mut(), &flag).is_pending());
        assert_eq!(t.stats().waiters, 1);
    }
    let s = t.stats();
    assert_eq!(
        (s.cancelled, s.waiters, s.pool.io_tlb_used),
        (1, 0, full),
        "{s:?}"
    );

    // Completed by an unmap, never polled again, dropped: its slots go
    // back.
    let mut fut = Box::pin(t.map_async(&dev, pattern(6, 64 * KIB), Direction::ToDevice));
    assert!(poll_once(fut.as_mut(), &flag).is_pending());
    drop(maps.pop());
    assert!(flag.take(), "completed and woken");
    let s = t.stats();
    assert_eq!(s.waiters, 0);
    assert_eq!(
        s.pool.io_tlb_used,
        full - 128 + 32,
        "the request holds its 32 slots: {s:?}"
    );
    drop(fut);
    let s = t.stats();
    assert_eq!(s.cancelled, 1, "a completed request is not cancelled");
    assert_eq!(s.pool.io_tlb_used, full - 128, "{s:?}");
    drop(maps);
    assert_eq!(t.stats().pool.io_tlb_used, 0);
}

/// A caller that may not sleep, with no transient pool possible, fails;
/// the growth it asked for is done by the maintainer thread, woken at
/// once rather than at its next period, and a retry then succeeds.
#[test]
fn the_maintainer_grows_for_callers_that_could_not() {
    let mut config = GrowConfig::new(MIB, 4 * MIB);
    config.grow_by = MIB;
    let t = Arc::new(
        IoTlb::growing(
            TlbKind::Default,
            Growth::new(HeapProvider::new(), config).with_hooks(SleepyHooks),
        )
        .map(|t| t.with_clock(Arc::new(StdClock::default())))
        .unwrap(),
    );
    // A period far longer than the test: only the wake-up can explain a
    // growth within it.
    let m = Maintainer::spawn(&t, Duration::from_secs(3600), |e| panic!("{e}"));
    let dev = forced();
    let held: Vec<_> = (0..4)
        .map(|i| {
            t.map_with_attrs(
                &dev,
                pattern(i, 256 * KIB),
                Direction::ToDevice,
                Attrs::NONE,
            )
            .unwrap()
        })
        .collect();
    let f = t
        .map_with_attrs(&dev, pattern(9, 4 * KIB), Direction::ToDevice, Attrs::NONE)
        .unwrap_err();
    assert!(matches!(f.error, Error::PoolFull { .. }), "{:?}", f.error);
    assert_eq!(t.stats().transient_made, 0, "the hooks would sleep");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.pool_count() < 2 {
        assert!(std::time::Instant::now() < deadline, "no background growth");
        std::thread::sleep(Duration::from_millis(1));
    }
    let again = t
        .map_with_attrs(&dev, f.buffer, Direction::ToDevice, Attrs::NONE)
        .unwrap();
    assert_eq!(t.stats().pools_added, 1);
    drop(again);
    drop(held);
    drop(m);
}

/// A callback that panics takes only its own request with it: the requests
/// queued behind it stay queued and complete at the next unmaps.
#[test]
fn a_panicking_callback_reaches_no_other_caller_and_loses_nothing() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let mut bufs: Vec<Vec<u8>> = (0..7).map(|i| vec![i as u8; 256 * KIB]).collect();
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut now = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let d = done.clone();
        let cpu = b.as_mut_ptr();
        // SAFETY: the buffers outlive every mapping and request.
        let r = unsafe {
            t.bounce_deferred_raw(
                &dev,
                PhysAddr(cpu as u64),
                cpu,
                256 * KIB,
                MapOptions::default(),
                move |r| {
                    assert!(i != 4, "request 4's callback fails");
                    d.lock().unwrap().push((i, r.unwrap()));
                },
            )
        }
        .unwrap();
        if let Deferral::Now(b) = r {
            now.push(b);
        }
    }
    assert_eq!((now.len(), t.stats().waiters), (4, 3));
    let unmap = |b: Bounce| {
        // SAFETY: as above; nothing touches the buffers meanwhile.
        unsafe { t.unmap_raw(&dev, b.dma, 256 * KIB, Direction::ToDevice, Attrs::NONE) }
    };
    let mut now = now.into_iter();
    // The unmap frees its slots and serves request 4, whose callback
    // panics: the unmap itself returns normally, request 4's slots go
    // back, and request 5 takes them in the same pass.
    unmap(now.next().unwrap()).unwrap();
    assert_eq!(t.stats().callback_panics, 1);
    assert_eq!(t.stats().waiters, 1, "6 still queued, 5 served");
    let got: Vec<usize> = done.lock().unwrap().iter().map(|x| x.0).collect();
    assert_eq!(got, vec![5]);
    unmap(now.next().unwrap()).unwrap();
    let got: Vec<usize> = done.lock().unwrap().iter().map(|x| x.0).collect();
    assert_eq!(got, vec![5, 6], "each completed once, in order");
    assert_eq!(t.stats().waiters, 0);
    for (_, b) in done.lock().unwrap().drain(..) {
        unmap(b).unwrap();
    }
    for b in now {
        unmap(b).unwrap();
    }
    assert_eq!(t.stats().pool.io_tlb_used, 0, "nothing leaked");
}

#[test]
fn a_panicking_callback_never_reaches_a_safe_unmap() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let maps = fill(&t, &dev);
    let mut orig = vec![9u8; 256 * KIB];
    let cpu = orig.as_mut_ptr();
    // SAFETY: `orig` outlives the request and its mapping.
    let r = unsafe {
        t.bounce_deferred_raw(
            &dev,
            PhysAddr(cpu as u64),
            cpu,
            256 * KIB,
            MapOptions::default(),
            |_| panic!("the driver's callback fails"),
        )
    }
    .unwrap();
    assert!(matches!(r, Deferral::Queued(_)));
    // An unrelated safe unmap serves the queue: its caller gets its
    // buffer back, and the failed request's slots are not lost.
    let mut maps = maps.into_iter();
    let buf = maps.next().unwrap().unmap();
    assert!(buf == pattern(1000, 256 * KIB));
    assert_eq!(t.stats().callback_panics, 1);
    assert_eq!(t.stats().pool.io_tlb_used, 3 * 128);
    drop(maps);
    assert_eq!(t.stats().pool.io_tlb_used, 0);
    drop(orig);
}

#[test]
fn dropping_a_tlb_runs_every_queued_callback_once_with_tlb_gone() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    // Full with raw mappings that are never unmapped (an unmap would serve
    // the queue); their slots go with the tlb.
    let mut fills: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; 256 * KIB]).collect();
    for f in fills.iter_mut() {
        let cpu = f.as_mut_ptr();
        // SAFETY: `fills` outlives the tlb and is not touched meanwhile.
        unsafe {
            t.bounce_raw(
                &dev,
                PhysAddr(cpu as u64),
                cpu,
                f.len(),
                Attrs::NONE,
                MapOptions::default(),
            )
        }
        .unwrap();
    }
    let mut origs: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8; 4 * KIB]).collect();
    let calls = Arc::new(Mutex::new(Vec::new()));
    for (i, o) in origs.iter_mut().enumerate() {
        let cpu = o.as_mut_ptr();
        let calls = calls.clone();
        // SAFETY: the originals outlive the tlb and its requests.
        let r = unsafe {
            t.bounce_deferred_raw(
                &dev,
                PhysAddr(cpu as u64),
                cpu,
                4 * KIB,
                MapOptions::default(),
                move |r| {
                    calls.lock().unwrap().push((i, r));
                    assert!(i != 0, "the first callback fails");
                },
            )
        }
        .unwrap();
        assert!(matches!(r, Deferral::Queued(_)));
    }
    drop(t);
    let calls = calls.lock().unwrap();
    let want: Vec<(usize, Result<Bounce, Error>)> =
        (0..3).map(|i| (i, Err(Error::TlbGone))).collect();
    assert_eq!(
        *calls, want,
        "each ran once, in order, told the tlb is gone"
    );
    drop(origs);
}

/// The hook a background maintainer is built on: a caller that may not
/// sleep and finds no room asks for growth, `growth_wanted` turns true and
/// the growth waker is woken, once however many callers ask, until
/// `maintain` grows and clears the request. A fixed tlb never wants
/// growth.
#[test]
fn a_request_for_growth_wakes_the_growth_waker_once_until_maintain() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    let mut config = GrowConfig::new(MIB, 4 * MIB);
    config.grow_by = MIB;
    let t = IoTlb::growing(
        TlbKind::Default,
        Growth::new(HeapProvider::new(), config).with_hooks(SleepyHooks),
    )
    .map(|t| t.with_clock(Arc::new(ManualClock::new())))
    .unwrap();
    let woken = Arc::new(Count(AtomicUsize::new(0)));
    t.set_growth_waker(Waker::from(woken.clone()));
    assert!(!t.growth_wanted());
    let dev = forced();
    let held: Vec<_> = (0..4)
        .map(|i| {
            t.map_with_attrs(
                &dev,
                pattern(i, 256 * KIB),
                Direction::ToDevice,
                Attrs::NONE,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(woken.0.load(Ordering::Relaxed), 0, "nothing asked yet");
    for i in 0..2 {
        let f = t
            .map_with_attrs(&dev, pattern(9, 4 * KIB), Direction::ToDevice, Attrs::NONE)
            .unwrap_err();
        assert!(
            matches!(f.error, Error::PoolFull { .. }),
            "{i}: {:?}",
            f.error
        );
    }
    assert!(t.growth_wanted());
    assert_eq!(woken.0.load(Ordering::Relaxed), 1, "woken once for both");
    assert_eq!(t.maintain().unwrap(), (true, false));
    assert!(!t.growth_wanted(), "maintain clears the request");
    let m = t
        .map_with_attrs(&dev, pattern(9, 4 * KIB), Direction::ToDevice, Attrs::NONE)
        .unwrap();
    drop((m, held));

    let fixed: IoTlb = IoTlb::new(
        TlbKind::Default,
        swiotlb::Pool::new_heap(MIB, swiotlb::PoolConfig::default()).unwrap(),
    );
    fixed.set_growth_waker(Waker::from(woken.clone()));
    assert!(!fixed.growth_wanted());
}
