//! A growing tlb: growth, transient pools, waiting, deferral, shrinking.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use swiotlb::dynamic::{Deferral, DynConfig, DynDevice, DynTlb, ManualClock};
use swiotlb::provider::{HeapProvider, NoHooks};
use swiotlb::{Attrs, Device, Direction, DmaMask, Error, MapOptions, PhysAddr};

const MIB: usize = 1 << 20;

fn tlb(start: usize, max: usize) -> (DynTlb<HeapProvider>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let mut config = DynConfig::new(start, max);
    config.grow_by = MIB;
    config.idle = 1_000;
    let t = DynTlb::new(HeapProvider::new(), NoHooks, clock.clone(), config).unwrap();
    (t, clock)
}

fn forced() -> DynDevice {
    DynDevice::new(Device::new(DmaMask::BITS_64).with_force_bounce(true))
}

#[test]
fn grows_for_callers_that_may_sleep_and_shrinks_when_idle() {
    let (t, clock) = tlb(MIB, 8 * MIB);
    let dev = forced();
    let mut maps = Vec::new();
    for i in 0..24 {
        let buf = vec![i as u8; 256 * 1024];
        let m = t.map(&dev, buf, Direction::ToDevice, Attrs::MAY_SLEEP).unwrap();
        maps.push(m);
    }
    let s = t.stats();
    assert!(s.pools >= 6, "{s:?}");
    assert_eq!(s.pools_added, s.pools - 1);
    for (i, m) in maps.into_iter().enumerate() {
        let b = m.unmap();
        assert!(b.iter().all(|&x| x == i as u8));
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
        maps.push(t.map(&dev, buf, Direction::Bidirectional, Attrs::NONE).unwrap());
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
fn deferred_requests_complete_in_order() {
    let (t, _clock) = tlb(MIB, MIB);
    let dev = forced();
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 256 * 1024]).collect();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut now = Vec::new();
    let mut queued = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let o = order.clone();
        let cpu = b.as_mut_ptr();
        // SAFETY: the buffers outlive every mapping and request.
        let r = unsafe {
            t.bounce_deferred_raw(&dev, PhysAddr(cpu as u64), cpu, b.len(), MapOptions::default(), move |r| {
                o.lock().unwrap().push((i, r.unwrap()));
            })
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
