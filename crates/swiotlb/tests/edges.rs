//! Edges of the address space and of the geometry: a pool whose device
//! address sits at the very top of a 64-bit bus, and the promise of
//! `max_mapping_size` for every geometry.

use proptest::prelude::*;
use swiotlb::translate::Offset;
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
        .with_force_bounce(true)
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
fn a_table_at_the_top_of_the_bus_maps_below_the_wrap() {
    // Slot aligned, four slots below the top: the first slots are
    // reachable, and the boundary arithmetic (table slot `2^53 - 4` under
    // an all-ones boundary) stays exact.
    let pool = heap_pool(1 << 20);
    let top = Offset::new(pool.start(), DmaAddr(0u64.wrapping_sub(4 * 2048)));
    let dev = Device::new(DmaMask::BITS_64)
        .with_seg_boundary_mask(u64::MAX)
        .with_force_bounce(true)
        .with_translate(top);
    let mut buf = vec![5u8; 8192];
    let dma = bounce_and_back(&pool, &dev, &mut buf, 0, 2048).unwrap();
    assert_eq!(dma.as_u64(), 0u64.wrapping_sub(4 * 2048));
    // A page at the same place: the table is page aligned too.
    let dma = bounce_and_back(&pool, &dev, &mut buf, 0, 4096).unwrap();
    assert_eq!(dma.as_u64(), 0u64.wrapping_sub(4 * 2048));
    // A mapping too large for the slots below the top either lands past
    // the wrap, at device address 0 and up (Linux's `slot_addr` wraps the
    // same way), or, placed at the top, is refused as unreachable, as
    // `swiotlb_map` refuses it; it never spans the wrap, and nothing stays
    // mapped.
    let mut big = vec![6u8; 16 << 10];
    match bounce_and_back(&pool, &dev, &mut big, 0, 16 << 10) {
        Ok(d) => assert!(d.as_u64().checked_add((16 << 10) - 1).is_some(), "{d:?}"),
        Err(Error::Unreachable { .. }) => {}
        Err(e) => panic!("{e:?}"),
    }
    assert_eq!(pool.stats().io_tlb_used, 0);
}

#[test]
fn an_empty_pool_with_large_pages_takes_its_max_mapping_size() {
    // 64 KiB pages: a 256 KiB mapping must start page aligned, which
    // needs the heap region aligned to the page, not just to 4 KiB.
    let config = PoolConfig {
        page_shift: 16,
        ..PoolConfig::default()
    };
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce(true);
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
        let config = PoolConfig { slot_shift, segment, nareas, page_shift };
        let pool: Pool = Pool::new_heap(seg_bytes * segments * nareas as usize, config).unwrap();
        let mask = (1u64 << mask_bits) - 1;
        let max = pool.max_mapping_size(mask);
        prop_assume!(max > 0);
        let dev = Device::new(DmaMask::BITS_64)
            .with_min_align_mask(mask)
            .with_force_bounce(true);
        let off = orig_off as usize & mask as usize;
        let mut buf = vec![7u8; max + off];
        let r = bounce_and_back(&pool, &dev, &mut buf, off, max);
        prop_assert!(r.is_ok(), "{config:?} mask {mask:#x} off {off:#x} max {max}: {r:?}");
    }
}
