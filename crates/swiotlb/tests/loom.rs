//! Loom models of concurrent map, sync and unmap on a tiny pool.
//!
//! Built only with `RUSTFLAGS="--cfg swiotlb_loom"`, which swaps the core's
//! area locks and atomics for loom's (see `src/sync.rs`), so these models
//! explore the interleavings of the real pool code. Run by `ci/loom.sh`.
//!
//! The pool is 2 areas of 4 slots: small enough for loom to explore, big
//! enough for two threads to hold several mappings, to fill an area and to
//! fall back to the other one. One model uses a 64-slot area instead, the
//! smallest where a start-bit word belongs to one area (a different write
//! path in the core).
//!
//! Loom does not see the slot bytes (plain heap memory), so overlap is
//! caught two ways: a shadow bitmap of live slots kept in a loom atomic,
//! and data integrity, where every thread checks that its slots still hold
//! exactly its own bytes after the other thread's copies.
//!
//! Raw maps pass an explicit area hint: without one the core uses a
//! per-OS-thread hint, and loom runs all its threads on one OS thread, so
//! the models would not choose their areas. Only the safe-API model, which
//! has no hint to give, leaves it to the core.
//!
//! A model that reports a suspiciously small number of interleavings is
//! probably missing the race it was written for: loom's reduction remembers
//! only the last access to each atomic (see `step`).
#![cfg(swiotlb_loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;

use swiotlb::{
    Attrs, Bounce, Device, Direction, DmaAddr, DmaMask, Fast, MapOptions, NextFit, PhysAddr,
    Policy, Pool, PoolConfig,
};

const SLOT: usize = 2048;
const NSLOTS: u32 = 8;

/// 2 areas x 4 slots of 2 KiB, one segment per area.
fn tiny_pool<P: Policy>() -> Pool<P> {
    let cfg = PoolConfig::DEFAULT
        .with_segment(4)
        .with_nareas(2)
        .with_slot_shift(11)
        .with_page_shift(12);
    let pool = Pool::<P>::new_heap(NSLOTS as usize * SLOT, cfg).unwrap();
    assert_eq!(pool.nareas(), 2);
    assert_eq!(pool.area_nslabs(), 4);
    pool
}

fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

/// Runs `f` under loom with a preemption bound, so the whole suite stays
/// within a couple of minutes; `LOOM_MAX_PREEMPTIONS` overrides it for a
/// deeper run.
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    // Counted outside loom, so a model that explores suspiciously few
    // interleavings shows in the log.
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "{}: {} interleavings (preemption bound {:?})",
        thread_name(),
        runs.load(std::sync::atomic::Ordering::Relaxed),
        b.preemption_bound
    );
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// The bytes a buffer tagged `tag` starts with.
fn pattern(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i as u8)).collect()
}

/// What the simulated device writes into a mapping tagged `tag`.
fn device_pattern(tag: u8, len: usize) -> Vec<u8> {
    pattern(!tag, len)
}

/// Shadow bits of the slots a bounce holds.
fn bits(b: &Bounce) -> u64 {
    ((1u64 << b.nslots) - 1) << b.start
}

/// A point where the other thread may run. Loom's reduction remembers only
/// the last access to each atomic, so a reader's loads that the other
/// thread's own loads overwrite before its stores are never seen as racing,
/// and the two are never reordered; a read-modify-write of the shared
/// shadow word is a conflict it does see.
fn step(shadow: &AtomicU64) {
    shadow.fetch_or(0, Ordering::SeqCst);
}

/// A live bounce of a buffer the calling thread owns.
struct Live {
    orig: Vec<u8>,
    b: Bounce,
    dma: DmaAddr,
    tag: u8,
}

/// Bounces a fresh buffer of `len` bytes tagged `tag`, starting the search
/// in area `hint`, and records its slots in `shadow`, which must not hold
/// any of them.
fn bounce<P: Policy>(
    pool: &Pool<P>,
    dev: &Device,
    shadow: &AtomicU64,
    len: usize,
    tag: u8,
    hint: usize,
) -> Live {
    let mut orig = pattern(tag, len);
    let cpu = orig.as_mut_ptr();
    let opts = MapOptions::default().with_area_hint(hint);
    // SAFETY: `orig` is a heap buffer that stays put (it moves only as a
    // `Vec`), lives until after the unmap in `unmap`, and is not read or
    // written through a reference while mapped.
    let b = unsafe {
        pool.bounce_raw(
            dev,
            PhysAddr(cpu as usize as u64),
            cpu,
            len,
            Attrs::NONE,
            opts,
        )
    }
    .unwrap_or_else(|e| panic!("bounce of {len} bytes (hint {hint}) failed: {e}"));
    // Recorded after the pool hands the slots out and cleared before they
    // are given back, so the shadow never claims more than the pool holds.
    let old = shadow.fetch_or(bits(&b), Ordering::SeqCst);
    assert_eq!(
        old & bits(&b),
        0,
        "slots {:?} handed out while live (shadow {old:#b})",
        b
    );
    Live {
        orig,
        b,
        dma: dev.phys_to_dma(b.phys),
        tag,
    }
}

/// The CPU address of the first byte the device sees.
fn device_ptr<P: Policy>(pool: &Pool<P>, live: &Live) -> *mut u8 {
    let off = (live.b.phys - pool.start()) as usize;
    assert!(off + live.orig.len() <= pool.len());
    // SAFETY: `off` is inside the pool (checked above), whose memory is
    // valid for the pool's length.
    unsafe { pool.vaddr().as_ptr().add(off) }
}

/// Reads the device side of a live mapping, as the device would.
fn device_read<P: Policy>(pool: &Pool<P>, live: &Live) -> Vec<u8> {
    let p = device_ptr(pool, live);
    // SAFETY: the mapping is live and owned by this thread, so its slots
    // hold `len` bytes only it uses.
    unsafe { std::slice::from_raw_parts(p, live.orig.len()) }.to_vec()
}

/// Writes the device side of a live mapping, as the device would.
fn device_write<P: Policy>(pool: &Pool<P>, live: &Live, off: usize, data: &[u8]) {
    assert!(off + data.len() <= live.orig.len());
    let p = device_ptr(pool, live);
    // SAFETY: as in `device_read`; the range is inside the mapping.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(off), data.len()) };
}

/// Checks a live mapping's slots still hold exactly `want`: another
/// thread's copy into the same slots would have changed them.
fn assert_slots<P: Policy>(pool: &Pool<P>, live: &Live, want: &[u8]) {
    assert!(
        device_read(pool, live) == want,
        "slots of mapping tag {:#x} at {:?} changed under it",
        live.tag,
        live.b
    );
}

/// Clears the shadow and unmaps; returns the original.
fn unmap<P: Policy>(
    pool: &Pool<P>,
    dev: &Device,
    shadow: &AtomicU64,
    mut live: Live,
    dir: Direction,
) -> Vec<u8> {
    shadow.fetch_and(!bits(&live.b), Ordering::SeqCst);
    let len = live.orig.len();
    // SAFETY: the mapping is live, its original is `live.orig`, still valid
    // and not referenced; the simulated device is done with it.
    unsafe { pool.unmap_raw(dev, live.dma, len, dir, Attrs::NONE) }
        .unwrap_or_else(|e| panic!("unmap of {:?} failed: {e}", live.b));
    std::mem::take(&mut live.orig)
}

/// Every slot free, nothing counted as used, no failure counted.
fn assert_empty<P: Policy>(pool: &Pool<P>) {
    let st = pool.stats();
    assert_eq!(st.io_tlb_used, 0, "{st}");
    assert!(st.area_used.iter().all(|&u| u == 0), "{st}");
    assert_eq!(st.total_failures(), 0, "{st}");
    for s in 0..pool.nslabs() {
        assert!(pool.slot_is_free(s), "slot {s} still held");
    }
}

/// One thread's part of model (a): two mappings of different sizes in its
/// own area, checked, written by the device, copied back and unmapped.
fn owner<P: Policy>(pool: &Pool<P>, shadow: &AtomicU64, t: usize, sizes: [usize; 2]) {
    let dev = forced();
    let tag = 0x40 * (t as u8 + 1);
    let a = bounce(pool, &dev, shadow, sizes[0], tag, t);
    let b = bounce(pool, &dev, shadow, sizes[1], tag | 0x10, t);
    // The map copied each original in, whatever the direction.
    assert_slots(pool, &a, &pattern(a.tag, sizes[0]));
    assert_slots(pool, &b, &pattern(b.tag, sizes[1]));

    let da = device_pattern(a.tag, sizes[0]);
    device_write(pool, &a, 0, &da);
    // The device writes only the first half of `b`.
    let db = device_pattern(b.tag, sizes[1] / 2);
    device_write(pool, &b, 0, &db);

    let back = unmap(pool, &dev, shadow, a, Direction::Bidirectional);
    assert!(
        back == da,
        "thread {t}: first mapping copied back wrong bytes"
    );
    let mut want = pattern(b.tag, sizes[1]);
    want[..db.len()].copy_from_slice(&db);
    assert_slots(pool, &b, &want);
    let back = unmap(pool, &dev, shadow, b, Direction::FromDevice);
    assert!(
        back == want,
        "thread {t}: second mapping copied back wrong bytes"
    );
}

/// (a) Two threads each map two buffers of different sizes (1 and 2 slots,
/// 2 and 1 slots) in their own area, touch them and unmap them.
fn two_owners<P: Policy>() {
    model(|| {
        let pool = Arc::new(tiny_pool::<P>());
        let shadow = Arc::new(AtomicU64::new(0));
        let th = {
            let (pool, shadow) = (pool.clone(), shadow.clone());
            thread::spawn(move || owner(&pool, &shadow, 1, [SLOT + 1, 500]))
        };
        owner(&pool, &shadow, 0, [100, 3000]);
        th.join().unwrap();
        assert_eq!(shadow.load(Ordering::SeqCst), 0);
        assert_empty(&*pool);
    });
}

#[test]
fn two_owners_fast() {
    two_owners::<Fast>();
}

#[test]
fn two_owners_nextfit() {
    two_owners::<NextFit>();
}

/// (b) Thread A fills area 0 with one 4-slot mapping while thread B, whose
/// hint is also area 0, maps `b_len` bytes: whoever comes second finds
/// area 0 too full and must fall back to area 1. Both always succeed.
fn fallback<P: Policy>(b_len: usize) {
    model(move || {
        let pool = Arc::new(tiny_pool::<P>());
        let shadow = Arc::new(AtomicU64::new(0));
        let a_len = 4 * SLOT;
        let tb = {
            let (pool, shadow) = (pool.clone(), shadow.clone());
            thread::spawn(move || {
                let live = bounce(&*pool, &forced(), &shadow, b_len, 0x20, 0);
                assert_slots(&*pool, &live, &pattern(0x20, b_len));
                live
            })
        };
        let a = bounce(&*pool, &forced(), &shadow, a_len, 0x80, 0);
        assert_slots(&*pool, &a, &pattern(0x80, a_len));
        let b = tb.join().unwrap();

        assert_eq!(a.b.nslots, 4);
        let b_slots = b_len.div_ceil(SLOT) as u32;
        assert_eq!(b.b.nslots, b_slots);
        if a.b.start == 0 {
            // A came first and took all of area 0: B fell back.
            assert!(b.b.start >= 4, "B not in area 1: {:?}", b.b);
        } else {
            // B came first: A found area 0 short and fell back.
            assert_eq!(a.b.start, 4);
            assert!(b.b.start + b.b.nslots <= 4, "B not in area 0: {:?}", b.b);
        }
        let mut used = pool.stats().area_used;
        used.sort_unstable();
        assert_eq!(used, [b_slots as u64, 4]);
        assert_slots(&*pool, &a, &pattern(0x80, a_len));
        assert_slots(&*pool, &b, &pattern(0x20, b_len));

        let dev = forced();
        unmap(&*pool, &dev, &shadow, a, Direction::ToDevice);
        unmap(&*pool, &dev, &shadow, b, Direction::ToDevice);
        assert_empty(&*pool);
    });
}

#[test]
fn fallback_one_slot_fast() {
    fallback::<Fast>(SLOT - 24);
}

#[test]
fn fallback_one_slot_nextfit() {
    fallback::<NextFit>(SLOT - 24);
}

/// Both want a whole area with the same hint: each must end up with one.
#[test]
fn fallback_whole_area_fast() {
    fallback::<Fast>(4 * SLOT);
}

#[test]
fn fallback_whole_area_nextfit() {
    fallback::<NextFit>(4 * SLOT);
}

/// (c) A sync of one mapping racing the unmap of another, lower in the same
/// area and the same start-bit word, followed by a fresh map that may take
/// the freed slot: the sync finds its mapping by a backward scan of start
/// bits, across the bit being cleared and set again.
fn sync_vs_unmap<P: Policy>() {
    model(|| {
        let pool = Arc::new(tiny_pool::<P>());
        let shadow = Arc::new(AtomicU64::new(0));
        let dev = forced();
        // Mapped before the threads start: `y` below `x` in area 0.
        let y = bounce(&*pool, &dev, &shadow, 1000, 0x30, 0);
        let x = bounce(&*pool, &dev, &shadow, 3000, 0xc0, 0);
        assert!(y.b.start < x.b.start, "{:?} {:?}", y.b, x.b);
        assert!(x.b.nslots >= 2);

        let ty = {
            let (pool, shadow) = (pool.clone(), shadow.clone());
            thread::spawn(move || {
                let dev = forced();
                device_write(&*pool, &y, 0, &device_pattern(0x30, 1000));
                let back = unmap(&*pool, &dev, &shadow, y, Direction::FromDevice);
                assert!(back == device_pattern(0x30, 1000));
                let z = bounce(&*pool, &dev, &shadow, 700, 0x50, 0);
                assert_slots(&*pool, &z, &pattern(0x50, 700));
                unmap(&*pool, &dev, &shadow, z, Direction::ToDevice);
            })
        };

        // The device writes into `x`'s second slot; a sync from an address
        // inside that slot copies just that range to the original.
        let (off, n) = (SLOT + 100, 300);
        let written = device_pattern(0xc0, n);
        device_write(&*pool, &x, off, &written);
        step(&shadow);
        // SAFETY: `x` is live; its original is `x.orig`, not referenced
        // during the call.
        unsafe { pool.sync_for_cpu_raw(&dev, x.dma + off as u64, n, Direction::Bidirectional) }
            .expect("sync_for_cpu of a live mapping");
        let mut want = pattern(0xc0, 3000);
        want[off..off + n].copy_from_slice(&written);
        // SAFETY: reading the original between syncs; no copy into it runs
        // now (only this thread syncs or unmaps `x`).
        let orig = unsafe { std::slice::from_raw_parts(x.orig.as_ptr(), 3000) };
        assert!(orig == &want[..], "sync_for_cpu copied the wrong bytes");

        // And the other way: the CPU's bytes back to the device.
        step(&shadow);
        // SAFETY: as above.
        unsafe { pool.sync_for_device_raw(&dev, x.dma + 8, 16, Direction::Bidirectional) }
            .expect("sync_for_device of a live mapping");
        assert_slots(&*pool, &x, &want);
        step(&shadow);

        ty.join().unwrap();
        let back = unmap(&*pool, &dev, &shadow, x, Direction::Bidirectional);
        assert!(back == want);
        assert_empty(&*pool);
    });
}

#[test]
fn sync_vs_unmap_fast() {
    sync_vs_unmap::<Fast>();
}

#[test]
fn sync_vs_unmap_nextfit() {
    sync_vs_unmap::<NextFit>();
}

/// (c') A sync from a thread that did not map: thread A maps `x`, maps and
/// unmaps `y` (its start bit in the same word), then rings a doorbell with
/// `x`'s device address, relaxed, as a device register would carry it;
/// thread B, seeing the doorbell, syncs a range in `x`'s second slot. The
/// doorbell orders nothing, so B may not yet see the mapping (`NotMapped`,
/// nothing copied); but if it finds `x`'s start bit, possibly in the word
/// as the unmap of `y` left it, it must see the record the bit publishes
/// and copy the right bytes into the right original. A stale record shows
/// as a wrong copy or, with a stale original pointer, a crash.
///
/// `private_words`: areas of 64 slots, so each start-bit word belongs to
/// one area and is written with plain stores under its lock; otherwise the
/// tiny pool, whose one word is shared by both areas and written with
/// read-modify-writes.
fn sync_from_other_thread<P: Policy>(private_words: bool) {
    model(move || {
        let pool = if private_words {
            let cfg = PoolConfig::DEFAULT
                .with_segment(4)
                .with_nareas(1)
                .with_slot_shift(11)
                .with_page_shift(12);
            Pool::<P>::new_heap(64 * SLOT, cfg).unwrap()
        } else {
            tiny_pool::<P>()
        };
        let pool = Arc::new(pool);
        let shadow = Arc::new(AtomicU64::new(0));
        let doorbell = Arc::new(AtomicU64::new(0));
        let (off, n) = (SLOT + 40, 200);
        let tb = {
            let (pool, doorbell) = (pool.clone(), doorbell.clone());
            thread::spawn(move || {
                let dma = doorbell.load(Ordering::Relaxed);
                if dma == 0 {
                    return false;
                }
                // SAFETY: thread A keeps `x` mapped and its original
                // untouched until it joins this thread.
                let r = unsafe {
                    pool.sync_for_cpu_raw(
                        &forced(),
                        DmaAddr(dma + off as u64),
                        n,
                        Direction::FromDevice,
                    )
                };
                match r {
                    Ok(()) => true,
                    Err(swiotlb::Error::NotMapped { .. }) => false,
                    Err(e) => panic!("sync of a published mapping: {e}"),
                }
            })
        };
        let dev = forced();
        let x = bounce(&*pool, &dev, &shadow, 3000, 0xa0, 0);
        let y = bounce(&*pool, &dev, &shadow, 100, 0x60, 0);
        unmap(&*pool, &dev, &shadow, y, Direction::ToDevice);
        let written = device_pattern(0xa0, n);
        device_write(&*pool, &x, off, &written);
        doorbell.store(x.dma.as_u64(), Ordering::Relaxed);
        let synced = tb.join().unwrap();

        let mut want = pattern(0xa0, 3000);
        if synced {
            want[off..off + n].copy_from_slice(&written);
        }
        // SAFETY: thread B has finished; nothing copies into `x.orig` now.
        let orig = unsafe { std::slice::from_raw_parts(x.orig.as_ptr(), 3000) };
        assert!(
            orig == &want[..],
            "sync from another thread copied wrong bytes"
        );
        unmap(&*pool, &dev, &shadow, x, Direction::ToDevice);
        assert_eq!(pool.stats().io_tlb_used, 0);
        for s in 0..pool.nslabs() {
            assert!(pool.slot_is_free(s), "slot {s} still held");
        }
    });
}

#[test]
fn sync_from_other_thread_fast() {
    sync_from_other_thread::<Fast>(false);
}

#[test]
fn sync_from_other_thread_nextfit() {
    sync_from_other_thread::<NextFit>(false);
}

#[test]
fn sync_from_other_thread_private_words_fast() {
    sync_from_other_thread::<Fast>(true);
}

#[test]
fn sync_from_other_thread_private_words_nextfit() {
    sync_from_other_thread::<NextFit>(true);
}

/// The safe API from two threads: each maps a buffer it owns, plays the
/// device on it, and unmaps or drops the mapping. (The safe API has no
/// area hint; whichever area the core picks, the outcome must be the same.)
fn safe_api<P: Policy>() {
    model(|| {
        let pool = Arc::new(tiny_pool::<P>());
        let run = |pool: &Pool<P>, tag: u8, len: usize, drop_it: bool| {
            let dev = forced();
            let mut m = pool
                .map(&dev, pattern(tag, len), Direction::Bidirectional)
                .unwrap_or_else(|f| panic!("map failed: {}", f.error));
            assert!(m.is_bounced());
            let p = m.device_ptr().as_ptr();
            // SAFETY: playing the device on a live mapping this thread owns.
            let seen = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
            assert!(seen == pattern(tag, len), "slots changed under a mapping");
            let dp = device_pattern(tag, len);
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(dp.as_ptr(), p, len) };
            if drop_it {
                // Dropping skips the copy-back but must free the slots.
                drop(m);
            } else {
                m.sync_for_cpu(0, len).unwrap();
                let mut out = vec![0; len];
                m.read(0, &mut out).unwrap();
                assert!(out == dp);
                assert!(m.unmap() == dp);
            }
        };
        let th = {
            let pool = pool.clone();
            thread::spawn(move || run(&pool, 0x11, 2 * SLOT + 10, true))
        };
        run(&pool, 0x22, SLOT, false);
        th.join().unwrap();
        assert_empty(&*pool);
    });
}

#[test]
fn safe_api_fast() {
    safe_api::<Fast>();
}

#[test]
fn safe_api_nextfit() {
    safe_api::<NextFit>();
}
