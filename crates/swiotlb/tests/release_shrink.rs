//! Safe mappings in grown pools dropped on two threads while a third
//! shrinks the tlb with an idle time of 0: the shrink may give a pool back
//! as soon as it is idle, and the release that left it idle must be over
//! by then. Nothing of a pool may be touched after the release that can
//! make it idle, or freed before every releaser has left (the grace rule
//! in docs/DESIGN.md).
//!
//! Run under miri across many scheduling seeds (`ci/miri.sh`): with one
//! seed the race can hide. The loom model `release_vs_shrink` in
//! `loom_dynamic.rs` explores the same interleaving exhaustively.

use std::sync::Arc;

use swiotlb::tlb::{GrowConfig, IoTlb, ManualClock};
use swiotlb::Growth;
use swiotlb::TlbKind;
use swiotlb::{Attrs, Device, Direction, DmaMask, PoolConfig};
use swiotlb_host::HeapProvider;

/// One segment of 2 KiB slots: the pool size, and the largest mapping.
const POOL: usize = 128 * 2048;

#[test]
fn releases_racing_a_shrink_never_touch_a_freed_pool() {
    let clock = Arc::new(ManualClock::new());
    let mut config = GrowConfig::new(POOL, 4 * POOL);
    config.grow_by = POOL;
    config.idle = 0;
    config.pool = PoolConfig::default();
    let tlb = IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(clock))
        .unwrap();
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let map = |fill: u8| {
        tlb.map_with_attrs(
            &dev,
            vec![fill; POOL],
            Direction::ToDevice,
            Attrs::MAY_SLEEP,
        )
        .unwrap_or_else(|f| panic!("map failed: {}", f.error))
    };
    // The first pool is full; the next two mappings each grow a pool.
    let x = map(1);
    let a = map(2);
    let b = map(3);
    assert_eq!(tlb.pool_count(), 3);
    // Seen busy once, so that the shrink below needs only idleness.
    assert_eq!(tlb.maintain().unwrap(), (false, false));

    let removed = std::thread::scope(|s| {
        s.spawn(move || assert_eq!(a.unmap(), vec![2; POOL]));
        s.spawn(move || drop(b));
        let shrink = s.spawn(|| {
            let mut removed = 0;
            for _ in 0..12 {
                if tlb.maintain().unwrap().1 {
                    removed += 1;
                }
                std::thread::yield_now();
            }
            removed
        });
        shrink.join().unwrap()
    });
    // Whatever the race left, the idle pools go back now, and nothing
    // else does.
    let mut removed = removed;
    while tlb.maintain().unwrap().1 {
        removed += 1;
    }
    assert_eq!(removed, 2);
    let st = tlb.stats();
    assert_eq!(st.pools, 1, "{st:?}");
    assert_eq!(st.pools_removed, 2, "{st:?}");
    assert_eq!(x.unmap(), vec![1; POOL]);
    assert_eq!(tlb.stats().pool.io_tlb_used, 0);
}
