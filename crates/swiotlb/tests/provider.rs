//! Pools over memory from a provider, prepared by platform hooks: the order
//! of the steps, the undo on every failure, swiotlb-xen's widening remap
//! retries, and the leak (never a free) of memory that could not be made
//! private again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use swiotlb::provider::{
    pool_from_provider, Hook, MemoryHooks, NoHooks, ProvidedPool, Provider, ProviderError, Region,
};
use swiotlb::{Device, Direction, DmaMask, Error, Fast, PhysAddr, PoolConfig};
use swiotlb_host::HeapProvider;

/// Two 256 KiB segments of the default geometry.
const LEN: usize = 512 << 10;
const SEGMENT: usize = 256 << 10;
const NO_LIMIT: PhysAddr = PhysAddr(u64::MAX);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Alloc,
    Free,
    Remap { off: usize, bits: u32 },
    Unremap { off: usize },
    Share,
    Unshare,
}

type Log = Arc<Mutex<Vec<Ev>>>;

/// The heap provider, recording allocations and frees.
struct RecProvider {
    heap: HeapProvider,
    log: Log,
    /// The last region handed out.
    last: Mutex<Option<Region>>,
}

impl RecProvider {
    /// Frees the region a test leaked on purpose, once its checks are
    /// done, so that the leak checker of miri sees only real leaks.
    fn reclaim_leaked(&self) {
        let region = self.last.lock().unwrap().take().unwrap();
        // SAFETY:
        // - `region` came from `alloc` and was leaked, not freed: this is
        //   its only free;
        // - the pool over it is gone, and the fake hooks never really
        //   shared it.
        unsafe { self.heap.free(region) }
    }
}

// SAFETY: forwards to `HeapProvider`, which upholds the contract; the log
// is bookkeeping only.
unsafe impl Provider for RecProvider {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.log.lock().unwrap().push(Ev::Alloc);
        let region = self.heap.alloc(len, below)?;
        *self.last.lock().unwrap() = Some(region);
        Ok(region)
    }

    unsafe fn free(&self, region: Region) {
        self.log.lock().unwrap().push(Ev::Free);
        // SAFETY:
        // - the caller guarantees `region` came from `alloc`, which is the
        //   heap's, and is freed once;
        // - the caller guarantees nothing uses it any more.
        unsafe { self.heap.free(region) }
    }
}

/// Hooks that record every call and fail when told to.
struct FakeHooks {
    log: Log,
    /// Base of the region, to record chunk offsets rather than addresses.
    base: AtomicUsize,
    fail_share: AtomicBool,
    fail_unshare: AtomicBool,
    fail_unremap: AtomicBool,
    /// Remap succeeds only at this many DMA bits or more.
    remap_from_bits: u32,
    /// Remap succeeds only for this many chunks; later ones always fail.
    remap_chunks: usize,
    remapped: AtomicUsize,
}

impl FakeHooks {
    fn new(log: &Log) -> Self {
        Self {
            log: log.clone(),
            base: AtomicUsize::new(0),
            fail_share: AtomicBool::new(false),
            fail_unshare: AtomicBool::new(false),
            fail_unremap: AtomicBool::new(false),
            remap_from_bits: 0,
            remap_chunks: usize::MAX,
            remapped: AtomicUsize::new(0),
        }
    }

    fn off(&self, region: &Region) -> usize {
        region.cpu.as_ptr() as usize - self.base.load(Ordering::Relaxed)
    }
}

// SAFETY: the fake touches no memory at all; it only records calls.
unsafe impl MemoryHooks for FakeHooks {
    fn share(&self, region: &Region) -> Result<(), ProviderError> {
        self.log.lock().unwrap().push(Ev::Share);
        if self.fail_share.load(Ordering::Relaxed) {
            return Err(ProviderError::hook(Hook::Share, region, -5));
        }
        Ok(())
    }

    fn unshare(&self, region: &Region) -> Result<(), ProviderError> {
        self.log.lock().unwrap().push(Ev::Unshare);
        if self.fail_unshare.load(Ordering::Relaxed) {
            return Err(ProviderError::hook(Hook::Unshare, region, -22));
        }
        Ok(())
    }

    fn remap(&self, region: &Region, dma_bits: u32) -> Result<(), ProviderError> {
        // The first chunk the hooks see is the region's start.
        if self.remapped.load(Ordering::Relaxed) == 0 && self.log.lock().unwrap().len() == 1 {
            self.base
                .store(region.cpu.as_ptr() as usize, Ordering::Relaxed);
        }
        let off = self.off(region);
        self.log.lock().unwrap().push(Ev::Remap {
            off,
            bits: dma_bits,
        });
        if dma_bits < self.remap_from_bits
            || self.remapped.load(Ordering::Relaxed) >= self.remap_chunks
        {
            return Err(ProviderError::hook(Hook::Remap, region, -12));
        }
        self.remapped.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unremap(&self, region: &Region) -> Result<(), ProviderError> {
        let off = self.off(region);
        self.log.lock().unwrap().push(Ev::Unremap { off });
        if self.fail_unremap.load(Ordering::Relaxed) {
            return Err(ProviderError::hook(Hook::Unremap, region, -1));
        }
        Ok(())
    }
}

fn provider(log: &Log) -> RecProvider {
    RecProvider {
        heap: HeapProvider::new(),
        log: log.clone(),
        last: Mutex::new(None),
    }
}

type Built<'a> = Result<ProvidedPool<&'a RecProvider, &'a FakeHooks, Fast>, ProviderError>;

fn build<'a>(p: &'a RecProvider, h: &'a FakeHooks, bits: (u32, u32)) -> Built<'a> {
    pool_from_provider::<Fast, _, _>(p, h, LEN, NO_LIMIT, PoolConfig::default(), bits.0, bits.1)
}

fn events(log: &Log) -> Vec<Ev> {
    log.lock().unwrap().clone()
}

#[test]
fn share_use_drop_unshare_free_in_order() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let pool = build(&p, &h, (32, 40)).unwrap();
    assert_eq!(pool.len(), LEN);
    assert_eq!(pool.start(), pool.region().phys);

    // The pool bounces data like any other.
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let m = pool
        .map(&dev, vec![5u8; 3000], Direction::Bidirectional)
        .unwrap();
    assert!(m.is_bounced());
    let bounce = m.bounce_phys().unwrap();
    let region = *pool.region();
    assert!(bounce.0 >= region.phys.0 && bounce.0 + 3000 <= region.phys.0 + LEN as u64);
    let slots = m.device_ptr().as_ptr();
    // SAFETY:
    // - `slots` is the mapping's bounce buffer, 3000 bytes of the pool,
    //   valid while the mapping lives;
    // - nothing else touches those bytes meanwhile: this plays the device.
    let seen = unsafe { std::slice::from_raw_parts(slots, 3000).to_vec() };
    assert_eq!(seen, [5u8; 3000], "map copies the original in");
    let at = slots.wrapping_add(100);
    // SAFETY: bytes 100..110 of the mapping's 3000 slot bytes, valid while
    // it lives; this plays the device, and nothing else touches them.
    unsafe { at.write_bytes(9, 10) };
    let buf = m.unmap();
    assert_eq!(buf[99], 5);
    assert_eq!(
        buf[100..110],
        [9u8; 10],
        "the device's write is copied back"
    );
    assert_eq!(buf[110], 5);
    assert_eq!(p.heap.live(), 1);

    drop(pool);
    assert_eq!(
        events(&log),
        [
            Ev::Alloc,
            Ev::Remap { off: 0, bits: 32 },
            Ev::Remap {
                off: SEGMENT,
                bits: 32
            },
            Ev::Share,
            Ev::Unshare,
            Ev::Unremap { off: SEGMENT },
            Ev::Unremap { off: 0 },
            Ev::Free,
        ]
    );
    assert_eq!(p.heap.live(), 0);
}

#[test]
fn explicit_release_gives_memory_back() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let pool = build(&p, &h, (32, 32)).unwrap();
    assert_eq!(pool.release(), Ok(()));
    assert_eq!(events(&log).last(), Some(&Ev::Free));
    assert_eq!(p.heap.live(), 0);
}

#[test]
fn share_failure_unshares_and_frees() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    h.fail_share.store(true, Ordering::Relaxed);
    let err = build(&p, &h, (32, 40)).unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::HookFailed {
                hook: Hook::Share,
                len: LEN,
                code: -5,
                ..
            }
        ),
        "{err:?}"
    );
    // Linux `alloc_dma_pages`: a failed decrypt may have decrypted part of
    // the region, so it is re-encrypted before it is freed.
    assert_eq!(
        events(&log)[3..],
        [
            Ev::Share,
            Ev::Unshare,
            Ev::Unremap { off: SEGMENT },
            Ev::Unremap { off: 0 },
            Ev::Free,
        ]
    );
    assert_eq!(p.heap.live(), 0);
}

#[test]
fn share_failure_with_unshare_failure_leaks() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    h.fail_share.store(true, Ordering::Relaxed);
    h.fail_unshare.store(true, Ordering::Relaxed);
    let err = build(&p, &h, (32, 40)).unwrap_err();
    assert_eq!(err.code(), Some(-5), "the share error is the one reported");
    let ev = events(&log);
    assert_eq!(ev.last(), Some(&Ev::Unshare));
    assert!(!ev.contains(&Ev::Free), "possibly shared memory was freed");
    assert_eq!(p.heap.live(), 1, "leaked on purpose");
    p.reclaim_leaked();
}

#[test]
fn remap_widens_one_bit_at_a_time_and_carries_on() {
    let log = Log::default();
    let p = provider(&log);
    let mut h = FakeHooks::new(&log);
    h.remap_from_bits = 34;
    let pool = build(&p, &h, (32, 40)).unwrap();
    let remaps: Vec<Ev> = events(&log)
        .into_iter()
        .filter(|e| matches!(e, Ev::Remap { .. }))
        .collect();
    // swiotlb-xen `xen_swiotlb_fixup`: the first segment is retried at 32,
    // 33, 34; the second starts where the first succeeded.
    assert_eq!(
        remaps,
        [
            Ev::Remap { off: 0, bits: 32 },
            Ev::Remap { off: 0, bits: 33 },
            Ev::Remap { off: 0, bits: 34 },
            Ev::Remap {
                off: SEGMENT,
                bits: 34
            },
        ]
    );
    drop(pool);
    assert_eq!(p.heap.live(), 0);
}

#[test]
fn remap_failing_up_to_the_widest_fails_and_frees() {
    let log = Log::default();
    let p = provider(&log);
    let mut h = FakeHooks::new(&log);
    h.remap_from_bits = 50;
    let err = build(&p, &h, (32, 34)).unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::RemapExhausted {
                len: SEGMENT,
                widest: 34,
                code: -12,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        events(&log),
        [
            Ev::Alloc,
            Ev::Remap { off: 0, bits: 32 },
            Ev::Remap { off: 0, bits: 33 },
            Ev::Remap { off: 0, bits: 34 },
            Ev::Free,
        ],
        "nothing was remapped, so nothing is unremapped or shared"
    );
    assert_eq!(p.heap.live(), 0);
    assert!(err.to_string().starts_with("swiotlb: "));
}

#[test]
fn remap_failing_on_a_later_chunk_undoes_the_earlier_ones() {
    let log = Log::default();
    let p = provider(&log);
    let mut h = FakeHooks::new(&log);
    h.remap_chunks = 1;
    let err = build(&p, &h, (32, 33)).unwrap_err();
    assert!(
        matches!(err, ProviderError::RemapExhausted { widest: 33, .. }),
        "{err:?}"
    );
    assert_eq!(
        events(&log)[1..],
        [
            Ev::Remap { off: 0, bits: 32 },
            Ev::Remap {
                off: SEGMENT,
                bits: 32
            },
            Ev::Remap {
                off: SEGMENT,
                bits: 33
            },
            Ev::Unremap { off: 0 },
            Ev::Free,
        ]
    );
    assert_eq!(p.heap.live(), 0);
}

#[test]
fn unshare_failure_on_release_leaks_and_says_so() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let pool = build(&p, &h, (32, 40)).unwrap();
    let region = *pool.region();
    h.fail_unshare.store(true, Ordering::Relaxed);
    assert_eq!(
        pool.release(),
        Err(ProviderError::Leaked {
            hook: Hook::Unshare,
            phys: region.phys,
            len: region.len,
            code: -22,
        })
    );
    let ev = events(&log);
    assert_eq!(ev.last(), Some(&Ev::Unshare));
    assert!(
        !ev.contains(&Ev::Free),
        "memory shared with the host was freed"
    );
    assert!(!ev.iter().any(|e| matches!(e, Ev::Unremap { .. })));
    assert_eq!(p.heap.live(), 1, "leaked on purpose");
    p.reclaim_leaked();
}

static DROP_ERRORS: Mutex<Vec<ProviderError>> = Mutex::new(Vec::new());

#[test]
fn unshare_failure_on_drop_leaks_and_calls_back() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let mut pool = build(&p, &h, (32, 40)).unwrap();
    pool.on_release_error(|e| DROP_ERRORS.lock().unwrap().push(e));
    h.fail_unshare.store(true, Ordering::Relaxed);
    drop(pool);
    let errors = DROP_ERRORS.lock().unwrap().clone();
    assert!(
        matches!(
            errors[..],
            [ProviderError::Leaked {
                hook: Hook::Unshare,
                ..
            }]
        ),
        "{errors:?}"
    );
    assert!(!events(&log).contains(&Ev::Free));
    assert_eq!(p.heap.live(), 1);
    p.reclaim_leaked();
}

#[test]
fn unremap_failure_leaks_too() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let pool = build(&p, &h, (32, 40)).unwrap();
    h.fail_unremap.store(true, Ordering::Relaxed);
    let err = pool.release().unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Leaked {
                hook: Hook::Unremap,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!events(&log).contains(&Ev::Free));
    p.reclaim_leaked();
}

#[test]
fn provider_refusing_a_low_limit_is_a_typed_error() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let below = PhysAddr(0x1000);
    let err = pool_from_provider::<Fast, _, _>(&p, &h, LEN, below, PoolConfig::default(), 32, 32)
        .unwrap_err();
    assert_eq!(err, ProviderError::NoMemory { len: LEN, below });
    assert_eq!(events(&log), [Ev::Alloc], "no hook runs without memory");
    assert_eq!(p.heap.live(), 0);
    assert!(err.to_string().contains("swiotlb"));
}

#[test]
fn empty_dma_widths_are_refused_before_anything_happens() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let err = build(&p, &h, (33, 32)).unwrap_err();
    assert_eq!(err, ProviderError::BadDmaBits { start: 33, max: 32 });
    assert!(events(&log).is_empty());
}

#[test]
fn pool_refusing_the_region_undoes_everything() {
    let log = Log::default();
    let p = provider(&log);
    let h = FakeHooks::new(&log);
    let config = PoolConfig::default().with_slot_shift(20);
    let err = pool_from_provider::<Fast, _, _>(&p, &h, LEN, NO_LIMIT, config, 32, 32).unwrap_err();
    assert!(
        matches!(err, ProviderError::Pool(Error::InvalidPool { .. })),
        "{err:?}"
    );
    let ev = events(&log);
    assert_eq!(ev[ev.len() - 2..], [Ev::Unremap { off: 0 }, Ev::Free]);
    assert!(ev.contains(&Ev::Unshare));
    assert_eq!(p.heap.live(), 0);
}

#[test]
fn no_hooks_and_an_owned_provider() {
    let pool: ProvidedPool<HeapProvider> = pool_from_provider::<Fast, _, _>(
        HeapProvider::new(),
        NoHooks,
        64 << 10,
        NO_LIMIT,
        PoolConfig::default(),
        32,
        32,
    )
    .unwrap();
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let m = pool.map(&dev, vec![1u8; 100], Direction::ToDevice).unwrap();
    assert!(m.is_bounced());
    assert_eq!(m.unmap(), vec![1u8; 100]);
    assert_eq!(pool.provider().live(), 1);
    pool.release().unwrap();
}

#[test]
fn a_pool_at_a_fixed_address_needs_no_provider() {
    // `Pool::new` / `Pool::new_heap` stay as they were: no provider, no
    // hooks.
    let pool: swiotlb::Pool = swiotlb::Pool::new_heap(64 << 10, PoolConfig::default()).unwrap();
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let m = pool.map(&dev, vec![2u8; 10], Direction::ToDevice).unwrap();
    assert_eq!(m.unmap(), vec![2u8; 10]);
}
