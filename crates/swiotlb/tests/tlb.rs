//! Pool sets: the selection rule per mask width and bus limit, restricted
//! tlbs that never fall back, coherent allocations, and the
//! `swiotlb.high=` key.

mod misuse;

use misuse::expect_misuse;

use std::collections::BTreeMap;
use std::ptr::NonNull;

use proptest::prelude::*;
use swiotlb::config::{HighParam, SwiotlbParam};
use swiotlb::error::ParamProblem;
use swiotlb::translate::Translate;
use swiotlb::{
    Attrs, Device, Direction, DmaAddr, DmaMask, Error, IoTlb, PhysAddr, Platform, Pool, PoolConfig,
    SgEntry, TlbKind,
};

/// Physical base of the low pool: 256 MiB, below 4 GiB, above 16 MiB.
const LOW: u64 = 0x1000_0000;
/// Physical base of the high pool: 4 GiB.
const HIGH: u64 = 0x1_0000_0000;
/// Physical base of a restricted pool: a reserved region at 768 MiB.
const RESTRICTED: u64 = 0x3000_0000;

/// Heap buffers appear at 2^48 and above, beyond every mask but 64 bits;
/// pools keep the physical base they were built with.
#[derive(Clone)]
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

/// A pool of `len` bytes of leaked heap memory at physical `phys`.
fn pool_at(phys: u64, len: usize) -> Pool {
    let mem: &'static mut [u8] = Box::leak(vec![0u8; len].into_boxed_slice());
    let cpu = NonNull::new(mem.as_mut_ptr()).unwrap();
    // SAFETY:
    // - the memory is leaked: valid for `len` bytes for ever;
    // - its only reference is dropped here, so only the pool touches it;
    // - the physical base is ours to define in this simulation.
    unsafe { Pool::new(cpu, PhysAddr(phys), len, PoolConfig::default()) }.unwrap()
}

fn dev(bits: u32) -> Device<Far> {
    Device::new(DmaMask::new(bits)).with_translate(Far)
}

fn full_platform() -> Platform {
    Platform::new()
        .with_default(pool_at(LOW, 1 << 20))
        .with_high(pool_at(HIGH, 1 << 20))
        .with_restricted(IoTlb::restricted(
            "virtio-mmio-pool",
            pool_at(RESTRICTED, 64 << 10),
        ))
}

fn selected(p: &Platform, d: &Device<Far>) -> Result<&'static str, Error> {
    p.select(d).map(|t| match t.kind() {
        TlbKind::Default => "low",
        TlbKind::High => "high",
        TlbKind::Restricted => "restricted",
    })
}

#[test]
fn selection_by_mask_width() {
    let p = full_platform();
    // 24 bits reach neither pool: nothing can serve.
    assert_eq!(selected(&p, &dev(24)), Err(Error::NoPool));
    assert_eq!(selected(&p, &dev(32)), Ok("low"));
    assert_eq!(selected(&p, &dev(40)), Ok("high"));
    assert_eq!(selected(&p, &dev(64)), Ok("high"));
    // A restricted binding wins over every mask.
    for bits in [24, 32, 40, 64] {
        let d = dev(bits).with_restricted_tlb("virtio-mmio-pool");
        assert_eq!(selected(&p, &d), Ok("restricted"), "{bits} bits");
    }
}

#[test]
fn selection_by_bus_limit() {
    let p = full_platform();
    // A 64-bit device behind a 32-bit bus is a 32-bit device.
    assert_eq!(
        selected(&p, &dev(64).with_bus_limit(0xffff_ffff)),
        Ok("low")
    );
    // A 40-bit bus still carries the whole high pool.
    assert_eq!(
        selected(&p, &dev(64).with_bus_limit((1 << 40) - 1)),
        Ok("high")
    );
    // A bus ending inside the high pool: the high pool is not wholly
    // reachable, so the low one serves.
    assert_eq!(
        selected(&p, &dev(64).with_bus_limit(HIGH + 0x8_0000)),
        Ok("low")
    );
    // A 24-bit bus under a 64-bit mask: nothing.
    assert_eq!(
        selected(&p, &dev(64).with_bus_limit(0xff_ffff)),
        Err(Error::NoPool)
    );
}

#[test]
fn a_low_pool_under_16_mib_serves_24_bit_devices() {
    let p = Platform::new()
        .with_default(pool_at(0x10_0000, 1 << 20))
        .with_high(pool_at(HIGH, 1 << 20));
    assert_eq!(selected(&p, &dev(24)), Ok("low"));
    let m = p
        .map(&dev(24), vec![5u8; 3000], Direction::ToDevice)
        .unwrap();
    assert!(m.is_bounced());
    assert!(m.dma_addr().as_u64() + 3000 <= 1 << 24);
}

#[test]
fn no_pool_when_none_serves() {
    // Only a high pool, and a 32-bit device.
    let p = Platform::new().with_high(pool_at(HIGH, 1 << 20));
    assert_eq!(selected(&p, &dev(32)), Err(Error::NoPool));
    let f = p
        .map(&dev(32), vec![1u8; 100], Direction::ToDevice)
        .unwrap_err();
    assert_eq!(f.error, Error::NoPool);
    assert_eq!(f.buffer, vec![1u8; 100]);
    // No pool at all.
    let p = Platform::new();
    assert_eq!(selected(&p, &dev(64)), Err(Error::NoPool));
    // A binding to a restricted tlb the platform lacks never falls back.
    let p = full_platform();
    let d = dev(64).with_restricted_tlb("no-such-node");
    assert_eq!(selected(&p, &d), Err(Error::NoPool));
    let f = p.map(&d, vec![1u8; 100], Direction::ToDevice).unwrap_err();
    assert_eq!(f.error, Error::NoPool);
    assert_eq!(
        selected(&p, &dev(64).with_restricted_tlb(7usize)),
        Err(Error::NoPool)
    );
}

#[test]
fn maps_go_where_the_rule_says() {
    let p = full_platform();
    // 32 bits: bounced in the low pool.
    let m = p
        .map(&dev(32), vec![1u8; 1500], Direction::ToDevice)
        .unwrap();
    assert!(m.is_bounced());
    let b = m.bounce_phys().unwrap().0;
    assert!((LOW..LOW + (1 << 20)).contains(&b));
    // 40 bits: bounced in the high pool.
    let m2 = p
        .map(&dev(40), vec![2u8; 1500], Direction::ToDevice)
        .unwrap();
    let b = m2.bounce_phys().unwrap().0;
    assert!((HIGH..HIGH + (1 << 20)).contains(&b));
    // 64 bits: direct, counted under the high pool that serves it.
    let m3 = p
        .map(&dev(64), vec![3u8; 1500], Direction::ToDevice)
        .unwrap();
    assert!(!m3.is_bounced());
    // 64 bits, restricted: bounced in the restricted pool anyway.
    let d = dev(64).with_restricted_tlb(0usize);
    let m4 = p.map(&d, vec![4u8; 1500], Direction::ToDevice).unwrap();
    let b = m4.bounce_phys().unwrap().0;
    assert!((RESTRICTED..RESTRICTED + (64 << 10)).contains(&b));

    let stats: BTreeMap<&str, _> = p.stats().into_iter().collect();
    assert_eq!(stats["default"].pool.io_tlb_used, 1);
    assert_eq!(stats["swiotlb-hi"].pool.io_tlb_used, 1);
    assert_eq!(stats["swiotlb-hi"].pool.direct_maps, 1);
    assert_eq!(stats["virtio-mmio-pool"].pool.io_tlb_used, 1);
    assert_eq!(stats["virtio-mmio-pool"].pool.direct_maps, 0);
    drop((m, m2, m3, m4));
    assert!(p.stats().iter().all(|(_, s)| s.pool.io_tlb_used == 0));
    let names: Vec<&str> = p.stats().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["default", "swiotlb-hi", "virtio-mmio-pool"]);
}

#[test]
fn a_full_restricted_pool_never_touches_the_global_pools() {
    let p = full_platform();
    let busy = dev(64).with_restricted_tlb("virtio-mmio-pool");
    let before: Vec<_> = p.stats().into_iter().take(2).collect();
    let mut held = Vec::new();
    let err = loop {
        match p.map(&busy, vec![9u8; 4096], Direction::ToDevice) {
            Ok(m) => held.push(m),
            Err(f) => break f.error,
        }
    };
    // 64 KiB of 2 KiB slots holds sixteen 4 KiB mappings.
    assert_eq!(held.len(), 16);
    assert!(
        matches!(
            err,
            Error::PoolFull {
                requested: 2,
                free: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let after: Vec<_> = p.stats().into_iter().take(2).collect();
    assert_eq!(before, after, "the global pools were touched");
    // Another device on the default pool is unaffected.
    let m = p
        .map(&dev(32), vec![1u8; 4096], Direction::ToDevice)
        .unwrap();
    assert!(m.is_bounced());
    // Devices naming the same node share the tlb: it is full for them too.
    let sibling = dev(64).with_restricted_tlb(0usize);
    assert!(matches!(
        p.map(&sibling, vec![0u8; 64], Direction::ToDevice)
            .unwrap_err()
            .error,
        Error::PoolFull { .. }
    ));
}

#[test]
fn restricted_round_trip_copies_back() {
    let p = full_platform();
    let d = dev(64).with_restricted_tlb("virtio-mmio-pool");
    let m = p.map(&d, vec![0u8; 512], Direction::FromDevice).unwrap();
    // SAFETY: plays the device, writing inside the 512 mapped bytes.
    unsafe { std::ptr::write_bytes(m.device_ptr().as_ptr(), 0x5a, 512) };
    assert_eq!(m.unmap(), vec![0x5a; 512]);
}

fn restricted_only() -> (Platform, Device<Far>) {
    let p = Platform::new()
        .with_default(pool_at(LOW, 1 << 20))
        .with_restricted(IoTlb::restricted("ring-pool", pool_at(RESTRICTED, 1 << 20)));
    (p, dev(64).with_restricted_tlb("ring-pool"))
}

#[test]
fn coherent_alignment_follows_the_order() {
    let (p, d) = restricted_only();
    for (size, align) in [
        (4096usize, 4096u64),
        (12 << 10, 16 << 10),
        (64 << 10, 64 << 10),
        (1, 4096),
        (5000, 8192),
    ] {
        // Offset the search so alignment is not free: a one-slot mapping
        // first.
        let pad = p.map(&d, vec![0u8; 100], Direction::ToDevice).unwrap();
        let c = p.alloc_coherent(&d, size).unwrap();
        assert_eq!(c.dma.as_u64() % align, 0, "size {size}");
        assert_eq!(c.phys.0 % 4096, 0);
        assert_eq!(c.size, size);
        // SAFETY: nothing uses the allocation.
        unsafe { p.free_coherent(&d, c.dma, size) }.unwrap();
        drop(pad);
    }
    // Linux takes slots for the size, not the alignment: 12 KiB holds 6.
    let c = p.alloc_coherent(&d, 12 << 10).unwrap();
    assert_eq!(p.restricted()[0].stats().pool.io_tlb_used, 6);
    // SAFETY: nothing uses the allocation.
    unsafe { p.free_coherent(&d, c.dma, 12 << 10) }.unwrap();
    assert_eq!(p.restricted()[0].stats().pool.io_tlb_used, 0);
    // Nothing is copied for a coherent allocation.
    assert_eq!(p.restricted()[0].stats().pool.bytes_to_device, 100 * 5);
}

#[test]
fn coherent_memory_is_zeroed() {
    let (p, d) = restricted_only();
    let tlb = &p.restricted()[0];
    // Dirty every slot: map 0xAA buffers until the pool is full.
    let mut held = Vec::new();
    while let Ok(m) = p.map(&d, vec![0xaau8; 64 << 10], Direction::ToDevice) {
        held.push(m);
    }
    assert_eq!(tlb.stats().pool.io_tlb_used, tlb.stats().pool.io_tlb_nslabs);
    drop(held);
    for size in [4096usize, 12 << 10, 64 << 10, 100] {
        let c = p.alloc_coherent(&d, size).unwrap();
        // SAFETY: the allocation is live and `size` bytes long; nothing
        // else touches it.
        let bytes = unsafe { std::slice::from_raw_parts(c.cpu.as_ptr(), size) };
        assert!(bytes.iter().all(|&b| b == 0), "size {size}");
        // Dirty it in turn, for the next round.
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(c.cpu.as_ptr(), 0x77, size) };
        // SAFETY: `bytes` is dead; nothing uses the allocation any more.
        unsafe { p.free_coherent(&d, c.dma, size) }.unwrap();
    }
}

#[test]
fn bad_frees_are_not_mapped() {
    // Misuse on purpose: frees of addresses no allocation starts at (the
    // safe mapping's too: the checker watches the raw API only), an unmap
    // and a sync of the coherent allocation, and its second free.
    let never = "NeverMapped";
    let kinds = [never, never, never, never, "WrongKind", "WrongKind", never];
    expect_misuse(&kinds, || {
        let (p, d) = restricted_only();
        let c = p.alloc_coherent(&d, 8192).unwrap();
        let nm = |dma: DmaAddr| Err(Error::NotMapped { dma });
        // Interior address.
        let inside = DmaAddr(c.dma.as_u64() + 2048);
        // SAFETY: not the start of a live coherent allocation: refused.
        assert_eq!(unsafe { p.free_coherent(&d, inside, 8192) }, nm(inside));
        // Never allocated.
        let free = DmaAddr(RESTRICTED + (512 << 10));
        // SAFETY: not a live coherent allocation: refused.
        assert_eq!(unsafe { p.free_coherent(&d, free, 8192) }, nm(free));
        // Outside the pool.
        let out = DmaAddr(LOW);
        // SAFETY: not a live coherent allocation: refused.
        assert_eq!(unsafe { p.free_coherent(&d, out, 8192) }, nm(out));
        // A streaming mapping is not a coherent allocation, and a coherent
        // allocation is not a streaming mapping.
        let m = p.map(&d, vec![0u8; 3000], Direction::ToDevice).unwrap();
        // SAFETY: a streaming mapping, not a coherent allocation: refused.
        let r = unsafe { p.free_coherent(&d, m.dma_addr(), 3000) };
        assert_eq!(r, nm(m.dma_addr()));
        let tlb = &p.restricted()[0];
        // SAFETY: the address is not a streaming mapping, so nothing is
        // copied; the call must refuse it.
        let r = unsafe {
            tlb.first_pool()
                .unmap_raw(&d, c.dma, 8192, Direction::FromDevice, Attrs::NONE)
        };
        assert_eq!(r, nm(c.dma));
        // SAFETY: as above.
        let r = unsafe {
            tlb.first_pool()
                .sync_for_cpu_raw(&d, c.dma, 16, Direction::FromDevice)
        };
        assert_eq!(r, nm(c.dma));
        drop(m);
        // Once, then never again.
        // SAFETY: nothing uses the allocation.
        unsafe { p.free_coherent(&d, c.dma, 8192) }.unwrap();
        // SAFETY: no longer a live coherent allocation: refused.
        assert_eq!(unsafe { p.free_coherent(&d, c.dma, 8192) }, nm(c.dma));
        assert_eq!(tlb.stats().pool.io_tlb_used, 0);
        // A device with no restricted tlb gets no coherent memory here.
        assert_eq!(p.alloc_coherent(&dev(64), 4096), Err(Error::NoPool));
        assert_eq!(p.alloc_coherent(&d, 0), Err(Error::ZeroSize));
        assert!(matches!(
            p.alloc_coherent(&d, 512 << 10),
            Err(Error::TooLarge { .. })
        ));
    })
}

/// A coherent allocation freed with a size other than its own is refused
/// and stays allocated: a caller's wrong size must not free slots the
/// allocation does not hold, nor leave some of its own in use.
#[test]
fn coherent_free_of_the_wrong_size_frees_nothing() {
    let (p, d) = restricted_only();
    let tlb = &p.restricted()[0];
    let c = p.alloc_coherent(&d, 4096).unwrap();
    let used = tlb.stats().pool.io_tlb_used;
    assert_eq!(used, 2);
    for size in [0, 1, 4095, 4097, 8192, 1000 * 4096, usize::MAX] {
        let wrong = Err(Error::WrongSize {
            dma: c.dma,
            size,
            allocated: 4096,
        });
        // SAFETY: the size is wrong, so the call only returns an error.
        let r = expect_misuse(&["WrongSize"], || unsafe {
            p.free_coherent(&d, c.dma, size)
        });
        assert_eq!(r, wrong, "{size}");
        assert_eq!(tlb.stats().pool.io_tlb_used, used, "{size}");
    }
    let msg = Error::WrongSize {
        dma: c.dma,
        size: 8192,
        allocated: 4096,
    }
    .to_string();
    assert!(msg.starts_with("swiotlb:") && msg.contains("8192"), "{msg}");
    // SAFETY: nothing uses the allocation.
    unsafe { p.free_coherent(&d, c.dma, 4096) }.unwrap();
    assert_eq!(tlb.stats().pool.io_tlb_used, 0);
}

#[test]
fn iotlb_names_and_kinds() {
    let t = IoTlb::new(TlbKind::High, pool_at(HIGH, 1 << 20));
    assert_eq!((t.name(), t.kind()), ("swiotlb-hi", TlbKind::High));
    let t = IoTlb::from(pool_at(LOW, 1 << 20));
    assert_eq!((t.name(), t.kind()), ("default", TlbKind::Default));
}

#[test]
fn high_key_is_strict_and_separate() {
    assert_eq!(
        HighParam::parse_strict("3145728").unwrap().nslabs,
        3_145_728
    );
    assert_eq!(
        HighParam::parse_strict("swiotlb.high=0x300000")
            .unwrap()
            .bytes(),
        6 << 30
    );
    let bad = |at, problem| Err(Error::BadParam { at, problem });
    assert_eq!(HighParam::parse_strict(""), bad(0, ParamProblem::Empty));
    assert_eq!(
        HighParam::parse_strict("0"),
        bad(0, ParamProblem::ZeroSlots)
    );
    assert_eq!(
        HighParam::parse_strict("1000"),
        bad(0, ParamProblem::SlotsRounded)
    );
    assert_eq!(
        HighParam::parse_strict("65536,4"),
        bad(5, ParamProblem::Trailing)
    );
    assert_eq!(
        HighParam::parse_strict("6G"),
        bad(1, ParamProblem::Trailing)
    );
    assert_eq!(
        HighParam::parse_strict("force"),
        bad(0, ParamProblem::Trailing)
    );
    assert_eq!(
        HighParam::parse_strict("99999999999999999999999"),
        bad(0, ParamProblem::Overflow)
    );
    assert_eq!("65536".parse::<HighParam>().unwrap().to_string(), "65536");
    // The RFC's positional form keeps Linux's meaning: the second integer
    // is an area count, not a high pool.
    let p = SwiotlbParam::parse("swiotlb=327680,3145728,force");
    assert_eq!(p.nareas, Some(4_194_304));
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize),
    Free(usize),
    Map(usize),
    Unmap(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..80_000).prop_map(Op::Alloc),
        any::<usize>().prop_map(Op::Free),
        (1usize..20_000).prop_map(Op::Map),
        any::<usize>().prop_map(Op::Unmap),
    ]
}

/// Checks `[start, end)` against every live range and records it.
fn claim(live: &mut BTreeMap<u64, u64>, start: u64, end: u64) {
    if let Some((&s, &e)) = live.range(..end).next_back() {
        assert!(
            e <= start || s >= end,
            "[{start:#x}, {end:#x}) overlaps [{s:#x}, {e:#x})"
        );
    }
    live.insert(start, end);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Coherent allocations and streaming maps, mixed, never overlap; each
    /// coherent allocation is aligned and zeroed; freeing returns the pool
    /// to empty.
    #[test]
    fn coherent_and_streaming_never_overlap(ops in proptest::collection::vec(op(), 1..60)) {
        let (p, d) = restricted_only();
        let tlb = &p.restricted()[0];
        let slot = tlb.first_pool().slot_size() as u64;
        let mut live = BTreeMap::new();
        let mut coherent = Vec::new();
        let mut maps = Vec::new();
        for op in ops {
            match op {
                Op::Alloc(size) => {
                    if let Ok(c) = p.alloc_coherent(&d, size) {
                        let order = (size as u64).div_ceil(4096).next_power_of_two() * 4096;
                        prop_assert_eq!(c.dma.as_u64() % order, 0);
                        // SAFETY: live allocation of `size` bytes.
                        let bytes = unsafe { std::slice::from_raw_parts(c.cpu.as_ptr(), size) };
                        prop_assert!(bytes.iter().all(|&b| b == 0));
                        // SAFETY: as above; dirty it for later reuse.
                        unsafe { std::ptr::write_bytes(c.cpu.as_ptr(), 0xee, size) };
                        let end = c.phys.0 + (size as u64).div_ceil(slot) * slot;
                        claim(&mut live, c.phys.0, end);
                        coherent.push(c);
                    }
                }
                Op::Free(i) if !coherent.is_empty() => {
                    let c = coherent.swap_remove(i % coherent.len());
                    // SAFETY: nothing uses the allocation any more.
                    let r = unsafe { p.free_coherent(&d, c.dma, c.size) };
                    prop_assert_eq!(r, Ok(()));
                    live.remove(&c.phys.0);
                }
                Op::Map(len) => {
                    if let Ok(m) = p.map(&d, vec![0x11u8; len], Direction::Bidirectional) {
                        let b = m.bounce_phys().unwrap().0;
                        claim(&mut live, b, b + len as u64);
                        maps.push(m);
                    }
                }
                Op::Unmap(i) if !maps.is_empty() => {
                    let m = maps.swap_remove(i % maps.len());
                    live.remove(&m.bounce_phys().unwrap().0);
                    let len = m.len();
                    // The device wrote nothing: unmap copies the data back.
                    prop_assert_eq!(m.unmap(), vec![0x11u8; len]);
                }
                _ => {}
            }
        }
        for c in coherent {
            // SAFETY: nothing uses the allocation any more.
            let r = unsafe { p.free_coherent(&d, c.dma, c.size) };
            prop_assert_eq!(r, Ok(()));
        }
        drop(maps);
        prop_assert_eq!(tlb.stats().pool.io_tlb_used, 0);
    }
}

#[test]
fn a_platform_without_a_default_tlb_maps_a_reachable_buffer_directly() {
    // Only a restricted tlb (the README's restricted example), and a plain
    // 64-bit device that reaches the buffer: Linux's dma-direct maps it
    // without any swiotlb.
    let p = Platform::new().with_restricted(IoTlb::restricted(
        "virtio-mmio-pool",
        pool_at(RESTRICTED, 64 << 10),
    ));
    let m = p
        .map(&dev(64), vec![5u8; 1500], Direction::Bidirectional)
        .unwrap();
    assert!(!m.is_bounced());
    assert_eq!(
        m.dma_addr().as_u64(),
        m.device_ptr().as_ptr() as u64 + (1 << 48)
    );
    assert_eq!(m.unmap(), vec![5u8; 1500]);
    // The restricted device still bounces through its own tlb.
    let d = dev(64).with_restricted_tlb("virtio-mmio-pool");
    let m = p.map(&d, vec![6u8; 1500], Direction::ToDevice).unwrap();
    assert!(m.is_bounced());
    drop(m);
    // No tlb at all: direct too, and a device that must bounce gets
    // `NoPool` with its buffer back.
    let p = Platform::new();
    let m = p
        .map(&dev(64), vec![7u8; 100], Direction::ToDevice)
        .unwrap();
    assert!(!m.is_bounced());
    drop(m);
    let f = p
        .map(&dev(32), vec![8u8; 100], Direction::ToDevice)
        .unwrap_err();
    assert_eq!((f.error, f.buffer), (Error::NoPool, vec![8u8; 100]));
    let forced = dev(64).with_force_bounce();
    let f = p
        .map(&forced, vec![9u8; 100], Direction::ToDevice)
        .unwrap_err();
    assert_eq!(f.error, Error::NoPool);
}

/// A heap buffer and its physical address under `Far`.
fn raw_buf(fill: u8, len: usize) -> (Vec<u8>, PhysAddr) {
    let v = vec![fill; len];
    let phys = PhysAddr(v.as_ptr() as u64 + (1 << 48));
    (v, phys)
}

/// Plays the device on a bounced raw mapping at `dma` of `pool`: writes
/// `fill` over its `len` bytes.
fn device_fill(pool: &Pool, dma: DmaAddr, len: usize, fill: u8) {
    let off = (dma.as_u64() - pool.start().0) as usize;
    assert!(off + len <= pool.len());
    let at = pool.vaddr().as_ptr().wrapping_add(off);
    // SAFETY: `at..at + len` lies inside the pool (asserted); the test is
    // the device of a live mapping there, and nothing else touches those
    // slot bytes meanwhile.
    unsafe { std::ptr::write_bytes(at, fill, len) };
}

#[test]
fn a_restricted_tlb_bounces_raw_and_sg_maps_a_device_could_reach() {
    let p = full_platform();
    let tlb = &p.restricted()[0];
    let d = dev(64).with_restricted_tlb("virtio-mmio-pool");
    let inside = |dma: DmaAddr| (RESTRICTED..RESTRICTED + (64 << 10)).contains(&dma.as_u64());
    // Raw: the 64-bit device reaches the heap, but a restricted tlb
    // always bounces.
    let (mut v, phys) = raw_buf(1, 3000);
    // SAFETY: `v` outlives the mapping and is only touched through it.
    let dma =
        unsafe { tlb.map_raw(&d, phys, v.as_mut_ptr(), 3000, Direction::FromDevice) }.unwrap();
    assert!(inside(dma), "{dma:?}");
    device_fill(tlb.first_pool(), dma, 3000, 0xab);
    // SAFETY: as above; the device is done.
    unsafe { tlb.unmap_raw(&d, dma, 3000, Direction::FromDevice, Attrs::NONE) }.unwrap();
    assert_eq!(v, vec![0xab; 3000]);
    // Safe scatter-gather: every entry bounced.
    let maps = tlb
        .map_sg(
            &d,
            vec![vec![2u8; 100], vec![3u8; 5000]],
            Direction::ToDevice,
        )
        .unwrap();
    assert!(maps.iter().all(|m| m.is_bounced() && inside(m.dma_addr())));
    drop(maps);
    // Raw scatter-gather: the same.
    let (mut a, pa) = raw_buf(4, 100);
    let (mut b, pb) = raw_buf(5, 200);
    let mut sg = [
        SgEntry {
            phys: pa,
            cpu: a.as_mut_ptr(),
            len: 100,
            dma: DmaAddr(0),
        },
        SgEntry {
            phys: pb,
            cpu: b.as_mut_ptr(),
            len: 200,
            dma: DmaAddr(0),
        },
    ];
    // SAFETY: `a` and `b` outlive the mappings and are only touched
    // through them.
    unsafe { tlb.map_sg_raw(&d, &mut sg, Direction::ToDevice, Attrs::NONE) }.unwrap();
    assert!(sg.iter().all(|e| inside(e.dma)));
    // SAFETY: as above.
    unsafe { tlb.unmap_sg_raw(&d, &sg, Direction::ToDevice, Attrs::NONE) }.unwrap();
    assert_eq!(tlb.stats().pool.io_tlb_used, 0);
    assert_eq!(tlb.stats().pool.direct_maps, 0);
}

#[test]
fn a_platform_maps_raw_and_sg_where_the_rule_says() {
    let p = full_platform();
    let low = |dma: DmaAddr| (LOW..LOW + (1 << 20)).contains(&dma.as_u64());
    let high = |dma: DmaAddr| (HIGH..HIGH + (1 << 20)).contains(&dma.as_u64());
    let restricted = |dma: DmaAddr| (RESTRICTED..RESTRICTED + (64 << 10)).contains(&dma.as_u64());
    let bound = dev(64).with_restricted_tlb("virtio-mmio-pool");
    type Where<'a> = &'a dyn Fn(DmaAddr) -> bool;
    let cases: [(Device<Far>, Where<'_>); 4] = [
        (dev(32), &low),
        (dev(40), &high),
        (bound, &restricted),
        (dev(64), &|dma: DmaAddr| dma.as_u64() >= 1 << 48),
    ];
    for (i, (d, where_)) in cases.iter().enumerate() {
        let (mut v, phys) = raw_buf(i as u8, 2000);
        // SAFETY: `v` outlives the mapping and is only touched through it.
        let dma =
            unsafe { p.map_raw(d, phys, v.as_mut_ptr(), 2000, Direction::Bidirectional) }.unwrap();
        assert!(where_(dma), "case {i}: {dma:?}");
        // SAFETY: as above.
        unsafe { p.sync_for_cpu_raw(d, dma, 2000, Direction::Bidirectional) }.unwrap();
        // SAFETY: as above; nothing else uses the mapping.
        unsafe { p.unmap_raw(d, dma, 2000, Direction::Bidirectional, Attrs::NONE) }.unwrap();
        assert_eq!(v, vec![i as u8; 2000]);
        // A second unmap: `NotMapped` in a tlb; nothing to check for the
        // direct one.
        // SAFETY: the mapping is gone; the call must find nothing.
        let again = expect_misuse(&["NeverMapped"], || unsafe {
            p.unmap_raw(d, dma, 2000, Direction::Bidirectional, Attrs::NONE)
        });
        if i < 3 {
            assert_eq!(again, Err(Error::NotMapped { dma }), "case {i}");
        } else {
            assert_eq!(again, Ok(()));
        }
    }
    // A device that must bounce but that no tlb serves.
    let empty = Platform::new();
    let (mut v, phys) = raw_buf(9, 100);
    // SAFETY: the map fails and keeps nothing.
    let r = unsafe { empty.map_raw(&dev(32), phys, v.as_mut_ptr(), 100, Direction::ToDevice) };
    assert_eq!(r, Err(Error::NoPool));
    // Safe scatter-gather, all or nothing: the entry too long for the
    // device fails the list with every buffer given back.
    let d = dev(32).with_max_segment_size(4096);
    let f = p
        .map_sg(
            &d,
            vec![vec![1u8; 4096], vec![2u8; 4097]],
            Direction::ToDevice,
        )
        .unwrap_err();
    assert_eq!(
        f.error,
        Error::SegmentTooLong {
            index: 1,
            len: 4097,
            max: 4096
        }
    );
    assert_eq!(f.buffer, vec![vec![1u8; 4096], vec![2u8; 4097]]);
    let maps = p
        .map_sg(
            &d,
            vec![vec![1u8; 4096], vec![2u8; 100]],
            Direction::ToDevice,
        )
        .unwrap();
    assert!(maps.iter().all(|m| low(m.dma_addr())));
    drop(maps);
    assert!(p.stats().iter().all(|(_, s)| s.pool.io_tlb_used == 0));
}
