//! With `RunningCpu` installed, a map starts in the area of the CPU its
//! thread runs on, as Linux starts at `raw_smp_processor_id()`'s area.
//! (Its own test binary: the hint is process-wide and set once.)

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use swiotlb::{set_cpu_hint, Device, Direction, DmaMask, Fast, Pool, PoolConfig};
use swiotlb_host::RunningCpu;

#[test]
#[cfg_attr(miri, ignore = "miri cannot run sched_getcpu or sched_setaffinity")]
fn a_thread_pinned_to_a_cpu_maps_in_that_cpus_area() {
    assert!(set_cpu_hint(&RunningCpu));
    const AREAS: u32 = 4;
    let pool =
        Pool::<Fast>::new_heap(AREAS as usize * 128 * 2048, PoolConfig::with_areas(AREAS)).unwrap();
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let allowed = sched_getaffinity(None).unwrap();
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .take(AREAS as usize)
        .collect();
    assert!(!cpus.is_empty());
    std::thread::scope(|s| {
        for &cpu in &cpus {
            let (pool, dev) = (&pool, &dev);
            let area = s
                .spawn(move || {
                    // This thread only, on this one CPU from now on.
                    let mut one = CpuSet::new();
                    one.set(cpu);
                    sched_setaffinity(None, &one).unwrap();
                    let m = pool.map(dev, vec![1u8; 100], Direction::ToDevice).unwrap();
                    let off = m.bounce_phys().expect("a forced device bounces").0 - pool.start().0;
                    (off / pool.slot_size() as u64) as u32 / pool.area_nslabs()
                })
                .join()
                .unwrap();
            assert_eq!(area as usize, cpu % AREAS as usize, "cpu {cpu}");
        }
    });
}
