//! Where a map starts its search when the caller names no area: in the
//! area the installed CPU hint names, as Linux starts in the CPU's own
//! area. With `swiotlb_host::ThreadHint` installed, each thread is given
//! the next area in turn the first time it maps, and keeps it.
//!
//! The hint is process-wide and set once, and the per-thread numbers come
//! from one counter per process, so this target holds one test only: under
//! `cargo test` every test of a binary shares the process, and another
//! test's threads would take numbers in between.

use swiotlb::{set_cpu_hint, Device, Direction, DmaMask, Fast, Mapping, Pool, PoolConfig};
use swiotlb_host::ThreadHint;

/// Each of eight fresh threads, one after the other, maps twice: both of
/// its mappings land in the same area, and each thread's area is the one
/// after the previous thread's, so four threads in a row cover the four
/// areas. (Which area the first thread gets depends on the threads that
/// mapped before in the process; none here.)
#[test]
fn threads_start_in_their_own_areas_in_turn() {
    assert!(set_cpu_hint(&ThreadHint), "the first hint is installed");
    const AREAS: u32 = 4;
    let pool =
        Pool::<Fast>::new_heap(AREAS as usize * 128 * 2048, PoolConfig::with_areas(AREAS)).unwrap();
    assert_eq!(pool.nareas(), AREAS);
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let area = |m: &Mapping<'_, Vec<u8>, Fast>| {
        let off = m.bounce_phys().expect("a forced device bounces").0 - pool.start().0;
        (off / pool.slot_size() as u64) as u32 / pool.area_nslabs()
    };
    let mut areas = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (first, second) = s
                .spawn(|| {
                    let a = pool.map(&dev, vec![1u8; 100], Direction::ToDevice).unwrap();
                    let b = pool.map(&dev, vec![2u8; 100], Direction::ToDevice).unwrap();
                    (area(&a), area(&b))
                })
                .join()
                .unwrap();
            assert_eq!(first, second, "a thread keeps its area");
            areas.push(first);
        }
    });
    for pair in areas.windows(2) {
        assert_eq!(pair[1], (pair[0] + 1) % AREAS, "areas in turn: {areas:?}");
    }
    assert_eq!(pool.stats().io_tlb_used, 0);
}
