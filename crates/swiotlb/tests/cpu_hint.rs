//! An installed CPU hint picks the area a map searches first, for every
//! pool, as Linux starts at the running CPU's own area. (Its own test
//! binary: the hint is process-wide and set once.)

use std::sync::atomic::{AtomicUsize, Ordering};

use swiotlb::{set_cpu_hint, CpuHint, Device, Direction, DmaMask, Pool, PoolConfig};

/// A CPU number the test moves by hand.
struct Cpu(AtomicUsize);

impl CpuHint for Cpu {
    fn cpu(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

static CPU: Cpu = Cpu(AtomicUsize::new(0));

#[test]
fn maps_start_in_the_area_of_the_cpu_the_hint_names() {
    assert!(set_cpu_hint(&CPU), "the first hint is installed");
    assert!(!set_cpu_hint(&CPU), "a second one is refused");
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    // Four areas of 512 slots.
    let pool: Pool = Pool::new_heap(4 << 20, PoolConfig::with_areas(4)).unwrap();
    assert_eq!(pool.nareas(), 4);
    let mut held = Vec::new();
    for cpu in [2usize, 1, 3, 0, 6] {
        CPU.0.store(cpu, Ordering::Relaxed);
        let m = pool
            .map(&dev, vec![cpu as u8; 4096], Direction::ToDevice)
            .unwrap();
        let slot = (m.bounce_phys().unwrap() - pool.start()) as usize / pool.slot_size();
        let area = slot / pool.area_nslabs() as usize;
        assert_eq!(area, cpu % 4, "cpu {cpu} mapped in area {area}");
        held.push(m);
    }
}
