//! With no CPU hint installed, a map whose caller names no area starts its
//! search at area 0, on every thread: the core asks no scheduler (a hosted
//! program installs `swiotlb_host::RunningCpu` or `ThreadHint`). Its own
//! target: the hint is process-wide, and no test here may install one.

use swiotlb::{Device, Direction, DmaMask, Fast, Pool, PoolConfig};

#[test]
fn every_thread_starts_at_area_0() {
    const AREAS: u32 = 4;
    let pool =
        Pool::<Fast>::new_heap(AREAS as usize * 128 * 2048, PoolConfig::with_areas(AREAS)).unwrap();
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let area = s
                .spawn(|| {
                    let m = pool.map(&dev, vec![1u8; 100], Direction::ToDevice).unwrap();
                    let off = m.bounce_phys().expect("a forced device bounces").0 - pool.start().0;
                    (off / pool.slot_size() as u64) as u32 / pool.area_nslabs()
                })
                .join()
                .unwrap();
            assert_eq!(area, 0);
        }
    });
    assert_eq!(pool.stats().io_tlb_used, 0);
}
