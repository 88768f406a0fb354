//! A platform from a kernel command line: `swiotlb.region=` places the
//! default pool, `force` makes every device bounce through it, and a
//! device is checked against it when attached.

use std::mem::MaybeUninit;

use swiotlb::translate::Translate;
use swiotlb::{Device, Direction, DmaAddr, DmaMask, Error, PhysAddr, Platform, Pool, PoolConfig};

/// The command line of a MicroVM: devices and the bounce window, nothing
/// else.
const MICROVM: &str = "console=ttyS0 reboot=k panic=1 pci=off \
    virtio_mmio.device=4K@0xd0000000:5 swiotlb.region=4M@0x10000000,force";

/// Heap buffers appear at 2^48 and above, beyond every mask but 64 bits.
#[derive(Clone, Debug)]
struct Far;

impl Translate for Far {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(phys.0)
    }
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0)
    }
    fn virt_to_phys(&self, ptr: *const u8) -> PhysAddr {
        PhysAddr(ptr as usize as u64 + (1 << 48))
    }
}

/// Hands out leaked heap memory, standing for the physical range asked
/// for, and records what was asked.
fn heap(
    asked: &mut Vec<(u64, u64)>,
) -> impl FnMut(PhysAddr, u64) -> Option<&'static mut [MaybeUninit<u8>]> + '_ {
    move |base, size| {
        asked.push((base.0, size));
        let len = usize::try_from(size).ok()?;
        Some(Box::leak(
            vec![MaybeUninit::new(0u8); len].into_boxed_slice(),
        ))
    }
}

fn dev(bits: u32) -> Device<Far> {
    Device::new(DmaMask::new(bits)).with_translate(Far)
}

#[test]
fn force_bounces_every_device_through_the_region() {
    let mut asked = Vec::new();
    let platform = Platform::from_cmdline(MICROVM, &mut heap(&mut asked)).unwrap();
    assert_eq!(asked, [(0x1000_0000, 4 << 20)]);
    assert!(platform.forces_bounce());
    let pool = platform.default_tlb().unwrap().first_pool();
    assert_eq!((pool.start(), pool.len()), (PhysAddr(0x1000_0000), 4 << 20));

    // A device that reaches everything still bounces.
    let d = platform.attach(dev(64)).unwrap();
    assert!(d.force_bounce());
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    let m = platform.map(&d, data.clone(), Direction::ToDevice).unwrap();
    let at = m.bounce_phys().expect("forced").0;
    assert!((0x1000_0000..0x1040_0000).contains(&at), "{at:#x}");
    assert_eq!(m.unmap(), data);
}

#[test]
fn without_force_only_what_a_device_cannot_reach_bounces() {
    let line = "quiet swiotlb.region=1M@256M";
    let platform = Platform::from_cmdline(line, &mut heap(&mut Vec::new())).unwrap();
    assert!(!platform.forces_bounce());
    // A 64-bit device reaches the heap buffer: mapped directly.
    let wide = platform.attach(dev(64)).unwrap();
    assert!(!wide.force_bounce());
    let m = platform
        .map(&wide, vec![1u8; 100], Direction::ToDevice)
        .unwrap();
    assert!(!m.is_bounced());
    drop(m.unmap());
    // A 32-bit device does not: it bounces through the region.
    let narrow = platform.attach(dev(32)).unwrap();
    let m = platform
        .map(&narrow, vec![2u8; 100], Direction::Bidirectional)
        .unwrap();
    let at = m.bounce_phys().unwrap().0;
    assert!((0x1000_0000..0x1010_0000).contains(&at), "{at:#x}");
    assert_eq!(m.unmap(), vec![2u8; 100]);
    // swiotlb=force is the same switch as the region's.
    let line = "swiotlb=force swiotlb.region=1M@256M";
    let platform = Platform::from_cmdline(line, &mut heap(&mut Vec::new())).unwrap();
    assert!(platform.attach(dev(64)).unwrap().force_bounce());
}

#[test]
fn a_device_that_cannot_reach_the_region_is_refused_when_attached() {
    // The region at 4 GiB, a 32-bit device.
    let line = "swiotlb.region=1M@4G,force";
    let platform = Platform::from_cmdline(line, &mut heap(&mut Vec::new())).unwrap();
    assert_eq!(
        platform.attach(dev(32)).unwrap_err(),
        Error::RegionUnreachable {
            dma: DmaAddr(1 << 32),
            size: 1 << 20
        }
    );
    assert!(platform.attach(dev(33)).is_ok());
    let e = platform.attach(dev(32)).unwrap_err().to_string();
    assert!(e.starts_with("swiotlb: the device cannot reach"), "{e}");
}

#[test]
fn region_areas_and_refusals() {
    let line = "swiotlb=,4 swiotlb.region=4M@256M";
    let platform = Platform::from_cmdline(line, &mut heap(&mut Vec::new())).unwrap();
    let tlb = platform.default_tlb().unwrap();
    assert_eq!(tlb.first_pool().nareas(), 4);
    // Memory the caller cannot give, or too little of it.
    let e = Platform::from_cmdline("swiotlb.region=4M@256M", &mut |_, _| None).unwrap_err();
    assert!(matches!(e, Error::BadConfig { .. }), "{e:?}");
    let e = Platform::from_cmdline("swiotlb.region=4M@256M", &mut |_, _| {
        Some(Box::leak(
            vec![MaybeUninit::new(0u8); 4096].into_boxed_slice(),
        ))
    })
    .unwrap_err();
    assert!(matches!(e, Error::BadConfig { .. }), "{e:?}");
    // A bad region is refused before anything is mapped.
    let mut asked = Vec::new();
    assert!(Platform::from_cmdline("swiotlb.region=4M@", &mut heap(&mut asked)).is_err());
    assert!(asked.is_empty());
    // No region: no default tlb.
    let p = Platform::from_cmdline("quiet", &mut heap(&mut Vec::new())).unwrap();
    assert!(p.default_tlb().is_none());
}

#[test]
fn a_high_pool_may_not_overlap_the_region() {
    let line = "swiotlb.region=4M@256M swiotlb.high=2048";
    let platform = Platform::from_cmdline(line, &mut heap(&mut Vec::new())).unwrap();
    let pool_at = |phys: u64, len: usize| {
        let mem = Box::leak(vec![0u8; len].into_boxed_slice());
        let cpu = std::ptr::NonNull::new(mem.as_mut_ptr()).unwrap();
        // SAFETY: leaked memory, valid for ever and touched only by the
        // pool; the physical base is ours to define in this test.
        unsafe { Pool::new(cpu, PhysAddr(phys), len, PoolConfig::default()) }.unwrap()
    };
    let e = platform
        .try_with_high(pool_at(0x1020_0000, 4 << 20))
        .unwrap_err();
    assert_eq!(
        e,
        Error::RegionOverlap {
            base: PhysAddr(0x1000_0000),
            size: 4 << 20,
            other: PhysAddr(0x1020_0000),
            other_size: 4 << 20
        }
    );
    let platform = Platform::from_cmdline(line, &mut heap(&mut Vec::new())).unwrap();
    assert!(platform
        .try_with_high(pool_at(0x1_0000_0000, 4 << 20))
        .is_ok());
}
