//! A growing tlb under load: the 256 MiB burst of sleeping callers and
//! its shrink back, and two threads of random mappings checked by a
//! shadow of the live bounce ranges. Too large for miri (`dynamic.rs`
//! holds the small cases).
//!
//! Buffers are large, so their bytes are checked at sample offsets (first,
//! a quarter, the middle, last) rather than in full: each buffer is filled
//! with its own byte and its samples get distinct values, the device side
//! must show them after the map, and what the device writes there must be
//! in the buffer after the unmap.
//!
//! Each thread maps in an area of its own (`swiotlb_host::ThreadHint`), as
//! a hosted program's threads would with a hint installed; the tests of
//! `dynamic.rs` run with none (every map starts at area 0).

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use swiotlb::tlb::{GrowConfig, IoTlb, ManualClock};
use swiotlb::Growth;
use swiotlb::TlbKind;
use swiotlb::{Attrs, Device, Direction, DmaMask, Error, Mapping, Policy};
use swiotlb_host::HeapProvider;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

/// The workspace's seeded generator (`rand`'s xoshiro256++), with the
/// draws these workers make.
struct Rng(rand::rngs::Xoshiro256PlusPlus);

impl Rng {
    fn seeded(seed: u64) -> Self {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn below(&mut self, n: usize) -> usize {
        rand::RngExt::random_range(&mut self.0, 0..n)
    }

    /// A size in `[lo, hi]`, log-uniform by octave (`lo` and `hi` powers
    /// of two): each octave is as likely as any other.
    fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let octaves = (hi / lo).trailing_zeros() as usize;
        let base = lo << self.below(octaves);
        (base + self.below(base)).min(hi)
    }
}

/// The sample offsets of a buffer of `len` bytes.
fn samples(len: usize) -> [usize; 4] {
    [0, len / 4, len / 2, len - 1]
}

/// The byte buffer `id` holds at sample `k` (`None`: the fill byte).
fn sample_byte(id: u64, k: usize) -> u8 {
    (id.wrapping_mul(0x2545_f491) >> 8) as u8 ^ (k as u8).wrapping_mul(0x55) ^ 0xa5
}

fn fill_byte(id: u64) -> u8 {
    id as u8
}

/// Buffer `id` of `len` bytes: its fill byte, with distinct samples (the
/// quarter sample keeps the fill byte, to catch a copy of the wrong
/// length or offset).
fn buffer(id: u64, len: usize) -> Vec<u8> {
    let mut b = vec![fill_byte(id); len];
    for (k, &o) in samples(len).iter().enumerate() {
        if k != 1 {
            b[o] = sample_byte(id, k);
        }
    }
    b
}

/// What buffer `id` of `len` bytes holds at sample `k`. Later samples
/// overwrite earlier ones at the same offset (tiny buffers), as in
/// `buffer`.
fn expected(id: u64, len: usize, k: usize) -> u8 {
    let s = samples(len);
    let mut v = fill_byte(id);
    for (j, &o) in s.iter().enumerate() {
        if o == s[k] && j != 1 {
            v = sample_byte(id, j);
        }
    }
    v
}

/// The device's side: the samples must hold the buffer's bytes; the
/// device then writes their complement.
fn device_roundtrip<P: Policy>(m: &Mapping<'_, Vec<u8>, P>, id: u64) {
    let p = m.device_ptr().as_ptr();
    for (k, &o) in samples(m.len()).iter().enumerate() {
        let at = p.wrapping_add(o);
        // SAFETY: `at` (byte `o`) is inside the live mapping's bounce
        // slots; this test is the device, and no Rust reference to those
        // bytes exists.
        let got = unsafe { at.read() };
        assert_eq!(
            got,
            expected(id, m.len(), k),
            "buffer {id}: bounce byte {o}"
        );
    }
    for (k, &o) in samples(m.len()).iter().enumerate() {
        let at = p.wrapping_add(o);
        // SAFETY: `at` (byte `o`) is inside the live mapping's bounce
        // slots, which the device may write; no Rust reference to them
        // exists.
        unsafe { at.write(!expected(id, m.len(), k)) };
    }
}

/// After the unmap: the device's bytes are in the buffer.
fn check_answer(buf: &[u8], id: u64) {
    for (k, &o) in samples(buf.len()).iter().enumerate() {
        assert_eq!(
            buf[o],
            !expected(id, buf.len(), k),
            "buffer {id}: byte {o} after unmap"
        );
    }
}

/// Installs the per-thread hint (once per process: a second call changes
/// nothing).
fn spread_threads() {
    swiotlb::set_cpu_hint(&swiotlb_host::ThreadHint);
}

#[test]
fn burst_of_256_mib_from_1_mib_with_sleeping_callers_then_shrinks_back() {
    spread_threads();
    const THREADS: usize = 2;
    const LIVE: usize = 256 * MIB;
    let clock = Arc::new(ManualClock::new());
    let config = GrowConfig::new(MIB, 512 * MIB);
    let (start, idle) = (config.start, config.idle);
    let t = IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(clock.clone()))
        .unwrap();
    let peak = Barrier::new(THREADS + 1);
    let began = Instant::now();
    let mapped = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|w| {
                let (t, peak) = (&t, &peak);
                s.spawn(move || {
                    let dev = forced();
                    let mut rng = Rng::seeded(0x5eed + w as u64);
                    let mut maps = Vec::new();
                    let mut live = 0;
                    while live < LIVE / THREADS {
                        let size = rng.log_uniform(4 * KIB, 256 * KIB);
                        let id = (w << 32 | maps.len()) as u64;
                        let m = t
                            .map_with_attrs(
                                &dev,
                                buffer(id, size),
                                Direction::Bidirectional,
                                Attrs::MAY_SLEEP,
                            )
                            .unwrap_or_else(|f| {
                                panic!(
                                    "thread {w}: mapping {} of {size} bytes: {:?}",
                                    maps.len(),
                                    f.error
                                )
                            });
                        device_roundtrip(&m, id);
                        live += size;
                        maps.push((m, id));
                    }
                    peak.wait();
                    peak.wait();
                    let n = maps.len();
                    for (m, id) in maps {
                        check_answer(&m.unmap(), id);
                    }
                    n
                })
            })
            .collect();
        peak.wait();
        let s = t.stats();
        let live_slots = s.pool.io_tlb_used as usize;
        assert!(
            live_slots * 2 * KIB >= LIVE,
            "peak live set {live_slots} slots: {s:?}"
        );
        assert!(s.bytes_held as usize >= LIVE);
        assert!(s.pools > 1 && s.pools_added == s.pools - 1, "{s:?}");
        assert_eq!(
            s.transient_pools, 0,
            "sleeping callers grow, they need no transient pool"
        );
        peak.wait();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<usize>()
    });
    let burst_time = began.elapsed();
    let s = t.stats();
    assert_eq!(
        s.pool.failures.iter().sum::<u64>(),
        0,
        "no failed mapping: {s:?}"
    );
    assert_eq!(
        (s.timeouts, s.waiters, s.pool.io_tlb_used),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(s.peak_bytes_held as usize >= LIVE);
    assert!(s.peak_bytes_held as usize <= 512 * MIB);

    // Idle: one grown pool per idle time goes back.
    let grown = s.pools - 1;
    for _ in 0..grown + 3 {
        clock.advance(idle);
        t.maintain().unwrap();
    }
    let s = t.stats();
    assert!(
        t.bytes_held() <= 2 * start,
        "{} bytes held after the idle time: {s:?}",
        t.bytes_held()
    );
    assert_eq!(s.pools, 1);
    assert_eq!(s.pools_removed, s.pools_added);
    eprintln!("burst: {mapped} mappings in {burst_time:?}; {grown} pools grown and given back");
}

/// Live bounce ranges of every thread: start -> (end, owner).
type Shadow = Mutex<BTreeMap<u64, (u64, u64)>>;

/// Records `[start, start + len)` for `id`, panicking on overlap with a
/// live range.
fn shadow_insert(shadow: &Shadow, start: u64, len: usize, id: u64) {
    let end = start + len as u64;
    let mut live = shadow.lock().unwrap();
    if let Some((&s, &(e, other))) = live.range(..end).next_back() {
        assert!(
            e <= start,
            "mapping {id} [{start:#x}, {end:#x}) overlaps mapping {other} [{s:#x}, {e:#x})"
        );
    }
    live.insert(start, (end, id));
}

fn shadow_remove(shadow: &Shadow, start: u64, id: u64) {
    let removed = shadow.lock().unwrap().remove(&start);
    assert_eq!(
        removed.map(|r| r.1),
        Some(id),
        "mapping {id} missing from the shadow"
    );
}

#[test]
fn two_threads_of_random_mappings_never_overlap_and_round_trip() {
    spread_threads();
    // Ends after `OPS` operations per thread or `budget`, whichever first.
    // With at most 32 mappings of at most 256 KiB live (8 MiB) and a limit
    // of 16 MiB, a sleeping caller always finds a free segment or room to
    // grow, so it never waits on the other thread waiting in turn.
    const OPS: usize = 200_000;
    const MAX_LIVE: usize = 16;
    let budget = Duration::from_secs(2);
    let clock = Arc::new(ManualClock::new());
    let mut config = GrowConfig::new(MIB, 16 * MIB);
    config.grow_by = MIB;
    config.idle = 1_000;
    config.wait_timeout = 10_000_000_000;
    let heap = Arc::new(HeapProvider::new());
    let t = IoTlb::growing(TlbKind::Default, Growth::new(heap.clone(), config))
        .map(|t| t.with_clock(clock.clone()))
        .unwrap();
    let shadow: Shadow = Mutex::new(BTreeMap::new());
    let began = Instant::now();
    let results: Vec<(usize, usize, usize)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|w| {
                let (t, shadow, clock) = (&t, &shadow, &clock);
                s.spawn(move || {
                    let dev = forced();
                    let mut rng = Rng::seeded(0xd1ce ^ w << 40);
                    let mut maps: Vec<(Mapping<'_, Vec<u8>>, u64, u64)> = Vec::new();
                    let (mut ops, mut nowait_full, mut made) = (0, 0, 0);
                    while ops < OPS && began.elapsed() < budget {
                        ops += 1;
                        if maps.len() < 2 || (maps.len() < MAX_LIVE && rng.below(2) == 0) {
                            let size = rng.log_uniform(1, 256 * KIB);
                            let sleeps = rng.below(2) == 0;
                            let attrs = if sleeps {
                                Attrs::MAY_SLEEP
                            } else {
                                Attrs::NONE
                            };
                            let id = w << 32 | made;
                            made += 1;
                            match t.map_with_attrs(
                                &dev,
                                buffer(id, size),
                                Direction::Bidirectional,
                                attrs,
                            ) {
                                Ok(m) => {
                                    let phys = m.bounce_phys().expect("a forced device bounces").0;
                                    shadow_insert(shadow, phys, size, id);
                                    device_roundtrip(&m, id);
                                    maps.push((m, id, phys));
                                }
                                Err(f) => {
                                    assert!(!sleeps, "a sleeping map failed: {:?}", f.error);
                                    assert!(
                                        matches!(f.error, Error::PoolFull { .. }),
                                        "{:?}",
                                        f.error
                                    );
                                    assert!(f.buffer == buffer(id, size));
                                    nowait_full += 1;
                                }
                            }
                        } else {
                            let (m, id, phys) = maps.swap_remove(rng.below(maps.len()));
                            shadow_remove(shadow, phys, id);
                            check_answer(&m.unmap(), id);
                        }
                        if ops % 64 == 0 {
                            clock.advance(2_000);
                            t.maintain().unwrap();
                        }
                    }
                    for (m, id, phys) in maps {
                        shadow_remove(shadow, phys, id);
                        check_answer(&m.unmap(), id);
                    }
                    (ops, made as usize, nowait_full)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = began.elapsed();
    assert!(shadow.lock().unwrap().is_empty());
    let s = t.stats();
    assert_eq!(s.pool.io_tlb_used, 0, "every pool empty: {s:?}");
    assert_eq!(
        (s.transient_pools, s.io_tlb_transient_nslabs, s.waiters),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(s.pools_added > 0, "the load made the tlb grow: {s:?}");
    for _ in 0..s.pools + 3 {
        clock.advance(2_000);
        t.maintain().unwrap();
    }
    let s = t.stats();
    assert_eq!((s.pools, t.bytes_held(), heap.live()), (1, MIB, 1), "{s:?}");
    let ops: usize = results.iter().map(|r| r.0).sum();
    assert!(ops >= 1000, "too few operations in the time: {results:?}");
    eprintln!(
        "stress: {results:?} (ops, maps, non-sleeping full) in {elapsed:?}; {} grown, {} given back, {} transient",
        s.pools_added, s.pools_removed, s.transient_made
    );
}
