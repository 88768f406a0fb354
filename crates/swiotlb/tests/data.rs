//! Data integrity of map, sync and unmap: what reaches the device, what
//! comes back to the CPU, and what must not move. The semantics are
//! Linux's (`swiotlb_tbl_map_single`, `swiotlb_tbl_unmap_single`,
//! `swiotlb_sync_single_for_{cpu,device}`, `dma_direct_map_page`), and
//! every test runs under both policies; most at both API levels.
//!
//! The test plays the device: pools come from `Pool::new_heap`, where a
//! device address is the CPU address of the bounce bytes. Before a map,
//! most tests fill the whole pool with [`STALE`] as an earlier mapping (or
//! a hostile host) would leave it, so a missing map-time copy shows up as
//! stale bytes in the original.

mod common;
mod misuse;

use misuse::expect_misuse;
#[macro_use]
mod policies;

use std::ptr::NonNull;

use common::{bytes, device_read, device_write, forced, RawBuf};
use swiotlb::{
    Attrs, Device, Direction, DmaAddr, DmaMask, Error, FailReason, MapOptions, PhysAddr, Policy,
    Pool, PoolConfig, SgEntry,
};

both_policies!(
    device_write_lands_exactly,
    from_device_never_exposes_earlier_mapping,
    skip_cpu_sync_skips_only_copy_back,
    sync_for_device_copies_only_to_and_bidi,
    sync_for_cpu_copies_only_from_and_bidi,
    partial_sync_inside_multi_slot_mapping,
    out_of_bounds_sync_copies_nothing,
    sg_raw_all_or_nothing_when_pool_full,
    sg_raw_all_or_nothing_when_segment_too_long,
    sg_safe_gives_buffers_back_in_order,
    unreachable_pool_leaves_nothing_mapped,
    direct_mapping_uses_own_address,
);

const DIRS: [Direction; 3] = [
    Direction::ToDevice,
    Direction::FromDevice,
    Direction::Bidirectional,
];

/// What slots hold before a map: an earlier mapping's bytes.
const STALE: u8 = 0xee;

fn pool<P: Policy>(nslots: usize) -> Pool<P> {
    Pool::new_heap(nslots * 2048, PoolConfig::default()).unwrap()
}

/// Fills every slot with [`STALE`], as the device side sees them.
fn dirty<P: Policy>(pool: &Pool<P>) {
    device_write(pool, 0, &vec![STALE; pool.len()]);
}

/// Byte offset in the pool of device address `dma` (identity pools).
fn pool_off<P: Policy>(pool: &Pool<P>, dma: DmaAddr) -> usize {
    (dma.0 - pool.start().0) as usize
}

fn assert_empty<P: Policy>(pool: &Pool<P>) {
    assert_eq!(pool.stats().io_tlb_used, 0);
    for s in 0..pool.nslabs() {
        assert!(pool.slot_is_free(s), "slot {s} still held");
    }
}

/// The device writes two ranges (one across a slot line); everything else
/// it leaves alone. Returns what the original must hold after a copy-back.
fn play_device<P: Policy>(pool: &Pool<P>, at: usize, orig: &[u8]) -> Vec<u8> {
    let mut want = orig.to_vec();
    for (range, seed) in [(100..150, 1), (2000..2300, 2)] {
        let data = bytes(seed, range.len());
        device_write(pool, at + range.start, &data);
        want[range].copy_from_slice(&data);
    }
    want
}

/// After map, device write and unmap, the original holds exactly what the
/// device wrote and its own bytes everywhere else, for from-device too:
/// Linux copies the original into the slots at map time whatever the
/// direction, so unmap's whole-mapping copy-back returns the original's
/// bytes where the device wrote nothing (CVE-2022-0854: without that copy
/// they were stale slot bytes). To-device originals are never written.
fn device_write_lands_exactly<P: Policy>() {
    let pool = pool::<P>(16);
    // With and without a min_align_mask offset (NVMe keeps 0xfff).
    for dev in [forced(), forced().with_min_align_mask(0xfff)] {
        for dir in DIRS {
            let orig = bytes(7, 5000);

            // Raw API, an original whose physical address is 0xa10 into
            // its page.
            dirty(&pool);
            let buf = RawBuf::new(&orig);
            // SAFETY: `buf` outlives the mapping and is reached only
            // through its pointer; the physical address only steers the
            // alignment.
            let dma =
                unsafe { pool.map_raw(&dev, PhysAddr(0x4567_8a10), buf.ptr(), 5000, dir) }.unwrap();
            if dev.min_align_mask() != 0 {
                assert_eq!(dma.0 & 0xfff, 0xa10, "min_align_mask bits kept");
            }
            let want = play_device(&pool, pool_off(&pool, dma), &orig);
            // SAFETY: as above; the device is done.
            unsafe { pool.unmap_raw(&dev, dma, 5000, dir, Attrs::NONE) }.unwrap();
            let expect = if dir.copies_to_cpu() { &want } else { &orig };
            assert_eq!(&buf.to_vec(), expect, "raw {dir:?}");

            // Safe API.
            dirty(&pool);
            let m = pool.map(&dev, orig.clone(), dir).unwrap();
            let at = pool_off(&pool, m.dma_addr());
            let want = play_device(&pool, at, &orig);
            let back = m.unmap();
            let expect = if dir.copies_to_cpu() { &want } else { &orig };
            assert_eq!(&back, expect, "safe {dir:?}");
        }
    }
    assert_empty(&pool);
}

/// A from-device mapping never shows the device an earlier mapping's
/// bytes: the map-time copy overwrites the slots with the new original
/// (here zeros) before the device gets the address, even though the
/// device is only meant to write them (CVE-2022-0854, the disclosure
/// side). The pool is exactly one mapping large, so the second mapping
/// lands on the first one's slots under either policy.
fn from_device_never_exposes_earlier_mapping<P: Policy>() {
    let pool = pool::<P>(4);
    let dev = forced();
    let secret = bytes(0x5ec2e7, 8192);
    let opts = MapOptions::new().with_alloc_align_mask(0).with_area_hint(0);

    // Raw API.
    let buf = RawBuf::new(&secret);
    // SAFETY: `buf` outlives the mapping and is reached only through its
    // pointer.
    let first = unsafe {
        pool.bounce_raw(
            &dev,
            PhysAddr(0x10_0000),
            buf.ptr(),
            8192,
            Attrs::NONE,
            opts,
        )
    }
    .unwrap();
    let dma = DmaAddr(first.phys.0);
    assert_eq!(device_read(&pool, pool_off(&pool, dma), 8192), secret);
    // SAFETY: as above; the device is done.
    unsafe { pool.unmap_raw(&dev, dma, 8192, Direction::ToDevice, Attrs::NONE) }.unwrap();
    let zeros = RawBuf::new(&[0; 8192]);
    // SAFETY: as for `buf`.
    let second = unsafe {
        pool.bounce_raw(
            &dev,
            PhysAddr(0x20_0000),
            zeros.ptr(),
            8192,
            Attrs::NONE,
            opts,
        )
    }
    .unwrap();
    assert_eq!(second.start, first.start, "same slots reused");
    assert_eq!(
        device_read(&pool, pool_off(&pool, DmaAddr(second.phys.0)), 8192),
        vec![0; 8192],
        "the device sees the new original, not the secret"
    );
    // SAFETY: as above.
    let r = unsafe {
        pool.unmap_raw(
            &dev,
            DmaAddr(second.phys.0),
            8192,
            Direction::FromDevice,
            Attrs::NONE,
        )
    };
    assert_eq!(r, Ok(()));
    assert_eq!(zeros.to_vec(), vec![0; 8192]);

    // Safe API, the new mapping shorter than the old one.
    let m = pool.map(&dev, secret.clone(), Direction::ToDevice).unwrap();
    let old = m.bounce_phys().unwrap();
    assert_eq!(m.unmap(), secret);
    let m = pool
        .map(&dev, vec![0u8; 6000], Direction::FromDevice)
        .unwrap();
    assert_eq!(m.bounce_phys(), Some(old), "same slots reused");
    assert_eq!(
        device_read(&pool, pool_off(&pool, m.dma_addr()), 6000),
        vec![0; 6000]
    );
    assert_eq!(m.unmap(), vec![0; 6000]);
    assert_empty(&pool);
}

/// `SKIP_CPU_SYNC` skips the unmap copy-back (the driver synced itself)
/// but never the map-time copy, which keeps stale slot bytes from the
/// device (Linux `DMA_ATTR_SKIP_CPU_SYNC` after CVE-2022-0854). The same
/// sequence without the attribute copies back, so the attribute is what
/// makes the difference.
fn skip_cpu_sync_skips_only_copy_back<P: Policy>() {
    let pool = pool::<P>(8);
    let dev = forced();
    let orig = bytes(3, 4000);
    for dir in DIRS {
        for attrs in [Attrs::SKIP_CPU_SYNC, Attrs::NONE] {
            let copies = dir.copies_to_cpu() && attrs == Attrs::NONE;

            dirty(&pool);
            let buf = RawBuf::new(&orig);
            // SAFETY: `buf` outlives the mapping and is reached only
            // through its pointer.
            let dma = unsafe {
                pool.map_raw_with_attrs(&dev, PhysAddr(0x10_0000), buf.ptr(), 4000, dir, attrs)
            }
            .unwrap();
            let at = pool_off(&pool, dma);
            assert_eq!(
                device_read(&pool, at, 4000),
                orig,
                "map-time copy ({attrs:?})"
            );
            let wrote = play_device(&pool, at, &orig);
            // SAFETY: as above; the device is done.
            unsafe { pool.unmap_raw(&dev, dma, 4000, dir, attrs) }.unwrap();
            let want = if copies { &wrote } else { &orig };
            assert_eq!(&buf.to_vec(), want, "raw {dir:?} {attrs:?}");

            dirty(&pool);
            let m = pool.map_with_attrs(&dev, orig.clone(), dir, attrs).unwrap();
            let at = pool_off(&pool, m.dma_addr());
            assert_eq!(
                device_read(&pool, at, 4000),
                orig,
                "map-time copy ({attrs:?})"
            );
            let wrote = play_device(&pool, at, &orig);
            let want = if copies { &wrote } else { &orig };
            assert_eq!(&m.unmap_with_attrs(attrs), want, "safe {dir:?} {attrs:?}");
        }
    }
    assert_empty(&pool);
}

/// `sync_for_device` copies the CPU's new bytes into the slots for
/// to-device and bidirectional mappings only (Linux
/// `swiotlb_sync_single_for_device`); a from-device mapping's slots keep
/// what the map put there.
fn sync_for_device_copies_only_to_and_bidi<P: Policy>() {
    let pool = pool::<P>(8);
    let dev = forced();
    let (a, b) = (bytes(10, 3000), bytes(11, 3000));
    for dir in DIRS {
        let want = if dir.copies_to_device() { &b } else { &a };

        let buf = RawBuf::new(&a);
        // SAFETY: `buf` outlives the mapping and is reached only through
        // its pointer.
        let dma = unsafe { pool.map_raw(&dev, PhysAddr(0x10_0000), buf.ptr(), 3000, dir) }.unwrap();
        buf.write(0, &b);
        // SAFETY: as above; the device is not accessing the mapping.
        unsafe { pool.sync_for_device_raw(&dev, dma, 3000, dir) }.unwrap();
        assert_eq!(
            &device_read(&pool, pool_off(&pool, dma), 3000),
            want,
            "raw {dir:?}"
        );
        // SAFETY: as above.
        unsafe { pool.unmap_raw(&dev, dma, 3000, dir, Attrs::SKIP_CPU_SYNC) }.unwrap();

        let mut m = pool.map(&dev, a.clone(), dir).unwrap();
        m.write(0, &b).unwrap();
        m.sync_for_device(0, 3000).unwrap();
        let at = pool_off(&pool, m.dma_addr());
        assert_eq!(&device_read(&pool, at, 3000), want, "safe {dir:?}");
        drop(m);
    }
    assert_empty(&pool);
}

/// `sync_for_cpu` copies the device's bytes into the original for
/// from-device and bidirectional mappings only (Linux
/// `swiotlb_sync_single_for_cpu`); a to-device original is never written.
fn sync_for_cpu_copies_only_from_and_bidi<P: Policy>() {
    let pool = pool::<P>(8);
    let dev = forced();
    let (a, c) = (bytes(20, 3000), bytes(21, 3000));
    for dir in DIRS {
        let want = if dir.copies_to_cpu() { &c } else { &a };

        let buf = RawBuf::new(&a);
        // SAFETY: `buf` outlives the mapping and is reached only through
        // its pointer.
        let dma = unsafe { pool.map_raw(&dev, PhysAddr(0x10_0000), buf.ptr(), 3000, dir) }.unwrap();
        device_write(&pool, pool_off(&pool, dma), &c);
        // SAFETY: as above; the device is done writing.
        unsafe { pool.sync_for_cpu_raw(&dev, dma, 3000, dir) }.unwrap();
        assert_eq!(&buf.to_vec(), want, "raw {dir:?}");
        // SAFETY: as above.
        unsafe { pool.unmap_raw(&dev, dma, 3000, dir, Attrs::SKIP_CPU_SYNC) }.unwrap();

        let mut m = pool.map(&dev, a.clone(), dir).unwrap();
        device_write(&pool, pool_off(&pool, m.dma_addr()), &c);
        m.sync_for_cpu(0, 3000).unwrap();
        let mut seen = vec![0; 3000];
        m.read(0, &mut seen).unwrap();
        assert_eq!(&seen, want, "safe {dir:?}");
        assert_eq!(&m.unmap_with_attrs(Attrs::SKIP_CPU_SYNC), want);
    }
    assert_empty(&pool);
}

/// A partial sync may start at any address inside a mapping (Linux finds
/// the mapping from any slot and the offset from `tlb_addr`). The original
/// sits 0x9a0 into its page and the device keeps `min_align_mask` 0xfff:
/// without `alloc_align_mask` the allocation starts on a slot whose
/// address has bit 11 set and pads 0x1a0 bytes; with `alloc_align_mask`
/// 0xfff it starts page aligned and pads 0x9a0, so the first byte sits in
/// the allocation's second slot. Either way the syncs start in a later
/// slot, run across a slot line, and copy exactly their range.
fn partial_sync_inside_multi_slot_mapping<P: Policy>() {
    let pool = pool::<P>(16);
    let dev = forced().with_min_align_mask(0xfff);
    let dir = Direction::Bidirectional;
    let (a, c, d) = (bytes(30, 7000), bytes(31, 7000), bytes(32, 7000));
    for (alloc_align_mask, pad, nslots) in [(0, 0x1a0, 4), (0xfff, 0x9a0, 6)] {
        let buf = RawBuf::new(&a);
        let opts = MapOptions::new()
            .with_alloc_align_mask(alloc_align_mask)
            .with_area_hint(0);
        // SAFETY: `buf` outlives the mapping and is reached only through
        // its pointer; the physical address only steers the alignment.
        let b = unsafe {
            pool.bounce_raw(
                &dev,
                PhysAddr(0x7654_39a0),
                buf.ptr(),
                7000,
                Attrs::NONE,
                opts,
            )
        }
        .unwrap();
        assert_eq!(b.phys.0 & 0xfff, 0x9a0, "min_align_mask bits kept");
        let start = pool.start().0 + b.start as u64 * 2048;
        assert_eq!(b.phys.0 - start, pad, "padding");
        assert_eq!(
            b.slot,
            b.start + (pad / 2048) as u32,
            "slot of the first byte"
        );
        assert_eq!(b.nslots, nslots);
        let dma = DmaAddr(b.phys.0);
        let at = pool_off(&pool, dma);

        // The device writes the whole mapping; the CPU takes [3500, 4500),
        // which starts in the allocation's second or third slot and
        // crosses into the next.
        device_write(&pool, at, &c);
        let first = (pad + 3500) / 2048;
        assert!(first >= 1 && (pad + 4500) / 2048 > first);
        // SAFETY: as above; the device is done writing.
        unsafe { pool.sync_for_cpu_raw(&dev, dma + 3500, 1000, dir) }.unwrap();
        let mut want = a.clone();
        want[3500..4500].copy_from_slice(&c[3500..4500]);
        assert_eq!(buf.to_vec(), want, "only the synced range reaches the CPU");

        // The CPU rewrites everything; the device gets [5000, 6500) only.
        buf.write(0, &d);
        // SAFETY: as above; the device is not accessing the mapping.
        unsafe { pool.sync_for_device_raw(&dev, dma + 5000, 1500, dir) }.unwrap();
        let mut slots = c.clone();
        slots[5000..6500].copy_from_slice(&d[5000..6500]);
        assert_eq!(
            device_read(&pool, at, 7000),
            slots,
            "only the synced range reaches the device"
        );
        // SAFETY: as above.
        unsafe { pool.unmap_raw(&dev, dma, 7000, dir, Attrs::NONE) }.unwrap();
        assert_eq!(buf.to_vec(), slots);
    }

    // Safe API: interior ranges across slot lines too.
    let mut m = pool.map(&dev, a.clone(), dir).unwrap();
    let at = pool_off(&pool, m.dma_addr());
    device_write(&pool, at, &c);
    m.sync_for_cpu(4000, 2100).unwrap();
    let mut want = a.clone();
    want[4000..6100].copy_from_slice(&c[4000..6100]);
    let mut seen = vec![0; 7000];
    m.read(0, &mut seen).unwrap();
    assert_eq!(seen, want);
    m.write(0, &d).unwrap();
    m.sync_for_device(2047, 2).unwrap();
    let mut slots = c.clone();
    slots[2047..2049].copy_from_slice(&d[2047..2049]);
    assert_eq!(device_read(&pool, at, 7000), slots);
    drop(m);
    assert_empty(&pool);
}

/// A sync that runs past its mapping, or starts in its padding or past
/// its end, is refused with `OutOfBounds` and copies nothing, whatever the
/// direction (a to-device `sync_for_cpu` copies nothing anyway, but is
/// still checked, as the safe API and Linux's DMA-API debugging do); an
/// address in free slots is `NotMapped`.
fn out_of_bounds_sync_copies_nothing<P: Policy>() {
    // Misuse on purpose, per direction (to-device, from-device,
    // bidirectional): six refused raw syncs, and for to-device the CPU's
    // write to the original, found at the unmap. (The safe API's refusals
    // are no finding: it is not the checker's to watch.)
    expect_misuse(
        &[
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "CpuWroteWhileDeviceOwned",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
        ],
        || {
            let pool = pool::<P>(16);
            let dev = forced().with_min_align_mask(0xfff);
            let (a, c, d) = (bytes(40, 7000), bytes(41, 7000), bytes(42, 7000));
            let oob = |offset, len| {
                Err(Error::OutOfBounds {
                    offset,
                    len,
                    mapping_len: 7000,
                })
            };
            for dir in DIRS {
                let buf = RawBuf::new(&a);
                // SAFETY: `buf` outlives the mapping and is reached only through
                // its pointer; the physical address only steers the alignment.
                let dma =
                    unsafe { pool.map_raw(&dev, PhysAddr(0x7654_39a0), buf.ptr(), 7000, dir) }
                        .unwrap();
                let at = pool_off(&pool, dma);
                device_write(&pool, at, &c);
                buf.write(0, &d);
                let misuse = pool.stats().failures(FailReason::Misuse);
                // Every sync below: the original is valid and reached only through
                // its pointer, and the device is not accessing the mapping; a
                // correct engine copies nothing for a refused range (that is what
                // is checked).
                let cpu = |at: DmaAddr, len: usize| {
                    // SAFETY: as said above the closure, for any range.
                    unsafe { pool.sync_for_cpu_raw(&dev, at, len, dir) }
                };
                let device = |at: DmaAddr, len: usize| {
                    // SAFETY: as said above the closure, for any range.
                    unsafe { pool.sync_for_device_raw(&dev, at, len, dir) }
                };
                assert_eq!(cpu(dma + 6990, 20), oob(6990, 20));
                assert_eq!(device(dma + 6990, 20), oob(6990, 20));
                assert_eq!(cpu(dma + 10, usize::MAX), oob(10, usize::MAX));
                // Just past the end, still inside the allocation's last slot.
                assert_eq!(cpu(dma + 7000, 1), oob(7000, 1));
                // In the min_align_mask padding before the first byte.
                assert_eq!(device(DmaAddr(dma.0 - 16), 4), oob(usize::MAX, 4));
                // In free slots after the allocation.
                let free = DmaAddr(dma.0 + 8192);
                assert_eq!(cpu(free, 1), Err(Error::NotMapped { dma: free }));
                assert_eq!(pool.stats().failures(FailReason::Misuse), misuse + 6);
                assert_eq!(buf.to_vec(), d, "a refused sync_for_cpu wrote the original");
                assert_eq!(
                    device_read(&pool, at, 7000),
                    c,
                    "a refused sync_for_device wrote the slots"
                );
                // SAFETY: as above; the device is done.
                unsafe { pool.unmap_raw(&dev, dma, 7000, dir, Attrs::SKIP_CPU_SYNC) }.unwrap();

                // Safe API.
                let mut m = pool.map(&dev, a.clone(), dir).unwrap();
                let at = pool_off(&pool, m.dma_addr());
                device_write(&pool, at, &c);
                m.write(0, &d).unwrap();
                assert_eq!(m.sync_for_cpu(6990, 20), oob(6990, 20));
                assert_eq!(m.sync_for_device(7000, 1), oob(7000, 1));
                assert_eq!(m.sync_for_cpu(1, usize::MAX), oob(1, usize::MAX));
                assert_eq!(m.read(6999, &mut [0; 2]), oob(6999, 2));
                assert_eq!(m.write(6999, &[0; 2]), oob(6999, 2));
                assert_eq!(device_read(&pool, at, 7000), c);
                assert_eq!(m.unmap_with_attrs(Attrs::SKIP_CPU_SYNC), d);
            }
            assert_empty(&pool);
        },
    )
}

/// Raw scatter-gather entries over `bufs`, each with a distinct
/// page-aligned physical address.
fn sg_entries(bufs: &[RawBuf], lens: &[usize]) -> Vec<SgEntry> {
    bufs.iter()
        .zip(lens)
        .enumerate()
        .map(|(i, (b, &len))| SgEntry {
            phys: PhysAddr(0x100_0000 * (i as u64 + 1)),
            cpu: b.ptr(),
            len,
            dma: DmaAddr(0),
        })
        .collect()
}

/// Scatter-gather maps all or nothing (Linux `dma_map_sg` unmaps what it
/// mapped when an entry fails): a 4-slot pool takes the first two entries
/// (1 + 2 slots) but not the third (2 slots), and nothing stays mapped;
/// the same list with a 1-slot third entry then fits exactly, so every
/// slot of the failed attempt came back. (Entries stay under a page, so
/// no page alignment leaves holes.)
fn sg_raw_all_or_nothing_when_pool_full<P: Policy>() {
    let pool = pool::<P>(4);
    let dev = forced();
    let dir = Direction::FromDevice;
    let data: Vec<Vec<u8>> = (0..3).map(|i| bytes(50 + i, 4000)).collect();
    let bufs: Vec<RawBuf> = data.iter().map(|d| RawBuf::new(d)).collect();
    dirty(&pool);
    let mut sg = sg_entries(&bufs, &[2000, 4000, 4000]);
    // SAFETY: the buffers outlive every mapping and are reached only
    // through their pointers.
    let r = unsafe { pool.map_sg_raw(&dev, &mut sg, dir, Attrs::NONE) };
    assert_eq!(
        r,
        Err(Error::PoolFull {
            requested: 2,
            free: 1,
            largest_run: 1
        })
    );
    assert_eq!(sg[2].dma, DmaAddr(0), "the failed entry has no address");
    assert_empty(&pool);
    assert_eq!(
        pool.stats().io_tlb_used_hiwater,
        3,
        "the first two were mapped"
    );
    for (b, d) in bufs.iter().zip(&data) {
        assert_eq!(&b.to_vec(), d, "rollback wrote an original");
    }

    let mut sg = sg_entries(&bufs, &[2000, 4000, 2000]);
    // SAFETY: as above.
    unsafe { pool.map_sg_raw(&dev, &mut sg, dir, Attrs::NONE) }.unwrap();
    assert_eq!(pool.stats().io_tlb_used, 4);
    // SAFETY: as above; the device is done.
    unsafe { pool.unmap_sg_raw(&dev, &sg, dir, Attrs::NONE) }.unwrap();
    assert_empty(&pool);
}

/// An entry longer than the device's `max_segment_size` fails the whole
/// list before anything is mapped (Linux's scatter-gather contract: no
/// segment exceeds `dma_get_max_seg_size`).
fn sg_raw_all_or_nothing_when_segment_too_long<P: Policy>() {
    let pool = pool::<P>(16);
    let dev = forced().with_max_segment_size(4096);
    let bufs: Vec<RawBuf> = (0..3).map(|i| RawBuf::new(&bytes(60 + i, 5000))).collect();
    let mut sg = sg_entries(&bufs, &[1000, 4096, 5000]);
    // SAFETY: the buffers outlive every mapping and are reached only
    // through their pointers.
    let r = unsafe { pool.map_sg_raw(&dev, &mut sg, Direction::ToDevice, Attrs::NONE) };
    assert_eq!(
        r,
        Err(Error::SegmentTooLong {
            index: 2,
            len: 5000,
            max: 4096
        })
    );
    assert!(sg.iter().all(|e| e.dma == DmaAddr(0)));
    assert_empty(&pool);
    assert_eq!(
        pool.stats().io_tlb_used_hiwater,
        0,
        "nothing was ever mapped"
    );
    assert_eq!(pool.stats().failures(FailReason::TooLarge), 1);
}

/// The safe list gives every buffer back, in order and untouched, when
/// one fails, whether for room (the third) or for length (the second);
/// nothing stays mapped.
fn sg_safe_gives_buffers_back_in_order<P: Policy>() {
    let pool = pool::<P>(4);
    let lens = [2000, 4000, 4000];
    for (dev, error) in [
        (
            forced(),
            Error::PoolFull {
                requested: 2,
                free: 1,
                largest_run: 1,
            },
        ),
        (
            forced().with_max_segment_size(3000),
            Error::SegmentTooLong {
                index: 1,
                len: 4000,
                max: 3000,
            },
        ),
    ] {
        let bufs: Vec<Vec<u8>> = lens.iter().map(|&n| bytes(n as u64, n)).collect();
        let given = bufs.clone();
        let ptrs: Vec<*const u8> = given.iter().map(|b| b.as_ptr()).collect();
        let f = pool.map_sg(&dev, given, Direction::FromDevice).unwrap_err();
        assert_eq!(f.error, error);
        assert_eq!(f.buffer, bufs, "buffers back in order, untouched");
        let back: Vec<*const u8> = f.buffer.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(back, ptrs, "the same allocations");
        assert_empty(&pool);
    }
}

/// A pool the device cannot reach: real heap memory given a physical base
/// above 4 GiB, and a 32-bit device. The slots are found, the bounce
/// address fails the device's mask, and the map fails with `Unreachable`
/// with nothing left mapped (Linux `swiotlb_map`: "swiotlb addr overflow",
/// then `swiotlb_tbl_unmap_single`).
fn unreachable_pool_leaves_nothing_mapped<P: Policy>() {
    let mut mem = vec![0u8; 16 * 2048];
    let base = PhysAddr(1 << 32);
    let cpu = NonNull::new(mem.as_mut_ptr()).unwrap();
    // SAFETY:
    // - `mem` outlives `pool` (declared before it, so dropped after) and is
    //   touched only through the pool;
    // - the physical address is made up, but nothing here translates it
    //   back to memory: the map fails before any device could use it.
    let pool = unsafe { Pool::<P>::new(cpu, base, mem.len(), PoolConfig::default()) }.unwrap();
    let orig = bytes(70, 3000);
    // The bounce address is somewhere in the pool, above 4 GiB.
    let unreachable = |e: Error| match e {
        Error::Unreachable { dma, size } => {
            size == 3000 && (base.0..base.0 + mem.len() as u64).contains(&dma.0)
        }
        _ => false,
    };
    // Forced, with an original it could reach; and not forced, with an
    // original above its mask: both bounce, both fail.
    for (dev, phys) in [
        (
            Device::new(DmaMask::BITS_32).with_force_bounce(),
            PhysAddr(0x10_0000),
        ),
        (Device::new(DmaMask::BITS_32), PhysAddr(0x2_0000_0000)),
    ] {
        let buf = RawBuf::new(&orig);
        // SAFETY: `buf` outlives the call and is reached only through its
        // pointer.
        let r = unsafe { pool.map_raw(&dev, phys, buf.ptr(), 3000, Direction::Bidirectional) };
        assert!(r.is_err_and(unreachable), "{r:?}");
        assert_eq!(buf.to_vec(), orig);
        assert_empty(&pool);
    }
    let dev = Device::new(DmaMask::BITS_32).with_force_bounce();
    let f = pool
        .map(&dev, orig.clone(), Direction::Bidirectional)
        .unwrap_err();
    assert!(unreachable(f.error), "{:?}", f.error);
    assert_eq!(f.buffer, orig);
    assert_empty(&pool);
    let st = pool.stats();
    assert_eq!(st.failures(FailReason::Unreachable), 3);
    assert_eq!(
        st.io_tlb_used_hiwater, 2,
        "the slots were found, then given back"
    );
    assert_eq!(st.direct_maps, 0);
    drop(pool);
    drop(mem);
}

/// A 64-bit device that is not forced reaches any buffer: it gets the
/// buffer's own address, no slot is used, the device's writes land in the
/// buffer itself, and `direct_maps` counts it (Linux `dma_direct_map_page`
/// without swiotlb).
fn direct_mapping_uses_own_address<P: Policy>() {
    let pool = pool::<P>(8);
    let dev = Device::new(DmaMask::BITS_64);
    let orig = bytes(80, 3000);

    let buf = orig.clone();
    let addr = buf.as_ptr() as u64;
    let m = pool.map(&dev, buf, Direction::FromDevice).unwrap();
    assert!(!m.is_bounced());
    assert_eq!(m.dma_addr(), DmaAddr(addr));
    assert_eq!(m.bounce_phys(), None);
    assert_eq!(m.device_ptr().as_ptr() as u64, addr);
    let data = bytes(81, 100);
    // SAFETY: the test plays the device: `device_ptr` is the buffer the
    // mapping owns, 3000 bytes long, and nothing else accesses it now.
    // SAFETY: byte 10 of the 3000-byte buffer behind `device_ptr`.
    let at = unsafe { m.device_ptr().as_ptr().add(10) };
    // SAFETY: `at` is valid for 100 writes (bytes 10..110 of 3000), `data`
    // is a distinct allocation, and nothing else accesses the buffer now.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at, 100) };
    let back = m.unmap();
    let mut want = orig.clone();
    want[10..110].copy_from_slice(&data);
    assert_eq!(back, want);

    let raw = RawBuf::new(&orig);
    let phys = PhysAddr(raw.ptr() as u64);
    // SAFETY: `raw` outlives the mapping and is reached only through its
    // pointer; identity translation, so `phys` is its address.
    let dma = unsafe { pool.map_raw(&dev, phys, raw.ptr(), 3000, Direction::ToDevice) }.unwrap();
    assert_eq!(dma, DmaAddr(phys.0));
    // SAFETY: as above. Outside the pool: nothing to copy or free.
    unsafe { pool.unmap_raw(&dev, dma, 3000, Direction::ToDevice, Attrs::NONE) }.unwrap();
    assert_eq!(raw.to_vec(), orig);

    let st = pool.stats();
    assert_eq!(st.direct_maps, 2);
    assert_eq!(st.io_tlb_used_hiwater, 0, "no slot was ever used");
    assert_eq!(st.bytes_to_device + st.bytes_from_device, 0, "no copy");
    assert_empty(&pool);
}

/// The raw syncs and unmap of a device whose bus sees memory at another
/// base: each translates the device address back before looking for the
/// mapping, so device writes reach the original on every path.
fn raw_paths_translate_device_addresses<P: Policy>() {
    use swiotlb::translate::Offset;
    let pool = Pool::<P>::new_heap(1 << 20, PoolConfig::default()).unwrap();
    // The pool's first byte appears on the bus at 0x8000_0000.
    let bus = Offset::new(pool.start(), DmaAddr(0x8000_0000));
    let dev = forced().with_translate(bus);
    let orig = bytes(91, 3000);
    let buf = RawBuf::new(&orig);
    let dir = Direction::Bidirectional;
    // SAFETY: `buf` outlives the mapping and is reached only through its
    // pointer while mapped.
    let dma = unsafe { pool.map_raw(&dev, PhysAddr(0x10_0000), buf.ptr(), 3000, dir) }.unwrap();
    let at = usize::try_from(dma.as_u64() - 0x8000_0000).unwrap();
    assert!(at < pool.len(), "the bounce is on the pool's bus window");
    assert_eq!(device_read(&pool, at, 3000), orig, "the map copied in");
    let answer = bytes(92, 100);
    device_write(&pool, at + 500, &answer);
    // SAFETY: the mapping is live and `buf` valid and untouched.
    unsafe { pool.sync_for_cpu_raw(&dev, dma + 500, 100, dir) }.unwrap();
    let mut want = orig.clone();
    want[500..600].copy_from_slice(&answer);
    assert_eq!(buf.to_vec(), want, "sync_for_cpu found the mapping");
    buf.write(0, &answer);
    // SAFETY: as above.
    unsafe { pool.sync_for_device_raw(&dev, dma, 100, dir) }.unwrap();
    assert_eq!(
        device_read(&pool, at, 100),
        answer,
        "sync_for_device found it"
    );
    let last = bytes(93, 10);
    device_write(&pool, at + 2990, &last);
    // SAFETY: as above; the device is done.
    unsafe { pool.unmap_raw(&dev, dma, 3000, dir, Attrs::NONE) }.unwrap();
    assert_eq!(&buf.to_vec()[2990..], &last[..], "unmap copied back");
    assert_eq!(pool.used_slots(), 0);
}

both_policies!(raw_paths_translate_device_addresses);

/// `Platform::unmap_raw_into` copies back through the pointer it is given
/// (a caller that derived its original's pointer anew since the map, as
/// virtio-drivers does at `unshare`), and refuses one at another address
/// without copying or freeing anything.
#[test]
fn unmap_raw_into_copies_through_the_pointer_given_at_the_same_address() {
    use swiotlb::{IoTlb, Platform};
    let platform = Platform::new().with_restricted(IoTlb::restricted(
        "r",
        Pool::new_heap(1 << 20, PoolConfig::default()).unwrap(),
    ));
    let dev = Device::new(DmaMask::BITS_64).with_restricted_tlb("r");
    let mut buf = vec![1u8; 1000];
    let cpu = buf.as_mut_ptr();
    let phys = PhysAddr(cpu as usize as u64);
    // SAFETY: `buf` is reached only through `cpu` (and the pointer derived
    // anew below, at the same address) until the unmap.
    let dma = unsafe { platform.map_raw(&dev, phys, cpu, 1000, Direction::FromDevice) }.unwrap();
    let tlb = &platform.restricted()[0];
    let pool = tlb.first_pool();
    let slots = pool
        .vaddr()
        .as_ptr()
        .wrapping_add((dma.0 - pool.start().0) as usize);
    // SAFETY: the mapping's 1000 bounce bytes; the CPU plays the device.
    unsafe { slots.write_bytes(9, 1000) };
    let other = cpu.wrapping_add(1);
    // SAFETY: refused before anything is copied (what is tested).
    let r = expect_misuse(&["WrongSize"], || unsafe {
        platform.unmap_raw_into(&dev, dma, other, 999, Direction::FromDevice, Attrs::NONE)
    });
    assert_eq!(r, Err(Error::NotMapped { dma }));
    assert!(tlb.stats().pool.io_tlb_used > 0, "nothing freed");
    let again = buf.as_mut_ptr();
    assert_eq!(again, cpu);
    // SAFETY: `again` is `buf`'s address, as at the map, and the device is
    // done.
    unsafe { platform.unmap_raw_into(&dev, dma, again, 1000, Direction::FromDevice, Attrs::NONE) }
        .unwrap();
    assert_eq!(buf, vec![9u8; 1000]);
    assert_eq!(tlb.stats().pool.io_tlb_used, 0);
}
