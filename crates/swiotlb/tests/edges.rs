//! Edges of the address space and of the geometry: a pool whose device
//! address sits at the very top of a 64-bit bus, and the promise of
//! `max_mapping_size` for every geometry.

use proptest::prelude::*;
use swiotlb::translate::Offset;
use swiotlb::Growth;
use swiotlb::TlbKind;
use swiotlb::{
    Attrs, Device, Direction, DmaAddr, DmaMask, Error, MapOptions, PhysAddr, Pool, PoolConfig,
};

fn heap_pool(len: usize) -> Pool {
    Pool::new_heap(len, PoolConfig::default()).unwrap()
}

/// Bounces `len` bytes of `buf` at `off` for `dev` and unmaps them.
fn bounce_and_back<T: swiotlb::Translate>(
    pool: &Pool,
    dev: &Device<T>,
    buf: &mut [u8],
    off: usize,
    len: usize,
) -> Result<DmaAddr, Error> {
    let cpu = buf[off..].as_mut_ptr();
    let phys = PhysAddr(cpu as usize as u64);
    // SAFETY: `cpu` points at `len` bytes of `buf` (callers check the
    // range), which is not otherwise used until the unmap below.
    let b = unsafe { pool.bounce_raw(dev, phys, cpu, len, Attrs::NONE, MapOptions::default()) }?;
    // SAFETY: the mapping was just made for `buf`, still valid; no device.
    unsafe { pool.unmap_raw(dev, b.dma, len, Direction::ToDevice, Attrs::NONE) }.unwrap();
    Ok(b.dma)
}

#[test]
fn a_table_in_the_last_slot_of_the_bus_gives_the_same_answer_in_every_build() {
    // A translation that puts the pool 100 bytes below the top of the bus:
    // not slot aligned, so Linux's alignment check (`tlb_addr &
    // alloc_align_mask`, the slot mask always included) refuses every
    // slot. Computing Linux's `nr_slots(tbl_dma_addr)` wraps there: no
    // overflow panic in a debug build, the same refusal in both.
    let pool = heap_pool(1 << 20);
    let top = Offset::new(pool.start(), DmaAddr(u64::MAX - 100));
    let dev = Device::new(DmaMask::BITS_64)
        .with_seg_boundary_mask(u64::MAX)
        .with_force_bounce()
        .with_translate(top);
    let mut buf = vec![3u8; 4096];
    for len in [1, 2048, 4096] {
        let r = bounce_and_back(&pool, &dev, &mut buf, 0, len);
        assert!(
            matches!(r, Err(Error::AlignmentImpossible { .. })),
            "{len}: {r:?}"
        );
    }
    assert_eq!(pool.stats().io_tlb_used, 0);
}

#[test]
fn a_table_at_the_top_of_the_bus_maps_up_to_the_last_byte() {
    // A pool whose last byte is the last device address: the boundary
    // arithmetic (table slot `2^53 - 512` under an all-ones boundary)
    // stays exact, and every slot up to the very top is handed out.
    let pool = heap_pool(1 << 20);
    let base = 0u64.wrapping_sub(1 << 20);
    let top = Offset::new(pool.start(), DmaAddr(base));
    let dev = Device::new(DmaMask::BITS_64)
        .with_seg_boundary_mask(u64::MAX)
        .with_force_bounce()
        .with_translate(top);
    let mut buf = vec![5u8; 8192];
    let dma = bounce_and_back(&pool, &dev, &mut buf, 0, 2048).unwrap();
    assert_eq!(dma.as_u64(), base);
    // A page at the same place: the table is page aligned too.
    let dma = bounce_and_back(&pool, &dev, &mut buf, 0, 4096).unwrap();
    assert_eq!(dma.as_u64(), base);
    // Fill every slot: the last one ends on the last device address.
    let mut slots = vec![7u8; 1 << 20];
    let mut dmas = Vec::new();
    for chunk in slots.chunks_mut(2048) {
        let cpu = chunk.as_mut_ptr();
        // SAFETY: `cpu` points at the 2048 bytes of `chunk`, not otherwise
        // used until the unmaps below.
        let b = unsafe {
            pool.bounce_raw(
                &dev,
                PhysAddr(cpu as usize as u64),
                cpu,
                2048,
                Attrs::NONE,
                MapOptions::default(),
            )
        }
        .unwrap();
        dmas.push(b.dma);
    }
    let last = dmas.iter().map(|d| d.as_u64()).max().unwrap();
    assert_eq!(last + 2047, u64::MAX);
    for d in dmas {
        // SAFETY: each mapping is live and its chunk still valid; no device.
        unsafe { pool.unmap_raw(&dev, d, 2048, Direction::ToDevice, Attrs::NONE) }.unwrap();
    }
    assert_eq!(pool.stats().io_tlb_used, 0);
}

/// Regression: a table whose device range holds address 0 (it starts
/// there, or runs past the top of the bus onto it) handed out device
/// address 0, which virtio-drivers and other transports take for a failed
/// mapping. Such a pool now refuses every bounce and coherent allocation
/// for that device, with a typed error, and holds nothing afterwards.
#[test]
fn no_pool_hands_out_device_address_zero() {
    let pool = heap_pool(1 << 20);
    let len = pool.len();
    for base in [
        0u64,
        0u64.wrapping_sub(4 * 2048),
        0u64.wrapping_sub(len as u64) + 2048,
    ] {
        let dev = Device::new(DmaMask::BITS_64)
            .with_seg_boundary_mask(u64::MAX)
            .with_force_bounce()
            .with_translate(Offset::new(pool.start(), DmaAddr(base)));
        let mut buf = vec![5u8; 16 << 10];
        for size in [1, 2048, 4096, 16 << 10] {
            let r = bounce_and_back(&pool, &dev, &mut buf, 0, size);
            assert_eq!(
                r,
                Err(Error::DmaZeroInPool {
                    start: DmaAddr(base),
                    len
                }),
                "base {base:#x}, {size} bytes"
            );
        }
        let r = pool.alloc_coherent(&dev, 4096);
        assert_eq!(
            r,
            Err(Error::DmaZeroInPool {
                start: DmaAddr(base),
                len
            })
        );
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.starts_with("swiotlb:") && msg.contains("device address 0"),
            "{msg}"
        );
    }
    // The same pool one page above 0, or ending exactly at the top, is fine.
    for base in [4096u64, 0u64.wrapping_sub(len as u64)] {
        let dev = Device::new(DmaMask::BITS_64)
            .with_seg_boundary_mask(u64::MAX)
            .with_force_bounce()
            .with_translate(Offset::new(pool.start(), DmaAddr(base)));
        let mut buf = vec![5u8; 4096];
        assert_eq!(
            bounce_and_back(&pool, &dev, &mut buf, 0, 4096),
            Ok(DmaAddr(base))
        );
        let c = pool.alloc_coherent(&dev, 4096).unwrap();
        assert_ne!(c.dma.as_u64(), 0);
        // SAFETY: nothing uses the allocation.
        unsafe { pool.free_coherent(&dev, c.dma, c.size) }.unwrap();
    }
    assert_eq!(pool.stats().io_tlb_used, 0);
    assert_eq!(
        pool.stats().failures[swiotlb::FailReason::Unreachable as usize],
        15
    );
}

#[test]
fn an_empty_pool_with_large_pages_takes_its_max_mapping_size() {
    // 64 KiB pages: a 256 KiB mapping must start page aligned, which
    // needs the heap region aligned to the page, not just to 4 KiB.
    let config = PoolConfig::default().with_page_shift(16);
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let mut buf = vec![1u8; 256 << 10];
    for _ in 0..16 {
        let pool: Pool = Pool::new_heap(4 << 20, config).unwrap();
        let max = pool.max_mapping_size(0);
        assert_eq!(max, 256 << 10);
        bounce_and_back(&pool, &dev, &mut buf, 0, max).unwrap();
    }
}

proptest! {
    /// `max_mapping_size(mask)` is a promise: for every geometry, an empty
    /// heap pool accepts a mapping of that size for a device with that
    /// `min_align_mask`, whatever the original's low bits.
    #[test]
    fn an_empty_pool_accepts_its_max_mapping_size_for_every_geometry(
        slot_shift in 9u32..=16,
        seg_log in 0u32..=8,
        page_shift in 9u32..=22,
        nareas in prop::sample::select(vec![1u32, 2, 4, 8]),
        segments in 1usize..=3,
        mask_bits in 0u32..=14,
        orig_off in any::<u16>(),
    ) {
        let segment = 1u32 << seg_log;
        let seg_bytes = (segment as usize) << slot_shift;
        prop_assume!(seg_bytes <= 1 << 21);
        let config = PoolConfig::DEFAULT.with_slot_shift(slot_shift).with_segment(segment).with_nareas(nareas).with_page_shift(page_shift);
        let pool: Pool = Pool::new_heap(seg_bytes * segments * nareas as usize, config).unwrap();
        let mask = (1u64 << mask_bits) - 1;
        let max = pool.max_mapping_size(mask);
        prop_assume!(max > 0);
        let dev = Device::new(DmaMask::BITS_64)
            .with_min_align_mask(mask)
            .with_force_bounce();
        let off = orig_off as usize & mask as usize;
        let mut buf = vec![7u8; max + off];
        let r = bounce_and_back(&pool, &dev, &mut buf, off, max);
        prop_assert!(r.is_ok(), "{config:?} mask {mask:#x} off {off:#x} max {max}: {r:?}");
    }
}

#[test]
fn a_pool_too_large_for_the_machine_is_out_of_memory_not_too_small() {
    let e = Pool::<swiotlb::Fast>::new_heap(32 << 40, PoolConfig::default()).unwrap_err();
    assert_eq!(
        e,
        Error::OutOfMemory {
            what: swiotlb::error::AllocWhat::PoolMemory,
            bytes: 32 << 40
        }
    );
    let text = e.to_string();
    assert!(text.contains("out of memory"), "{text}");
    assert!(!text.contains("smaller than one slot"), "{text}");
}

#[test]
fn each_growing_tlb_configuration_problem_has_its_own_error() {
    use swiotlb::error::ConfigProblem;
    use swiotlb::provider::ProviderError;
    use swiotlb::tlb::{GrowConfig, IoTlb, ManualClock};
    use swiotlb_host::HeapProvider;
    let seg = 256 << 10;
    let build = |start: usize, grow_by: usize, max: usize| {
        let mut config = GrowConfig::new(start, max);
        config.grow_by = grow_by;
        let clock = std::sync::Arc::new(ManualClock::new());
        match IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
            .map(|t| t.with_clock(clock))
        {
            Err(ProviderError::Pool(Error::BadConfig { problem })) => problem,
            other => panic!("{:?}", other.map(|_| ())),
        }
    };
    let texts: Vec<String> = [
        (
            build(seg / 2, seg, 4 * seg),
            ConfigProblem::StartBelowSegment {
                start: seg / 2,
                segment: seg,
            },
        ),
        (
            build(seg, seg / 4, 4 * seg),
            ConfigProblem::GrowBelowSegment {
                grow_by: seg / 4,
                segment: seg,
            },
        ),
        (
            build(2 * seg, seg, seg),
            ConfigProblem::MaxBelowStart {
                start: 2 * seg,
                max: seg,
            },
        ),
    ]
    .into_iter()
    .map(|(got, want)| {
        assert_eq!(got, want);
        Error::BadConfig { problem: got }.to_string()
    })
    .collect();
    assert!(texts[0].contains("smaller than one segment"), "{texts:?}");
    assert!(texts[1].contains("growth step"), "{texts:?}");
    assert!(texts[2].contains("below the first pool"), "{texts:?}");
}

#[test]
fn alignment_padding_past_a_segment_names_the_padding() {
    let pool = heap_pool(1 << 20);
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let mut buf = vec![0u8; 2048];
    let cpu = buf.as_mut_ptr();
    let opts = MapOptions::default().with_alloc_align_mask(0x7ffff);
    // SAFETY: `buf` is valid for 2048 bytes; the map fails and keeps
    // nothing.
    let e = unsafe { pool.bounce_raw(&dev, PhysAddr(cpu as u64), cpu, 2048, Attrs::NONE, opts) }
        .unwrap_err();
    assert_eq!(
        e,
        Error::PaddingTooLarge {
            size: 2048,
            padded: 0x80000,
            align_mask: 0x7ffff,
            segment: 256 << 10
        }
    );
    let text = e.to_string();
    assert!(text.contains("alloc_align_mask 0x7ffff"), "{text}");
    assert!(!text.contains("larger than any mapping can be"), "{text}");
    // A size past the device's maximum is still `TooLarge`.
    let mut big = vec![0u8; 300 << 10];
    let cpu = big.as_mut_ptr();
    // SAFETY: as above.
    let e = unsafe {
        pool.bounce_raw(
            &dev,
            PhysAddr(cpu as u64),
            cpu,
            big.len(),
            Attrs::NONE,
            opts,
        )
    }
    .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
}
