//! The heapless pool: a pool built with `Pool::new_with_metadata` over a
//! `static` slot array, its metadata a `static` sized at compile time by
//! `Pool::metadata_len`, as firmware declares them. Under both policies it
//! bounces real data both ways (the map-time copy, syncs each way, the
//! unmap copy-back, through the raw API and through a safe mapping of a
//! `&'static mut [u8]`), runs out of slots and recovers, and refuses
//! metadata memory that is too short, or too short once aligned, with a
//! typed error.
//!
//! Every pool here uses only what a build without the `alloc` feature
//! has: no `Pool::new`, no `stats()`. The test plays the device, as in
//! `data.rs`: the pool's physical address is its CPU address.

mod common;
mod misuse;

use misuse::expect_misuse;

use std::mem::MaybeUninit;
use std::ptr::{addr_of_mut, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};

use common::{bytes, device_read, device_write, forced, RawBuf};
use swiotlb::error::ConfigProblem;
use swiotlb::{
    Attrs, Direction, DmaAddr, Error, Fast, NextFit, PhysAddr, Policy, Pool, PoolConfig,
};

/// Slots of every pool here (2 KiB each).
const SLOTS: usize = 24;
/// Bytes of every pool here.
const LEN: usize = SLOTS << 11;

/// Two areas of 12 slots in segments of 8, so the second area starts off
/// a segment line: every per-area array of both policies is carved twice,
/// in two shapes.
const CONFIG: PoolConfig = PoolConfig::DEFAULT.with_segment(8).with_nareas(2);

/// Slot memory, page aligned as a reserved region is.
#[repr(C, align(4096))]
struct SlotMem([u8; LEN]);

/// Bytes of the original the safe-API checks map.
const BUF: usize = 1500;

/// A heapless pool over statics of its own, and a `&'static mut` buffer
/// for the safe API: each expansion declares its own statics, and a flag
/// makes sure the expansion runs once, so the `&'static mut`s handed out
/// are the only ones ever made.
macro_rules! heapless {
    ($policy:ty) => {{
        const META_LEN: usize = Pool::<$policy>::metadata_len(LEN, CONFIG);
        static TAKEN: AtomicBool = AtomicBool::new(false);
        static mut SLOTS_MEM: SlotMem = SlotMem([0; LEN]);
        static mut META: [MaybeUninit<u8>; META_LEN] = [MaybeUninit::uninit(); META_LEN];
        static mut BUFFER: [u8; BUF] = [0; BUF];
        assert!(!TAKEN.swap(true, Ordering::SeqCst), "statics taken twice");
        let vaddr = NonNull::new(addr_of_mut!(SLOTS_MEM).cast::<u8>()).unwrap();
        let phys = PhysAddr(vaddr.as_ptr().addr() as u64);
        // SAFETY: the first and only reference to `META`: this expansion
        // runs once (`TAKEN`) and nothing else names it.
        let meta = unsafe { &mut *addr_of_mut!(META) };
        // SAFETY: the first and only reference to `BUFFER`: this expansion
        // runs once (`TAKEN`) and nothing else names it.
        let buffer: &'static mut [u8] = unsafe { &mut *addr_of_mut!(BUFFER) };
        // SAFETY:
        // - `SLOTS_MEM` is valid for reads and writes of `LEN` bytes for
        //   ever;
        // - nothing but this pool reaches it (only the device's side in
        //   the tests, through `pool.vaddr()`);
        // - identity: its physical address is defined as its CPU address.
        let pool = unsafe { Pool::<$policy>::new_with_metadata(vaddr, phys, LEN, CONFIG, meta) }
            .expect("metadata_len bytes build a pool");
        (pool, buffer)
    }};
}

/// Runs a test under each policy, as `<name>::fast` and `<name>::nextfit`,
/// each over statics of its own.
macro_rules! both_policies {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            use super::*;
            #[test]
            fn fast() {
                let (pool, buffer) = heapless!(Fast);
                super::$name(pool, buffer);
            }
            #[test]
            fn nextfit() {
                let (pool, buffer) = heapless!(NextFit);
                super::$name(pool, buffer);
            }
        })*
    };
}

both_policies!(
    raw_api_bounces_both_ways,
    safe_mapping_of_a_static_buffer_bounces_both_ways,
    runs_out_and_recovers,
);

const DIRS: [Direction; 3] = [
    Direction::ToDevice,
    Direction::FromDevice,
    Direction::Bidirectional,
];

/// What slots hold before a map: an earlier mapping's bytes.
const STALE: u8 = 0xee;

/// Byte offset in the pool of device address `dma` (identity pools).
fn pool_off<P: Policy>(pool: &Pool<P>, dma: DmaAddr) -> usize {
    (dma.0 - pool.start().0) as usize
}

/// The physical address of `buf` (identity).
fn phys(buf: &RawBuf) -> PhysAddr {
    PhysAddr(buf.ptr().addr() as u64)
}

/// Map, sync each way and unmap one buffer per direction through the raw
/// API: the map copies the original into the slots whatever the direction
/// (CVE-2022-0854), `sync_for_cpu` and the unmap copy the device's bytes
/// back only for from-device and bidirectional mappings, `sync_for_device`
/// copies the CPU's bytes out only for to-device and bidirectional ones.
fn raw_api_bounces_both_ways<P: Policy>(pool: Pool<P>, _: &'static mut [u8]) {
    let dev = forced();
    let len = 3000;
    for (i, dir) in DIRS.into_iter().enumerate() {
        device_write(&pool, 0, &vec![STALE; pool.len()]);
        let data = bytes(i as u64, len);
        let orig = RawBuf::new(&data);
        // SAFETY: `orig` is valid for `len` bytes and reached only through
        // its raw pointer until the unmap below.
        let dma = unsafe { pool.map_raw(&dev, phys(&orig), orig.ptr(), len, dir) }.unwrap();
        let off = pool_off(&pool, dma);
        assert_eq!(device_read(&pool, off, len), data, "{dir:?}: map-time copy");
        let mut want = data.clone();

        // The device writes part of the mapping; the CPU syncs a range
        // that straddles the two slots.
        let from_dev = bytes(100 + i as u64, 1000);
        device_write(&pool, off + 1500, &from_dev);
        // SAFETY: the mapping is live and `orig` still valid and
        // unreferenced.
        unsafe { pool.sync_for_cpu_raw(&dev, dma + 1500, 1000, dir) }.unwrap();
        if dir != Direction::ToDevice {
            want[1500..2500].copy_from_slice(&from_dev);
        }
        assert_eq!(orig.to_vec(), want, "{dir:?}: sync for the CPU");

        // The CPU writes part of the original and syncs it for the device.
        let from_cpu = bytes(200 + i as u64, 700);
        orig.write(200, &from_cpu);
        want[200..900].copy_from_slice(&from_cpu);
        // SAFETY: the mapping is live, and `orig` is still valid and
        // reached only through its raw pointer (its `write` above copied
        // through it and returned).
        unsafe { pool.sync_for_device_raw(&dev, dma + 200, 700, dir) }.unwrap();
        let slots = device_read(&pool, off, len);
        let expect = if dir == Direction::FromDevice {
            &data[200..900]
        } else {
            &from_cpu[..]
        };
        assert_eq!(&slots[200..900], expect, "{dir:?}: sync for the device");

        // The device writes the tail; the unmap copies it back.
        let tail = bytes(300 + i as u64, 500);
        device_write(&pool, off + 2500, &tail);
        let slots = device_read(&pool, off, len);
        // SAFETY: `orig` is still valid and reached only through its raw
        // pointer, and the device (this test) is done with the mapping.
        unsafe { pool.unmap_raw(&dev, dma, len, dir, Attrs::NONE) }.unwrap();
        let back = if dir == Direction::ToDevice {
            want.clone()
        } else {
            slots
        };
        assert_eq!(orig.to_vec(), back, "{dir:?}: unmap copy-back");
        assert_eq!(pool.used_slots(), 0);
        // A second unmap of the same address is refused.
        // SAFETY: nothing is mapped at `dma` any more, so nothing is
        // copied.
        let again = expect_misuse(&["NeverMapped"], || unsafe {
            pool.unmap_raw(&dev, dma, len, dir, Attrs::NONE)
        });
        assert_eq!(again, Err(Error::NotMapped { dma }));
    }
}

/// The safe API over a `&'static mut [u8]` (a buffer a build without
/// `alloc` has): the map copies the buffer in, the device's bytes come
/// back through `sync_for_cpu` and the unmap, which hands the same buffer
/// back.
fn safe_mapping_of_a_static_buffer_bounces_both_ways<P: Policy>(
    pool: Pool<P>,
    buffer: &'static mut [u8],
) {
    let dev = forced();
    let data = bytes(7, BUF);
    buffer.copy_from_slice(&data);
    let at = buffer.as_ptr();
    let mut m = pool
        .map(&dev, buffer, Direction::Bidirectional)
        .map_err(|f| f.error)
        .unwrap();
    assert!(m.is_bounced());
    let off = pool_off(&pool, m.dma_addr());
    assert_eq!(device_read(&pool, off, BUF), data, "map-time copy");

    let from_dev = bytes(8, 600);
    device_write(&pool, off + 100, &from_dev);
    m.sync_for_cpu(100, 600).unwrap();
    let mut seen = vec![0; 600];
    m.read(100, &mut seen).unwrap();
    assert_eq!(seen, from_dev, "sync for the CPU");

    let from_cpu = bytes(9, 300);
    m.write(1000, &from_cpu).unwrap();
    m.sync_for_device(1000, 300).unwrap();
    assert_eq!(
        device_read(&pool, off + 1000, 300),
        from_cpu,
        "sync for the device"
    );

    let tail = bytes(10, 200);
    device_write(&pool, off + 1300, &tail);
    let want = device_read(&pool, off, BUF);
    let back = m.unmap();
    assert_eq!(back.as_ptr(), at, "the same buffer comes back");
    assert_eq!(&back[..], &want[..], "unmap copy-back");
    assert_eq!(pool.used_slots(), 0);
}

/// One-slot mappings fill the pool; the next map is `PoolFull`, with
/// nothing free; unmapping one makes room for exactly one more, which
/// gets the new data; once everything is unmapped the whole of the
/// largest area takes one mapping again.
fn runs_out_and_recovers<P: Policy>(pool: Pool<P>, _: &'static mut [u8]) {
    let dev = forced();
    let len = 1500;
    let mut live: Vec<(RawBuf, DmaAddr)> = Vec::new();
    for i in 0..SLOTS {
        let orig = RawBuf::new(&bytes(i as u64, len));
        // SAFETY: `orig` stays valid and unreferenced until its unmap: it
        // is kept in `live` until then.
        let dma = unsafe { pool.map_raw(&dev, phys(&orig), orig.ptr(), len, Direction::ToDevice) }
            .unwrap_or_else(|e| panic!("map {i}: {e}"));
        live.push((orig, dma));
    }
    assert_eq!(pool.used_slots(), SLOTS);
    let extra = RawBuf::new(&bytes(99, len));
    // SAFETY: `extra` is valid for `len` bytes and reached only through
    // its raw pointer; the map fails and keeps nothing of it.
    let full = unsafe { pool.map_raw(&dev, phys(&extra), extra.ptr(), len, Direction::ToDevice) };
    assert_eq!(
        full,
        Err(Error::PoolFull {
            requested: 1,
            free: 0,
            largest_run: 0,
        })
    );

    // Every mapping still holds its own bytes: none was overwritten.
    for (i, (_, dma)) in live.iter().enumerate() {
        let got = device_read(&pool, pool_off(&pool, *dma), len);
        assert_eq!(got, bytes(i as u64, len), "mapping {i}");
    }

    let (orig, dma) = live.remove(7);
    // SAFETY: the mapping is live and the device is done with it.
    unsafe { pool.unmap_raw(&dev, dma, len, Direction::ToDevice, Attrs::NONE) }.unwrap();
    drop(orig);
    // SAFETY: `extra` is valid for `len` bytes and reached only through
    // its raw pointer until its unmap: it goes into `live` until then.
    let again =
        unsafe { pool.map_raw(&dev, phys(&extra), extra.ptr(), len, Direction::ToDevice) }.unwrap();
    assert_eq!(again, dma, "the one free slot");
    assert_eq!(
        device_read(&pool, pool_off(&pool, again), len),
        bytes(99, len)
    );
    live.push((extra, again));

    for (orig, dma) in live.drain(..) {
        // SAFETY: each mapping is live, its original valid, the device
        // done.
        unsafe { pool.unmap_raw(&dev, dma, len, Direction::ToDevice, Attrs::NONE) }.unwrap();
        drop(orig);
    }
    assert_eq!(pool.used_slots(), 0);
    for s in 0..pool.nslabs() {
        assert!(pool.slot_is_free(s), "slot {s}");
    }

    // The largest mapping this pool takes fits again: no slot leaked.
    let max = pool.max_mapping_size(0);
    assert_eq!(max, 8 << 11, "a segment");
    let big = RawBuf::new(&bytes(5, max));
    // SAFETY: `big` is valid for `max` bytes and reached only through its
    // raw pointer until the unmap below.
    let dma =
        unsafe { pool.map_raw(&dev, phys(&big), big.ptr(), max, Direction::ToDevice) }.unwrap();
    assert_eq!(device_read(&pool, pool_off(&pool, dma), max), bytes(5, max));
    // SAFETY: the mapping is live, `big` still valid and unreferenced, and
    // the device is done with it.
    unsafe { pool.unmap_raw(&dev, dma, max, Direction::ToDevice, Attrs::NONE) }.unwrap();
    assert_eq!(pool.used_slots(), 0);
}

/// Memory aligned for pool metadata, in blocks of [`Pool::METADATA_ALIGN`]
/// bytes.
#[derive(Clone, Copy)]
#[repr(C, align(128))]
struct MetaLine([MaybeUninit<u8>; 128]);

/// Takes `n` bytes from `rest`, starting `skip` bytes past its next
/// 128-byte boundary; `rest` keeps what follows.
fn piece(
    rest: &mut &'static mut [MaybeUninit<u8>],
    skip: usize,
    n: usize,
) -> &'static mut [MaybeUninit<u8>] {
    let all = std::mem::take(rest);
    let to_line = all.as_ptr().addr().wrapping_neg() & 127;
    let (_, tail) = all.split_at_mut(to_line + skip);
    let (piece, tail) = tail.split_at_mut(n);
    *rest = tail;
    piece
}

/// Metadata memory too short, or too short once aligned, is refused with
/// its own typed error before anything is touched; `metadata_len` bytes
/// work at any address, `METADATA_ALIGN - 1` fewer at an aligned one.
fn refuses_short_metadata<P: Policy>(slots: NonNull<u8>, mut meta: &'static mut [MaybeUninit<u8>]) {
    let phys = PhysAddr(slots.as_ptr().addr() as u64);
    let need = Pool::<P>::metadata_len(LEN, CONFIG);
    let align = Pool::<P>::METADATA_ALIGN;
    assert_eq!(align, 128);
    let exact = need - (align - 1);
    let build = |meta: &'static mut [MaybeUninit<u8>]| {
        // SAFETY: `slots` is valid for `LEN` bytes for ever, and the pools
        // built over it here live one at a time, each dropped before the
        // next is built; its physical address is its CPU address.
        unsafe { Pool::<P>::new_with_metadata(slots, phys, LEN, CONFIG, meta) }
    };
    let too_small = |given| Error::BadConfig {
        problem: ConfigProblem::MetadataTooSmall {
            given,
            needed: need,
        },
    };

    assert_eq!(build(piece(&mut meta, 0, 0)).err(), Some(too_small(0)));
    assert_eq!(
        build(piece(&mut meta, 0, exact - 1)).err(),
        Some(too_small(exact - 1))
    );
    assert_eq!(
        build(piece(&mut meta, 1, exact)).err(),
        Some(Error::BadConfig {
            problem: ConfigProblem::MetadataMisaligned {
                align,
                skip: align - 1,
            }
        }),
    );
    assert_eq!(
        build(piece(&mut meta, 64, need - 64)).err(),
        Some(Error::BadConfig {
            problem: ConfigProblem::MetadataMisaligned { align, skip: 64 }
        }),
    );
    // A region the pool cannot use is refused as such, before the
    // metadata is looked at.
    // SAFETY: the call fails on the region's physical address before
    // anything is touched.
    let unaligned = unsafe {
        Pool::<P>::new_with_metadata(slots, phys + 1, LEN, CONFIG, piece(&mut meta, 0, 0))
    };
    assert!(
        matches!(unaligned, Err(Error::InvalidPool { .. })),
        "{unaligned:?}"
    );

    let text = too_small(exact - 1).to_string();
    assert!(
        text.contains("swiotlb") && text.contains(&need.to_string()),
        "{text}"
    );

    // Enough: exactly the carving at an aligned address, and
    // `metadata_len` at the worst address.
    for (skip, n) in [(0, exact), (1, need), (align - 1, need), (0, need)] {
        let pool = build(piece(&mut meta, skip, n)).unwrap();
        assert_eq!(pool.nareas(), 2);
        assert_eq!(pool.nslabs(), SLOTS as u32);
        drop(pool);
    }
}

/// [`refuses_short_metadata`] for one policy, over statics of its own.
macro_rules! refuses_short_metadata {
    ($name:ident, $policy:ty) => {
        #[test]
        fn $name() {
            const LINES: usize = 12 * (Pool::<$policy>::metadata_len(LEN, CONFIG) / 128 + 2);
            static TAKEN: AtomicBool = AtomicBool::new(false);
            static mut SLOTS_MEM: SlotMem = SlotMem([0; LEN]);
            static mut META: [MetaLine; LINES] = [MetaLine([MaybeUninit::uninit(); 128]); LINES];
            assert!(!TAKEN.swap(true, Ordering::SeqCst), "statics taken twice");
            let slots = NonNull::new(addr_of_mut!(SLOTS_MEM).cast::<u8>()).unwrap();
            // SAFETY: the first and only reference to `META` (this test
            // runs once, `TAKEN`), viewed as its bytes: `MetaLine` is
            // `repr(C)` bytes with no padding between lines.
            let meta = unsafe {
                std::slice::from_raw_parts_mut(
                    addr_of_mut!(META).cast::<MaybeUninit<u8>>(),
                    LINES * 128,
                )
            };
            refuses_short_metadata::<$policy>(slots, meta);
        }
    };
}

refuses_short_metadata!(fast_refuses_short_metadata, Fast);
refuses_short_metadata!(nextfit_refuses_short_metadata, NextFit);

/// `metadata_len` is what a pool needs in every geometry: the carving at
/// an aligned address takes exactly `metadata_len - (METADATA_ALIGN - 1)`
/// bytes, and one byte less is refused. Pools of one to four areas, areas
/// off segment lines, a last area with a remainder.
#[test]
fn metadata_len_is_exact_in_every_geometry() {
    fn check<P: Policy>() {
        let geometries: [(usize, u32, u32, u32); 6] = [
            (1, 11, 128, 1),
            (130, 11, 128, 1),
            (300, 11, 128, 2),
            (777, 12, 32, 3),
            (520, 9, 2, 4),
            (64, 16, 16, 4),
        ];
        for (nslabs, slot_shift, segment, nareas) in geometries {
            let config = PoolConfig::DEFAULT
                .with_slot_shift(slot_shift)
                .with_segment(segment)
                .with_nareas(nareas);
            let len = nslabs << slot_shift;
            let need = Pool::<P>::metadata_len(len, config);
            let exact = need - (Pool::<P>::METADATA_ALIGN - 1);
            let slots = Lent::new(len.div_ceil(1 << 16), 1 << 16);
            let phys = PhysAddr(slots.base.as_ptr().addr() as u64);
            for (n, ok) in [(exact, true), (exact - 1, false)] {
                let meta = Lent::new(n.div_ceil(128), 128);
                // SAFETY:
                // - `slots` is valid for `len` bytes until it is dropped,
                //   after the pool, and reached only through the pool;
                // - identity: its physical address is its CPU address;
                // - `meta` is lent for as long as the pool lives (dropped
                //   after it), and reached by nothing else meanwhile.
                let pool = unsafe {
                    Pool::<P>::new_with_metadata(slots.base, phys, len, config, meta.bytes(n))
                };
                let what = format!("{} slots of 2^{slot_shift}, segment {segment}", nslabs);
                match (pool, ok) {
                    (Ok(pool), true) => assert_eq!(pool.nslabs() as usize, nslabs, "{what}"),
                    (Err(Error::BadConfig { problem }), false) => assert_eq!(
                        problem,
                        ConfigProblem::MetadataTooSmall {
                            given: n,
                            needed: need,
                        },
                        "{what}"
                    ),
                    (other, _) => panic!("{what}, {n} bytes: {:?}", other.map(|_| ())),
                }
                drop(meta);
            }
            drop(slots);
        }
    }
    check::<Fast>();
    check::<NextFit>();
}

/// Heap memory lent out as `'static` for as long as this lives: aligned
/// chunks of `align` bytes, freed when it is dropped. Its borrower must be
/// gone by then.
struct Lent {
    base: NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Lent {
    fn new(chunks: usize, align: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(chunks.max(1) * align, align).unwrap();
        // SAFETY: the size is at least `align`, not zero.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        Self {
            base: NonNull::new(raw).expect("test memory"),
            layout,
        }
    }

    /// The first `n` bytes, as `'static`: valid until `self` is dropped,
    /// which the caller makes sure happens after the last use.
    fn bytes(&self, n: usize) -> &'static mut [MaybeUninit<u8>] {
        assert!(n <= self.layout.size());
        // SAFETY: the first `n` bytes of a live allocation (asserted),
        // handed out once per test case; every borrower is dropped before
        // `self` frees them.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().cast(), n) }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}
