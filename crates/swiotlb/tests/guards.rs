//! The guards of map, sync and unmap: the checks that refuse a request and
//! the choice of what is returned when one does. Each test pins a check
//! that no other test depends on, so that deleting or loosening it fails
//! here (`ci/mutants.sh` measures that). Only the public API is used, at
//! both levels, and every test runs under both policies.
//!
//! The test plays the device: pools come from `Pool::new_heap`, where a
//! device address is the CPU address of the bounce bytes.

mod common;
mod misuse;

use misuse::expect_misuse;
#[macro_use]
mod policies;

use common::{bytes, device_read, device_write, forced, RawBuf};
use swiotlb::{
    Attrs, Device, Direction, DmaAddr, DmaMask, Error, FailReason, PhysAddr, Policy, Pool,
    PoolConfig, SgEntry,
};

both_policies!(
    unmap_longer_than_mapping_is_refused_and_copies_nothing,
    unmap_inside_a_mapping_is_refused_and_copies_nothing,
    unmap_of_a_coherent_allocation_is_refused,
    sync_longer_than_mapping_is_refused_and_copies_nothing,
    zero_size_map_is_refused_even_when_reachable,
    unmap_sg_returns_first_error_and_unmaps_the_rest,
    sg_segment_of_exactly_max_segment_size_is_accepted,
    metadata_bytes_matches_count_from_geometry,
    sg_of_buffers_a_device_reaches_is_mapped_directly,
);

const DIRS: [Direction; 3] = [
    Direction::ToDevice,
    Direction::FromDevice,
    Direction::Bidirectional,
];

fn pool<P: Policy>(nslots: usize) -> Pool<P> {
    Pool::new_heap(nslots * 2048, PoolConfig::default()).unwrap()
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

/// The whole pool as the device sees it.
fn all_slots<P: Policy>(pool: &Pool<P>) -> Vec<u8> {
    device_read(pool, 0, pool.len())
}

/// Mapped bytes in these tests: more than two slots, not a whole number.
const LEN: usize = 5000;

/// An unmap whose size is larger than the mapping (Linux's
/// `swiotlb_tbl_unmap_single` is handed the size by the driver) is refused
/// with `OutOfBounds` whatever the direction: nothing is copied back and
/// nothing is freed, so the mapping is still live and a correct unmap
/// afterwards copies back exactly its own bytes. The original buffer is
/// longer than the mapping and the device wrote the whole pool, so a
/// copy-back of the larger size would show in the bytes past the mapping
/// (and stays inside the buffer: a missing check is seen, not undefined).
fn unmap_longer_than_mapping_is_refused_and_copies_nothing<P: Policy>() {
    // Misuse on purpose, per direction: two unmaps of a wrong size, and a
    // device that writes the whole pool (its scribble past the mapping
    // found at the first).
    expect_misuse(
        &[
            "WrongSize",
            "DeviceWroteOutside",
            "WrongSize",
            "WrongSize",
            "DeviceWroteOutside",
            "WrongSize",
            "WrongSize",
            "DeviceWroteOutside",
            "WrongSize",
        ],
        || {
            let pool = pool::<P>(16);
            let dev = forced();
            let orig = bytes(1, 8192);
            let oob = |len| {
                Err(Error::OutOfBounds {
                    offset: 0,
                    len,
                    mapping_len: LEN,
                })
            };
            for dir in DIRS {
                let buf = RawBuf::new(&orig);
                // SAFETY: `buf` outlives the mapping (8192 bytes, more than the
                // 5000 mapped) and is reached only through its pointer.
                let dma = unsafe { pool.map_raw(&dev, PhysAddr(0x10_0000), buf.ptr(), LEN, dir) }
                    .unwrap();
                let device = bytes(2, pool.len());
                device_write(&pool, 0, &device);
                let misuse = pool.stats().failures(FailReason::Misuse);
                for len in [LEN + 1, 8192] {
                    // SAFETY: as above; the device is done. A correct engine
                    // copies nothing for a refused size (that is what is checked).
                    let r = unsafe { pool.unmap_raw(&dev, dma, len, dir, Attrs::NONE) };
                    assert_eq!(r, oob(len), "{dir:?} unmap of {len} bytes");
                }
                assert_eq!(buf.to_vec(), orig, "a refused unmap wrote the original");
                // The checker rewrites the guard bytes the device scribbled over
                // (each scribble is reported once); the rest is untouched.
                if !cfg!(feature = "checker") {
                    assert_eq!(all_slots(&pool), device, "a refused unmap wrote the slots");
                }
                assert_eq!(pool.stats().failures(FailReason::Misuse), misuse + 2);
                assert!(pool.stats().io_tlb_used > 0, "a refused unmap freed slots");

                // Still mapped: the right size unmaps it, copying back its bytes
                // and no more.
                // SAFETY: as above.
                unsafe { pool.unmap_raw(&dev, dma, LEN, dir, Attrs::NONE) }.unwrap();
                let mut want = orig.clone();
                if dir.copies_to_cpu() {
                    let at = pool_off(&pool, dma);
                    want[..LEN].copy_from_slice(&device[at..at + LEN]);
                }
                assert_eq!(buf.to_vec(), want, "{dir:?} unmap after the refusal");
                assert_empty(&pool);
            }
        },
    )
}

/// An unmap must name a mapping's first address (Linux's
/// `swiotlb_release_slots` is handed the address the map returned): one
/// inside the mapping, in its first slot, at the start of a later slot or
/// at its last byte, is refused with `NotMapped` whatever the direction,
/// though a sync there is fine. Nothing is copied back or freed, so the
/// mapping is still live and an unmap at its start copies back exactly its
/// own bytes.
fn unmap_inside_a_mapping_is_refused_and_copies_nothing<P: Policy>() {
    // Misuse on purpose: three unmaps of addresses no mapping starts at,
    // per direction.
    expect_misuse(&["NeverMapped"; 9], || {
        let pool = pool::<P>(16);
        let dev = forced();
        let orig = bytes(3, LEN);
        for dir in DIRS {
            let buf = RawBuf::new(&orig);
            // SAFETY: `buf` outlives the mapping and is reached only
            // through its pointer.
            let dma =
                unsafe { pool.map_raw(&dev, PhysAddr(0x10_0000), buf.ptr(), LEN, dir) }.unwrap();
            let at = pool_off(&pool, dma);
            let device = bytes(4, LEN);
            device_write(&pool, at, &device);
            let slots = all_slots(&pool);
            let misuse = pool.stats().failures(FailReason::Misuse);
            let used = pool.stats().io_tlb_used;
            for (off, len) in [(1, 16), (2048, 16), (LEN - 1, 1)] {
                let inside = DmaAddr(dma.0 + off as u64);
                // SAFETY: as above; the device is done. A correct engine
                // copies nothing for a refused address (that is checked).
                let r = unsafe { pool.unmap_raw(&dev, inside, len, dir, Attrs::NONE) };
                assert_eq!(
                    r,
                    Err(Error::NotMapped { dma: inside }),
                    "{dir:?} unmap at offset {off}"
                );
            }
            assert_eq!(buf.to_vec(), orig, "a refused unmap wrote the original");
            assert_eq!(all_slots(&pool), slots, "a refused unmap wrote the slots");
            assert_eq!(pool.stats().failures(FailReason::Misuse), misuse + 3);
            assert_eq!(
                pool.stats().io_tlb_used,
                used,
                "a refused unmap freed slots"
            );

            // Still mapped: the start unmaps it, copying back its bytes.
            // SAFETY: as above.
            unsafe { pool.unmap_raw(&dev, dma, LEN, dir, Attrs::NONE) }.unwrap();
            let want = if dir.copies_to_cpu() { &device } else { &orig };
            assert_eq!(&buf.to_vec(), want, "{dir:?} unmap after the refusals");
            assert_empty(&pool);
        }
    })
}

/// A coherent allocation is freed by `free_coherent`, never unmapped: a
/// streaming unmap of its address is refused with `NotMapped` whatever the
/// direction, frees nothing and leaves its bytes alone, and the allocation
/// is freed afterwards as usual. To-device comes first: it copies nothing
/// even when the refusal is missing, so a missing refusal fails here on
/// the returned value, before a copy-back would be tried.
fn unmap_of_a_coherent_allocation_is_refused<P: Policy>() {
    // Misuse on purpose: a streaming unmap of a coherent allocation, per
    // direction.
    expect_misuse(&["WrongKind"; 3], || {
        let pool = pool::<P>(16);
        let dev = forced();
        let c = pool.alloc_coherent(&dev, LEN).unwrap();
        let at = pool_off(&pool, c.dma);
        let data = bytes(5, LEN);
        device_write(&pool, at, &data);
        let misuse = pool.stats().failures(FailReason::Misuse);
        let used = pool.stats().io_tlb_used;
        for dir in DIRS {
            // SAFETY: a coherent allocation, not a streaming mapping: the
            // call only returns an error.
            let r = unsafe { pool.unmap_raw(&dev, c.dma, LEN, dir, Attrs::NONE) };
            assert_eq!(r, Err(Error::NotMapped { dma: c.dma }), "{dir:?} unmap");
        }
        assert_eq!(pool.stats().failures(FailReason::Misuse), misuse + 3);
        assert_eq!(
            pool.stats().io_tlb_used,
            used,
            "a refused unmap freed slots"
        );
        assert_eq!(
            device_read(&pool, at, LEN),
            data,
            "a refused unmap wrote the allocation"
        );
        // SAFETY: nothing uses the allocation any more.
        unsafe { pool.free_coherent(&dev, c.dma, c.size) }.unwrap();
        assert_empty(&pool);
    })
}

/// A sync from a mapping's first byte for more bytes than the mapping
/// holds is refused with `OutOfBounds` and copies nothing, at both levels
/// and whatever the direction: the original and every slot byte are as
/// before. Buffers are longer than the mapping (the safe one in spare
/// capacity), so a sync that ignored its bounds would show, not overrun.
fn sync_longer_than_mapping_is_refused_and_copies_nothing<P: Policy>() {
    // Misuse on purpose, per direction (to-device, from-device,
    // bidirectional): four refused syncs; the CPU's write to a to-device
    // original; the device's writes over the whole pool, found at the
    // unmap.
    expect_misuse(
        &[
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "CpuWroteWhileDeviceOwned",
            "DeviceWroteOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "DeviceWroteOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "SyncOutside",
            "DeviceWroteOutside",
        ],
        || {
            let pool = pool::<P>(16);
            let dev = forced();
            let (a, d) = (bytes(10, 8192), bytes(11, 8192));
            let oob = |len| {
                Err(Error::OutOfBounds {
                    offset: 0,
                    len,
                    mapping_len: LEN,
                })
            };
            for dir in DIRS {
                // Raw API.
                let buf = RawBuf::new(&a);
                // SAFETY: `buf` outlives the mapping (8192 bytes, more than the
                // 5000 mapped) and is reached only through its pointer.
                let dma = unsafe { pool.map_raw(&dev, PhysAddr(0x10_0000), buf.ptr(), LEN, dir) }
                    .unwrap();
                let device = bytes(12, pool.len());
                device_write(&pool, 0, &device);
                buf.write(0, &d);
                let misuse = pool.stats().failures(FailReason::Misuse);
                // For each sync, the original is valid and reached only through
                // its pointer, and the device is not accessing the mapping; a
                // correct engine copies nothing for a refused range.
                let sync_cpu = |len: usize| {
                    // SAFETY: as said above the closure, for any length.
                    unsafe { pool.sync_for_cpu_raw(&dev, dma, len, dir) }
                };
                let sync_device = |len: usize| {
                    // SAFETY: as said above the closure, for any length.
                    unsafe { pool.sync_for_device_raw(&dev, dma, len, dir) }
                };
                assert_eq!(sync_cpu(LEN + 1), oob(LEN + 1));
                assert_eq!(sync_device(LEN + 1), oob(LEN + 1));
                assert_eq!(sync_cpu(8192), oob(8192));
                assert_eq!(sync_device(8192), oob(8192));
                assert_eq!(pool.stats().failures(FailReason::Misuse), misuse + 4);
                assert_eq!(
                    buf.to_vec(),
                    d,
                    "raw {dir:?}: a refused sync wrote the original"
                );
                assert_eq!(
                    all_slots(&pool),
                    device,
                    "raw {dir:?}: a refused sync wrote the slots"
                );
                // SAFETY: as above; the device is done.
                unsafe { pool.unmap_raw(&dev, dma, LEN, dir, Attrs::SKIP_CPU_SYNC) }.unwrap();
                assert_empty(&pool);

                // Safe API: a buffer of 5000 bytes in an allocation of 8192.
                let mut v = Vec::with_capacity(8192);
                v.extend_from_slice(&a[..LEN]);
                let mut m = pool.map(&dev, v, dir).unwrap();
                device_write(&pool, 0, &device);
                m.write(0, &d[..LEN]).unwrap();
                let misuse = pool.stats().failures(FailReason::Misuse);
                assert_eq!(m.sync_for_cpu(0, LEN + 1), oob(LEN + 1));
                assert_eq!(m.sync_for_device(0, LEN + 1), oob(LEN + 1));
                assert_eq!(m.sync_for_cpu(0, 8192), oob(8192));
                assert_eq!(m.sync_for_device(0, 8192), oob(8192));
                assert_eq!(pool.stats().failures(FailReason::Misuse), misuse + 4);
                let mut seen = vec![0; LEN];
                m.read(0, &mut seen).unwrap();
                assert_eq!(
                    seen,
                    d[..LEN],
                    "safe {dir:?}: a refused sync wrote the buffer"
                );
                assert_eq!(
                    all_slots(&pool),
                    device,
                    "safe {dir:?}: a refused sync wrote the slots"
                );
                let back = m.unmap_with_attrs(Attrs::SKIP_CPU_SYNC);
                assert_eq!(back, d[..LEN]);
                assert_empty(&pool);
            }
        },
    )
}

/// A zero-size map is refused with `ZeroSize` at both levels, for a device
/// that reaches the buffer directly as for one forced to bounce: the
/// answer to a zero-length request does not depend on the device.
///
/// Linux differs on the direct path: `dma_direct_map_page` never looks at
/// the size and hands back the buffer's own address for zero bytes, while
/// its bounce path refuses them (`swiotlb_search_pool_area` asserts a
/// non-zero slot count). A zero-length DMA mapping is a driver bug, and an
/// answer that changed with `swiotlb=force` would hide it on exactly the
/// machines (confidential VMs) where it then fails, so every level gives
/// the typed error. Nothing is mapped, no direct map is counted, and the
/// refusal is counted as a size failure.
fn zero_size_map_is_refused_even_when_reachable<P: Policy>() {
    let pool = pool::<P>(8);
    let orig = bytes(20, 64);
    let direct = Device::new(DmaMask::BITS_64);
    for (dev, name) in [(&direct, "reachable"), (&forced(), "forced")] {
        for dir in DIRS {
            let buf = RawBuf::new(&orig);
            let phys = PhysAddr(buf.ptr() as u64);
            assert!(dev.can_reach(phys, 64), "the device reaches the buffer");
            let before = pool.stats().failures(FailReason::TooLarge);
            // SAFETY: `buf` outlives the call and is reached only through
            // its pointer; identity translation, so `phys` is its address.
            let r = unsafe { pool.map_raw(dev, phys, buf.ptr(), 0, dir) };
            assert_eq!(r, Err(Error::ZeroSize), "raw, {name}, {dir:?}");
            // SAFETY: as above.
            let r = unsafe {
                pool.map_raw_with_attrs(dev, phys, buf.ptr(), 0, dir, Attrs::SKIP_CPU_SYNC)
            };
            assert_eq!(r, Err(Error::ZeroSize), "raw with attrs, {name}, {dir:?}");
            assert_eq!(buf.to_vec(), orig);

            let f = pool.map(dev, Vec::<u8>::new(), dir).unwrap_err();
            assert_eq!(f.error, Error::ZeroSize, "safe, {name}, {dir:?}");
            assert!(f.buffer.is_empty());
            assert_eq!(pool.stats().failures(FailReason::TooLarge), before + 3);
        }
    }
    let st = pool.stats();
    assert_eq!(st.direct_maps, 0, "no zero-size map went direct");
    assert_eq!(st.io_tlb_used_hiwater, 0, "no slot was ever used");
    assert_eq!(st.bytes_to_device, 0);
    assert_empty(&pool);
}

/// `unmap_sg_raw` tries every entry, in order, whatever fails: each entry
/// that can be unmapped is unmapped and copied back, a failing entry is
/// left as it was (one refused for its size stays mapped), and the error
/// returned is the first failing entry's, in list order; every failure is
/// counted. Two failures, a double unmap and an unmap longer than its
/// mapping, in both orders.
fn unmap_sg_returns_first_error_and_unmaps_the_rest<P: Policy>() {
    // Misuse on purpose: entries unmapped alone, twice, with a wrong size
    // or as single mappings, and a device that writes the whole pool.
    expect_misuse(
        &[
            "WrongKind",
            "DeviceWroteOutside",
            "DeviceWroteOutside",
            "NeverMapped",
            "DeviceWroteOutside",
            "WrongSize",
            "DeviceWroteOutside",
            "DeviceWroteOutside",
            "WrongKind",
            "WrongKind",
            "DeviceWroteOutside",
            "DeviceWroteOutside",
            "WrongSize",
            "DeviceWroteOutside",
            "DeviceWroteOutside",
            "NeverMapped",
            "DeviceWroteOutside",
            "WrongKind",
        ],
        || {
            const N: usize = 5;
            const ENTRY: usize = 1000;
            let dir = Direction::FromDevice;
            let dev = forced();
            for (gone, long) in [(1, 3), (3, 1)] {
                let pool = pool::<P>(16);
                let origs: Vec<Vec<u8>> = (0..N).map(|i| bytes(30 + i as u64, 4096)).collect();
                // Buffers of 4096 bytes of which 1000 are mapped, so that a
                // copy-back of the longer size would stay inside the buffer.
                let bufs: Vec<RawBuf> = origs.iter().map(|o| RawBuf::new(o)).collect();
                let mut sg: Vec<SgEntry> = bufs
                    .iter()
                    .enumerate()
                    .map(|(i, b)| SgEntry {
                        phys: PhysAddr(0x100_0000 * (i as u64 + 1)),
                        cpu: b.ptr(),
                        len: ENTRY,
                        dma: DmaAddr(0),
                    })
                    .collect();
                // SAFETY: the buffers outlive every mapping and are reached only
                // through their pointers.
                unsafe { pool.map_sg_raw(&dev, &mut sg, dir, Attrs::NONE) }.unwrap();
                let device = bytes(40, pool.len());
                device_write(&pool, 0, &device);
                let written = |e: &SgEntry| {
                    let at = pool_off(&pool, e.dma);
                    device[at..at + ENTRY].to_vec()
                };

                // Entry `gone` is unmapped on its own first, so the list unmaps it
                // twice; entry `long` is given a size past its mapping.
                // SAFETY: as above; the device is done.
                unsafe { pool.unmap_raw(&dev, sg[gone].dma, ENTRY, dir, Attrs::NONE) }.unwrap();
                let mut want: Vec<Vec<u8>> = origs.clone();
                want[gone][..ENTRY].copy_from_slice(&written(&sg[gone]));
                sg[long].len = ENTRY + 1;
                let misuse = pool.stats().failures(FailReason::Misuse);

                // SAFETY: as above.
                let r = unsafe { pool.unmap_sg_raw(&dev, &sg, dir, Attrs::NONE) };
                let first = gone.min(long);
                let expected = if first == gone {
                    Error::NotMapped { dma: sg[gone].dma }
                } else {
                    Error::OutOfBounds {
                        offset: 0,
                        len: ENTRY + 1,
                        mapping_len: ENTRY,
                    }
                };
                assert_eq!(r, Err(expected), "the first failing entry's error");
                assert_eq!(pool.stats().failures(FailReason::Misuse), misuse + 2);
                for i in (0..N).filter(|&i| i != gone && i != long) {
                    want[i][..ENTRY].copy_from_slice(&written(&sg[i]));
                }
                for (i, (b, w)) in bufs.iter().zip(&want).enumerate() {
                    assert_eq!(
                        &b.to_vec(),
                        w,
                        "entry {i} (double unmap {gone}, long {long})"
                    );
                }
                assert_eq!(
                    pool.stats().io_tlb_used,
                    1,
                    "every entry but the refused one unmapped"
                );

                // The refused entry is still mapped, and unmaps with its own size.
                // SAFETY: as above.
                unsafe { pool.unmap_raw(&dev, sg[long].dma, ENTRY, dir, Attrs::NONE) }.unwrap();
                want[long][..ENTRY].copy_from_slice(&written(&sg[long]));
                assert_eq!(bufs[long].to_vec(), want[long]);
                assert_empty(&pool);
            }
        },
    )
}

/// A scatter-gather segment of exactly the device's `max_segment_size` is
/// accepted and one byte more is refused with `SegmentTooLong` naming the
/// entry, before anything is mapped (Linux: no segment exceeds
/// `dma_get_max_seg_size`), at both levels; the safe list gives every
/// buffer back.
fn sg_segment_of_exactly_max_segment_size_is_accepted<P: Policy>() {
    const MAX: usize = 4096;
    let pool = pool::<P>(16);
    let dev = forced().with_max_segment_size(MAX);
    let dir = Direction::ToDevice;

    // Safe API.
    let lens = [1000, MAX];
    let given: Vec<Vec<u8>> = lens.iter().map(|&n| bytes(n as u64, n)).collect();
    let maps = pool.map_sg(&dev, given.clone(), dir).unwrap();
    assert_eq!(maps.iter().map(|m| m.len()).collect::<Vec<_>>(), lens);
    for (m, g) in maps.iter().zip(&given) {
        assert!(m.is_bounced());
        // A mapping is never empty: a zero-size map is refused.
        assert!(!m.is_empty());
        // Debug output names the type, the length and the direction.
        let shown = format!("{m:?}");
        for part in ["Mapping", &g.len().to_string(), "ToDevice"] {
            assert!(shown.contains(part), "{shown} lacks {part}");
        }
        assert_eq!(
            &device_read(&pool, pool_off(&pool, m.dma_addr()), g.len()),
            g
        );
    }
    let back: Vec<Vec<u8>> = maps.into_iter().map(|m| m.unmap()).collect();
    assert_eq!(back, given);
    assert_empty(&pool);

    let lens = [1000, MAX, MAX + 1];
    let given: Vec<Vec<u8>> = lens.iter().map(|&n| bytes(n as u64, n)).collect();
    let before = pool.stats().failures(FailReason::TooLarge);
    let f = pool.map_sg(&dev, given.clone(), dir).unwrap_err();
    assert_eq!(
        f.error,
        Error::SegmentTooLong {
            index: 2,
            len: MAX + 1,
            max: MAX
        }
    );
    assert_eq!(f.buffer, given, "every buffer back, in order");
    assert_eq!(pool.stats().failures(FailReason::TooLarge), before + 1);
    assert_eq!(
        pool.stats().io_tlb_used_hiwater,
        3,
        "only the first list was mapped"
    );
    assert_empty(&pool);

    // Raw API.
    let data = bytes(50, MAX + 1);
    let buf = RawBuf::new(&data);
    let entry = |len| SgEntry {
        phys: PhysAddr(0x100_0000),
        cpu: buf.ptr(),
        len,
        dma: DmaAddr(0),
    };
    let mut sg = [entry(MAX)];
    // SAFETY: `buf` outlives the mapping and is reached only through its
    // pointer.
    unsafe { pool.map_sg_raw(&dev, &mut sg, dir, Attrs::NONE) }.unwrap();
    assert_eq!(
        device_read(&pool, pool_off(&pool, sg[0].dma), MAX),
        data[..MAX]
    );
    // SAFETY: as above; the device is done.
    unsafe { pool.unmap_sg_raw(&dev, &sg, dir, Attrs::NONE) }.unwrap();
    let mut sg = [entry(MAX + 1)];
    // SAFETY: as above.
    let r = unsafe { pool.map_sg_raw(&dev, &mut sg, dir, Attrs::NONE) };
    assert_eq!(
        r,
        Err(Error::SegmentTooLong {
            index: 0,
            len: MAX + 1,
            max: MAX
        })
    );
    assert_eq!(sg[0].dma, DmaAddr(0));
    assert_empty(&pool);
}

/// The policy's per-area bytes proportional to its geometry, counted from
/// the area's slots alone: `Fast` keeps a held bit per slot, a 2-byte
/// longest-run summary and an exactness bit per segment the area touches
/// (segment lines counted from the pool's first slot), each bit array in
/// 64-bit words; `NextFit` keeps a 4-byte free-run count per slot (Linux's
/// `slots[i].list`).
fn policy_bytes(policy: &str, first: u32, nslabs: u32, segment: u32) -> usize {
    match policy {
        "fast" => {
            let mut segs: Vec<u32> = (first..first + nslabs).map(|s| s / segment).collect();
            segs.dedup();
            let words = |bits: usize| bits.div_ceil(64) * 8;
            words(nslabs as usize) + 2 * segs.len() + words(segs.len())
        }
        "nextfit" => 4 * nslabs as usize,
        other => panic!("no count for policy {other}"),
    }
}

/// `Pool::metadata_bytes` against a count made here from the geometry: per
/// slot a pointer to the original and a packed shape word, one start bit
/// per slot in 64-bit words, the policy's per-area arrays
/// ([`policy_bytes`]), and fixed parts: the `Pool` value itself and, per
/// area, its lock, counters and policy state. The per-area fixed part is
/// not visible from outside, so it is worked out once from a one-area pool
/// and must then be the same in every geometry, including pools of 2 to 8
/// areas, areas that do not start on a segment line, a last area that
/// takes a remainder, and areas of more than 64 segments.
fn metadata_bytes_matches_count_from_geometry<P: Policy>() {
    let per_slot = std::mem::size_of::<*mut u8>() + 8;
    let fixed = std::mem::size_of::<Pool<P>>();
    // (slots, slot shift, segment, areas wanted, areas expected)
    // The last two have more than 64 segments per area, so the per-segment
    // bit arrays take two words.
    let geometries: [(u32, u32, u32, u32, u32); 11] = [
        (128, 11, 128, 1, 1),
        (1, 11, 128, 1, 1),
        (100, 11, 128, 4, 1),
        (1000, 11, 128, 1, 1),
        (1024, 11, 128, 4, 4),
        (1000, 11, 128, 4, 4),
        (1030, 11, 128, 8, 8),
        (4096, 9, 64, 2, 2),
        (777, 12, 32, 3, 4),
        (130, 9, 2, 1, 1),
        (520, 9, 2, 4, 4),
    ];
    let mut area_fixed = None;
    for (nslabs, slot_shift, segment, wanted, nareas) in geometries {
        let config = PoolConfig::default()
            .with_slot_shift(slot_shift)
            .with_segment(segment)
            .with_nareas(wanted);
        let pool = Pool::<P>::new_heap((nslabs as usize) << slot_shift, config).unwrap();
        assert_eq!(pool.nslabs(), nslabs);
        assert_eq!(
            pool.nareas(),
            nareas,
            "{nslabs} slots, {wanted} areas wanted"
        );
        let per_area = nslabs / nareas;
        assert_eq!(pool.area_nslabs(), per_area);
        let arrays: usize = (0..nareas)
            .map(|i| {
                let first = i * per_area;
                let n = if i == nareas - 1 {
                    nslabs - first
                } else {
                    per_area
                };
                policy_bytes(pool.policy_name(), first, n, segment)
            })
            .sum();
        let counted =
            nslabs as usize * per_slot + (nslabs as usize).div_ceil(64) * 8 + arrays + fixed;
        let got = pool.metadata_bytes();
        let geometry = format!("{nslabs} slots of 2^{slot_shift}, segment {segment}");
        assert!(got > counted, "{geometry}: {got} <= {counted}");
        let rest = got - counted;
        assert_eq!(
            rest % nareas as usize,
            0,
            "{geometry}: not the same per area"
        );
        let each = rest / nareas as usize;
        let k = *area_fixed.get_or_insert(each);
        assert_eq!(each, k, "{geometry}: per-area fixed part");
    }
    let k = area_fixed.unwrap();
    let state = std::mem::size_of::<P::Area>();
    assert!(
        k >= state && k <= state + 1024,
        "per-area fixed part {k} for a policy state of {state} bytes"
    );
}

/// `Pool::map_sg` of buffers a device reaches maps them directly, as
/// `map` does (Linux's `dma_direct_map_sg`): no slot taken, each entry's
/// device address its buffer's own, the bytes where they are. Forced, the
/// same list bounces.
fn sg_of_buffers_a_device_reaches_is_mapped_directly<P: Policy>() {
    let pool = pool::<P>(16);
    let dev = Device::new(DmaMask::BITS_64);
    let given: Vec<Vec<u8>> = [100usize, 3000, 4096]
        .iter()
        .map(|&n| bytes(n as u64, n))
        .collect();
    let list = given.clone();
    let addrs: Vec<u64> = list.iter().map(|b| b.as_ptr().addr() as u64).collect();
    let maps = pool.map_sg(&dev, list, Direction::Bidirectional).unwrap();
    assert_eq!(pool.stats().io_tlb_used, 0, "a reachable list took slots");
    for (m, a) in maps.iter().zip(&addrs) {
        assert!(!m.is_bounced());
        assert_eq!(m.dma_addr(), DmaAddr(*a));
    }
    let back: Vec<Vec<u8>> = maps.into_iter().map(|m| m.unmap()).collect();
    assert_eq!(back, given);
    let maps = pool
        .map_sg(&forced(), given.clone(), Direction::Bidirectional)
        .unwrap();
    assert!(maps.iter().all(|m| m.is_bounced()));
    assert!(pool.stats().io_tlb_used > 0);
    drop(maps);
    assert_empty(&pool);
}
