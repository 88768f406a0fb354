//! Resource exhaustion: a driver that fills its pool and never unmaps
//! starves no device of another tlb, and a growing tlb whose provider runs
//! dry keeps serving from the pools it has, fails what needs growth with
//! a typed reason, and serves again once mappings are unmapped
//! (`docs/RELIABILITY.md`, "Resource exhaustion").
//!
//! The tests play the devices: a mapping's [`Mapping::device_ptr`] is where
//! the device reads and writes, and every byte is checked both ways.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swiotlb::provider::{Provider, ProviderError, Region};
use swiotlb::tlb::{GrowConfig, IoTlb};
use swiotlb::{
    Attrs, Device, Direction, DmaMask, Error, FailReason, Growth, Mapping, PhysAddr, Platform,
    Pool, PoolConfig, TlbKind,
};
use swiotlb_host::HeapProvider;

const KIB: usize = 1 << 10;

/// Bytes differing per buffer and per offset: a block of a prime length,
/// seeded, repeated (bulk copies: cheap under miri).
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    const BLOCK: usize = 251;
    let mut x = (seed as u32).wrapping_mul(0x9e37_79b9) | 1;
    let block: Vec<u8> = (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let mut out = block.repeat(len.div_ceil(BLOCK));
    out.truncate(len);
    out
}

/// Zeroed heap memory for a pool, freed on drop: declared before the
/// platform whose pool uses it, so dropped after it.
struct Mem {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Mem {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).expect("a layout");
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    /// A pool over this memory that the platform sees at physical address
    /// `phys`, so that the default and the high pools lie where the
    /// device masks say.
    fn pool_at(&self, phys: u64) -> Pool {
        // SAFETY: the memory is valid for `len` bytes until `self` drops,
        // which the callers do only after the pool (the platform is
        // declared after the memory); nothing but the pool touches it; the
        // physical base is this simulation's to choose, and no two pools
        // of a platform are given overlapping ones.
        unsafe {
            Pool::new(
                self.ptr,
                PhysAddr(phys),
                self.layout.size(),
                PoolConfig::default(),
            )
        }
        .expect("a pool")
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once; the
        // pool over it is gone (see `pool_at`).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The device's part of a live mapping: its bytes are `expect`; it writes
/// `answer` over them.
fn device_side<B: swiotlb::DmaBuffer>(m: &Mapping<'_, B>, expect: &[u8], answer: &[u8]) {
    let p = m.device_ptr().as_ptr();
    let mut got = vec![0; m.len()];
    // SAFETY: the mapping's bounce slots are valid for `len` bytes while
    // it lives; this test is the device, their only other user, and holds
    // no reference to them; `got` is a fresh allocation.
    unsafe { std::ptr::copy_nonoverlapping(p, got.as_mut_ptr(), m.len()) };
    assert!(got == expect, "the bounce slots do not hold the buffer");
    // SAFETY: as above, for writes; `answer` is as long as the mapping.
    unsafe { std::ptr::copy_nonoverlapping(answer.as_ptr(), p, m.len()) };
}

/// One full round trip of `len` bytes through `p` for `dev`: map, the
/// device reads and answers, sync for the CPU, the CPU writes again, sync
/// for the device, unmap; every byte checked.
fn round_trip(p: &Platform, dev: &Device, seed: usize, len: usize) {
    let data = pattern(seed, len);
    let answer = pattern(seed ^ 0x5a5a, len);
    let again = pattern(seed ^ 0xa5a5, len);
    let mut m = p
        .map(dev, data.clone(), Direction::Bidirectional)
        .unwrap_or_else(|f| panic!("map {seed}: {}", f.error));
    assert!(m.is_bounced());
    device_side(&m, &data, &answer);
    m.sync_for_cpu(0, len).expect("sync for the CPU");
    let mut seen = vec![0; len];
    m.read(0, &mut seen).expect("read");
    assert!(
        seen == answer,
        "map {seed}: the device's bytes did not come back"
    );
    m.write(0, &again).expect("write");
    m.sync_for_device(0, len).expect("sync for the device");
    device_side(&m, &again, &answer);
    assert!(
        m.unmap() == answer,
        "map {seed}: unmap lost the device's bytes"
    );
}

const A: &str = "exhaust-a";
const B: &str = "exhaust-b";
const RESTRICTED_LEN: usize = 256 * KIB;

/// The memory of [`platform`]'s pools.
fn memory() -> [Mem; 4] {
    [
        Mem::new(512 * KIB),
        Mem::new(512 * KIB),
        Mem::new(RESTRICTED_LEN),
        Mem::new(RESTRICTED_LEN),
    ]
}

/// A default pool (low), a high pool and two restricted ones, over `mem`.
fn platform(mem: &[Mem; 4]) -> Platform {
    Platform::new()
        .with_default(mem[0].pool_at(0x1000_0000))
        .with_high(mem[1].pool_at(0x2_0000_0000))
        .with_restricted(IoTlb::restricted(A, mem[2].pool_at(0x3000_0000)))
        .with_restricted(IoTlb::restricted(B, mem[3].pool_at(0x3100_0000)))
}

/// Device A (the hog), device B on the other restricted tlb, a 32-bit
/// device served by the default pool and a 64-bit one by the high pool.
fn devices() -> [Device; 4] {
    [
        Device::new(DmaMask::BITS_64).with_restricted_tlb(A),
        Device::new(DmaMask::BITS_64).with_restricted_tlb(B),
        Device::new(DmaMask::BITS_32).with_force_bounce(),
        Device::new(DmaMask::BITS_64).with_force_bounce(),
    ]
}

/// Maps 4 KiB buffers for `dev` until the tlb refuses; returns them and
/// the refusal.
fn fill<'p>(p: &'p Platform, dev: &Device) -> (Vec<Mapping<'p, Vec<u8>>>, Error) {
    let mut held = Vec::new();
    loop {
        assert!(held.len() <= RESTRICTED_LEN / KIB, "the pool never filled");
        match p.map(dev, pattern(held.len(), 4 * KIB), Direction::ToDevice) {
            Ok(m) => held.push(m),
            Err(f) => {
                assert!(f.buffer == pattern(held.len(), 4 * KIB), "buffer changed");
                return (held, f.error);
            }
        }
    }
}

#[test]
fn a_device_that_never_unmaps_starves_no_device_of_another_tlb() {
    let mem = memory();
    let p = platform(&mem);
    let [a, b, low, high] = devices();
    let (held, e) = fill(&p, &a);
    assert!(matches!(e, Error::PoolFull { .. }), "{e:?}");
    assert_eq!(held.len(), RESTRICTED_LEN / (4 * KIB), "every slot in use");
    let tlb_a = p.restricted_tlb(A.into()).expect("tlb a");
    let sa = tlb_a.stats();
    assert_eq!(sa.pool.io_tlb_used, sa.pool.io_tlb_nslabs, "{sa:?}");
    assert_eq!(sa.pool.failures(FailReason::PoolFull), 1, "{sa:?}");
    // Refused again and again: still nothing for A, and nothing taken
    // from anyone else.
    for i in 0..8 {
        let f = p
            .map(&a, pattern(i, KIB), Direction::ToDevice)
            .expect_err("A's pool is full");
        assert!(matches!(f.error, Error::PoolFull { .. }), "{:?}", f.error);
    }

    // Every other device maps, syncs and unmaps as if A did not exist, in
    // its own pool.
    for (name, dev) in [("b", &b), ("low", &low), ("high", &high)] {
        let tlb = p.select(dev).expect("a tlb");
        assert!(!std::ptr::eq(tlb, tlb_a), "{name} is on A's tlb");
        for (i, len) in [512, 4 * KIB, 64 * KIB, 100 * KIB + 3]
            .into_iter()
            .enumerate()
        {
            round_trip(&p, dev, i * 7 + len, len);
        }
        let s = tlb.stats();
        assert_eq!(s.pool.total_failures(), 0, "{name}: {s:?}");
        assert_eq!(s.pool.io_tlb_used, 0, "{name}: {s:?}");
    }
    assert_eq!(
        p.select(&low).expect("low").kind(),
        TlbKind::Default,
        "the 32-bit device is on the default pool"
    );
    assert_eq!(p.select(&high).expect("high").kind(), TlbKind::High);

    // A's mappings were left alone by all of that.
    for (i, m) in held.iter().enumerate() {
        let mut got = vec![0; m.len()];
        // SAFETY: the slots are valid for `len` bytes while the mapping
        // lives, and nothing writes them now.
        unsafe {
            std::ptr::copy_nonoverlapping(m.device_ptr().as_ptr(), got.as_mut_ptr(), m.len())
        };
        assert!(got == pattern(i, 4 * KIB), "A's mapping {i} changed");
    }
    let sa = tlb_a.stats();
    assert_eq!(sa.pool.failures(FailReason::PoolFull), 9, "{sa:?}");
    drop(held);
    assert_eq!(tlb_a.stats().pool.io_tlb_used, 0);
    round_trip(&p, &a, 1, 4 * KIB);
}

#[test]
fn a_hog_hammering_from_one_thread_never_fails_a_device_on_another_thread() {
    let rounds = if cfg!(miri) { 3 } else { 300 };
    let mem = memory();
    let p = platform(&mem);
    let [a, b, low, high] = devices();
    let done = AtomicBool::new(false);
    let filled = AtomicBool::new(false);
    let refused = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let hog = s.spawn(|| {
            // Fill, keep trying, give back a quarter, fill again: A's pool
            // is full nearly all the time.
            let (mut held, e) = fill(&p, &a);
            assert!(matches!(e, Error::PoolFull { .. }), "{e:?}");
            refused.fetch_add(1, Ordering::Relaxed);
            filled.store(true, Ordering::Release);
            while !done.load(Ordering::Relaxed) {
                for i in 0..4 {
                    match p.map(&a, pattern(i, 2 * KIB), Direction::ToDevice) {
                        Ok(m) => held.push(m),
                        Err(f) => {
                            assert!(matches!(f.error, Error::PoolFull { .. }), "{:?}", f.error);
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let keep = held.len() * 3 / 4;
                held.truncate(keep);
                std::thread::yield_now();
            }
            held.len()
        });
        // The others start once A's pool is full.
        while !filled.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        for r in 0..rounds {
            for (i, dev) in [&b, &low, &high].into_iter().enumerate() {
                round_trip(&p, dev, r * 3 + i, (r % 5 + 1) * 3 * KIB + i);
            }
        }
        done.store(true, Ordering::Relaxed);
        hog.join().expect("the hog thread");
    });
    assert!(refused.load(Ordering::Relaxed) > 0, "A was never refused");
    for dev in [&b, &low, &high] {
        let s = p.select(dev).expect("a tlb").stats();
        assert_eq!(s.pool.total_failures(), 0, "{s:?}");
        assert_eq!(s.pool.io_tlb_used, 0, "{s:?}");
    }
}

/// The heap provider, until `left` regions have been given: then every
/// allocation fails, sleeping or not.
struct RunsDry {
    heap: HeapProvider,
    left: AtomicUsize,
    refused: AtomicUsize,
}

impl RunsDry {
    fn take(&self, len: usize, below: PhysAddr) -> Result<(), ProviderError> {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map(drop)
            .map_err(|_| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                ProviderError::NoMemory { len, below }
            })
    }
}

// SAFETY: every region is one the inner heap provider returned, passed on
// unchanged, and `free` gives it back to that provider: its guarantees
// hold as they are. This provider only refuses; it never changes a region.
unsafe impl Provider for RunsDry {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.take(len, below)?;
        self.heap.alloc(len, below)
    }

    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.take(len, below)?;
        self.heap.alloc_nowait(len, below)
    }

    unsafe fn free(&self, region: Region) {
        // SAFETY: the caller's obligations: `region` came from this
        // provider, that is from the inner heap provider, unchanged, and
        // is no longer used.
        unsafe { self.heap.free(region) }
    }
}

const POOL: usize = 256 * KIB;
const BUF: usize = 32 * KIB;
/// The tlb's wait timeout.
const WAIT: Duration = Duration::from_millis(200);

#[test]
fn a_growing_tlb_whose_provider_runs_dry_serves_what_it_has_and_says_why_it_failed() {
    // The first pool and one grown pool, then nothing.
    let provider = Arc::new(RunsDry {
        heap: HeapProvider::new(),
        left: AtomicUsize::new(2),
        refused: AtomicUsize::new(0),
    });
    let mut config = GrowConfig::new(POOL, 16 * POOL);
    config.grow_by = POOL;
    config.wait_timeout = WAIT.as_nanos() as u64;
    let t = IoTlb::growing(TlbKind::Default, Growth::new(provider.clone(), config))
        .expect("the first pool");
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let sleeps = Attrs::MAY_SLEEP;
    let per_pool = POOL / BUF;

    // Two pools' worth, growing once on the way; every byte right.
    let mut held = Vec::new();
    for i in 0..2 * per_pool {
        let m = t
            .map_with_attrs(&dev, pattern(i, BUF), Direction::Bidirectional, sleeps)
            .unwrap_or_else(|f| panic!("map {i} of what fits: {}", f.error));
        device_side(&m, &pattern(i, BUF), &pattern(i + 1000, BUF));
        held.push((m, pattern(i + 1000, BUF)));
    }
    let s = t.stats();
    assert_eq!(
        (s.pools, s.pools_added, s.grow_failures),
        (2, 1, 0),
        "{s:?}"
    );

    // A caller that may sleep: growth fails, it waits, and its wait ends
    // at the timeout with the typed error, not a hang.
    let began = Instant::now();
    let f = t
        .map_with_attrs(&dev, pattern(99, BUF), Direction::Bidirectional, sleeps)
        .expect_err("no room and no growth");
    let waited = began.elapsed();
    assert!(matches!(f.error, Error::TimedOut { .. }), "{}", f.error);
    assert!(f.buffer == pattern(99, BUF), "the buffer came back changed");
    assert!(waited >= WAIT, "gave up after {waited:?}");
    assert!(waited < WAIT + Duration::from_secs(5), "waited {waited:?}");
    let s = t.stats();
    assert_eq!(s.timeouts, 1, "{s:?}");
    assert!(s.grow_failures >= 1, "{s:?}");

    // A caller that may not sleep: its transient pool is refused by the
    // provider, and the error says growth failed.
    let before = t.stats().grow_failures;
    let f = t
        .map_with_attrs(
            &dev,
            pattern(98, BUF),
            Direction::Bidirectional,
            Attrs::NONE,
        )
        .expect_err("no room and no growth");
    assert!(
        matches!(f.error, Error::GrowFailed { requested: 16, .. }),
        "{:?}",
        f.error
    );
    assert!(
        f.error.to_string().contains("could not grow"),
        "{}",
        f.error
    );
    assert_eq!(f.error.reason(), FailReason::PoolFull);
    assert!(f.buffer == pattern(98, BUF));
    let s = t.stats();
    assert_eq!(s.grow_failures, before + 1, "{s:?}");
    assert_eq!((s.pools, s.transient_pools), (2, 0), "{s:?}");
    assert!(provider.refused.load(Ordering::Relaxed) >= 2);

    // Mappings that fit in what is left still succeed: a small one in a
    // pool with room, once two are unmapped.
    for (i, (m, answer)) in held.drain(..2).enumerate() {
        assert!(m.unmap() == answer, "unmap {i}");
    }
    for i in 0..2 {
        let m = t
            .map_with_attrs(
                &dev,
                pattern(200 + i, BUF),
                Direction::Bidirectional,
                Attrs::NONE,
            )
            .unwrap_or_else(|f| panic!("after the unmaps: {}", f.error));
        device_side(&m, &pattern(200 + i, BUF), &pattern(300 + i, BUF));
        held.push((m, pattern(300 + i, BUF)));
    }
    // And a waiter is served by an unmap on another thread.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            t.map_with_attrs(&dev, pattern(400, BUF), Direction::Bidirectional, sleeps)
                .map(|m| {
                    device_side(&m, &pattern(400, BUF), &pattern(401, BUF));
                    m.unmap()
                })
                .map_err(|f| f.error)
        });
        std::thread::sleep(WAIT / 10);
        let (m, answer) = held.pop().expect("one to unmap");
        assert!(m.unmap() == answer);
        let got = waiter
            .join()
            .expect("the waiter")
            .expect("served after the unmap");
        assert!(got == pattern(401, BUF));
    });
    for (m, answer) in held {
        assert!(
            m.unmap() == answer,
            "a held mapping lost the device's bytes"
        );
    }
    let s = t.stats();
    assert_eq!(s.pool.io_tlb_used, 0, "{s:?}");
    assert_eq!(s.pools, 2, "{s:?}");
}
